/**
 * The census with plaintext: status, columns list and rotate --dry-run count, per column,
 * values per data key, plaintext (non-envelope) values, malformed envelopes and NULLs, from
 * the headers in SQL; rotate refuses before it creates a data key when an `encrypted`
 * column holds values that are not envelopes.
 */
import { createInstallation, Installation } from './support/fixtures';
import { runCli, runCliJson } from './support/cli';
import { FAST, keyringRows } from './support/rotate-helpers';

let inst: Installation;

beforeAll(async () => {
  inst = await createInstallation('census');
  await inst.db.query(`
    CREATE TABLE public.mixed_text (id int PRIMARY KEY, secret text);
    CREATE TABLE public.mixed_bytes (id int PRIMARY KEY, payload bytea);
  `);
  for (const c of ['public.mixed_text.secret', 'public.mixed_bytes.payload']) {
    expect((await runCli(['columns', 'add', c], { env: inst.env })).code).toBe(0);
  }
  await inst.keyring.refresh();
  // text: 5 envelopes, 3 plaintext, 2 malformed ("ak1:" but no readable header), 4 NULLs
  let id = 0;
  for (let i = 0; i < 5; i++) {
    await inst.db.query('INSERT INTO public.mixed_text VALUES ($1, $2)', [++id, await inst.keyring.encrypt(`secret ${i}`, 'public.mixed_text.secret')]);
  }
  for (const plain of ['hunter2', 'AK looks like bytes', '']) await inst.db.query('INSERT INTO public.mixed_text VALUES ($1, $2)', [++id, plain]);
  for (const bad of ['ak1:', 'ak1:!!!!!!!!!!!!!!!!']) await inst.db.query('INSERT INTO public.mixed_text VALUES ($1, $2)', [++id, bad]);
  for (let i = 0; i < 4; i++) await inst.db.query('INSERT INTO public.mixed_text VALUES ($1, NULL)', [++id]);
  // bytea: 7 envelopes, 2 plaintext, 1 malformed (magic and format, header cut short), 3 NULLs
  for (let i = 0; i < 7; i++) {
    await inst.db.query('INSERT INTO public.mixed_bytes VALUES ($1, $2)', [i + 1, await inst.keyring.encrypt(Buffer.from([i]), 'public.mixed_bytes.payload')]);
  }
  await inst.db.query(`INSERT INTO public.mixed_bytes VALUES (8, '\\x00010203'), (9, '\\x414b02'), (10, '\\x414b0100'), (11, NULL), (12, NULL), (13, NULL)`);
});

afterAll(async () => {
  await inst?.cleanup();
});

const TEXT = 'public.mixed_text.secret';
const BYTES = 'public.mixed_bytes.payload';

test('status counts values per data key, plaintext, malformed and NULLs per column', async () => {
  const r = await runCliJson(['status', '--no-provider-check'], { env: inst.env });
  expect(r.code).toBe(0);
  const by = Object.fromEntries(r.json.columns.map((c: any) => [c.column, c]));
  expect(by[TEXT]).toMatchObject({ state: 'encrypted', versions: { '1': 5 }, plaintext: 3, malformed: 2, nulls: 4 });
  expect(by[BYTES]).toMatchObject({ state: 'encrypted', versions: { '1': 7 }, plaintext: 2, malformed: 1, nulls: 3 });
  // The rosemeta columns of the installation are empty.
  expect(by['public.credentials.secret']).toMatchObject({ versions: {}, plaintext: 0, malformed: 0, nulls: 0 });
  expect(r.json.keys.find((k: any) => k.version === 1).values).toBe(12);
  expect(r.json.attention).toEqual(
    expect.arrayContaining([
      expect.stringMatching(/^public\.mixed_text\.secret: 3 plaintext values in an encrypted column; run `alation-keys verify public\.mixed_text\.secret`/),
      expect.stringMatching(/^public\.mixed_bytes\.payload: 1 value looks like an envelope but is malformed/),
    ]),
  );
});

test('status --check exits 3 and the terminal table shows the census', async () => {
  const r = await runCli(['status', '--check', '--no-provider-check'], { env: inst.env });
  expect(r.code).toBe(3);
  expect(r.stdout).toMatch(/column .*state .*per data key .*plaintext .*malformed .*NULL/);
  expect(r.stdout).toMatch(/public\.mixed_text\.secret .*encrypted .*v1: 5 .*3 .*2 .*4/);
  expect(r.stdout).toMatch(/3 plaintext values in an encrypted column/);
});

test('columns list shows the census (terminal and JSON)', async () => {
  const j = await runCliJson(['columns', 'list'], { env: inst.env });
  expect(j.code).toBe(0);
  const t = j.json.columns.find((c: any) => c.column === TEXT);
  expect(t).toMatchObject({ values: { '1': 5 }, plaintext: 3, malformed: 2, nulls: 4 });
  const r = await runCli(['columns', 'list'], { env: inst.env });
  expect(r.stdout).toMatch(/public\.mixed_bytes\.payload .*encrypted .*v1: 7 .*2 .*1 .*3/);
});

test('rotate --dry-run counts plaintext and exits 5 naming the columns', async () => {
  const r = await runCliJson(['rotate', '--dry-run', '--skip-backup-check'], { env: inst.env });
  expect(r.code).toBe(5);
  const t = r.json.columns.find((c: any) => c.column === TEXT);
  expect(t).toMatchObject({ plaintext: 3, malformed: 2, nulls: 4 });
  expect(r.json.nonEnvelopes).toEqual([`${BYTES}: 2 plaintext values and 1 malformed envelope`, `${TEXT}: 3 plaintext values and 2 malformed envelopes`]);
  const plain = await runCli(['rotate', '--dry-run', '--skip-backup-check'], { env: inst.env });
  expect(plain.code).toBe(5);
  expect(plain.stdout).toMatch(/would refuse now:/);
  expect(plain.stderr).toMatch(/alation-keys verify/);
  expect(plain.stderr).toMatch(/alation-keys encrypt/);
});

test('rotate refuses with exit 5 before it creates a data key', async () => {
  const r = await runCli(['rotate', ...FAST], { env: inst.env });
  expect(r.code).toBe(5);
  expect(r.stderr).toMatch(/rotate refused: encrypted columns hold values that are not envelopes: public\.mixed_bytes\.payload: 2 plaintext values and 1 malformed envelope; public\.mixed_text\.secret: 3 plaintext/);
  expect(r.stderr).toMatch(/nothing was changed/);
  expect(await keyringRows(inst.db.pool)).toEqual([expect.objectContaining({ version: 1, state: 'primary' })]);
  const jobs = await inst.db.query(`SELECT count(*)::int AS n FROM alation_keys.jobs WHERE kind = 'rotate'`);
  expect(jobs.rows[0].n).toBe(0);
});
