/** `backup list` and `backup verify`: what was backed up, and whether it can be restored with today's keys. */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Pool } from 'pg';
import { PreconditionError, UsageError } from '../errors';
import { requireInitialised } from '../db/migrations';
import { Queryable } from '../db/transaction';
import { createKeyProvider, LocalKeyProvider } from '../kms';
import { resolveMasterKeyPath } from '../kms/master-key-file';
import { KeyProvider } from '../kms/provider';
import {
  BackupManifest,
  checksumDump,
  MANIFEST_FORMAT,
  MANIFEST_SUFFIX,
  MANIFEST_VERSION,
  PARTIAL_SUFFIX,
} from './backup';
import {
  backupJobsListingKey,
  backupManifestsForFile,
  JobRecord,
  listBackupJobs,
  markOrphanedJobs,
  succeededBackupKeyLists,
} from './jobs';
import { KeyringRow, readKeyring } from './keyring';
import { findPgTool, FoundPgTool, parsePgToolVersion } from './pg-tools';
import { readSettings, Settings } from './settings';
import { noun } from '../plural';

export interface BackupListEntry {
  jobId: number;
  state: string;
  startedAt: string;
  finishedAt: string | null;
  actor: string;
  /** Absolute path of the dump as written. */
  path: string | null;
  file: string | null;
  bytes: number | null;
  sha256: string | null;
  dumpFormat: string | null;
  neededVersions: number[];
  kekIds: string[];
  /** For succeeded backups: whether the dump and its manifest are on this host's disk. */
  onDisk: 'present' | 'missing' | 'manifest-missing' | null;
  /** The host that took it, when not this one (files may be there instead). */
  otherHost: string | null;
  error: string | null;
}

function hostOf(actor: string): string | null {
  const m = /@([^\s]+)/.exec(actor);
  return m ? m[1] : null;
}

function entryOf(j: Pick<JobRecord, 'id' | 'state' | 'started_at' | 'finished_at' | 'actor' | 'detail' | 'error' | 'bytes_done'>): BackupListEntry {
  const d = j.detail ?? {};
  const m = d.manifest as BackupManifest | undefined;
  const p: string | null = d.path ?? (d.dir && d.file ? path.join(d.dir, d.file) : null);
  let onDisk: BackupListEntry['onDisk'] = null;
  if (j.state === 'succeeded' && p) {
    if (!fs.existsSync(p)) onDisk = 'missing';
    else if (!fs.existsSync((d.manifest_path as string | undefined) ?? p + MANIFEST_SUFFIX)) onDisk = 'manifest-missing';
    else onDisk = 'present';
  }
  const host = hostOf(j.actor);
  return {
    jobId: j.id,
    state: j.state,
    startedAt: j.started_at.toISOString(),
    finishedAt: j.finished_at?.toISOString() ?? null,
    actor: j.actor,
    path: p,
    file: m?.file ?? d.file ?? null,
    bytes: m?.bytes ?? (j.bytes_done || null),
    sha256: m?.sha256 ?? null,
    dumpFormat: m?.dump_format ?? d.dump_format ?? null,
    neededVersions: m?.keys?.needed_versions ?? d.needed_versions ?? [],
    kekIds: m?.keys?.kek_ids ?? [],
    onDisk,
    otherHost: host && host !== os.hostname() ? host : null,
    error: j.error,
  };
}

/** Backups from the job records, newest first; `all` includes failed and interrupted ones. */
export async function listBackups(pool: Pool, opts: { limit?: number; all?: boolean } = {}): Promise<BackupListEntry[]> {
  await requireInitialised(pool);
  await markOrphanedJobs(pool);
  return (await listBackupJobs(pool, opts)).map(entryOf);
}

/** A recorded backup whose dump holds DEK `version` (wrapped), needed by it or not. */
export interface BackupHoldingKey extends BackupListEntry {
  /** Values in the dump may use the DEK (it was primary or active at the snapshot). */
  needs: boolean;
  /** Master key id (or KMS key ARN) that wraps the DEK inside that dump. */
  kekId: string;
}

/** Succeeded backups whose dump holds DEK `version` still wrapped (not yet destroyed at the snapshot), newest first. */
export async function backupsHoldingKey(db: Queryable, version: number): Promise<BackupHoldingKey[]> {
  const out: BackupHoldingKey[] = [];
  for (const j of await backupJobsListingKey(db, version)) {
    const dek = (j.detail.manifest as BackupManifest).keys.deks.find((d) => d.version === version);
    if (!dek || dek.state === 'destroyed') continue;
    out.push({ ...entryOf(j), needs: dek.needed, kekId: dek.kek_id });
  }
  return out;
}

/**
 * The KEKs that recorded backups finished since `since` need to restore their DEKs (those
 * DEKs not destroyed since), and every KEK id any recorded backup names.
 */
export async function kekIdsOfBackups(db: Queryable, since: Date): Promise<{ needed: Set<string>; recorded: Set<string> }> {
  const backups = await succeededBackupKeyLists<BackupManifest['keys']['deks'][number]>(db);
  const destroyed = new Set((await readKeyring(db)).filter((k) => k.state === 'destroyed').map((k) => k.version));
  const needed = new Set<string>();
  const recorded = new Set<string>();
  for (const row of backups) {
    for (const d of row.deks ?? []) {
      recorded.add(d.kek_id);
      if (d.needed && !destroyed.has(d.version) && row.finished_at >= since) needed.add(d.kek_id);
    }
  }
  return { needed, recorded };
}

export interface VerifyCheck {
  check: 'manifest' | 'checksum' | 'archive' | 'keys';
  ok: boolean;
  detail: string;
}

export interface VerifyKeyResult {
  version: number;
  kekProvider: string;
  kekId: string;
  /** State in today's keyring (null: not there). */
  stateNow: string | null;
  ok: boolean;
  detail: string;
}

export interface VerifyReport {
  ok: boolean;
  file: string;
  manifestFile: string | null;
  manifestSource: 'file' | 'job';
  jobId: number | null;
  checks: VerifyCheck[];
  keys: VerifyKeyResult[];
  archiveEntries: number | null;
  /** Verified without the database: key destruction was not checked. */
  offline: boolean;
  manifest: BackupManifest;
}

export interface VerifyOptions {
  masterKeyFile?: string;
  awsProfile?: string;
  pgRestore?: string;
  signal?: AbortSignal;
  /** The environment pg_restore runs with (PATH): the caller's. */
  env: NodeJS.ProcessEnv;
  /** A provider to use for aws-kms DEKs instead of the one the settings name (tests). */
  keyProvider?: KeyProvider;
  /**
   * Without the database (it is gone, or this is another host): the manifest file is required,
   * the KMS settings come from the dump, and whether a key was destroyed is not checked.
   */
  offline?: boolean;
}

function parseManifest(text: string, where: string): BackupManifest {
  let doc: any;
  try {
    doc = JSON.parse(text);
  } catch {
    throw new Error(`${where} is not JSON`);
  }
  if (doc?.format !== MANIFEST_FORMAT) throw new Error(`${where} is not an alation-keys backup manifest (format is not "${MANIFEST_FORMAT}")`);
  if (doc.version !== MANIFEST_VERSION) throw new Error(`${where} has manifest version ${doc.version}; this binary reads version ${MANIFEST_VERSION}`);
  if (typeof doc.sha256 !== 'string' || typeof doc.file !== 'string' || !doc.keys || !Array.isArray(doc.keys.deks)) {
    throw new Error(`${where} lacks file, sha256 or keys`);
  }
  return doc as BackupManifest;
}

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number | null; stdout: string; stderr: string; error?: Error }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => {
      stderr = (stderr + d.toString('utf8')).slice(-8000);
    });
    child.on('error', (error) => resolve({ code: null, stdout: '', stderr, error }));
    child.on('close', (code) => resolve({ code, stdout: Buffer.concat(out).toString('utf8'), stderr }));
  });
}

/** Un-escapes one field of COPY text format; null for \N. */
export function copyTextField(s: string): string | null {
  if (s === '\\N') return null;
  return s.replace(/\\(?:([0-7]{1,3})|x([0-9a-fA-F]{1,2})|(.))/g, (_m, oct, hex, ch) => {
    if (oct) return String.fromCharCode(parseInt(oct, 8));
    if (hex) return String.fromCharCode(parseInt(hex, 16));
    return ({ b: '\b', f: '\f', n: '\n', r: '\r', t: '\t', v: '\v' } as Record<string, string>)[ch] ?? ch;
  });
}

/** The rows of table alation_keys.<table> in `pg_restore --data-only` output, by column name. */
export function parseDumpTable(sql: string, table: string): Array<Record<string, string | null>> {
  const lines = sql.split('\n');
  const start = lines.findIndex((l) => l.startsWith(`COPY alation_keys.${table} (`));
  if (start < 0) return [];
  const cols = /\(([^)]*)\)/.exec(lines[start])![1].split(',').map((c) => c.trim().replace(/^"|"$/g, ''));
  const out: Array<Record<string, string | null>> = [];
  for (let i = start + 1; i < lines.length && lines[i] !== '\\.'; i++) {
    const f = lines[i].split('\t').map(copyTextField);
    out.push(Object.fromEntries(cols.map((c, j) => [c, f[j] ?? null])));
  }
  return out;
}

/** The rows of alation_keys.keyring inside a dump (as `pg_restore --data-only` prints them). */
export function parseDumpKeyring(sql: string): Array<{ version: number; state: string; wrapped: Buffer | null; kekProvider: string; kekId: string }> {
  return parseDumpTable(sql, 'keyring').map((r) => ({
    version: Number(r.version),
    state: String(r.state),
    wrapped: r.wrapped_key && r.wrapped_key.startsWith('\\x') ? Buffer.from(r.wrapped_key.slice(2), 'hex') : null,
    kekProvider: String(r.kek_provider),
    kekId: String(r.kek_id),
  }));
}

/** alation_keys.settings inside a dump (installation id, provider, aws settings). */
export function parseDumpSettings(sql: string): Settings {
  const out: Settings = {};
  for (const r of parseDumpTable(sql, 'settings')) {
    if (!r.key || r.value === null) continue;
    try {
      out[r.key] = JSON.parse(r.value);
    } catch {
      /* not JSON: ignored */
    }
  }
  return out;
}

function locate(fileArg: string): { dump: string; manifest: string } {
  const abs = path.resolve(fileArg);
  if (abs.endsWith(PARTIAL_SUFFIX)) {
    throw new PreconditionError(`${abs} is an unfinished backup (pg_dump did not complete); it cannot be verified or restored`, {
      hint: 'see `alation-keys backup list` for finished backups',
    });
  }
  const dump = abs.endsWith(MANIFEST_SUFFIX) ? abs.slice(0, -MANIFEST_SUFFIX.length) : abs.replace(/\/+$/, '');
  if (!fs.existsSync(dump)) throw new UsageError(`${dump} does not exist`, { hint: 'see `alation-keys backup list`' });
  return { dump, manifest: dump + MANIFEST_SUFFIX };
}

/**
 * Checks a backup: manifest, checksum, `pg_restore --list`, and that every DEK a restore needs
 * is still available — not destroyed in today's keyring, and its wrapped form inside the dump
 * unwraps with today's KEK (master key file or KMS key). Returns the report; ok false means
 * the backup could not be restored with today's keys.
 */
export async function verifyBackup(pool: Pool | undefined, fileArg: string, opts: VerifyOptions): Promise<VerifyReport> {
  const offline = !!opts.offline || !pool;
  if (!offline) await requireInitialised(pool!);
  const { dump, manifest: manifestPath } = locate(fileArg);
  const found = await findManifest(offline ? undefined : pool, dump, manifestPath);
  const { manifest, source, fromJob } = found;
  const checks: VerifyCheck[] = [found.check];
  // The job record in the database is authoritative: an edited manifest file cannot vouch for an edited dump.
  checks.push(await checksumCheck(dump, fromJob?.manifest ?? manifest, opts.signal));
  const archive = await readArchive(dump, manifest, opts);
  checks.push(archive.check);
  // Offline, the dump's own settings say which KMS key and role a restore would use.
  const settings = offline ? archive.settings : await readSettings(pool!);
  const today = offline ? undefined : new Map((await readKeyring(pool!)).map((r) => [r.version, r]));
  const keyProblems: string[] = [];
  if (!offline && manifest.installation_id && settings.installation_id && manifest.installation_id !== settings.installation_id) {
    keyProblems.push(
      `the backup is of installation ${manifest.installation_id}, but this database is installation ${settings.installation_id}; verify against the database it came from`,
    );
  }
  const needed = manifest.keys.deks.filter((d) => d.needed);
  const providers = new DumpKeyProviders(settings, opts);
  const keys: VerifyKeyResult[] = [];
  for (const d of needed) keys.push(await checkNeededKey(d, today, archive, providers, offline));
  checks.push(keysCheck(manifest, needed, keys, keyProblems));
  return {
    ok: checks.every((c) => c.ok),
    file: dump,
    manifestFile: source === 'file' ? manifestPath : null,
    manifestSource: source,
    jobId: manifest.job_id ?? fromJob?.id ?? null,
    checks,
    keys,
    archiveEntries: archive.entries,
    offline,
    manifest,
  };
}

/** 1. The manifest: next to the dump, else the one in the job record; compared with the job's copy. */
async function findManifest(
  pool: Pool | undefined,
  dump: string,
  manifestPath: string,
): Promise<{ manifest: BackupManifest; source: 'file' | 'job'; fromJob: { id: number; manifest: BackupManifest } | undefined; check: VerifyCheck }> {
  const name = path.basename(dump);
  let manifest: BackupManifest | undefined;
  let manifestProblem: string | undefined;
  if (fs.existsSync(manifestPath)) {
    try {
      manifest = parseManifest(fs.readFileSync(manifestPath, 'utf8'), manifestPath);
    } catch (err) {
      manifestProblem = (err as Error).message;
    }
  }
  const jobRows = pool ? await backupManifestsForFile<BackupManifest>(pool, name) : [];
  const fromJob = manifest ? jobRows.find((r) => r.id === manifest!.job_id) : jobRows[0];
  if (!manifest) {
    if (!fromJob) {
      throw new PreconditionError(
        `no manifest for ${dump}: ${manifestProblem ?? `${manifestPath} does not exist`}${pool ? ', and no backup job in this database recorded it' : ''}`,
        { hint: `keep ${path.basename(manifestPath)} next to the dump, and verify against the database the backup was taken from` },
      );
    }
    const detail = manifestProblem ? `${manifestProblem}; used the copy in job ${fromJob.id}` : `${manifestPath} is missing; used the copy in job ${fromJob.id}`;
    return { manifest: fromJob.manifest, source: 'job', fromJob, check: { check: 'manifest', ok: !manifestProblem, detail } };
  }
  let check: VerifyCheck;
  if (fromJob && (fromJob.manifest.sha256 !== manifest.sha256 || fromJob.manifest.bytes !== manifest.bytes)) {
    check = {
      check: 'manifest',
      ok: false,
      detail: `${manifestPath} disagrees with job ${fromJob.id}: the job recorded sha256 ${fromJob.manifest.sha256} (${fromJob.manifest.bytes} bytes), the file says ${manifest.sha256} (${manifest.bytes} bytes)`,
    };
  } else if (manifest.file !== name) {
    check = { check: 'manifest', ok: false, detail: `the manifest describes ${manifest.file}, not ${name}` };
  } else {
    check = {
      check: 'manifest',
      ok: true,
      detail: fromJob ? `matches job ${fromJob.id}` : !pool ? 'read from the file (offline: not compared with the job record)' : 'no job record in this database (verified from the file alone)',
    };
  }
  return { manifest, source: 'file', fromJob, check };
}

/** 2. The dump's checksum against the manifest's (file by file for a directory dump). */
async function checksumCheck(dump: string, expected: BackupManifest, signal: AbortSignal | undefined): Promise<VerifyCheck> {
  const sum = await checksumDump(dump, signal);
  if (sum.sha256 === expected.sha256 && sum.bytes === expected.bytes) {
    return { check: 'checksum', ok: true, detail: `sha256 ${sum.sha256}, ${sum.bytes} bytes` };
  }
  let detail = `sha256 ${sum.sha256} (${sum.bytes} bytes) does not match the manifest's ${expected.sha256} (${expected.bytes} bytes)`;
  if (sum.files && expected.files) {
    const want = new Map(expected.files.map((f) => [f.name, f.sha256]));
    const bad = sum.files.filter((f) => want.get(f.name) !== f.sha256).map((f) => f.name);
    const gone = expected.files.filter((f) => !sum.files!.some((g) => g.name === f.name)).map((f) => f.name);
    if (bad.length) detail += `; changed: ${bad.join(', ')}`;
    if (gone.length) detail += `; missing: ${gone.join(', ')}`;
  }
  return { check: 'checksum', ok: false, detail };
}

interface ArchiveContents {
  check: VerifyCheck;
  /** Whether pg_restore could read the archive at all. */
  readable: boolean;
  entries: number | null;
  keyring: ReturnType<typeof parseDumpKeyring>;
  settings: Settings;
}

/** 3. The archive reads (`pg_restore --list`), and the keyring and settings inside it. */
async function readArchive(dump: string, manifest: BackupManifest, opts: VerifyOptions): Promise<ArchiveContents> {
  const dumpVersion = parsePgToolVersion(`(PostgreSQL) ${manifest.pg_dump?.version ?? '0'}`)?.num ?? 0;
  const pgRestore: FoundPgTool = findPgTool('pg_restore', {
    explicit: opts.pgRestore,
    minVersionNum: dumpVersion,
    minReason: `the backup was written by pg_dump ${manifest.pg_dump?.version ?? 'unknown'}`,
    flag: '--pg-restore PATH',
    env: opts.env,
  });
  const list = await run(pgRestore.path, ['--list', dump], opts.env);
  if (list.code !== 0) {
    return {
      check: {
        check: 'archive',
        ok: false,
        detail: `pg_restore --list failed${list.error ? `: ${list.error.message}` : ''}: ${list.stderr.trim().split('\n').slice(-3).join('; ')}`,
      },
      readable: false,
      entries: null,
      keyring: [],
      settings: {},
    };
  }
  const entries = list.stdout.split('\n').filter((l) => l.trim() && !l.startsWith(';')).length;
  const data = await run(pgRestore.path, ['--data-only', '--schema=alation_keys', '--table=keyring', '--table=settings', '--file=-', dump], opts.env);
  return {
    check: { check: 'archive', ok: true, detail: `pg_restore --list reads ${entries} entries (${pgRestore.path} ${pgRestore.version.text})` },
    readable: true,
    entries,
    keyring: data.code === 0 ? parseDumpKeyring(data.stdout) : [],
    settings: data.code === 0 ? parseDumpSettings(data.stdout) : {},
  };
}

/** The key providers that unwrap the DEKs inside a dump, opened once each on first need. */
class DumpKeyProviders {
  private local: LocalKeyProvider | undefined;
  private localError: string | undefined;
  private kms: KeyProvider | undefined;
  private kmsError: string | undefined;

  constructor(
    private readonly settings: Settings,
    private readonly opts: VerifyOptions,
  ) {}

  /** The provider for `kind`, or why there is none. */
  get(kind: string, kekId: string): KeyProvider | string {
    if (kind === 'local') {
      if (!this.local && !this.localError) {
        try {
          this.local = new LocalKeyProvider(resolveMasterKeyPath(this.opts.masterKeyFile, this.opts.env));
        } catch (err) {
          this.localError = (err as Error).message;
        }
      }
      return this.local ?? `cannot read the master key file: ${this.localError}`;
    }
    if (kind === 'aws-kms') {
      if (!this.kms && !this.kmsError) {
        if (this.opts.keyProvider) this.kms = this.opts.keyProvider;
        else if ((this.settings.kek_provider ?? 'local') !== 'aws-kms' || !this.settings.aws) this.kmsError = 'this installation no longer uses aws-kms';
        else {
          try {
            this.kms = createKeyProvider(this.settings, { masterKeyFile: this.opts.masterKeyFile, awsProfile: this.opts.awsProfile });
          } catch (err) {
            this.kmsError = (err as Error).message;
          }
        }
      }
      return this.kms ?? `cannot use KMS key ${kekId}: ${this.kmsError}`;
    }
    return `unknown KEK provider ${kind}`;
  }
}

/** 4. One DEK a restore needs: still in today's keyring, not destroyed, and its copy in the dump unwraps with today's KEK. */
async function checkNeededKey(
  d: BackupManifest['keys']['deks'][number],
  today: Map<number, KeyringRow> | undefined,
  archive: ArchiveContents,
  providers: DumpKeyProviders,
  offline: boolean,
): Promise<VerifyKeyResult> {
  const row = today?.get(d.version);
  const res: VerifyKeyResult = { version: d.version, kekProvider: d.kek_provider, kekId: d.kek_id, stateNow: row?.state ?? null, ok: false, detail: '' };
  if (today && !row) return { ...res, detail: `data key v${d.version} is not in today's keyring` };
  if (row?.state === 'destroyed') {
    return {
      ...res,
      detail: `data key v${d.version} was destroyed${row.destroyed_at ? ` on ${row.destroyed_at.toISOString()}` : ''}; values in this backup that use it cannot be read`,
    };
  }
  const dumped = archive.keyring.find((k) => k.version === d.version);
  if (!dumped || !dumped.wrapped) {
    return { ...res, detail: archive.readable ? `data key v${d.version} is not in the dump's alation_keys.keyring` : 'the archive could not be read' };
  }
  const provider = providers.get(dumped.kekProvider, dumped.kekId);
  if (typeof provider === 'string') return { ...res, detail: provider };
  try {
    const dek = await provider.unwrapDataKey(d.version, dumped.wrapped, dumped.kekId);
    dek.fill(0);
    return {
      ...res,
      ok: true,
      detail: `unwraps with ${dumped.kekProvider === 'local' ? 'master key' : 'KMS key'} ${dumped.kekId}${offline ? ' (offline: not checked against the live keyring)' : ''}`,
    };
  } catch (err) {
    return { ...res, detail: `does not unwrap with today's keys: ${(err as Error).message}` };
  }
}

function keysCheck(manifest: BackupManifest, needed: BackupManifest['keys']['deks'], keys: VerifyKeyResult[], keyProblems: string[]): VerifyCheck {
  const badKeys = keys.filter((k) => !k.ok);
  if (keyProblems.length || badKeys.length) {
    return { check: 'keys', ok: false, detail: [...keyProblems, ...badKeys.map((k) => `v${k.version}: ${k.detail}`)].join('; ') };
  }
  return {
    check: 'keys',
    ok: true,
    detail: needed.length
      ? `${noun(needed.length, 'data key')} ${needed.map((d) => `v${d.version}`).join(', ')} available (KEK ${manifest.keys.kek_ids.join(', ')})`
      : 'the backup needs no data key',
  };
}
