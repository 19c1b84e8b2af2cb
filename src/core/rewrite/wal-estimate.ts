/**
 * What a rotation will write to WAL, for `rotate --dry-run`: measured facts (README
 * "Performance → WAL"), not a simulation. An in-place rewrite logs the new values with their
 * tuple and record headers (1.24 × the rewritten bytes, measured) and, with full_page_writes
 * on, a full image of every page of the tables (heap and TOAST) the first time it changes
 * after a checkpoint: once a page when no checkpoint falls inside the rotation, again after
 * every checkpoint for the pages of a table whose key order does not follow its pages.
 * Encrypted values do not compress: wal_compression changes this by 0.5–7 %, and is left out.
 */
import { Queryable } from '../../db/transaction';

/** WAL records per rewritten byte: the new tuples and TOAST chunks, index entries, vacuum (measured 1.24). */
const WAL_RECORD_FACTOR = 1.24;

export interface WalEstimate {
  /** Estimated WAL of the rewrite, with one image of each page. */
  bytes: number;
  /** Of which: the new values with their tuple and record headers, index entries, vacuum. */
  recordBytes: number;
  /** Of which: full-page images (0 with full_page_writes off). */
  pageImageBytes: number;
  fullPageWrites: boolean;
  /** WAL between two checkpoints the server requests: max_wal_size / (1 + checkpoint_completion_target). */
  bytesBetweenCheckpoints: number;
  /** Checkpoints the server will take during the rewrite (by WAL volume alone). */
  checkpointsDuring: number;
}

/**
 * `tables`: each table with the share of its values still to rewrite (0–1); `rewriteBytes`: the
 * bytes of the values still to rewrite.
 */
export async function estimateWal(db: Queryable, tables: ReadonlyMap<string, number>, rewriteBytes: number): Promise<WalEstimate> {
  const s = await db.query<{ fpw: string; max_wal: string; target: string }>(
    `SELECT current_setting('full_page_writes') AS fpw,
            (SELECT setting::bigint * 1024 * 1024 FROM pg_settings WHERE name = 'max_wal_size')::text AS max_wal,
            current_setting('checkpoint_completion_target') AS target`,
  );
  const fullPageWrites = s.rows[0].fpw === 'on';
  let pageImageBytes = 0;
  if (fullPageWrites && tables.size > 0) {
    const names = [...tables.keys()];
    const r = await db.query<{ name: string; bytes: string }>(
      `SELECT u.name, (pg_relation_size(c.oid) + coalesce(pg_relation_size(NULLIF(c.reltoastrelid, 0)), 0))::text AS bytes
         FROM unnest($1::text[]) AS u(name) JOIN pg_class c ON c.oid = u.name::regclass`,
      [names],
    );
    for (const row of r.rows) pageImageBytes += Number(row.bytes) * Math.min(Math.max(tables.get(row.name) ?? 0, 0), 1);
  }
  const recordBytes = Math.round(rewriteBytes * WAL_RECORD_FACTOR);
  const bytes = recordBytes + Math.round(pageImageBytes);
  const bytesBetweenCheckpoints = Math.round(Number(s.rows[0].max_wal) / (1 + Number(s.rows[0].target)));
  return {
    bytes,
    recordBytes,
    pageImageBytes: Math.round(pageImageBytes),
    fullPageWrites,
    bytesBetweenCheckpoints,
    checkpointsDuring: bytesBetweenCheckpoints > 0 ? Math.floor(bytes / bytesBetweenCheckpoints) : 0,
  };
}
