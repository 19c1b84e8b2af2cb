/**
 * The scans that count values per data key (the census before a rotation, the count after
 * each pass) read each large value's header with one TOAST slice fetch, not one per
 * expression: counted in buffers with EXPLAIN (ANALYZE, BUFFERS), which does not depend on
 * timing. Reading the prefix once halved the census and the count on 200,000 values.
 */
import { censusColumn, censusSql } from '../src/core/census';
import { listColumns } from '../src/core/columns';
import { countVersions, countVersionsSql, planColumn } from '../src/core/rewrite/plan';
import { createInstallation, Installation } from './support/fixtures';
import { runCli } from './support/cli';

let inst: Installation;
const ROWS = 60;

beforeAll(async () => {
  inst = await createInstallation('header-scans');
  // Values well over a TOAST chunk, stored out of line uncompressed (as envelopes are: their
  // bytes do not compress), so a substring of one is a slice fetch of its first chunk.
  await inst.db.query(`
    CREATE TABLE public.big_text (id int PRIMARY KEY, secret text);
    CREATE TABLE public.big_bytes (id int PRIMARY KEY, payload bytea);
    ALTER TABLE public.big_text ALTER COLUMN secret SET STORAGE EXTERNAL;
    ALTER TABLE public.big_bytes ALTER COLUMN payload SET STORAGE EXTERNAL;
  `);
  for (const c of ['public.big_text.secret', 'public.big_bytes.payload']) {
    expect((await runCli(['columns', 'add', c], { env: inst.env })).code).toBe(0);
  }
  await inst.keyring.refresh();
  for (let id = 1; id <= ROWS; id++) {
    await inst.db.query('INSERT INTO public.big_text VALUES ($1, $2)', [id, await inst.keyring.encrypt('x'.repeat(12_000) + id, 'public.big_text.secret')]);
    await inst.db.query('INSERT INTO public.big_bytes VALUES ($1, $2)', [id, await inst.keyring.encrypt(Buffer.alloc(12_000, id), 'public.big_bytes.payload')]);
  }
  await inst.db.query('VACUUM ANALYZE public.big_text, public.big_bytes');
});

afterAll(async () => {
  await inst?.cleanup();
});

/** Shared buffers the statement touched (hit or read), from EXPLAIN (ANALYZE, BUFFERS). */
async function buffersOf(sql: string): Promise<number> {
  const r = await inst.db.query(`EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ${sql}`);
  const plan = r.rows[0]['QUERY PLAN'][0].Plan;
  return plan['Shared Hit Blocks'] + plan['Shared Read Blocks'];
}

async function columns() {
  const cols = await listColumns(inst.db);
  const text = cols.find((c) => c.table_name === 'big_text')!;
  const bytes = cols.find((c) => c.table_name === 'big_bytes')!;
  return { text, bytes };
}

// One slice fetch is a descent of the TOAST index (2 buffers here) and the first chunk (1);
// the heap pages are shared by many rows. Reading the header once per expression (the census
// evaluates three or four of them on a text value) costs three or four times as many.
const MAX_BUFFERS_PER_VALUE = 5;

const COLUMNS = [['text', 'big_text'], ['bytea', 'big_bytes']] as const;

test.each(COLUMNS)('the census reads each large %s value with one TOAST slice fetch', async (_storage, table) => {
  const { [table === 'big_text' ? 'text' : 'bytes']: col } = await columns();
  expect((await buffersOf(censusSql(col))) / ROWS).toBeLessThan(MAX_BUFFERS_PER_VALUE);
  const census = await censusColumn(inst.db, col);
  expect(census).toMatchObject({ envelopes: ROWS, plaintext: 0, malformed: 0, nulls: 0, versions: { '1': { values: ROWS } } });
});

test.each(COLUMNS)('the count per data key after a pass reads each large %s value with one TOAST slice fetch', async (_storage, table) => {
  const { [table === 'big_text' ? 'text' : 'bytes']: col } = await columns();
  const plan = await planColumn(inst.db, col, 0);
  expect((await buffersOf(countVersionsSql(plan))) / ROWS).toBeLessThan(MAX_BUFFERS_PER_VALUE);
  expect(await countVersions(inst.db, plan)).toEqual([{ version: 1, values: ROWS, bytes: expect.any(Number) }]);
});
