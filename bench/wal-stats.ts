/**
 * WAL written by a benchmark phase: pg_current_wal_lsn for the bytes, pg_stat_wal (PostgreSQL
 * 14+) for records and full-page images, and — when the bench runs its own server and finds
 * pg_waldump — `pg_waldump --stats` over the phase's WAL for the bytes of full-page images and
 * the split by resource manager (Heap, Heap2 = prune/vacuum/visibility, Btree, …).
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { Pool } from 'pg';

const run = promisify(execFile);

export interface WalMark {
  lsn: string;
  /** pg_stat_wal counters (null before PostgreSQL 14). */
  records: number | null;
  fpi: number | null;
  bytes: number | null;
}

export interface RmgrWal {
  records: number;
  recordBytes: number;
  fpiBytes: number;
}

export interface WalUsed {
  /** WAL bytes between the two positions. */
  bytes: number;
  records: number | null;
  /** Full-page images written. */
  fpi: number | null;
  /** From pg_waldump --stats, when it ran: bytes of full-page images, and per resource manager. */
  fpiBytes?: number;
  byRmgr?: Record<string, RmgrWal>;
}

export async function walMark(pool: Pool): Promise<WalMark> {
  const lsn = (await pool.query('SELECT pg_current_wal_lsn()::text AS l')).rows[0].l as string;
  const v = Number((await pool.query(`SELECT current_setting('server_version_num')::int AS v`)).rows[0].v);
  if (v < 140000) return { lsn, records: null, fpi: null, bytes: null };
  const s = (await pool.query('SELECT wal_records::text AS r, wal_fpi::text AS f, wal_bytes::text AS b FROM pg_stat_wal')).rows[0];
  return { lsn, records: Number(s.r), fpi: Number(s.f), bytes: Number(s.b) };
}

/**
 * WAL from `from` to now. `waldump`: the pg_waldump binary and the server's pg_wal directory
 * (the server must keep the phase's segments: the bench's own server runs with a large
 * wal_keep_size).
 */
export async function walSince(pool: Pool, from: WalMark, waldump?: { bin: string; walDir: string }): Promise<WalUsed> {
  const to = await walMark(pool);
  const bytes = Number((await pool.query('SELECT pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)::text AS n', [to.lsn, from.lsn])).rows[0].n);
  const used: WalUsed = {
    bytes,
    records: to.records === null || from.records === null ? null : to.records - from.records,
    fpi: to.fpi === null || from.fpi === null ? null : to.fpi - from.fpi,
  };
  if (waldump) {
    // pg_current_wal_lsn() is the position written out so far: every record before it is in pg_wal.
    try {
      const { stdout } = await run(waldump.bin, ['-p', waldump.walDir, '-s', from.lsn, '-e', to.lsn, '--stats'], { maxBuffer: 16 * 1024 * 1024 });
      Object.assign(used, parseWaldumpStats(stdout));
    } catch (err) {
      process.stdout.write(`  (pg_waldump failed: ${String((err as Error).message).split('\n')[0]})\n`);
    }
  }
  return used;
}

/** The per-resource-manager lines and the total of `pg_waldump --stats`. */
export function parseWaldumpStats(text: string): { fpiBytes: number; byRmgr: Record<string, RmgrWal> } {
  const byRmgr: Record<string, RmgrWal> = {};
  let fpiBytes = 0;
  for (const line of text.split('\n')) {
    const total = /^Total\s+(\d+)\s+(\d+)\s+\[[^\]]*\]\s+(\d+)\s+\[/.exec(line);
    if (total) {
      fpiBytes = Number(total[3]);
      continue;
    }
    const m = /^(\S+)\s+(\d+)\s+\(\s*[\d.]+\)\s+(\d+)\s+\(\s*[\d.]+\)\s+(\d+)\s+\(/.exec(line);
    if (m && Number(m[2]) > 0) byRmgr[m[1]] = { records: Number(m[2]), recordBytes: Number(m[3]), fpiBytes: Number(m[4]) };
  }
  return { fpiBytes, byRmgr };
}

/** pg_waldump next to the server's binaries, or the system's PostgreSQL 15 one. */
export function findWaldump(binDir: string): string | undefined {
  for (const c of [path.join(binDir, 'pg_waldump'), '/usr/lib/postgresql/15/bin/pg_waldump']) if (fs.existsSync(c)) return c;
  return undefined;
}

/** Heap and TOAST pages of the tables (main forks): what one full-page image each would cost. */
export async function heapPages(pool: Pool, tables: string[]): Promise<{ heap: number; toast: number }> {
  const r = await pool.query(
    `SELECT sum(pg_relation_size(c.oid))::text AS heap, coalesce(sum(pg_relation_size(c.reltoastrelid)) FILTER (WHERE c.reltoastrelid <> 0), 0)::text AS toast
       FROM pg_class c WHERE c.oid = ANY($1::regclass[])`,
    [tables],
  );
  return { heap: Number(r.rows[0].heap) / 8192, toast: Number(r.rows[0].toast) / 8192 };
}

const MB = 1024 * 1024;

/** One line: WAL MB, × rewritten bytes, FPI count and bytes, and the biggest resource managers. */
export function describeWal(w: WalUsed, rewrittenBytes: number): string {
  const parts = [`WAL ${(w.bytes / MB).toFixed(0)} MB = ${(w.bytes / rewrittenBytes).toFixed(2)} × rewritten`];
  if (w.fpi !== null) parts.push(`${w.fpi.toLocaleString('en-US')} FPI`);
  if (w.fpiBytes !== undefined) parts.push(`FPI ${(w.fpiBytes / MB).toFixed(0)} MB (${(w.fpiBytes / rewrittenBytes).toFixed(2)} ×)`);
  if (w.byRmgr) {
    const top = Object.entries(w.byRmgr)
      .map(([k, v]) => [k, v.recordBytes + v.fpiBytes] as const)
      .sort((a, b) => b[1] - a[1])
      .slice(0, 4)
      .map(([k, n]) => `${k} ${(n / MB).toFixed(0)}`);
    parts.push(`by rmgr MB: ${top.join(', ')}`);
  }
  return parts.join('; ');
}

/** Updates and HOT updates (same page, no index entry) of the tables so far (pg_stat_user_tables). */
export async function updateCounts(pool: Pool, tables: string[]): Promise<{ updates: number; hot: number }> {
  await pool.query('SELECT pg_stat_clear_snapshot()');
  const r = await pool.query(
    `SELECT coalesce(sum(n_tup_upd), 0)::text AS u, coalesce(sum(n_tup_hot_upd), 0)::text AS h FROM pg_stat_user_tables WHERE relid = ANY($1::regclass[])`,
    [tables],
  );
  return { updates: Number(r.rows[0].u), hot: Number(r.rows[0].h) };
}
