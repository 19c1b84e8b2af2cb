/**
 * A synthetic rosemeta for the demo, the benchmark, the tests and the chaos suite: three
 * tables with encrypted columns, filled through the library. Every plaintext is a pure
 * function of (column, id, seed), so a checker can recompute what each value must decrypt to
 * without keeping the data in memory.
 */
import { createCipheriv, createHash } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import { Pool } from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import type { Keyring } from '../../src/core/keyring-client';

export const CREDENTIALS = 'public.credentials.secret';
export const DOCUMENTS = 'public.documents.body';
export const BLOBS = 'public.blobs.payload';
export const ROSEMETA_COLUMNS = [CREDENTIALS, DOCUMENTS, BLOBS] as const;
export type RosemetaColumn = (typeof ROSEMETA_COLUMNS)[number];

const TABLE_OF: Record<RosemetaColumn, { table: string; column: string; storage: 'text' | 'bytea' }> = {
  [CREDENTIALS]: { table: 'public.credentials', column: 'secret', storage: 'text' },
  [DOCUMENTS]: { table: 'public.documents', column: 'body', storage: 'text' },
  [BLOBS]: { table: 'public.blobs', column: 'payload', storage: 'bytea' },
};

export interface RosemetaShape {
  credentials: number;
  documents: number;
  blobs: number;
}

/** Splits a total number of encrypted values over the three tables. */
export function shapeFor(totalValues: number): RosemetaShape {
  const credentials = Math.min(300, Math.max(1, Math.floor(totalValues / 10)));
  const rest = Math.max(0, totalValues - credentials);
  const documents = Math.floor(rest / 2);
  return { credentials, documents, blobs: rest - documents };
}

export async function createRosemetaTables(pool: Pool): Promise<void> {
  await pool.query(`
    CREATE TABLE IF NOT EXISTS public.credentials (id bigint PRIMARY KEY, name text NOT NULL, secret text);
    CREATE TABLE IF NOT EXISTS public.documents (id bigint PRIMARY KEY, title text NOT NULL, body text);
    CREATE TABLE IF NOT EXISTS public.blobs (id bigint PRIMARY KEY, kind text NOT NULL, payload bytea);
  `);
}

function seedKey(seed: string): Buffer {
  return createHash('sha256').update(`rosemeta/${seed}`).digest().subarray(0, 16);
}

function pseudoRandomBytes(key: Buffer, column: string, id: number, length: number): Buffer {
  const iv = createHash('md5').update(`${column}/${id}`).digest();
  const c = createCipheriv('aes-128-ctr', key, iv);
  return c.update(Buffer.alloc(length));
}

/** What the generated tables hold: values (each an envelope) and NULLs, which stay NULL and are not encrypted. */
export async function countRosemetaValues(pool: Pool): Promise<{ values: number; nulls: number }> {
  let values = 0;
  let nulls = 0;
  for (const c of ROSEMETA_COLUMNS) {
    const t = TABLE_OF[c];
    const r = await pool.query<{ v: string; n: string }>(`SELECT count(${t.column}) AS v, count(*) - count(${t.column}) AS n FROM ${t.table}`);
    values += Number(r.rows[0].v);
    nulls += Number(r.rows[0].n);
  }
  return { values, nulls };
}

/** Whether the value at (column, id) is NULL. */
export function isNullValue(column: RosemetaColumn, id: number): boolean {
  return column !== CREDENTIALS && id % 37 === 5;
}

const WORDS = ['schéma', 'données', 'Straße', 'größe', '数据目录', 'カタログ', 'ключ', 'κλειδί', 'naïve', 'café', '🔑', '🗄️', 'catalog', 'lineage', 'steward'];

/** The plaintext the value at (column, id) must decrypt to (null for NULL). */
export function expectedPlaintext(column: RosemetaColumn, id: number, seed = 'demo'): string | Buffer | null {
  if (isNullValue(column, id)) return null;
  const key = seedKey(seed);
  const rnd = pseudoRandomBytes(key, column, id, 64);
  if (column === CREDENTIALS) {
    return `pw-${id}-${rnd.subarray(0, 12).toString('base64url')}-${WORDS[rnd[20] % WORDS.length]}`;
  }
  const size = column === BLOBS && id % 997 === 3 ? 100_000 : 100 + (rnd.readUInt32BE(0) % 3997);
  if (column === BLOBS) return pseudoRandomBytes(key, column, id, size);
  // Text of about `size` bytes, multi-byte characters included.
  const parts: string[] = [];
  let bytes = 0;
  let i = 0;
  while (bytes < size) {
    const w = WORDS[rnd[i % 64] % WORDS.length] + ' ' + (id + i).toString(36) + ' ';
    parts.push(w);
    bytes += Buffer.byteLength(w);
    i++;
  }
  return parts.join('');
}

function copyTextField(v: string | Buffer | null): string {
  if (v === null) return '\\N';
  if (typeof v === 'string') return v; // envelopes in text storage are ak1:+base64: nothing to escape
  return '\\\\x' + v.toString('hex');
}

async function fillTable(
  pool: Pool,
  keyring: Keyring,
  column: RosemetaColumn,
  count: number,
  seed: string,
  startId: number,
  onRows?: (n: number) => void,
): Promise<void> {
  const { table } = TABLE_OF[column];
  const label = column === CREDENTIALS ? 'name' : column === DOCUMENTS ? 'title' : 'kind';
  const client = await pool.connect();
  try {
    async function* rows() {
      let batch: string[] = [];
      for (let id = startId; id < startId + count; id++) {
        const plain = expectedPlaintext(column, id, seed);
        const sealed = await keyring.encrypt(plain as any, column);
        batch.push(`${id}\t${label}-${id}\t${copyTextField(sealed)}\n`);
        if (batch.length >= 500) {
          onRows?.(batch.length);
          yield batch.join('');
          batch = [];
        }
      }
      if (batch.length) {
        onRows?.(batch.length);
        yield batch.join('');
      }
    }
    const sql = `COPY ${table} (id, ${label}, ${TABLE_OF[column].column}) FROM STDIN`;
    await pipeline(Readable.from(rows()), client.query(copyFrom(sql)));
  } finally {
    client.release();
  }
}

export interface GenerateOptions {
  totalValues: number;
  seed?: string;
  /** First id of every table (to add rows to an existing rosemeta). */
  startId?: number;
  onRows?: (n: number) => void;
}

/** Fills the three tables through the library (encrypt + COPY) and returns the shape. */
export async function generateRosemeta(pool: Pool, keyring: Keyring, opts: GenerateOptions): Promise<RosemetaShape> {
  const shape = shapeFor(opts.totalValues);
  const seed = opts.seed ?? 'demo';
  const start = opts.startId ?? 1;
  await Promise.all([
    fillTable(pool, keyring, CREDENTIALS, shape.credentials, seed, start, opts.onRows),
    fillTable(pool, keyring, DOCUMENTS, shape.documents, seed, start, opts.onRows),
    fillTable(pool, keyring, BLOBS, shape.blobs, seed, start, opts.onRows),
  ]);
  await pool.query('ANALYZE public.credentials; ANALYZE public.documents; ANALYZE public.blobs');
  return shape;
}

export interface VerifyReport {
  checked: number;
  nulls: number;
  mismatched: Array<{ column: string; id: number; why: string }>;
  missing: Array<{ column: string; id: number }>;
  unexpected: Array<{ column: string; id: number }>;
  versions: Record<string, Record<string, number>>;
}

/**
 * Reads every row in pages and checks each value decrypts to the expected plaintext.
 * `overrides` maps `column/id` to what an application wrote later (null = NULL).
 */
export async function verifyRosemeta(
  pool: Pool,
  keyring: Keyring,
  shape: RosemetaShape,
  opts: { seed?: string; startId?: number; overrides?: Map<string, string | Buffer | null>; extraIds?: Map<RosemetaColumn, Set<number>> } = {},
): Promise<VerifyReport> {
  const seed = opts.seed ?? 'demo';
  const start = opts.startId ?? 1;
  const report: VerifyReport = { checked: 0, nulls: 0, mismatched: [], missing: [], unexpected: [], versions: {} };
  const counts: Record<RosemetaColumn, number> = { [CREDENTIALS]: shape.credentials, [DOCUMENTS]: shape.documents, [BLOBS]: shape.blobs };
  for (const column of ROSEMETA_COLUMNS) {
    const { table, column: col } = TABLE_OF[column];
    const versions: Record<string, number> = {};
    report.versions[column] = versions;
    const extra = opts.extraIds?.get(column) ?? new Set<number>();
    const end = start + counts[column];
    let next = start;
    let after = -1;
    for (;;) {
      const r = await pool.query<{ id: string; v: string | Buffer | null }>(
        `SELECT id, ${col} AS v FROM ${table} WHERE id > $1 ORDER BY id LIMIT 2000`,
        [after],
      );
      if (r.rows.length === 0) break;
      for (const row of r.rows) {
        const id = Number(row.id);
        after = id;
        const inRange = id >= start && id < end;
        if (!inRange && !extra.has(id)) {
          report.unexpected.push({ column, id });
          continue;
        }
        if (inRange) {
          while (next < id) report.missing.push({ column, id: next++ });
          next = id + 1;
        }
        const key = `${column}/${id}`;
        const expected = opts.overrides?.has(key) ? opts.overrides.get(key)! : expectedPlaintext(column, id, seed);
        if (row.v === null) {
          if (expected !== null) report.mismatched.push({ column, id, why: 'NULL, expected a value' });
          else report.nulls++;
          continue;
        }
        if (expected === null) {
          report.mismatched.push({ column, id, why: 'a value, expected NULL' });
          continue;
        }
        try {
          const plain = await keyring.decrypt(row.v as any, column);
          const same = Buffer.isBuffer(expected) ? Buffer.isBuffer(plain) && plain.equals(expected) : plain === expected;
          if (!same) report.mismatched.push({ column, id, why: 'plaintext differs' });
          else report.checked++;
          const envelope = typeof row.v === 'string' ? Buffer.from(row.v.slice(4, 16), 'base64') : row.v;
          const v = String(envelope.readUInt32BE(3));
          versions[v] = (versions[v] ?? 0) + 1;
        } catch (err) {
          report.mismatched.push({ column, id, why: (err as Error).message });
        }
      }
    }
    while (next < end) report.missing.push({ column, id: next++ });
  }
  return report;
}
