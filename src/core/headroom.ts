/**
 * Disk headroom for a rotation: free space on the filesystem of the server's data directory
 * against 1.5 × pg_database_size. The operator's figure (--free-space) stands in for what this
 * host cannot see (a managed service, a server on another host); without it, "unknown", with
 * the reason, when the data directory cannot be seen from here.
 */
import * as fs from 'node:fs';
import { Queryable } from '../db/transaction';
import { UsageError } from '../errors';

export const HEADROOM_FACTOR = 1.5;

/** The rule in words, for messages and help ("1.5 × the database size"). */
export const HEADROOM_RULE = `${HEADROOM_FACTOR} × the database size`;

export interface Headroom {
  databaseBytes: number;
  requiredBytes: number;
  /** null when unknown. */
  freeBytes: number | null;
  /** Where freeBytes comes from: measured on the data directory, the operator's --free-space, or null (unknown). */
  freeBytesSource: 'data-directory' | 'operator' | null;
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

export interface HeadroomOptions {
  /** The server's data directory as mounted on this host. */
  dataDir?: string;
  serverIsLocal?: boolean;
  /** The operator's figure of free bytes on the server's volume; used instead of measuring. */
  freeSpaceBytes?: number;
}

/** What the operator can pass when the data directory cannot be seen from this host. */
const WHEN_UNSEEN = "pass --free-space BYTES (the free space the server's host or the provider's console shows)";

export async function measureHeadroom(db: Queryable, opts: HeadroomOptions = {}): Promise<Headroom> {
  const databaseBytes = await databaseSize(db);
  const requiredBytes = Math.ceil(databaseBytes * HEADROOM_FACTOR);
  const unknown = (dataDirectory: string | null, reason: string): Headroom => ({
    databaseBytes,
    requiredBytes,
    freeBytes: null,
    freeBytesSource: null,
    dataDirectory,
    ok: null,
    reason,
  });
  if (opts.freeSpaceBytes !== undefined) {
    const free = opts.freeSpaceBytes;
    return { databaseBytes, requiredBytes, freeBytes: free, freeBytesSource: 'operator', dataDirectory: opts.dataDir ?? null, ok: free >= requiredBytes };
  }
  let dir = opts.dataDir;
  if (!dir) {
    try {
      const r = await db.query<{ d: string }>(`SELECT current_setting('data_directory') AS d`);
      dir = r.rows[0].d;
    } catch {
      return unknown(null, `cannot see the data directory: the database user may not read data_directory (needs pg_read_all_settings); ${WHEN_UNSEEN}, or --data-dir`);
    }
    if (opts.serverIsLocal === false) {
      return unknown(dir, `cannot see the data directory: the database server is not on this host; ${WHEN_UNSEEN}, or --data-dir if it is mounted here`);
    }
  }
  let free: number;
  try {
    free = freeBytesAt(dir);
  } catch (err) {
    return unknown(dir, `cannot see the data directory ${dir} from this host (${(err as NodeJS.ErrnoException).code ?? 'error'}); ${WHEN_UNSEEN}, or --data-dir`);
  }
  return { databaseBytes, requiredBytes, freeBytes: free, freeBytesSource: 'data-directory', dataDirectory: dir, ok: free >= requiredBytes };
}

/** What a rotation needs and why: "3.0 MB (1.5 × the database, 2.0 MB)". */
export function describeRequired(h: Pick<Headroom, 'requiredBytes' | 'databaseBytes'>): string {
  return `${formatBytes(h.requiredBytes)} (${HEADROOM_FACTOR} × the database, ${formatBytes(h.databaseBytes)})`;
}

/** Where the free figure came from, for messages: "on /var/lib/…" or "(--free-space, the operator's figure)". */
export function describeFreeSpace(h: Headroom): string {
  if (h.freeBytesSource === 'operator') return `${formatBytes(h.freeBytes)} free (--free-space, the operator's figure)`;
  return `${formatBytes(h.freeBytes)} free on ${h.dataDirectory}`;
}

const SIZE_UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  tb: 1e12,
  kib: 2 ** 10,
  mib: 2 ** 20,
  gib: 2 ** 30,
  tib: 2 ** 40,
};

/** Parses `--free-space`: bytes, or a number with kB/MB/GB/TB (powers of 1000) or KiB/MiB/GiB/TiB (powers of 1024). */
export function parseByteSize(text: string, flag: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(String(text));
  const unit = m ? SIZE_UNITS[m[2].toLowerCase()] : undefined;
  if (!m || unit === undefined) {
    throw new UsageError(`${flag} must be a number of bytes, or a number with kB, MB, GB, TB, KiB, MiB, GiB or TiB, got "${text}"`);
  }
  const n = Math.floor(Number(m[1]) * unit);
  if (!Number.isSafeInteger(n)) throw new UsageError(`${flag} is too large: "${text}"`);
  return n;
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
