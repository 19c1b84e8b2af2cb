import { Command } from 'commander';
import { listBackups, verifyBackup, VerifyReport } from '../../core/backup-catalog';
import { takeBackup } from '../../core/backup';
import { testFreeBytesOverride } from '../../core/test-hooks';
import { formatBytes } from '../../core/headroom';
import { IntegrityError, UsageError } from '../../errors';
import { CommandContext, Runner } from '../context';
import { IOStreams } from '../io';
import { formatAge, formatTime, renderTable } from '../render';
import { count, noun, verb } from '../../plural';

function elapsed(ms: number): string {
  const s = Math.floor(ms / 1000);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return h ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

function parseJobs(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  if (!/^\d{1,2}$/.test(text) || Number(text) < 1 || Number(text) > 64) {
    throw new UsageError(`--jobs must be a whole number from 1 to 64, got "${text}"`);
  }
  return Number(text);
}

/** backup's flags as commander gives them. */
interface BackupFlags {
  out?: string;
  jobs?: string;
  pgDump?: string;
}

async function backupAction(ctx: CommandContext, opts: BackupFlags) {
  const jobs = parseJobs(opts.jobs);
  const signal = ctx.handleInterrupts();
  const dir = ctx.backupDir(opts.out);
  const progress = ctx.io.progress(`backing up to ${dir}`);
  let result;
  try {
    result = await takeBackup(ctx.pool, {
      outDir: dir,
      jobs,
      pgDump: opts.pgDump ?? ctx.env.ALATION_KEYS_PG_DUMP,
      databaseUrl: ctx.globals.databaseUrl,
      actor: ctx.actor,
      env: ctx.env,
      testFreeBytes: testFreeBytesOverride(ctx.env),
      masterKeyFile: ctx.globals.masterKeyFile,
      signal,
      onProgress: (p) => progress.update(`pg_dump: ${formatBytes(p.bytes)} written, ${elapsed(p.elapsedMs)} elapsed`),
    });
  } catch (err) {
    progress.fail(signal.aborted ? 'backup interrupted' : 'backup failed');
    throw err;
  }
  progress.succeed(`backup written: ${result.file} (${formatBytes(result.bytes)} in ${elapsed(result.elapsedMs)})`);
  for (const w of result.pgDumpWarnings) ctx.io.warn(w);
  for (const p of result.removedPartials) ctx.io.info(`removed an unfinished backup older than a day: ${p}`);
  const m = result.manifest;
  if (result.masterKeyFile) {
    ctx.io.warn(
      `the master key file ${result.masterKeyFile} is not inside the dump: keep a copy of it (master key ${m.keys.kek_ids.filter((id) => !id.startsWith('arn:')).join(', ')}) with the backups, stored apart from them; without it nothing in the backup can be decrypted`,
    );
  }
  if (m.keys.kek_ids.some((id) => id.startsWith('arn:'))) {
    ctx.io.info(`restoring needs the KMS key ${m.keys.kek_ids.filter((id) => id.startsWith('arn:')).join(', ')} and access to it through the installation's role`);
  }
  if (ctx.globals.json) {
    return ctx.io.printJson({
      ok: true,
      jobId: result.jobId,
      file: result.file,
      manifestFile: result.manifestFile,
      bytes: result.bytes,
      sha256: result.sha256,
      elapsedMs: result.elapsedMs,
      removedPartials: result.removedPartials,
      masterKeyFile: result.masterKeyFile,
      pgDumpWarnings: result.pgDumpWarnings,
      manifest: m,
    });
  }
  const primary = m.keys.primary_version !== null ? ` (primary v${m.keys.primary_version})` : '';
  ctx.io.print(
    [
      `backup   ${result.file}`,
      `manifest ${result.manifestFile}`,
      `size     ${formatBytes(result.bytes)} (${m.dump_format} format), sha256 ${result.sha256}`,
      `job      ${result.jobId}`,
      `keys     a restore needs ${noun(m.keys.needed_versions.length, 'data key')} ${m.keys.needed_versions.map((v) => `v${v}`).join(', ') || 'none'}${primary}, wrapped by ${m.keys.kek_provider} KEK ${m.keys.kek_ids.join(', ') || '-'}`,
    ].join('\n'),
  );
}

/** What today's keyring says of a key the backup needs; offline the keyring is not read (the detail says so). */
function keyStateNow(r: VerifyReport, k: VerifyReport['keys'][number]): string {
  if (r.offline) return '';
  return k.stateNow ? ` (${k.stateNow} in today's keyring)` : " (not in today's keyring)";
}

export function renderVerify(io: IOStreams, r: VerifyReport): string {
  const out = [`backup ${r.file}${r.jobId ? ` (job ${r.jobId})` : ''}`];
  for (const c of r.checks) out.push(`  ${c.ok ? io.ok('ok  ') : io.bad('FAIL')} ${c.check.padEnd(8)} ${c.detail}`);
  for (const k of r.keys) out.push(`       v${k.version}${keyStateNow(r, k)}: ${k.ok ? k.detail : io.bad(k.detail)}`);
  if (r.offline) out.push('offline: not checked whether a key the backup needs was destroyed since (run without --offline against the database for that)');
  out.push(r.ok ? io.ok('the backup is intact and can be restored with today\'s keys') : io.bad('the backup FAILED verification'));
  return out.join('\n');
}

export function register(program: Command, run: Runner): void {
  const backup = program
    .command('backup')
    .description('full pg_dump backup with a manifest of the keys a restore needs, recorded as a job (see also: backup list, backup verify)')
    .option('--out <dir>', 'backup directory (else $ALATION_KEYS_BACKUP_DIR, else /var/backups/alation-keys)')
    .option('--jobs <n>', 'dump in parallel with N jobs into directory format')
    .option('--pg-dump <path>', 'the pg_dump to use (else $ALATION_KEYS_PG_DUMP, PATH, /usr/lib/postgresql/<major>/bin, /usr/pgsql-<major>/bin)');
  backup.action(run('backup', backup, (ctx, _a, opts: BackupFlags) => backupAction(ctx, opts)));

  const list = backup
    .command('list')
    .description('backups recorded as jobs, newest first, flagging files missing on disk')
    .option('--all', 'include failed and interrupted backups')
    .option('--limit <n>', 'how many', '20');
  list.action(
    run('backup', list, async (ctx, _a, opts: { all?: boolean; limit: string }) => {
      const limit = Number(opts.limit);
      if (!Number.isInteger(limit) || limit < 1) throw new UsageError(`--limit must be a positive whole number, got "${opts.limit}"`);
      const backups = await listBackups(ctx.pool, { limit, all: !!opts.all });
      if (ctx.globals.json) return ctx.io.printJson({ backups });
      if (backups.length === 0) return ctx.io.print('no backups recorded (take one with `alation-keys backup`)');
      ctx.io.print(
        renderTable(
          ctx.io,
          ['job', 'state', 'finished', 'age', 'file', 'size', 'keys needed', 'on disk'],
          backups.map((b) => [
            b.jobId,
            b.state,
            formatTime(b.finishedAt),
            b.finishedAt ? formatAge(b.finishedAt) : '',
            b.path ?? '',
            b.state === 'succeeded' ? formatBytes(b.bytes) : '',
            b.neededVersions.map((v) => `v${v}`).join(', '),
            b.onDisk === null
              ? b.error ?? ''
              : b.onDisk === 'present'
                ? 'yes'
                : ctx.io.bad(b.onDisk === 'missing' ? `MISSING${b.otherHost ? ` (taken on ${b.otherHost})` : ''}` : 'manifest missing'),
          ]),
        ),
      );
      const missing = backups.filter((b) => b.onDisk === 'missing' || b.onDisk === 'manifest-missing');
      if (missing.length) ctx.io.warn(`${count(missing.length, 'recorded backup')} ${verb(missing.length, 'is', 'are')} not on this host's disk: ${missing.map((b) => `job ${b.jobId}`).join(', ')}`);
    }),
  );

  const verify = backup
    .command('verify')
    .description("check a backup: checksum, pg_restore --list, and that every key it needs is still available (exit 5 if not)")
    .argument('<file>', 'the dump (or its .manifest.json)')
    .option('--pg-restore <path>', 'the pg_restore to use (else $ALATION_KEYS_PG_RESTORE, PATH, per-version directories)')
    .option('--offline', 'without the database: needs the manifest file; checks the keys inside the dump against the master key file or KMS key, but not whether a key was destroyed since');
  verify.action(
    run('backup', verify, async (ctx, [file], opts: { pgRestore?: string; offline?: boolean }) => {
      const progress = ctx.io.progress(`verifying ${file}`);
      let report: VerifyReport;
      try {
        report = await verifyBackup(opts.offline ? undefined : ctx.pool, file, {
          offline: !!opts.offline,
          masterKeyFile: ctx.globals.masterKeyFile,
          awsProfile: ctx.globals.profile,
          pgRestore: opts.pgRestore ?? ctx.env.ALATION_KEYS_PG_RESTORE,
          env: ctx.env,
        });
      } catch (err) {
        progress.fail('verification could not run');
        throw err;
      }
      progress.stop();
      if (ctx.globals.json) ctx.io.printJson(report);
      else ctx.io.print(renderVerify(ctx.io, report));
      if (!report.ok) {
        const failed = report.checks.filter((c) => !c.ok).map((c) => c.check);
        const why = failed.includes('keys')
          ? "it could not be restored with today's keys"
          : failed.includes('checksum')
            ? 'its checksum does not match the manifest (the file is damaged or was changed)'
            : `failed ${noun(failed.length, 'check')}: ${failed.join(', ')}`;
        throw new IntegrityError(`backup ${report.file} failed verification: ${why}`, undefined, { reported: true });
      }
    }),
  );
}
