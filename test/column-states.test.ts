/**
 * Column states (SPEC 4.2): `columns add` registers a column holding plaintext as `encrypting`
 * (saying how many values and what to run), an empty or envelope-only one as `encrypted`; the
 * library follows each state and learns a change on its refresh; rotate waits for conversions.
 */
import { createInstallation, Installation } from './support/fixtures';
import { runCli, runCliJson } from './support/cli';
import { FAST, keyringRows } from './support/rotate-helpers';
import { openKeyring } from '../src/core/keyring-client';
import { IntegrityError } from '../src/errors';
import { sleep } from '../src/core/rewrite/util';

let inst: Installation;

beforeAll(async () => {
  inst = await createInstallation('colstates');
  await inst.db.query(`
    CREATE TABLE public.creds (id int PRIMARY KEY, secret text);
    INSERT INTO public.creds SELECT g, 'secret number ' || g FROM generate_series(1, 100) g;
    INSERT INTO public.creds VALUES (101, NULL);
    CREATE TABLE public.blank (id int PRIMARY KEY, payload bytea);
    CREATE TABLE public.sealed (id int PRIMARY KEY, payload bytea);
  `);
});

afterAll(async () => {
  await inst?.cleanup();
});

const CREDS = 'public.creds.secret';

async function stateOf(column: string): Promise<string> {
  const [, table, col] = column.split('.');
  const r = await inst.db.query(`SELECT state FROM alation_keys.encrypted_columns WHERE table_name = $1 AND column_name = $2`, [table, col]);
  return r.rows[0]?.state;
}

test('columns add on a column with plaintext: `encrypting`, with the count and the command to run', async () => {
  const r = await runCli(['columns', 'add', CREDS], { env: inst.env });
  expect([r.code, r.stderr]).toEqual([0, '']);
  expect(r.stdout).toContain('registered public.creds.secret (text, walked by id, context "public.creds.secret"): encrypting');
  expect(r.stdout).toContain('it holds 100 plaintext values');
  expect(r.stdout).toContain('`alation-keys encrypt public.creds.secret`');
  expect(await stateOf(CREDS)).toBe('encrypting');
  const again = await runCliJson(['columns', 'add', CREDS], { env: inst.env });
  expect(again.json).toMatchObject({ added: false, state: 'encrypting' });
  const status = await runCliJson(['status', '--no-provider-check'], { env: inst.env });
  expect(status.json.columns.find((c: any) => c.column === CREDS)).toMatchObject({ state: 'encrypting', plaintext: 100, nulls: 1 });
  expect(status.json.attention).toContain('public.creds.secret is encrypting: 100 plaintext values left; run `alation-keys encrypt public.creds.secret`');
});

test('columns add on an empty column, and on one holding only envelopes: `encrypted`', async () => {
  const blank = await runCliJson(['columns', 'add', 'public.blank.payload'], { env: inst.env });
  expect(blank.json).toMatchObject({ added: true, state: 'encrypted', plaintext: 0, next: null });
  // Envelopes only: registered, filled through the library, removed (--force), then added again.
  expect((await runCli(['columns', 'add', 'public.sealed.payload'], { env: inst.env })).code).toBe(0);
  await inst.keyring.refresh();
  for (let i = 1; i <= 5; i++) {
    await inst.db.query('INSERT INTO public.sealed VALUES ($1, $2)', [i, await inst.keyring.encrypt(Buffer.from([i]), 'public.sealed.payload')]);
  }
  await inst.db.query('INSERT INTO public.sealed VALUES (6, NULL)');
  expect((await runCli(['columns', 'remove', 'public.sealed.payload', '--force', '--yes'], { env: inst.env })).code).toBe(0);
  const readded = await runCliJson(['columns', 'add', 'public.sealed.payload'], { env: inst.env });
  expect(readded.json).toMatchObject({ added: true, state: 'encrypted', plaintext: 0 });
});

test('the library follows the state: encrypting reads plaintext as is and writes envelopes; a change is learnt on refresh', async () => {
  const k = await openKeyring({ pool: inst.db.pool, masterKeyFile: inst.masterKeyFile, refreshSeconds: 1 });
  try {
    const stored = (await inst.db.query('SELECT secret FROM public.creds WHERE id = 7')).rows[0].secret;
    expect(await k.decrypt(stored, CREDS)).toBe('secret number 7');
    const sealed = await k.encrypt('new one', CREDS);
    expect(sealed).toMatch(/^ak1:/);
    expect(await k.decrypt(sealed, CREDS)).toBe('new one');

    // decrypting: writes plaintext, reads both.
    await inst.db.query(`UPDATE alation_keys.encrypted_columns SET state = 'decrypting' WHERE table_name = 'creds'`);
    expect(await k.encrypt('x', CREDS)).toMatch(/^ak1:/); // not refreshed yet
    await sleep(1100);
    expect(await k.encrypt('plain again', CREDS)).toBe('plain again');
    expect(await k.decrypt(sealed, CREDS)).toBe('new one');
    expect(await k.decrypt('plain again', CREDS)).toBe('plain again');

    // encrypted: plaintext is an integrity error; bytea follows the same rules.
    await inst.db.query(`UPDATE alation_keys.encrypted_columns SET state = 'encrypted' WHERE table_name = 'creds'`);
    await k.refresh();
    await expect(k.decrypt('secret number 7', CREDS)).rejects.toThrow(IntegrityError);
    expect(await k.decrypt(sealed, CREDS)).toBe('new one');
    await inst.db.query(`UPDATE alation_keys.encrypted_columns SET state = 'encrypting' WHERE table_name IN ('creds', 'blank')`);
    await k.refresh();
    expect(await k.decrypt(Buffer.from('raw bytes'), 'public.blank.payload')).toEqual(Buffer.from('raw bytes'));
    // A value that starts like an envelope is one, in every state: a malformed one is an error.
    await expect(k.decrypt(Buffer.from([0x41, 0x4b, 0x01, 0, 0]), 'public.blank.payload')).rejects.toThrow(IntegrityError);
    await expect(k.decrypt('ak1:nope', CREDS)).rejects.toThrow(IntegrityError);
    await inst.db.query(`UPDATE alation_keys.encrypted_columns SET state = 'encrypted' WHERE table_name = 'blank'`);
  } finally {
    await k.close();
  }
});

test('rotate waits for a column that is encrypting: exit 3 naming it, before any new key', async () => {
  const r = await runCli(['rotate', ...FAST], { env: inst.env });
  expect(r.code).toBe(3);
  expect(r.stderr).toContain('rotate refused: public.creds.secret is encrypting (100 plaintext values left)');
  expect(r.stderr).toContain('alation-keys encrypt');
  expect((await keyringRows(inst.db.pool)).map((k) => k.version)).toEqual([1]);
});
