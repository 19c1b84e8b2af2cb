/**
 * Files `backup` creates are new files only (O_EXCL|O_NOFOLLOW): a planted symbolic link,
 * even a dangling one, is a taken name and nothing is written through it; a backup directory
 * that group or others may write is refused.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileTimestamp, MANIFEST_SUFFIX, partialName, safeFilePart } from '../src/core/backup';
import { openNewFile } from '../src/files/new-file';
import { runCli, runCliJson } from './support/cli';
import { createInstallation, Installation, tempDir } from './support/fixtures';
import { testWithPgDump } from './support/pg-dump';

let inst: Installation;
beforeAll(async () => {
  inst = await createInstallation('backup_files', { values: 20 });
});
afterAll(async () => {
  await inst?.cleanup();
});

test('a dangling link is not a free name: opening a new file there fails and creates nothing', () => {
  const dir = tempDir('newfile');
  try {
    const target = path.join(dir, 'nowhere', 'victim');
    fs.symlinkSync(target, path.join(dir, 'x'));
    expect(() => openNewFile(path.join(dir, 'x'), 0o600)).toThrow(/EEXIST/);
    expect(fs.existsSync(path.dirname(target))).toBe(false);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

testWithPgDump('backup into a directory holding planted symbolic links writes nothing through them', async () => {
  const out = tempDir('backup-planted');
  const victims = tempDir('backup-victims');
  try {
    const victim = path.join(victims, 'victim');
    fs.writeFileSync(victim, 'do not touch\n');
    // Every name a backup may choose in the next five minutes, as links: to an existing file
    // and dangling (a file that does not exist yet).
    const base = safeFilePart(inst.db.name);
    const now = Date.now();
    let planted = 0;
    for (let s = -2; s < 300; s++) {
      const name = `${base}-${fileTimestamp(new Date(now + s * 1000))}.dump`;
      for (const [i, n] of [name, name + MANIFEST_SUFFIX, partialName(name), partialName(name + MANIFEST_SUFFIX)].entries()) {
        fs.symlinkSync(i % 2 === 0 ? victim : path.join(victims, `dangling-${s}-${i}`), path.join(out, n));
        planted++;
      }
    }
    const r = await runCliJson(['backup', '--out', out], { env: inst.env });
    expect(r.code).toBe(0);
    expect(r.json.file).toMatch(/-2\.dump$/);
    expect(fs.lstatSync(r.json.file).isFile()).toBe(true);
    expect(fs.lstatSync(r.json.manifestFile).isFile()).toBe(true);
    expect(fs.readFileSync(victim, 'utf8')).toBe('do not touch\n');
    expect(fs.readdirSync(victims)).toEqual(['victim']);
    const links = fs.readdirSync(out).filter((n) => fs.lstatSync(path.join(out, n)).isSymbolicLink());
    expect(links).toHaveLength(planted);
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
    fs.rmSync(victims, { recursive: true, force: true });
  }
});

for (const mode of [0o770, 0o707, 0o777]) testWithPgDump(`a backup directory with mode ${mode.toString(8)} is refused (exit 3) with the chmod that fixes it`, async () => {
  const out = tempDir('backup-shared');
  try {
    fs.chmodSync(out, mode);
    const r = await runCli(['backup', '--out', out], { env: inst.env });
    expect(r.code).toBe(3);
    expect(r.stderr).toContain(`backup directory ${out} is writable by group or others`);
    expect(r.stderr).toContain(`chmod go-w ${out}`);
    expect(fs.readdirSync(out)).toEqual([]);
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
});
