/**
 * `verify`: every value decrypted in the reader threads, nothing written. A clean database
 * exits 0; then one value of each kind that does not decrypt is planted — a flipped bit, a
 * truncated value, plaintext in an `encrypted` column, a value under a destroyed data key, one
 * under a version the keyring never had — and an unregistered column is given envelopes:
 * verify finds each, with its exact row key and reason, and exits 5.
 */
import { randomBytes } from 'node:crypto';
import { envelopeToText, sealEnvelope } from '../src/crypto/envelope';
import { createInstallation, Installation } from './support/fixtures';
import { runCli, runCliJson } from './support/cli';
import { FAST, keyringRows, spawnUntil, tableDigest } from './support/rotate-helpers';

let inst: Installation;
let total: number;

async function ids(table: string, column: string): Promise<string[]> {
  const r = await inst.db.query(`SELECT id::text FROM public.${table} WHERE ${column} IS NOT NULL ORDER BY id`);
  return r.rows.map((x) => x.id);
}

async function job(id: number) {
  return (await inst.db.query(`SELECT kind, state, rows_total::int, rows_done::int, detail, error FROM alation_keys.jobs WHERE id = $1`, [id])).rows[0];
}

beforeAll(async () => {
  inst = await createInstallation('verify', { values: 400 });
  const r = await inst.db.query(
    `SELECT (SELECT count(secret) FROM public.credentials) + (SELECT count(body) FROM public.documents) + (SELECT count(payload) FROM public.blobs) AS n`,
  );
  total = Number(r.rows[0].n);
});

afterAll(async () => {
  await inst?.cleanup();
});

test('a clean database: every value verifies, no envelope elsewhere, exit 0, a succeeded verify job; nothing written', async () => {
  const before = await tableDigest(inst.db.pool);
  const r = await runCliJson(['verify'], { env: inst.env });
  expect([r.code, r.stderr]).toEqual([0, expect.any(String)]);
  expect(r.json).toMatchObject({ ok: true, values: total, verified: total, failed: 0, failures: [] });
  expect(r.json.columns.map((c: any) => [c.column, Object.keys(c.versions)])).toEqual([
    ['public.blobs.payload', ['1']],
    ['public.credentials.secret', ['1']],
    ['public.documents.body', ['1']],
  ]);
  // credentials.name, documents.title, blobs.kind: text columns nobody registered.
  expect(r.json.unregistered).toMatchObject({ bound: 10000, columnsScanned: 3, found: [], unreadable: [] });
  expect(await job(r.json.jobId)).toMatchObject({ kind: 'verify', state: 'succeeded', rows_total: total, rows_done: total, error: null });
  expect(await tableDigest(inst.db.pool)).toBe(before);

  const text = await runCli(['verify'], { env: inst.env });
  expect(text.code).toBe(0);
  expect(text.stdout).toMatch(new RegExp(`verify job \\d+: ${total.toLocaleString('en-US')} values read, ${total.toLocaleString('en-US')} verified, 0 failed`));
  expect(text.stdout).toMatch(/unregistered text\/bytea columns: 3 looked at, at most 10,000 values each/);
});

test('SIGTERM while it runs: exit 130, the job interrupted', async () => {
  const run = spawnUntil(['verify'], 'ALATION_KEYS_TEST_PAUSED job-start', { env: { ...inst.env, ALATION_KEYS_TEST_PAUSE_AT: 'job-start' } });
  await run.seen;
  run.child.kill('SIGTERM');
  const r = await run.exited;
  expect([r.code, r.stderr]).toEqual([130, expect.stringMatching(/error: interrupted: verify job (\d+) stopped before it read every value/)]);
  const id = Number(/verify job (\d+)/.exec(r.stderr)![1]);
  expect(await job(id)).toMatchObject({ kind: 'verify', state: 'interrupted' });
});

describe('one value of each kind that does not decrypt, and envelopes in an unregistered column', () => {
  const planted: Record<string, string> = {};

  beforeAll(async () => {
    // A value under v1, kept aside; rotate (v1 retired), destroy v1, put it back.
    const [destroyedAt] = await ids('credentials', 'secret');
    const saved = (await inst.db.query(`SELECT secret FROM public.credentials WHERE id = $1`, [destroyedAt])).rows[0].secret;
    const rot = await runCli(['rotate', ...FAST], { env: inst.env });
    expect([rot.code, rot.stderr]).toEqual([0, expect.any(String)]);
    const destroy = await runCli(['keys', 'destroy', '1', '--yes'], { env: inst.env });
    expect([destroy.code, destroy.stderr]).toEqual([0, expect.any(String)]);
    expect((await keyringRows(inst.db.pool)).map((k) => [k.version, k.state])).toEqual([
      [1, 'destroyed'],
      [2, 'primary'],
    ]);
    await inst.db.query(`UPDATE public.credentials SET secret = $2 WHERE id = $1`, [destroyedAt, saved]);
    planted.destroyed = destroyedAt;

    const blobs = await ids('blobs', 'payload');
    planted.flipped = blobs[3];
    planted.truncated = blobs[7];
    await inst.db.query(`UPDATE public.blobs SET payload = set_byte(payload, 30, get_byte(payload, 30) # 4) WHERE id = $1`, [planted.flipped]);
    await inst.db.query(`UPDATE public.blobs SET payload = substring(payload FROM 1 FOR 10) WHERE id = $1`, [planted.truncated]);

    planted.plaintext = (await ids('credentials', 'secret'))[5];
    await inst.db.query(`UPDATE public.credentials SET secret = 'hunter2' WHERE id = $1`, [planted.plaintext]);

    planted.unknown = (await ids('documents', 'body'))[2];
    const under99 = envelopeToText(sealEnvelope(randomBytes(32), 99, Buffer.from('from nowhere'), 'public.documents.body'));
    await inst.db.query(`UPDATE public.documents SET body = $2 WHERE id = $1`, [planted.unknown, under99]);

    // A column someone forgot to register: three envelopes copied into it, and one plain note.
    await inst.db.query(`CREATE TABLE public.notes (id int PRIMARY KEY, body text)`);
    await inst.db.query(
      `INSERT INTO public.notes SELECT row_number() OVER (ORDER BY id), body FROM (SELECT id, body FROM public.documents WHERE body IS NOT NULL AND id <> $1 ORDER BY id LIMIT 3) d`,
      [planted.unknown],
    );
    await inst.db.query(`INSERT INTO public.notes VALUES (4, 'just a note')`);
  });

  test('--json lists every failure with its row key, reason and data key; exit 5; the job records the counts', async () => {
    const before = await tableDigest(inst.db.pool);
    const r = await runCliJson(['verify'], { env: inst.env });
    expect([r.code, r.stderr]).toEqual([5, expect.stringMatching(/error: verify job \d+: 5 values do not decrypt and 1 unregistered column holds envelopes/)]);
    expect(r.json.failures).toEqual([
      { column: 'public.blobs.payload', key: { id: planted.flipped }, reason: 'authentication', version: 2 },
      { column: 'public.blobs.payload', key: { id: planted.truncated }, reason: 'malformed', version: null },
      { column: 'public.credentials.secret', key: { id: planted.destroyed }, reason: 'destroyed-key', version: 1 },
      { column: 'public.credentials.secret', key: { id: planted.plaintext }, reason: 'plaintext', version: null },
      { column: 'public.documents.body', key: { id: planted.unknown }, reason: 'unknown-key', version: 99 },
    ]);
    expect(r.json).toMatchObject({ ok: false, values: total, verified: total - 5, failed: 5 });
    const by = Object.fromEntries(r.json.columns.map((c: any) => [c.column, c]));
    const blobCount = (await ids('blobs', 'payload')).length;
    expect(by['public.blobs.payload'].versions).toEqual({ '2': { verified: blobCount - 2, failed: 1 }, '-': { verified: 0, failed: 1 } });
    expect(by['public.credentials.secret'].failedByReason).toEqual({ 'destroyed-key': 1, plaintext: 1 });
    expect(by['public.documents.body'].versions['99']).toEqual({ verified: 0, failed: 1 });
    expect(r.json.unregistered.found).toEqual([
      { column: 'public.notes.body', removed: false, scanned: 4, envelopes: 3, versions: { '2': 3 }, sample: ['id=1', 'id=2', 'id=3'] },
    ]);
    const j = await job(r.json.jobId);
    expect(j).toMatchObject({ kind: 'verify', state: 'failed', rows_done: total });
    expect(j.detail.summary).toMatchObject({ failed: 5, failedByReason: { authentication: 1, malformed: 1, 'destroyed-key': 1, plaintext: 1, 'unknown-key': 1 } });
    expect(j.detail.failures).toHaveLength(5);
    expect(j.error).toMatch(/5 values failed to decrypt .*envelopes in unregistered columns \(public\.notes\.body: 3\)/);
    expect(await tableDigest(inst.db.pool)).toBe(before);
    const status = await runCliJson(['status', '--check', '--no-provider-check'], { env: inst.env });
    expect(status.code).toBe(3);
    expect(status.json.attention).toContainEqual(expect.stringMatching(new RegExp(`^the last verify, job ${r.json.jobId}, failed: 5 values failed to decrypt`)));
    // Three columns at once, each in a reader thread of its own: the same findings.
    const parallel = await runCliJson(['verify', '--workers', '3'], { env: inst.env });
    expect([parallel.code, parallel.json.threads, parallel.json.failures, parallel.json.verified]).toEqual([5, 3, r.json.failures, r.json.verified]);
  });

  test('on a terminal-less run: a table and the failures, each with its row key', async () => {
    const r = await runCli(['verify'], { env: inst.env });
    expect(r.code).toBe(5);
    expect(r.stdout).toContain(`public.blobs.payload at id=${planted.flipped}: authentication: value failed authentication under data key v2`);
    expect(r.stdout).toContain(`public.credentials.secret at id=${planted.plaintext}: plaintext: value is not a valid envelope`);
    expect(r.stdout).toContain(`public.documents.body at id=${planted.unknown}: unknown-key: value names data key v99`);
    expect(r.stdout).toMatch(/public\.notes\.body: 3 envelopes among 4 values looked at \(v2: 3\), e\.g\. id=1; id=2; id=3/);
    expect(r.stdout).toMatch(/│ public\.documents\.body +│ encrypted │ v99 +│ 0 +│ 1 /);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  test('naming a column verifies only it and leaves the unregistered columns alone', async () => {
    const r = await runCliJson(['verify', 'public.documents.body', 'public.documents.BODY'], { env: inst.env });
    expect(r.code).toBe(5);
    expect(r.json.columns.map((c: any) => c.column)).toEqual(['public.documents.body']);
    expect(r.json.failures).toEqual([{ column: 'public.documents.body', key: { id: planted.unknown }, reason: 'unknown-key', version: 99 }]);
    expect(r.json.unregistered).toBeNull();
    const unknown = await runCli(['verify', 'public.nope.x'], { env: inst.env });
    expect([unknown.code, unknown.stderr]).toEqual([2, expect.stringMatching(/column public\.nope\.x is not registered/)]);
  });
});
