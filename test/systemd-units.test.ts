/**
 * contrib/systemd: the rotate and backup units and their timers pass `systemd-analyze verify`
 * (skipped, with the reason printed, where systemd-analyze is not installed), and keep their
 * hardening. verify insists that ExecStart's program exists, so the check runs on copies whose
 * ExecStart points at this checkout's bin/alation-keys instead of /usr/local/bin/alation-keys.
 */
import { execFile, execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { BIN } from './support/cli';
import { tempDir } from './support/fixtures';

const run = promisify(execFile);
const UNITS = path.resolve(__dirname, '../contrib/systemd');
const INSTALLED_PATH = '/usr/local/bin/alation-keys';

function unit(name: string): string {
  return fs.readFileSync(path.join(UNITS, name), 'utf8');
}

function analyzer(): string | null {
  try {
    return execFileSync('sh', ['-c', 'command -v systemd-analyze'], { encoding: 'utf8' }).trim() || null;
  } catch {
    return null;
  }
}

describe('contrib/systemd', () => {
  test('holds the rotate and backup services with their timers', () => {
    expect(fs.readdirSync(UNITS).sort()).toEqual([
      'alation-keys-backup.service',
      'alation-keys-backup.timer',
      'alation-keys-rotate.service',
      'alation-keys-rotate.timer',
    ]);
    expect(unit('alation-keys-rotate.service')).toMatch(/^ExecStart=\/usr\/local\/bin\/alation-keys rotate --if-older-than 90d --backup .*--quiet$/m);
    expect(unit('alation-keys-backup.service')).toMatch(/^ExecStart=\/usr\/local\/bin\/alation-keys backup .*--quiet$/m);
    for (const t of ['alation-keys-rotate.timer', 'alation-keys-backup.timer']) {
      expect(unit(t)).toMatch(/^OnCalendar=\*-\*-\* \d\d:\d\d:00$/m);
      expect(unit(t)).toMatch(/^Persistent=true$/m);
    }
  });

  test.each(['alation-keys-rotate.service', 'alation-keys-backup.service'])('%s is hardened and may write only the key and backup directories', (name) => {
    const text = unit(name);
    for (const line of ['NoNewPrivileges=yes', 'ProtectSystem=strict', 'PrivateTmp=yes', 'ReadWritePaths=/etc/alation-keys /var/backups/alation-keys']) {
      expect(text.split('\n')).toContain(line);
    }
    expect(text.match(/^ReadWritePaths=/gm)).toHaveLength(1);
    // V8 compiles code at run time: MemoryDenyWriteExecute would kill the process.
    expect(text).not.toMatch(/^MemoryDenyWriteExecute=/m);
  });

  test('systemd-analyze verify accepts every unit without a warning', async () => {
    const tool = analyzer();
    if (!tool) {
      console.log('skipped: systemd-analyze is not installed on this machine (apt-get install systemd provides it)');
      return;
    }
    const dir = tempDir('systemd');
    try {
      for (const name of fs.readdirSync(UNITS)) fs.writeFileSync(path.join(dir, name), unit(name).split(INSTALLED_PATH).join(BIN));
      const files = fs.readdirSync(dir).map((n) => path.join(dir, n));
      // --man=no: the man page is not installed on the test machine.
      const r = await run(tool, ['verify', '--man=no', ...files]).catch((e) => e);
      expect({ code: r.code ?? 0, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
      // And verify does catch a mistake.
      fs.appendFileSync(path.join(dir, 'alation-keys-rotate.service'), 'ProtectSystm=strict\n');
      const bad = await run(tool, ['verify', '--man=no', path.join(dir, 'alation-keys-rotate.service')]).catch((e) => e);
      expect(bad.stderr).toContain("Unknown key 'ProtectSystm'");
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
