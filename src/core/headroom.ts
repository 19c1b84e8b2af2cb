/**
 * Disk headroom for a rotation: free space on the filesystem of the server's data directory
 * against 1.5 × pg_database_size. "unknown", with the reason, when it cannot be seen from here.
 */
import * as fs from 'node:fs';
import { Queryable } from '../db/transaction';

export const HEADROOM_FACTOR = 1.5;

export interface Headroom {
  databaseBytes: number;
  requiredBytes: number;
  /** null when unknown. */
  freeBytes: number | null;
  dataDirectory: string | null;
  ok: boolean | null;
  reason?: string;
}

export async function databaseSize(db: Queryable): Promise<number> {
  const r = await db.query<{ size: string }>('SELECT pg_database_size(current_database())::text AS size');
  return Number(r.rows[0].size);
}

export function freeBytesAt(dir: string): number {
  const s = fs.statfsSync(dir);
  return Number(s.bavail) * Number(s.bsize);
}

export async function measureHeadroom(db: Queryable, opts: { dataDir?: string; serverIsLocal?: boolean } = {}): Promise<Headroom> {
  const databaseBytes = await databaseSize(db);
  const requiredBytes = Math.ceil(databaseBytes * HEADROOM_FACTOR);
  const unknown = (dataDirectory: string | null, reason: string): Headroom => ({
    databaseBytes,
    requiredBytes,
    freeBytes: null,
    dataDirectory,
    ok: null,
    reason,
  });
  let dir = opts.dataDir;
  if (!dir) {
    try {
      const r = await db.query<{ d: string }>(`SELECT current_setting('data_directory') AS d`);
      dir = r.rows[0].d;
    } catch {
      return unknown(null, 'the database user may not read data_directory (needs pg_read_all_settings); pass --data-dir');
    }
    if (opts.serverIsLocal === false) return unknown(dir, 'the database server is not on this host; pass --data-dir if it is mounted here');
  }
  let free: number;
  try {
    free = freeBytesAt(dir);
  } catch (err) {
    return unknown(dir, `data directory ${dir} is not visible on this host (${(err as NodeJS.ErrnoException).code ?? 'error'}); pass --data-dir`);
  }
  return { databaseBytes, requiredBytes, freeBytes: free, dataDirectory: dir, ok: free >= requiredBytes };
}

/** Whether the connection goes to this host (unix socket or loopback). */
export function isLocalHost(host: string | undefined): boolean {
  if (!host) return true;
  return host.startsWith('/') || host === 'localhost' || host === '::1' || /^127\./.test(host);
}

export function formatBytes(n: number | null | undefined): string {
  if (n === null || n === undefined) return 'unknown';
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}
