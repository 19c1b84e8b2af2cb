/**
 * Walk keys other than a bigint id: a composite (text, integer) key with quotes, spaces and
 * non-ASCII characters in a mixed-case, quoted table name; a uuid key; pages and watermarks
 * across them, a kill and a resume; timestamp keys resumed under another DateStyle.
 */
import { addColumn, removeColumn } from '../src/core/columns';
import { createInstallation, Installation } from './support/fixtures';
import { runCliJson } from './support/cli';
import { FAST, spawnUntil } from './support/rotate-helpers';
import { tablesWithoutVacuumRight, Vacuumer } from '../src/core/rewrite/vacuum';
import { randomBytes } from 'node:crypto';

let inst: Installation;
const TENANTS = ["O'Brien", 'a b', 'Ünïcode 数据', 'x"y', 'plain', '\\back'];
const PER_TENANT = 250;

beforeAll(async () => {
  inst = await createInstallation('rotkeys');
  await inst.db.query(`CREATE TABLE public."Tenant Secrets" (tenant text, n integer, "Secret" bytea, note text, PRIMARY KEY (tenant, n))`);
  await inst.db.query(`CREATE TABLE public.tokens (id uuid PRIMARY KEY, token text)`);
  await addColumn(inst.db.pool, 'public."Tenant Secrets"."Secret"');
  await addColumn(inst.db.pool, 'public.tokens.token');
  await addColumn(inst.db.pool, 'public."Tenant Secrets".note');
  for (const t of TENANTS) {
    for (let n = 0; n < PER_TENANT; n++) {
      await inst.db.query(`INSERT INTO public."Tenant Secrets" VALUES ($1, $2, $3, $4)`, [
        t,
        n,
        n % 50 === 7 ? null : await inst.keyring.encrypt(Buffer.from(`${t}/${n}`), 'public."Tenant Secrets"."Secret"'),
        await inst.keyring.encrypt(`note ${t} ${n}`, 'public."Tenant Secrets".note'),
      ]);
    }
  }
  for (let i = 0; i < 1200; i++) {
    await inst.db.query(`INSERT INTO public.tokens VALUES (gen_random_uuid(), $1)`, [await inst.keyring.encrypt(`token-${i}`, 'public.tokens.token')]);
  }
});

afterAll(async () => {
  await inst?.cleanup();
});

async function check(version: number) {
  await inst.keyring.refresh();
  const rows = (await inst.db.query(`SELECT tenant, n, "Secret" AS s, note FROM public."Tenant Secrets"`)).rows;
  expect(rows).toHaveLength(TENANTS.length * PER_TENANT);
  for (const r of rows) {
    if (r.n % 50 === 7) expect(r.s).toBeNull();
    else {
      expect((await inst.keyring.decrypt(r.s as Buffer, 'public."Tenant Secrets"."Secret"')).toString()).toBe(`${r.tenant}/${r.n}`);
      expect((r.s as Buffer).readUInt32BE(3)).toBe(version);
    }
    expect(await inst.keyring.decrypt(r.note as string, 'public."Tenant Secrets".note')).toBe(`note ${r.tenant} ${r.n}`);
    expect(Buffer.from((r.note as string).slice(4, 16), 'base64').readUInt32BE(3)).toBe(version);
  }
  const tokens = (await inst.db.query(`SELECT token FROM public.tokens`)).rows;
  const seen = new Set<string>();
  for (const t of tokens) {
    seen.add(await inst.keyring.decrypt(t.token as string, 'public.tokens.token'));
    expect(Buffer.from((t.token as string).slice(4, 16), 'base64').readUInt32BE(3)).toBe(version);
  }
  expect(seen.size).toBe(1200);
}

test('composite, quoted and uuid keys: small batches across pages, killed mid-column, resumed', async () => {
  const run = spawnUntil(['rotate', ...FAST, '--batch-size', '7'], 'ALATION_KEYS_TEST_PAUSED mid-column', {
    env: { ...inst.env, ALATION_KEYS_TEST_PAUSE_AT: 'mid-column' },
  });
  await run.seen;
  run.child.kill('SIGKILL');
  await run.exited;
  const r = await runCliJson(['rotate', ...FAST, '--batch-size', '7', '--workers', '2'], { env: inst.env });
  expect([r.code, r.stderr]).toEqual([0, expect.stringMatching(/resuming job 1 \(v1→v2\)/)]);
  const byColumn = Object.fromEntries(r.json.columns.map((c: any) => [c.column, c]));
  expect(byColumn['public."Tenant Secrets"."Secret"'].skippedConcurrent).toBe(0);
  expect(r.json.valuesAfter).toEqual({ '2': TENANTS.length * PER_TENANT * 2 - TENANTS.length * 5 + 1200 });
  await check(2);
});

test('timestamp keys: a checkpoint taken under DateStyle "SQL, DMY" resumes under "SQL, MDY"', async () => {
  // Only this table is rotated now, so the pause lands in its walk.
  for (const c of ['public."Tenant Secrets"."Secret"', 'public."Tenant Secrets".note', 'public.tokens.token']) await removeColumn(inst.db.pool, c);
  await inst.db.query(`CREATE TABLE public.events (at timestamp PRIMARY KEY, payload bytea)`);
  await addColumn(inst.db.pool, 'public.events.payload');
  await inst.keyring.refresh();
  const count = 400;
  // Days 13 to 23 of the month: read as month/day they are out of range, not silently wrong.
  for (let i = 0; i < count; i++) {
    await inst.db.query(`INSERT INTO public.events VALUES (timestamp '2026-01-13 00:00:00' + $1 * interval '37 minutes', $2)`, [
      i,
      await inst.keyring.encrypt(Buffer.from(`event ${i}`), 'public.events.payload'),
    ]);
  }
  await inst.db.query(`ALTER DATABASE ${inst.db.name} SET DateStyle = 'SQL, DMY'`);
  const run = spawnUntil(['rotate', ...FAST, '--batch-size', '10'], 'ALATION_KEYS_TEST_PAUSED mid-column', {
    env: { ...inst.env, ALATION_KEYS_TEST_PAUSE_AT: 'mid-column' },
  });
  await run.seen;
  run.child.kill('SIGKILL');
  await run.exited;
  const job = (await inst.db.query(`SELECT id, detail FROM alation_keys.jobs WHERE kind = 'rotate' ORDER BY id DESC LIMIT 1`)).rows[0];
  const watermark = job.detail.columns['public.events.payload'].watermark;
  // Written in ISO form whatever the session's DateStyle, so any later session reads it back.
  expect(watermark).toEqual([expect.stringMatching(/^2026-01-1\d \d\d:\d\d:00$/)]);
  await inst.db.query(`ALTER DATABASE ${inst.db.name} SET DateStyle = 'SQL, MDY'`);
  const r = await runCliJson(['rotate', ...FAST, '--batch-size', '10'], { env: inst.env });
  expect([r.code, r.stderr]).toEqual([0, expect.stringMatching(new RegExp(`resuming job ${job.id}`))]);
  expect(r.json.valuesAfter).toEqual({ [String(r.json.toVersion)]: count });
  expect(r.json.passes).toBe(1);
  await inst.keyring.refresh();
  const rows = (await inst.db.query(`SELECT payload FROM public.events`)).rows;
  const plain = new Set<string>();
  for (const row of rows) plain.add((await inst.keyring.decrypt(row.payload as Buffer, 'public.events.payload')).toString());
  expect(plain.size).toBe(count);
  // Every command reads timestamps (keys' ages, jobs) whatever the database's DateStyle.
  const st = await runCliJson(['status', '--json'], { env: inst.env });
  expect([st.code, st.stderr]).toEqual([0, '']);
  expect(st.json.keys.every((k: any) => /^2\d{3}-/.test(k.createdAt) && k.ageDays >= 0)).toBe(true);
});

test('tables the user may not VACUUM are named, and the vacuumer leaves them alone', async () => {
  const role = `ak_novac_${randomBytes(4).toString('hex')}`;
  const client = await inst.db.pool.connect();
  try {
    await client.query(`CREATE ROLE ${role} NOLOGIN`);
    await client.query(`CREATE TABLE public.owned_by_role (id int PRIMARY KEY)`);
    await client.query(`ALTER TABLE public.owned_by_role OWNER TO ${role}`);
    // As the superuser running the tests, everything may be vacuumed.
    expect(await tablesWithoutVacuumRight(client, ['public.owned_by_role', 'public.events'])).toEqual([]);
    await client.query(`SET ROLE ${role}`);
    expect(await tablesWithoutVacuumRight(client, ['public.owned_by_role', 'public.events', '"public"."Tenant Secrets"'])).toEqual([
      'public.events',
      '"public"."Tenant Secrets"',
    ]);
    await client.query('RESET ROLE');
  } finally {
    await client.query('RESET ROLE').catch(() => undefined);
    await client.query(`DROP TABLE IF EXISTS public.owned_by_role`);
    await client.query(`DROP ROLE IF EXISTS ${role}`);
    client.release();
  }
  const warnings: string[] = [];
  const vacuumer = new Vacuumer(inst.db.pool, () => 1, { warn: (m) => warnings.push(m) }, new Set(['public.events']));
  vacuumer.wrote('public.events', 10);
  vacuumer.wrote('public.tokens', 10);
  await vacuumer.idle();
  expect([vacuumer.vacuums, warnings]).toEqual([1, []]);
});
