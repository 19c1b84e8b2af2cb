/**
 * `backup`: a full pg_dump of the database with a manifest naming the keys a restore needs,
 * written atomically (temporary name, fsync, rename) and recorded as a job of kind `backup`.
 * `rotate --backup` calls takeBackup with lockHeld: true.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Pool, PoolClient } from 'pg';
import { InterruptedError, OperationError, PreconditionError, UsageError } from '../errors';
import { resolveConnectionConfig } from '../db/connection';
import { ensureDirectory } from '../files/directory';
import { nameTaken, openNewFile, refuseSharedWritableDirectory } from '../files/new-file';
import { requireInitialised, schemaVersion } from '../db/migrations';
import { acquireAdvisoryLock, HeldLock } from '../db/transaction';
import { resolveMasterKeyPath } from '../kms/master-key-file';
import { databaseSize, formatBytes, freeBytesAt } from './headroom';
import { createJob, describeLockHolder, JobActorOption, processActor, finishJob, markOrphanedJobs, pgDumpApplicationName, recordBytesDone, failJobIfRunning } from './jobs';
import { DekState, KeyringRow, readKeyring } from './keyring';
import { findPgTool, FoundPgTool, pgToolEnv } from './pg-tools';
import { requireDumpPrivileges } from '../db/privileges';
import { readSettings } from './settings';

export const MANIFEST_FORMAT = 'alation-keys/backup-manifest';
export const MANIFEST_VERSION = 1;
export const MANIFEST_SUFFIX = '.manifest.json';
export const PARTIAL_SUFFIX = '.partial';
export const DEFAULT_BACKUP_DIR = '/var/backups/alation-keys';
/** Unfinished backups (`.<name>.partial`) untouched this long are removed by the next backup. */
export const STALE_PARTIAL_MS = 24 * 3_600_000;

export interface BackupOptions extends JobActorOption {
  /** Default: $ALATION_KEYS_BACKUP_DIR, else /var/backups/alation-keys. */
  outDir?: string;
  /** Parallel dump into directory format with this many jobs (omit for one custom-format file). */
  jobs?: number;
  /** pg_dump to use (else found on PATH or in the per-version directories). */
  pgDump?: string;
  /** Connection settings for pg_dump (same precedence as the pool). */
  databaseUrl?: string;
  masterKeyFile?: string;
  /** The caller (e.g. rotate --backup) already holds the maintenance lock. */
  lockHeld?: boolean;
  signal?: AbortSignal;
  onProgress?: (p: { bytes: number; elapsedMs: number }) => void;
  /** The environment pg_dump runs with (PATH, libpq's PG* variables): the caller's. */
  env: NodeJS.ProcessEnv;
  /** TEST ONLY: the free space to see instead of the backup directory's (test-hooks.ts). */
  testFreeBytes?: number;
}

export interface ManifestKey {
  version: number;
  state: DekState;
  kek_provider: string;
  kek_id: string;
  created_at: string;
  /** primary or active at the snapshot: values in the dump may use it. */
  needed: boolean;
}

export interface BackupManifest {
  format: typeof MANIFEST_FORMAT;
  version: typeof MANIFEST_VERSION;
  /** Base name of the dump (a file in custom format, a directory in directory format). */
  file: string;
  dump_format: 'custom' | 'directory';
  bytes: number;
  /** SHA-256 of the file; for a directory, of its `sha256sum`-style listing (see `files`). */
  sha256: string;
  files?: Array<{ name: string; bytes: number; sha256: string }>;
  database: string;
  installation_id: string | null;
  schema_version: number;
  server: { version: string; version_num: number };
  pg_dump: { version: string; path: string };
  started_at: string;
  finished_at: string;
  snapshot_at: string;
  snapshot_id: string;
  job_id: number;
  keys: {
    primary_version: number | null;
    /** The DEK versions a restore needs (primary and active at the snapshot). */
    needed_versions: number[];
    /** KEK provider(s) of the needed DEKs: `local`, `aws-kms`. */
    kek_provider: string;
    /** Master key ids or KMS key ARNs that wrap the needed DEKs. */
    kek_ids: string[];
    /** Every DEK in the keyring at the snapshot. Never key material. */
    deks: ManifestKey[];
  };
  created_by: { tool: 'alation-keys'; version: string; actor: string };
}

export interface BackupResult {
  jobId: number;
  /** Absolute path of the finished dump. */
  file: string;
  manifestFile: string;
  bytes: number;
  sha256: string;
  manifest: BackupManifest;
  elapsedMs: number;
  /** Stale unfinished backups removed from the directory before starting. */
  removedPartials: string[];
  /** Set when a needed DEK is wrapped by a local master key: that file is not in the dump. */
  masterKeyFile: string | null;
  /** What pg_dump printed on stderr although it succeeded (warnings). */
  pgDumpWarnings: string[];
}

export function resolveBackupDir(flag: string | undefined, env: NodeJS.ProcessEnv): string {
  return path.resolve(flag || env.ALATION_KEYS_BACKUP_DIR || DEFAULT_BACKUP_DIR);
}

/** `20261130T054247Z` */
export function fileTimestamp(d: Date): string {
  return d.toISOString().replace(/\.\d{3}Z$/, 'Z').replace(/[-:]/g, '');
}

export function safeFilePart(name: string): string {
  return name.replace(/[^A-Za-z0-9_.-]+/g, '_').replace(/^\.+/, '_') || 'database';
}

const PARTIAL_RE = /^\..+-\d{8}T\d{6}Z(?:-\d+)?\.dump(?:\.manifest\.json)?\.partial$/;

export function partialName(finalName: string): string {
  return `.${finalName}${PARTIAL_SUFFIX}`;
}

/** Free space must cover the database size: a conservative bound (a dump is usually smaller). */
export function checkBackupSpace(dir: string, databaseBytes: number, freeBytes: number): void {
  if (freeBytes < databaseBytes) {
    throw new PreconditionError(
      `not enough free space in ${dir}: ${formatBytes(freeBytes)} free (${freeBytes} bytes), the database is ${formatBytes(databaseBytes)} (${databaseBytes} bytes)`,
      {
        hint: 'a dump is usually much smaller than the database, but this check asks for the database size as a conservative bound; free space or pass --out DIR on a larger filesystem',
      },
    );
  }
}

function newestMtime(p: string): number {
  const st = fs.lstatSync(p);
  let t = st.mtimeMs;
  if (st.isDirectory()) {
    for (const n of fs.readdirSync(p)) {
      try {
        t = Math.max(t, fs.lstatSync(path.join(p, n)).mtimeMs);
      } catch {
        /* gone meanwhile */
      }
    }
  }
  return t;
}

/** Removes our unfinished backups (`.<name>.partial`) not written to for a day. */
export function removeStalePartials(dir: string, now = Date.now()): string[] {
  const removed: string[] = [];
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return removed;
  }
  for (const n of names) {
    if (!PARTIAL_RE.test(n)) continue;
    const p = path.join(dir, n);
    try {
      if (now - newestMtime(p) < STALE_PARTIAL_MS) continue;
      fs.rmSync(p, { recursive: true, force: true });
      removed.push(p);
    } catch {
      /* not ours to remove, or gone */
    }
  }
  return removed;
}

const BACKUP_DIR_HINT = 'pass --out DIR (or set ALATION_KEYS_BACKUP_DIR) to a directory this user may write';

/** The backup directory, made (0700) if absent and checked; before anything else is done. */
function prepareDir(dir: string): void {
  ensureDirectory(dir, 0o700, { what: 'backup directory', hint: BACKUP_DIR_HINT });
  // Others who may write here could plant a link where a dump or manifest is about to go.
  refuseSharedWritableDirectory(dir, 'backup directory');
  try {
    fs.accessSync(dir, fs.constants.W_OK | fs.constants.X_OK);
  } catch {
    throw new PreconditionError(`backup directory ${dir} is not writable by this user`, { hint: BACKUP_DIR_HINT });
  }
}

function fsyncPath(p: string): void {
  const fd = fs.openSync(p, 'r');
  try {
    fs.fsyncSync(fd);
  } catch {
    /* some filesystems cannot fsync a directory */
  } finally {
    fs.closeSync(fd);
  }
}

async function sha256File(p: string, signal?: AbortSignal): Promise<{ sha256: string; bytes: number }> {
  const hash = createHash('sha256');
  let bytes = 0;
  await pipeline(fs.createReadStream(p), async function* (source: AsyncIterable<Buffer>) {
    for await (const chunk of source) {
      if (signal?.aborted) throw new InterruptedError('interrupted while computing the checksum');
      bytes += chunk.length;
      hash.update(chunk);
    }
    yield* [];
  });
  return { sha256: hash.digest('hex'), bytes };
}

/**
 * The checksum of a dump: SHA-256 of the file, or for a directory-format dump the SHA-256 of
 * its listing `<sha256>  <name>\n` (names sorted), like `sha256sum * | sha256sum`.
 */
export async function checksumDump(
  p: string,
  signal?: AbortSignal,
): Promise<{ sha256: string; bytes: number; files?: Array<{ name: string; bytes: number; sha256: string }> }> {
  const st = fs.statSync(p);
  if (!st.isDirectory()) return sha256File(p, signal);
  const files: Array<{ name: string; bytes: number; sha256: string }> = [];
  for (const name of fs.readdirSync(p).sort()) {
    const f = path.join(p, name);
    if (!fs.statSync(f).isFile()) continue;
    files.push({ name, ...(await sha256File(f, signal)) });
  }
  const listing = files.map((f) => `${f.sha256}  ${f.name}\n`).join('');
  return {
    sha256: createHash('sha256').update(listing).digest('hex'),
    bytes: files.reduce((s, f) => s + f.bytes, 0),
    files,
  };
}

function sizeOf(p: string): number {
  try {
    const st = fs.statSync(p);
    if (!st.isDirectory()) return st.size;
    let total = 0;
    for (const n of fs.readdirSync(p)) {
      try {
        total += fs.statSync(path.join(p, n)).size;
      } catch {
        /* being written */
      }
    }
    return total;
  } catch {
    return 0;
  }
}

function killGroup(child: ChildProcess, sig: NodeJS.Signals): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, sig);
  } catch {
    try {
      child.kill(sig);
    } catch {
      /* already gone */
    }
  }
}

interface DumpRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
  spawnError?: Error;
  aborted: boolean;
}

/** Runs pg_dump in its own process group; kills the group on abort or when this process exits. */
function runPgDump(
  tool: FoundPgTool,
  args: string[],
  env: NodeJS.ProcessEnv,
  target: string,
  opts: { signal?: AbortSignal; started: number; onBytes: (bytes: number) => void },
): Promise<DumpRun> {
  return new Promise((resolve) => {
    const child = spawn(tool.path, args, { env, stdio: ['ignore', 'ignore', 'pipe'], detached: true });
    let stderr = '';
    let aborted = false;
    let settled = false;
    let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
    let killTimer: NodeJS.Timeout | undefined;
    let closeTimer: NodeJS.Timeout | undefined;
    const onProcessExit = () => {
      killGroup(child, 'SIGTERM');
      fs.rmSync(target, { recursive: true, force: true });
    };
    process.on('exit', onProcessExit);
    const onAbort = () => {
      aborted = true;
      killGroup(child, 'SIGTERM');
      killTimer = setTimeout(() => killGroup(child, 'SIGKILL'), 5000);
      killTimer.unref();
    };
    if (opts.signal?.aborted) onAbort();
    else opts.signal?.addEventListener('abort', onAbort, { once: true });
    const poll = setInterval(() => opts.onBytes(sizeOf(target)), 500);
    const finish = (spawnError?: Error) => {
      if (settled) return;
      settled = true;
      clearInterval(poll);
      if (killTimer) clearTimeout(killTimer);
      if (closeTimer) clearTimeout(closeTimer);
      opts.signal?.removeEventListener('abort', onAbort);
      process.removeListener('exit', onProcessExit);
      resolve({ code: exit?.code ?? null, signal: exit?.signal ?? null, stderr, spawnError, aborted });
    };
    child.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString('utf8');
      if (stderr.length > 16_000) stderr = stderr.slice(-8000);
    });
    child.on('error', (err) => finish(err));
    child.on('exit', (code, signal) => {
      exit = { code, signal };
      // Whatever it left in its process group (parallel workers, a wrapper's children) goes with it.
      if (child.pid !== undefined) {
        try {
          process.kill(-child.pid, 'SIGKILL');
        } catch {
          /* the group is empty */
        }
      }
      // Its stderr closes with it, unless something it started holds the pipe: wait at most 2 s.
      closeTimer = setTimeout(() => finish(), 2000);
    });
    child.on('close', () => finish());
  });
}

function stderrTail(s: string): string {
  const lines = s
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
  return lines.slice(-5).join('; ');
}

function manifestKeys(rows: KeyringRow[]): BackupManifest['keys'] {
  const deks: ManifestKey[] = rows.map((r) => ({
    version: r.version,
    state: r.state,
    kek_provider: r.kek_provider,
    kek_id: r.kek_id,
    created_at: r.created_at.toISOString(),
    needed: r.state === 'primary' || r.state === 'active',
  }));
  const needed = deks.filter((d) => d.needed);
  const providers = [...new Set(needed.map((d) => d.kek_provider))];
  return {
    primary_version: rows.find((r) => r.state === 'primary')?.version ?? null,
    needed_versions: needed.map((d) => d.version),
    kek_provider: providers.join(',') || 'none',
    kek_ids: [...new Set(needed.map((d) => d.kek_id))],
    deks,
  };
}

/** Finished name `<database>-<UTC timestamp>.dump`, with -2, -3 … if that exists already. */
function chooseName(dir: string, database: string, at: Date): string {
  const base = `${safeFilePart(database)}-${fileTimestamp(at)}`;
  for (let i = 1; ; i++) {
    const name = i === 1 ? `${base}.dump` : `${base}-${i}.dump`;
    // A dangling symbolic link is a taken name, not a free one.
    const taken = [name, name + MANIFEST_SUFFIX, partialName(name), partialName(name + MANIFEST_SUFFIX)].some((n) => nameTaken(path.join(dir, n)));
    if (!taken) return name;
  }
}

export async function takeBackup(pool: Pool, opts: BackupOptions): Promise<BackupResult> {
  const env = opts.env;
  const dumpFormat: 'custom' | 'directory' = opts.jobs !== undefined ? 'directory' : 'custom';
  if (opts.jobs !== undefined && (!Number.isInteger(opts.jobs) || opts.jobs < 1 || opts.jobs > 64)) {
    throw new UsageError(`--jobs must be a whole number from 1 to 64, got ${opts.jobs}`);
  }
  const dir = resolveBackupDir(opts.outDir, env);
  prepareDir(dir);
  await requireInitialised(pool);

  const sv = await pool.query<{ num: string; version: string; db: string }>(
    `SELECT current_setting('server_version_num') AS num, current_setting('server_version') AS version, current_database() AS db`,
  );
  const serverNum = Number(sv.rows[0].num);
  const serverVersion = sv.rows[0].version.split(' ')[0];
  const database = sv.rows[0].db;
  await requireDumpPrivileges(pool);
  const tool = findPgTool('pg_dump', {
    explicit: opts.pgDump,
    minVersionNum: serverNum,
    minReason: `the server is PostgreSQL ${serverVersion}`,
    flag: '--pg-dump PATH',
    env,
  });

  let lock: HeldLock | undefined;
  if (!opts.lockHeld) {
    lock = await acquireAdvisoryLock(pool, (pid) => describeLockHolder(pool, pid));
  }
  try {
    // We hold the lock: running jobs are leftovers of killed processes.
    if (lock) await markOrphanedJobs(pool, { holdingLock: true });
    const databaseBytes = await databaseSize(pool);
    checkBackupSpace(dir, databaseBytes, opts.testFreeBytes ?? freeBytesAt(dir));
    const removedPartials = removeStalePartials(dir);
    if (opts.signal?.aborted) throw new InterruptedError('interrupted before the backup started; nothing was written');
    return await dumpWithSnapshot(pool, opts, { dir, database, serverNum, serverVersion, tool, dumpFormat, removedPartials });
  } finally {
    await lock?.release();
  }
}

interface DumpContext {
  dir: string;
  database: string;
  serverNum: number;
  serverVersion: string;
  tool: FoundPgTool;
  dumpFormat: 'custom' | 'directory';
  removedPartials: string[];
}

/** Where one backup's files go: written under partial names, renamed into place when complete. */
interface DumpPaths {
  name: string;
  finalPath: string;
  partialPath: string;
  manifestPath: string;
  manifestPartial: string;
}

function dumpPaths(dir: string, database: string, startedAt: Date): DumpPaths {
  const name = chooseName(dir, database, startedAt);
  const finalPath = path.join(dir, name);
  return {
    name,
    finalPath,
    partialPath: path.join(dir, partialName(name)),
    manifestPath: finalPath + MANIFEST_SUFFIX,
    manifestPartial: path.join(dir, partialName(name + MANIFEST_SUFFIX)),
  };
}

function removePartials(p: DumpPaths): void {
  fs.rmSync(p.partialPath, { recursive: true, force: true });
  fs.rmSync(p.manifestPartial, { force: true });
}

/**
 * The exported snapshot pg_dump uses, with the keyring and settings read inside it, so the
 * manifest names exactly the keys of the data in the dump. The transaction stays open until
 * pg_dump has imported the snapshot.
 */
async function exportSnapshot(snap: PoolClient) {
  await snap.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
  await snap.query('SET LOCAL idle_in_transaction_session_timeout = 0');
  const s = await snap.query<{ id: string; at: Date }>('SELECT pg_export_snapshot() AS id, transaction_timestamp() AS at');
  const [keyring, settings] = await Promise.all([readKeyring(snap), readSettings(snap)]);
  return { snapshotId: s.rows[0].id, snapshotAt: s.rows[0].at, keyring, settings };
}

/** Reports pg_dump's bytes to the caller as they grow, and to the job record every 5 s. */
function dumpProgress(pool: Pool, jobId: number, opts: BackupOptions, started: number) {
  let bytesDone = 0;
  let lastJobUpdate = Date.now();
  let jobUpdate: Promise<unknown> | undefined;
  return {
    get bytes() {
      return bytesDone;
    },
    onBytes(bytes: number) {
      bytesDone = bytes;
      try {
        opts.onProgress?.({ bytes, elapsedMs: Date.now() - started });
      } catch {
        /* a renderer's problem is not the backup's */
      }
      if (!jobUpdate && Date.now() - lastJobUpdate >= 5000) {
        lastJobUpdate = Date.now();
        jobUpdate = recordBytesDone(pool, jobId, bytes)
          .catch(() => undefined)
          .finally(() => (jobUpdate = undefined));
      }
    },
    /** Waits for a job update in flight. */
    async settled() {
      await jobUpdate;
    },
  };
}

/** Runs pg_dump on the exported snapshot into the partial path. */
async function runDump(ctx: DumpContext, opts: BackupOptions, p: DumpPaths, snapshotId: string, jobId: number, started: number, onBytes: (bytes: number) => void) {
  const args = [`--file=${p.partialPath}`, `--format=${ctx.dumpFormat}`, `--snapshot=${snapshotId}`, '--no-password'];
  if (ctx.dumpFormat === 'directory') args.push(`--jobs=${opts.jobs}`);
  else {
    // Created here with mode 0600: pg_dump would create it with the umask's mode.
    fs.closeSync(openNewFile(p.partialPath, 0o600));
  }
  const toolEnv = pgToolEnv(resolveConnectionConfig({ databaseUrl: opts.databaseUrl, command: 'backup', env: opts.env }), {
    applicationName: pgDumpApplicationName(jobId),
    database: ctx.database,
    env: opts.env,
  });
  return runPgDump(ctx.tool, args, toolEnv, p.partialPath, { signal: opts.signal, started, onBytes });
}

/** The typed error (and job record) for a pg_dump run that was interrupted or failed; undefined when it succeeded. */
async function dumpRunFailure(
  pool: Pool,
  ctx: DumpContext,
  opts: BackupOptions,
  jobId: number,
  run: Awaited<ReturnType<typeof runPgDump>>,
  bytesDone: number,
): Promise<Error | undefined> {
  if (run.aborted || opts.signal?.aborted || run.signal === 'SIGINT') {
    await finishJob(pool, jobId, 'interrupted', 'interrupted by a signal while pg_dump ran; no backup was written', {
      bytes_written: bytesDone,
    }).catch(() => undefined);
    return new InterruptedError(`backup interrupted; no backup was written (job ${jobId})`, { hint: 'run `alation-keys backup` again' });
  }
  if (run.spawnError || run.code !== 0) {
    const why = run.spawnError
      ? `could not run ${ctx.tool.path}: ${run.spawnError.message}`
      : `pg_dump ${run.signal ? `was killed by ${run.signal}` : `exited with code ${run.code}`}${run.stderr ? `: ${stderrTail(run.stderr)}` : ''}`;
    const full = /No space left on device/i.test(run.stderr) ? `${why} (the backup directory ${ctx.dir} is full)` : why;
    await finishJob(pool, jobId, 'failed', full, { bytes_written: bytesDone }).catch(() => undefined);
    return new OperationError(`backup failed: ${full}; no backup was written (job ${jobId})`);
  }
  return undefined;
}

/**
 * Makes the finished dump durable, checksums it, writes its manifest, and renames both into
 * place (the dump never looks finished without its manifest). Returns the manifest.
 */
async function publishDump(
  p: DumpPaths,
  dir: string,
  signal: AbortSignal | undefined,
  manifestOf: (sum: { bytes: number; sha256: string; files?: BackupManifest['files'] }) => BackupManifest,
): Promise<BackupManifest> {
  if (fs.statSync(p.partialPath).isDirectory()) {
    for (const n of fs.readdirSync(p.partialPath)) fsyncPath(path.join(p.partialPath, n));
  }
  fsyncPath(p.partialPath);
  const sum = await checksumDump(p.partialPath, signal);
  if (sum.bytes === 0) throw new OperationError('pg_dump exited successfully but wrote nothing');
  const manifest = manifestOf(sum);
  const mfd = openNewFile(p.manifestPartial, 0o644);
  try {
    fs.writeFileSync(mfd, JSON.stringify(manifest, null, 2) + '\n');
    fs.fsyncSync(mfd);
  } finally {
    fs.closeSync(mfd);
  }
  if (signal?.aborted) throw new InterruptedError('interrupted');
  if (nameTaken(p.finalPath) || nameTaken(p.manifestPath)) {
    throw new OperationError(`${p.finalPath} appeared while the backup ran; not overwriting it`);
  }
  fs.renameSync(p.partialPath, p.finalPath);
  try {
    fs.renameSync(p.manifestPartial, p.manifestPath);
  } catch (err) {
    // Without its manifest the dump must not look finished.
    fs.renameSync(p.finalPath, p.partialPath);
    throw err;
  }
  fsyncPath(dir);
  return manifest;
}

/** Records a written backup as succeeded; the files stay valid even when the record cannot be written. */
async function recordBackupSucceeded(pool: Pool, jobId: number, p: DumpPaths, manifest: BackupManifest): Promise<void> {
  try {
    await finishJob(pool, jobId, 'succeeded', undefined, { manifest, path: p.finalPath, manifest_path: p.manifestPath });
    await recordBytesDone(pool, jobId, manifest.bytes);
  } catch (err) {
    throw new OperationError(
      `the backup was written to ${p.finalPath} (sha256 ${manifest.sha256}), but job ${jobId} could not be marked succeeded: ${(err as Error).message}`,
      { hint: '`backup verify` still checks it from its manifest; `rotate` will not count it as a fresh backup', cause: err },
    );
  }
}

/** The error a failure after pg_dump finished becomes, recorded on the job. */
async function publishFailure(pool: Pool, dir: string, opts: BackupOptions, jobId: number, err: unknown): Promise<Error> {
  if (err instanceof InterruptedError || opts.signal?.aborted) {
    await finishJob(pool, jobId, 'interrupted', 'interrupted by a signal after pg_dump; no backup was written').catch(() => undefined);
    return new InterruptedError(`backup interrupted; no backup was written (job ${jobId})`, { hint: 'run `alation-keys backup` again' });
  }
  const e = err as NodeJS.ErrnoException;
  const msg = e.code === 'ENOSPC' ? `the backup directory ${dir} is full (${e.message})` : e.message;
  await finishJob(pool, jobId, 'failed', msg).catch(() => undefined);
  return err instanceof OperationError ? err : new OperationError(`backup failed: ${msg}; no backup was written (job ${jobId})`, { cause: err });
}

async function dumpWithSnapshot(pool: Pool, opts: BackupOptions, ctx: DumpContext): Promise<BackupResult> {
  const startedAt = new Date();
  const started = Date.now();
  const p = dumpPaths(ctx.dir, ctx.database, startedAt);
  const snap: PoolClient = await pool.connect();
  let snapOpen = false;
  let jobId: number | undefined;
  /** The finished dump and manifest are in place: no cleanup may touch them. */
  let written = false;
  try {
    snapOpen = true;
    const { snapshotId, snapshotAt, keyring, settings } = await exportSnapshot(snap);
    const schemaV = await schemaVersion(pool);
    const keys = manifestKeys(keyring);
    // The job is written outside the snapshot, so a restored database does not show it running.
    const job = await createJob(pool, {
      actor: opts.actor,
      kind: 'backup',
      detail: {
        dir: ctx.dir,
        file: p.name,
        path: p.finalPath,
        dump_format: ctx.dumpFormat,
        jobs: opts.jobs ?? null,
        pg_dump: { version: ctx.tool.version.text, path: ctx.tool.path },
        needed_versions: keys.needed_versions,
      },
    });
    jobId = job.id;
    const progress = dumpProgress(pool, job.id, opts, started);
    const run = await runDump(ctx, opts, p, snapshotId, job.id, started, (b) => progress.onBytes(b));
    await progress.settled();
    // pg_dump has imported the snapshot long ago; end the exporting transaction.
    await snap.query('COMMIT').catch(() => undefined);
    snapOpen = false;
    const failure = await dumpRunFailure(pool, ctx, opts, job.id, run, progress.bytes);
    if (failure) {
      removePartials(p);
      throw failure;
    }
    let manifest: BackupManifest;
    try {
      manifest = await publishDump(p, ctx.dir, opts.signal, (sum) => ({
        format: MANIFEST_FORMAT,
        version: MANIFEST_VERSION,
        file: p.name,
        dump_format: ctx.dumpFormat,
        bytes: sum.bytes,
        sha256: sum.sha256,
        ...(sum.files ? { files: sum.files } : {}),
        database: ctx.database,
        installation_id: settings.installation_id ?? null,
        schema_version: schemaV,
        server: { version: ctx.serverVersion, version_num: ctx.serverNum },
        pg_dump: { version: ctx.tool.version.text, path: ctx.tool.path },
        started_at: startedAt.toISOString(),
        finished_at: new Date().toISOString(),
        snapshot_at: snapshotAt.toISOString(),
        snapshot_id: snapshotId,
        job_id: job.id,
        keys,
        created_by: { tool: 'alation-keys', version: toolVersion(), actor: opts.actor ?? processActor() },
      }));
    } catch (err) {
      removePartials(p);
      throw await publishFailure(pool, ctx.dir, opts, job.id, err);
    }
    written = true;
    await recordBackupSucceeded(pool, job.id, p, manifest);
    const needsLocal = manifest.keys.deks.some((d) => d.needed && d.kek_provider === 'local');
    return {
      jobId: job.id,
      file: p.finalPath,
      manifestFile: p.manifestPath,
      bytes: manifest.bytes,
      sha256: manifest.sha256,
      manifest,
      elapsedMs: Date.now() - started,
      removedPartials: ctx.removedPartials,
      masterKeyFile: needsLocal ? resolveMasterKeyPath(opts.masterKeyFile, opts.env) : null,
      pgDumpWarnings: run.stderr
        .split('\n')
        .map((l) => l.trim())
        .filter(Boolean)
        .slice(-20),
    };
  } catch (err) {
    if (written) throw err;
    removePartials(p);
    // Anything not already recorded (e.g. the database connection failed) marks the job failed.
    if (jobId !== undefined) await failJobIfRunning(pool, jobId, (err as Error).message).catch(() => undefined);
    throw err;
  } finally {
    let broken = false;
    if (snapOpen) await snap.query('ROLLBACK').catch(() => (broken = true));
    snap.release(broken);
  }
}

/** Our version, read lazily (src/version reads package.json relative to dist/, absent when run from source). */
function toolVersion(): string {
  try {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    return (require('../version') as { VERSION: string }).VERSION;
  } catch {
    return 'unknown';
  }
}

