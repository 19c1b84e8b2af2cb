/**
 * `rotate --skip-undecryptable`: 3 values that do not decrypt among 10,000. The rotation
 * rewrites the 9,997 others under the new key, leaves the 3 untouched byte for byte, records
 * their row keys in the job, keeps the data key they name active (so `keys destroy` of it is
 * refused) and exits 5 naming the count and `verify`. Without the flag, resuming that job stops
 * at the first of them; once they are cleared, it finishes and retires the old key.
 */
import { randomBytes } from 'node:crypto';
import { storedValueVersion } from '../src/crypto/envelope';
import { createInstallation, Installation } from './support/fixtures';
import { runCli, runCliJson } from './support/cli';
import { FAST, keyringRows, rotateJobs } from './support/rotate-helpers';

const N = 10_000;
const BAD = ['1234', '5678', '9001'];
let inst: Installation;
const plain = new Map<string, Buffer>();
const badBytes = new Map<string, Buffer>();

async function values(): Promise<Map<string, Buffer | null>> {
  const r = await inst.db.query(`SELECT id::text, payload FROM public.blobs ORDER BY id`);
  return new Map(r.rows.map((x) => [x.id, x.payload]));
}

beforeAll(async () => {
  inst = await createInstallation('skipundec');
  const ids: number[] = [];
  const payloads: Buffer[] = [];
  for (let i = 1; i <= N; i++) {
    const p = randomBytes(20 + (i % 50));
    plain.set(String(i), p);
    ids.push(i);
    payloads.push(await inst.keyring.encrypt(p, 'public.blobs.payload'));
  }
  await inst.db.query(`INSERT INTO public.blobs (id, kind, payload) SELECT * FROM unnest($1::bigint[], $2::text[], $3::bytea[])`, [
    ids,
    ids.map(() => 'k'),
    payloads,
  ]);
  // Two flipped bits and a lost last byte: all three still name v1, none authenticates.
  await inst.db.query(`UPDATE public.blobs SET payload = set_byte(payload, 25, get_byte(payload, 25) # 1) WHERE id IN ($1, $2)`, [BAD[0], BAD[1]]);
  await inst.db.query(`UPDATE public.blobs SET payload = substring(payload FROM 1 FOR length(payload) - 1) WHERE id = $1`, [BAD[2]]);
  const now = await values();
  for (const id of BAD) badBytes.set(id, now.get(id)!);
});

afterAll(async () => {
  await inst?.cleanup();
});

test('3 bad among 10,000: exit 5; 9,997 under the new key; the 3 untouched byte for byte and in the job; their key stays active', async () => {
  const r = await runCliJson(['rotate', ...FAST, '--skip-undecryptable'], { env: inst.env });
  expect([r.code, r.stderr]).toEqual([5, expect.stringMatching(/error: rotation job \d+: 3 values do not decrypt and were left untouched .*data key v1 stays active .*alation-keys verify/)]);
  expect(r.json).toMatchObject({ ok: false, result: 'rotated', toVersion: 2, retiredVersions: [], valuesAfter: { '1': 3, '2': N - 3 } });
  expect(r.json.undecryptable).toEqual(BAD.map((id) => ({ column: 'public.blobs.payload', key: { id }, reason: 'authentication', version: 1 })));

  const now = await values();
  const versions: Record<string, number> = {};
  for (const [id, v] of now) {
    const version = storedValueVersion(v!);
    versions[version] = (versions[version] ?? 0) + 1;
    if (BAD.includes(id)) expect(v!.equals(badBytes.get(id)!)).toBe(true);
  }
  expect(versions).toEqual({ '1': 3, '2': N - 3 });
  await inst.keyring.refresh();
  for (const [id, v] of now) if (!BAD.includes(id)) expect((await inst.keyring.decrypt(v!, 'public.blobs.payload')).equals(plain.get(id)!)).toBe(true);

  expect((await keyringRows(inst.db.pool)).map((k) => [k.version, k.state])).toEqual([
    [1, 'active'],
    [2, 'primary'],
  ]);
  const [job] = await rotateJobs(inst.db.pool);
  expect(job.state).toBe('failed');
  expect(job.error).toMatch(/^3 values do not decrypt and were left untouched/);
  expect(job.detail.undecryptable.map((u: any) => u.key.id)).toEqual(BAD);
  expect(job.detail.columns['public.blobs.payload'].undecryptable.map((u: any) => [u.key, u.reason, u.version])).toEqual(BAD.map((id) => [[id], 'authentication', 1]));

  const destroy = await runCli(['keys', 'destroy', '1', '--yes'], { env: inst.env });
  expect([destroy.code, destroy.stderr]).toEqual([3, expect.stringMatching(/data key v1 is active/)]);
  expect((await keyringRows(inst.db.pool)).map((k) => k.state)).toEqual(['active', 'primary']);
});

test('without the flag, running rotate again resumes the job and stops at the first of them (exit 5), writing nothing; with it, the summary lists them', async () => {
  const r = await runCli(['rotate', ...FAST], { env: inst.env });
  expect([r.code, r.stderr]).toEqual([5, expect.stringMatching(/resuming job \d+[\s\S]*value in public\.blobs\.payload at id=1234 failed authentication under data key v1; the rotation stopped/)]);
  const now = await values();
  for (const id of BAD) expect(now.get(id)!.equals(badBytes.get(id)!)).toBe(true);
  // With the flag again: the terminal summary lists them.
  const again = await runCli(['rotate', ...FAST, '--skip-undecryptable'], { env: inst.env });
  expect(again.code).toBe(5);
  expect(again.stdout).toMatch(/rotation job \d+ rewrote every value that decrypts \(resumed\)/);
  expect(again.stdout).toContain('left untouched, they do not decrypt:\n  public.blobs.payload at id=1234: value failed authentication under data key v1\n');
});

test('once they are cleared, rotate finishes the job: succeeded, v1 retired', async () => {
  await inst.db.query(`UPDATE public.blobs SET payload = NULL WHERE id = ANY($1::bigint[])`, [BAD]);
  const r = await runCliJson(['rotate', ...FAST], { env: inst.env });
  expect([r.code, r.stderr]).toEqual([0, expect.stringMatching(/resuming job/)]);
  expect(r.json).toMatchObject({ ok: true, toVersion: 2, retiredVersions: [1], undecryptable: [] });
  expect((await rotateJobs(inst.db.pool)).map((j) => j.state)).toEqual(['succeeded']);
});

test('plaintext in an encrypted column: the census refuses without the flag (exit 5, before any key); with it the dry run passes and the rotation leaves it untouched', async () => {
  await inst.db.query(`UPDATE public.blobs SET payload = 'not an envelope'::bytea WHERE id = 42`);
  const keys = (await keyringRows(inst.db.pool)).length;
  const refused = await runCli(['rotate', ...FAST], { env: inst.env });
  expect([refused.code, refused.stderr]).toEqual([5, expect.stringMatching(/rotate refused: .*public\.blobs\.payload: 1 plaintext value/)]);
  expect((await keyringRows(inst.db.pool)).length).toBe(keys);
  const plan = await runCli(['rotate', '--dry-run', '--skip-undecryptable', '--skip-backup-check', '--skip-disk-check'], { env: inst.env });
  expect([plan.code, plan.stdout]).toEqual([0, expect.stringMatching(/preflight: ok/)]);
  const r = await runCliJson(['rotate', ...FAST, '--skip-undecryptable'], { env: inst.env });
  expect(r.code).toBe(5);
  expect(r.json.undecryptable).toEqual([{ column: 'public.blobs.payload', key: { id: '42' }, reason: 'plaintext', version: null }]);
  expect(r.json.retiredVersions).toEqual([2]);
  expect((await inst.db.query(`SELECT convert_from(payload, 'UTF8') AS v FROM public.blobs WHERE id = 42`)).rows[0].v).toBe('not an envelope');
});
