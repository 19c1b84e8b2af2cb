/**
 * The no-crypto limit: the rotation's rewrite without cryptography (binary COPY out in pages,
 * COPY into a staging table with values inline where they fit, one UPDATE … FROM per chunk
 * with a key range, reading overlapped with writing, the same VACUUM cadence). What any
 * rewrite of these values costs PostgreSQL; `npm run bench` divides by it, and the
 * application-view bench runs it as a scenario of its own (what a full-speed rewrite of any
 * kind does to the application).
 */
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Pool } from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { copyRowsOut } from '../src/core/rewrite/chunk-reader';
import { CopyRow, encodeCopyBinary } from '../src/core/rewrite/copy-binary';
import { DEFAULT_BATCH_SIZE } from '../src/core/rewrite/job-run';
import { Vacuumer } from '../src/core/rewrite/vacuum';
import { MB } from './installation';

const CHUNK_BYTES = 8 * MB;

export const TABLES = [
  { table: 'public.credentials', column: 'secret', storage: 'text' },
  { table: 'public.documents', column: 'body', storage: 'text' },
  { table: 'public.blobs', column: 'payload', storage: 'bytea' },
];

/** The same rewrite without cryptography: the limit of the write path. */
export async function referencePipeline(pool: Pool, batch = DEFAULT_BATCH_SIZE): Promise<{ seconds: number; rows: number; bytes: number; vacuums: number }> {
  const t0 = Date.now();
  let rows = 0;
  let bytes = 0;
  const sizes = new Map<string, number>();
  for (const t of TABLES) sizes.set(t.table, Number((await pool.query(`SELECT pg_total_relation_size($1::regclass)::text AS n`, [t.table])).rows[0].n));
  const vacuumer = new Vacuumer(pool, (table) => Math.min(Math.max((sizes.get(table) ?? 0) * 0.1, 32 * MB), 1024 * MB), {});
  for (const t of TABLES) {
    async function* chunks() {
      const reader = await pool.connect();
      try {
        let after = -1;
        let chunk: { rows: CopyRow[]; lo: string; hi: string; bytes: number } | null = null;
        for (;;) {
          const sql = `COPY (SELECT id::text AS k0, ${t.column} AS v FROM ${t.table} AS t WHERE id > ${after} AND ${t.column} IS NOT NULL ORDER BY t.id LIMIT ${batch * 4}) TO STDOUT (FORMAT binary)`;
          let n = 0;
          for await (const f of copyRowsOut(reader, sql)) {
            n++;
            const key = f[0]!.toString();
            after = Number(key);
            const value = Buffer.from(f[1]!);
            chunk ??= { rows: [], lo: key, hi: key, bytes: 0 };
            chunk.rows.push([Buffer.from(f[0]!), value]);
            chunk.hi = key;
            chunk.bytes += value.length;
            if (chunk.rows.length >= batch || chunk.bytes >= CHUNK_BYTES) {
              const c = chunk;
              chunk = null;
              yield c;
            }
          }
          if (n < batch * 4) break;
        }
        if (chunk) yield chunk;
      } finally {
        reader.release();
      }
    }
    const writer = await pool.connect();
    try {
      await writer.query(`CREATE TEMP TABLE IF NOT EXISTS ref_stage (k0 text, v ${t.storage}) ON COMMIT DELETE ROWS`);
      await writer.query(`ALTER TABLE ref_stage ALTER COLUMN v SET STORAGE MAIN`); // as rotate's staging table
      const stream = Readable.from(chunks(), { objectMode: true, highWaterMark: 1 });
      for await (const c of stream as AsyncIterable<{ rows: CopyRow[]; lo: string; hi: string; bytes: number }>) {
        await writer.query('BEGIN');
        await pipeline(Readable.from([encodeCopyBinary(c.rows)]), writer.query(copyFrom('COPY ref_stage FROM STDIN (FORMAT binary)')));
        await writer.query(
          `UPDATE ${t.table} AS t SET ${t.column} = s.v FROM ref_stage s WHERE t.id = s.k0::bigint AND t.id >= $1::bigint AND t.id <= $2::bigint`,
          [c.lo, c.hi],
        );
        await writer.query('COMMIT');
        rows += c.rows.length;
        bytes += c.bytes;
        vacuumer.wrote(t.table, c.bytes);
      }
      await writer.query('DROP TABLE IF EXISTS ref_stage');
    } finally {
      writer.release();
    }
  }
  await vacuumer.idle();
  return { seconds: (Date.now() - t0) / 1000, rows, bytes, vacuums: vacuumer.vacuums };
}
