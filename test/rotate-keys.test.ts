/**
 * Walk keys other than a bigint id: a composite (text, integer) key with quotes, spaces and
 * non-ASCII characters in a mixed-case, quoted table name; a uuid key; pages and watermarks
 * across them, a kill and a resume.
 */
import { addColumn } from '../src/core/columns';
import { createInstallation, Installation } from './support/fixtures';
import { runCliJson } from './support/cli';
import { FAST, spawnUntil } from './support/rotate-helpers';

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
