/**
 * The disk headroom check for a server whose data directory this host cannot see: the
 * operator's `--free-space` figure, checked against 1.5 × the database size, shown by `status`.
 */
import { createInstallation, Installation } from './support/fixtures';
import { runCli, runCliJson } from './support/cli';
import { FAST, keyringRows } from './support/rotate-helpers';

let inst: Installation;

beforeAll(async () => {
  // A small installation: nothing in it for autovacuum to do, so pg_database_size holds still
  // between the commands of a test (the boundary below is one byte wide).
  inst = await createInstallation('headroom', { values: 20 });
  await inst.db.query('VACUUM');
});

afterAll(async () => {
  await inst?.cleanup();
});

async function requiredBytes(): Promise<number> {
  const s = await runCliJson(['status', '--no-provider-check'], { env: inst.env });
  expect(s.code).toBe(0);
  expect(s.json.headroom.requiredBytes).toBe(Math.ceil(s.json.headroom.databaseBytes * 1.5));
  return s.json.headroom.requiredBytes;
}

test('a data directory this host cannot see: status says so and names --free-space; rotate exits 3 naming it', async () => {
  const s = await runCliJson(['status', '--no-provider-check', '--data-dir', '/nonexistent/pgdata'], { env: inst.env });
  expect(s.code).toBe(0);
  expect(s.json.headroom).toMatchObject({ freeBytes: null, freeBytesSource: null, ok: null });
  expect(s.json.headroom.reason).toMatch(/cannot see the data directory \/nonexistent\/pgdata.*--free-space BYTES/);
  const text = await runCli(['status', '--no-provider-check', '--data-dir', '/nonexistent/pgdata'], { env: inst.env });
  expect(text.stdout).toMatch(/disk headroom: unknown \(cannot see the data directory .*--free-space BYTES/);

  const r = await runCli(['rotate', ...FAST, '--data-dir', '/nonexistent/pgdata'], { env: inst.env });
  expect(r.code).toBe(3);
  expect(r.stderr).toMatch(/disk headroom is unknown: cannot see the data directory/);
  expect(r.stderr).toMatch(/--free-space BYTES/);
  expect((await keyringRows(inst.db.pool)).length).toBe(1);
});

test('status --free-space shows the operator figure against 1.5 × the database size, in text and --json', async () => {
  const required = await requiredBytes();
  const s = await runCliJson(['status', '--no-provider-check', '--free-space', String(required - 1)], { env: inst.env });
  expect(s.json.headroom).toMatchObject({ freeBytes: required - 1, freeBytesSource: 'operator', requiredBytes: required, ok: false });
  expect(s.json.attention.join('\n')).toMatch(/not enough free disk for a rotation/);
  const ok = await runCliJson(['status', '--no-provider-check', '--free-space', '20GiB'], { env: inst.env });
  expect(ok.json.headroom).toMatchObject({ freeBytes: 20 * 2 ** 30, freeBytesSource: 'operator', ok: true });
  const text = await runCli(['status', '--no-provider-check', '--free-space', '120GB'], { env: inst.env });
  expect(text.code).toBe(0);
  expect(text.stdout).toMatch(/disk headroom: 111\.8 GB free \(--free-space, the operator's figure\), a rotation needs .* ok/);
});

test('malformed --free-space: exit 2 naming the accepted units', async () => {
  for (const args of [['status', '--free-space', 'lots'], ['status', '--free-space', '-5'], ['rotate', ...FAST, '--free-space', '12XB']]) {
    const r = await runCli(args, { env: inst.env });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--free-space must be a number of bytes, or a number with kB, MB, GB/);
  }
});

test('rotate --free-space: one byte under 1.5 × the database size exits 3 and changes nothing; exactly 1.5 × rotates', async () => {
  const required = await requiredBytes();
  const under = await runCli(['rotate', ...FAST, '--data-dir', '/nonexistent/pgdata', '--free-space', String(required - 1)], { env: inst.env });
  expect(under.code).toBe(3);
  expect(under.stderr).toMatch(/not enough disk headroom: .* free \(--free-space, the operator's figure\), a rotation needs .*1\.5 ×/);
  expect((await keyringRows(inst.db.pool)).length).toBe(1);

  const enough = await runCli(['rotate', ...FAST, '--data-dir', '/nonexistent/pgdata', '--free-space', String(required)], { env: inst.env });
  expect(enough.stderr).toMatch(/disk headroom ok: .* free \(--free-space, the operator's figure\)/);
  expect(enough.code).toBe(0);
  expect((await keyringRows(inst.db.pool)).length).toBe(2);
});
