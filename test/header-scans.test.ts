/**
 * The scans that count values per data key (the census before a rotation, the count after
 * each pass) read each large value's header with one TOAST slice fetch, not one per
 * expression: counted in buffers with EXPLAIN (ANALYZE, BUFFERS), which does not depend on
 * timing. Reading the prefix once halved the census and the count on 200,000 values. The
 * census of several columns runs two scans side by side.
 */
import { Pool } from 'pg';
import { censusColumn, censusSql } from '../src/core/census';
import { censusColumns } from '../src/core/rewrite/preflight';
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

async function registered(table: string) {
  return (await listColumns(inst.db)).find((c) => c.table_name === table)!;
}

// One slice fetch is a descent of the TOAST index (2 buffers here) and the first chunk (1);
// the heap pages are shared by many rows. Reading the header once per expression (the census
// evaluates three or four of them on a text value) costs three or four times as many.
const MAX_BUFFERS_PER_VALUE = 5;

const COLUMNS = [['text', 'big_text'], ['bytea', 'big_bytes']] as const;

test.each(COLUMNS)('the census reads each large %s value with one TOAST slice fetch', async (_storage, table) => {
  const col = await registered(table);
  expect((await buffersOf(censusSql(col))) / ROWS).toBeLessThan(MAX_BUFFERS_PER_VALUE);
  const census = await censusColumn(inst.db, col);
  expect(census).toMatchObject({ envelopes: ROWS, plaintext: 0, malformed: 0, nulls: 0, versions: { '1': { values: ROWS } } });
});

test.each(COLUMNS)('the count per data key after a pass reads each large %s value with one TOAST slice fetch', async (_storage, table) => {
  const col = await registered(table);
  const plan = await planColumn(inst.db, col, 0);
  expect((await buffersOf(countVersionsSql(plan))) / ROWS).toBeLessThan(MAX_BUFFERS_PER_VALUE);
  expect(await countVersions(inst.db, plan)).toEqual([{ version: 1, values: ROWS, bytes: expect.any(Number) }]);
});

test('the census scans two columns side by side, each on its own connection', async () => {
  const [text, bytes] = [await registered('big_text'), await registered('big_bytes')];
  // Each table held by a session of its own: a census scan of it waits until released. Side
  // by side, both scans are seen waiting at once; one after the other, never more than one.
  const holders = await Promise.all([inst.db.pool.connect(), inst.db.pool.connect()]);
  const pool = new Pool({ connectionString: inst.db.url, max: 4, application_name: 'census-side-by-side' });
  try {
    await holders[0].query('BEGIN; LOCK TABLE public.big_text IN ACCESS EXCLUSIVE MODE');
    await holders[1].query('BEGIN; LOCK TABLE public.big_bytes IN ACCESS EXCLUSIVE MODE');
    const census = censusColumns(pool, [text, bytes]);
    census.catch(() => undefined);
    let waiting = 0;
    for (let i = 0; i < 200 && waiting < 2; i++) {
      const r = await inst.db.query(
        `SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'census-side-by-side' AND wait_event_type = 'Lock' AND query LIKE 'SELECT CASE WHEN p IS NULL%'`,
      );
      waiting = r.rows[0].n;
      if (waiting < 2) await new Promise((res) => setTimeout(res, 50));
    }
    expect(waiting).toBe(2);
    await Promise.all(holders.map((h) => h.query('COMMIT')));
    const [a, b] = await census;
    expect([a.column, a.envelopes, b.column, b.envelopes]).toEqual(['public.big_text.secret', ROWS, 'public.big_bytes.payload', ROWS]);
  } finally {
    for (const h of holders) {
      await h.query('ROLLBACK').catch(() => undefined);
      h.release();
    }
    await pool.end();
  }
});
