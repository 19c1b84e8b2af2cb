/**
 * `status --prometheus`: the Prometheus text exposition format, parsed with a real parser
 * (parse-prometheus-text-format), holding what the database holds: values per DEK version
 * before and after a rotation, plaintext values, the last backup, the last job of each kind,
 * disk headroom and key provider reachability; `--output` replaces the file atomically.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import parsePrometheus = require('parse-prometheus-text-format');
import { createInstallation, Installation, tempDir } from './support/fixtures';
import { runCli } from './support/cli';
import { BLOBS, CREDENTIALS, DOCUMENTS } from '../scripts/lib/rosemeta';
import { renderPrometheus } from '../src/cli/prometheus';

let inst: Installation;
let dir: string;

beforeAll(async () => {
  inst = await createInstallation('prometheus', { values: 300 });
  dir = tempDir('prometheus-out');
});

afterAll(async () => {
  await inst?.cleanup();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

type Samples = Map<string, Array<{ labels: Record<string, string>; value: number }>>;

/** Parses the exposition text; checks every family has HELP and TYPE gauge and a conventional name. */
function parse(text: string): Samples {
  const families = parsePrometheus(text);
  const out: Samples = new Map();
  for (const f of families) {
    expect(f.name).toMatch(/^alation_keys_[a-z0-9_]+$/);
    expect(f.help.length).toBeGreaterThan(10);
    expect(f.type).toBe('GAUGE');
    expect(f.name).not.toMatch(/_total$/);
    expect(out.has(f.name)).toBe(false);
    out.set(
      f.name,
      f.metrics.map((m) => ({ labels: m.labels ?? {}, value: Number(m.value) })),
    );
  }
  // Every sample line belongs to a family announced by HELP and TYPE just before it.
  const announced = new Set<string>();
  for (const line of text.trimEnd().split('\n')) {
    const m = /^# (HELP|TYPE) (\S+) /.exec(line);
    if (m) announced.add(`${m[1]} ${m[2]}`);
    else expect(announced.has(`TYPE ${line.split(/[{ ]/)[0]}`)).toBe(true);
  }
  return out;
}

function value(samples: Samples, name: string, labels: Record<string, string> = {}): number | undefined {
  return samples.get(name)?.find((s) => JSON.stringify(s.labels) === JSON.stringify(labels))?.value;
}

/** Values per column and version, as the database has them (read from the headers independently). */
async function versionsInDatabase(): Promise<Record<string, Record<string, number>>> {
  const out: Record<string, Record<string, number>> = {};
  for (const [column, sql] of [
    [CREDENTIALS, `SELECT secret AS v FROM public.credentials WHERE secret IS NOT NULL`],
    [DOCUMENTS, `SELECT body AS v FROM public.documents WHERE body IS NOT NULL`],
    [BLOBS, `SELECT payload AS v FROM public.blobs WHERE payload IS NOT NULL`],
  ]) {
    const counts: Record<string, number> = {};
    for (const row of (await inst.db.query(sql)).rows) {
      const env: Buffer = typeof row.v === 'string' ? Buffer.from(row.v.slice(4), 'base64') : row.v;
      if (env[0] !== 0x41 || env[1] !== 0x4b) continue;
      const v = String(env.readUInt32BE(3));
      counts[v] = (counts[v] ?? 0) + 1;
    }
    out[column] = counts;
  }
  return out;
}

function versionsInMetrics(samples: Samples): Record<string, Record<string, number>> {
  const out: Record<string, Record<string, number>> = {};
  for (const s of samples.get('alation_keys_values') ?? []) (out[s.labels.column] ??= {})[s.labels.version] = s.value;
  return out;
}

describe('the exposition text', () => {
  test('escapes label values and help text so that a parser reads them back exactly', () => {
    const column = 'public."Vault ""A\\B"""."Se\ncret"';
    const text = renderPrometheus([
      { name: 'alation_keys_values', help: 'back\\slash and\nnewline', type: 'gauge', samples: [{ labels: { column, version: '7' }, value: 12 }] },
      { name: 'alation_keys_empty', help: 'no samples', type: 'gauge', samples: [] },
    ]);
    expect(text).not.toContain('alation_keys_empty');
    const [family] = parsePrometheus(text);
    expect(family.help).toBe('back\\slash and\nnewline');
    expect(family.metrics).toEqual([{ value: '12', labels: { column, version: '7' } }]);
  });
});

describe('status --prometheus', () => {
  test('values per DEK version per column match the database before and after a rotation', async () => {
    const before = await runCli(['status', '--prometheus'], { env: inst.env });
    expect({ code: before.code, stderr: before.stderr }).toEqual({ code: 0, stderr: '' });
    const b = parse(before.stdout);
    expect(versionsInMetrics(b)).toEqual(await versionsInDatabase());
    expect(Object.keys(versionsInMetrics(b)[CREDENTIALS])).toEqual(['1']);
    expect(value(b, 'alation_keys_primary_key_version')).toBe(1);
    expect(value(b, 'alation_keys_data_keys', { state: 'primary' })).toBe(1);

    const rotate = await runCli(['rotate', '--skip-backup-check', '--skip-disk-check', '--settle-time', '0'], { env: inst.env });
    expect({ code: rotate.code, stderr: rotate.code === 0 ? '' : rotate.stderr }).toEqual({ code: 0, stderr: '' });

    const after = parse((await runCli(['status', '--prometheus'], { env: inst.env })).stdout);
    const inDb = await versionsInDatabase();
    expect(versionsInMetrics(after)).toEqual(inDb);
    expect(Object.keys(inDb[CREDENTIALS])).toEqual(['2']);
    expect(inDb[CREDENTIALS]['2']).toBe(versionsInMetrics(b)[CREDENTIALS]['1']);
    expect(value(after, 'alation_keys_primary_key_version')).toBe(2);
    expect(value(after, 'alation_keys_primary_key_age_seconds')).toBeLessThan(600);
    expect(value(after, 'alation_keys_data_keys', { state: 'retired' })).toBe(1);
    expect(value(after, 'alation_keys_last_job_state', { kind: 'rotate', state: 'succeeded' })).toBe(1);
    expect(value(after, 'alation_keys_last_job_state', { kind: 'rotate', state: 'failed' })).toBe(0);
    expect(value(after, 'alation_keys_last_job_duration_seconds', { kind: 'rotate' })).toBeGreaterThan(0);
  });

  test('plaintext values per column, the primary key age, the last backup, disk figures and provider reachability are the database values', async () => {
    // Two plaintext values (not envelopes) in an encrypted column, and a DEK made 100 days ago.
    await inst.db.query(`UPDATE public.credentials SET secret = 'plain ' || id WHERE id IN (SELECT id FROM public.credentials ORDER BY id LIMIT 2)`);
    await inst.db.query(`UPDATE alation_keys.keyring SET created_at = now() - interval '100 days' WHERE state = 'primary'`);
    const backup = await inst.db.query<{ finished: Date }>(
      `INSERT INTO alation_keys.jobs (kind, state, actor, started_at, finished_at) VALUES ('backup', 'succeeded', 'test', now() - interval '3 days 10 minutes', now() - interval '3 days') RETURNING finished_at AS finished`,
    );
    const size = await inst.db.query<{ size: string }>('SELECT pg_database_size(current_database())::text AS size');
    try {
      const r = await runCli(['status', '--prometheus'], { env: inst.env });
      expect(r.code).toBe(0);
      const m = parse(r.stdout);
      expect(value(m, 'alation_keys_plaintext_values', { column: CREDENTIALS })).toBe(2);
      expect(value(m, 'alation_keys_plaintext_values', { column: DOCUMENTS })).toBe(0);
      expect(value(m, 'alation_keys_primary_key_age_seconds')).toBeGreaterThanOrEqual(100 * 86400);
      expect(value(m, 'alation_keys_primary_key_age_seconds')).toBeLessThan(100 * 86400 + 600);
      expect(value(m, 'alation_keys_last_backup_timestamp_seconds')).toBeCloseTo(backup.rows[0].finished.getTime() / 1000, 2);
      expect(value(m, 'alation_keys_last_job_duration_seconds', { kind: 'backup' })).toBe(600);
      const dataDir = (await inst.db.query<{ d: string }>('SELECT current_setting($1) AS d', ['data_directory'])).rows[0].d;
      const fsFree = Number(fs.statfsSync(dataDir).bavail) * Number(fs.statfsSync(dataDir).bsize);
      expect(Math.abs(value(m, 'alation_keys_disk_free_bytes')! - fsFree) / fsFree).toBeLessThan(0.05);
      const needed = value(m, 'alation_keys_disk_needed_bytes')!;
      expect(needed / Number(size.rows[0].size)).toBeCloseTo(1.5, 1);
      expect(value(m, 'alation_keys_key_provider_up', { provider: 'local' })).toBe(1);
      expect(value(m, 'alation_keys_attention_items')).toBeGreaterThan(0);

      // The master key file unreadable: the provider is down, and the metrics still come.
      fs.chmodSync(inst.masterKeyFile, 0o644);
      const down = await runCli(['status', '--prometheus'], { env: inst.env });
      fs.chmodSync(inst.masterKeyFile, 0o600);
      expect(down.code).toBe(0);
      expect(value(parse(down.stdout), 'alation_keys_key_provider_up', { provider: 'local' })).toBe(0);
      const check = await runCli(['status', '--prometheus', '--check'], { env: inst.env });
      expect(check.code).toBe(3);
      parse(check.stdout);
    } finally {
      await inst.db.query(`DELETE FROM alation_keys.jobs WHERE actor = 'test'`);
      await inst.db.query(`UPDATE alation_keys.keyring SET created_at = now() WHERE state = 'primary'`);
    }
  });

  test('--output replaces the file atomically with mode 0644 and prints nothing on stdout; a link there is replaced, not followed', async () => {
    const file = path.join(dir, 'alation_keys.prom');
    const victim = path.join(dir, 'victim');
    fs.writeFileSync(victim, 'do not touch\n');
    fs.symlinkSync(victim, file);
    const old = process.umask(0o077);
    let r;
    try {
      r = await runCli(['status', '--prometheus', '--output', file], { env: inst.env });
    } finally {
      process.umask(old);
    }
    expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 0, stdout: '' });
    expect(fs.lstatSync(file).isFile()).toBe(true);
    expect(fs.statSync(file).mode & 0o777).toBe(0o644);
    expect(fs.readFileSync(victim, 'utf8')).toBe('do not touch\n');
    expect(versionsInMetrics(parse(fs.readFileSync(file, 'utf8')))).toEqual(await versionsInDatabase());
    expect(fs.readdirSync(dir).sort()).toEqual(['alation_keys.prom', 'victim']);

    const again = await runCli(['status', '--prometheus', '--output', file, '--quiet'], { env: inst.env });
    expect({ code: again.code, stdout: again.stdout, stderr: again.stderr }).toEqual({ code: 0, stdout: '', stderr: '' });
    expect(fs.readdirSync(dir).sort()).toEqual(['alation_keys.prom', 'victim']);
  });

  test('bad combinations and an unwritable output are one error line with exit 2', async () => {
    const missing = await runCli(['status', '--prometheus', '--output', path.join(dir, 'no-such-dir', 'x.prom')], { env: inst.env });
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('does not exist');
    expect(missing.stderr).not.toMatch(/\n\s+at /);
    const noProm = await runCli(['status', '--output', path.join(dir, 'x.prom')], { env: inst.env });
    expect(noProm.code).toBe(2);
    expect(noProm.stderr).toContain('--output goes with --prometheus');
    const json = await runCli(['status', '--prometheus', '--json'], { env: inst.env });
    expect(json.code).toBe(2);
  });
});
