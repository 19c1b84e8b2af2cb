/**
 * One test per guarantee the tool makes, each named by it, each through the built binary, each
 * checked to fail when the guarantee is broken in src/ (a bug planted on purpose, then reverted).
 * Races are made to happen with the test-only pause points (src/core/test-hooks.ts), never
 * hoped for.
 */
import { createInstallation, Installation } from './support/fixtures';
import { runCli, runCliJson } from './support/cli';
import { FAST, keyringRows } from './support/rotate-helpers';

const installations: Installation[] = [];

async function install(label: string, values: number): Promise<Installation> {
  const inst = await createInstallation(label, { values });
  installations.push(inst);
  return inst;
}

afterAll(async () => {
  for (const inst of installations) await inst.cleanup();
});

test('guarantee: a rotation starts only with free space of at least 1.5 × the database size (just under: exit 3, nothing changed; just over: rotates)', async () => {
  // Small and vacuumed: pg_database_size holds still between the commands (the boundary is one byte wide).
  const inst = await install('g-headroom', 20);
  await inst.db.query('VACUUM');
  const s = await runCliJson(['status', '--no-provider-check'], { env: inst.env });
  expect(s.code).toBe(0);
  // The guarantee's own figure, not the tool's requiredBytes: a wrong factor in the tool shows here.
  const needed = Math.ceil(s.json.headroom.databaseBytes * 1.5);

  const under = await runCli(['rotate', ...FAST, '--free-space', String(needed - 1)], { env: inst.env });
  expect([under.code, under.stderr]).toEqual([3, expect.stringMatching(/not enough disk headroom: .*, a rotation needs .* \(1\.5 × the database, /)]);
  expect((await keyringRows(inst.db.pool)).map((k) => `${k.version}:${k.state}`)).toEqual(['1:primary']);

  const over = await runCli(['rotate', ...FAST, '--free-space', String(needed + 1)], { env: inst.env });
  expect([over.code, over.stderr]).toEqual([0, expect.stringMatching(/disk headroom ok: .* needs .* \(1\.5 × the database, /)]);
  expect((await keyringRows(inst.db.pool)).map((k) => `${k.version}:${k.state}`)).toEqual(['1:retired', '2:primary']);
});
