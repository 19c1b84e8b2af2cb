/** `status`: keys, values per version per column, backup, headroom, jobs, and what needs attention. */
import { Pool } from 'pg';
import { requireInitialised } from '../db/migrations';
import { createKeyProvider, ProviderOptions } from '../kms';
import { censusColumn, ColumnCensus } from './census';
import { columnTypeProblem, EncryptedColumn, listColumns } from './columns';
import { Headroom, HEADROOM_RULE, HeadroomOptions, measureHeadroom } from './headroom';
import { formatColumnName } from './identifiers';
import { JobRecord, lastSucceededJob, listJobs, markOrphanedJobs } from './jobs';
import { KeyringRow, readKeyring } from './keyring';
import { readSettings, Settings } from './settings';
import { count, verb } from '../plural';

export interface ColumnVersionCounts {
  column: string;
  storage: string;
  /** encrypted | encrypting | decrypting (SPEC 4.2). */
  state: string;
  /** DEK version -> number of values. */
  versions: Record<string, number>;
  /** Values that start like an envelope but whose header cannot be read. */
  malformed: number;
  /** Non-NULL values that are not envelopes. */
  plaintext: number;
  nulls: number;
  /** The column was dropped or changed type since registration: not counted. */
  problem?: string;
}

export interface KeyStatus {
  version: number;
  state: string;
  kekProvider: string;
  kekId: string;
  createdAt: string;
  ageDays: number;
  retiredAt: string | null;
  destroyedAt: string | null;
  values: number;
  valuesByColumn: Record<string, number>;
}

export interface StatusReport {
  installationId: string | null;
  provider: { kind: string; kekId: string | null; reachable: boolean | null; error?: string; aws?: Record<string, unknown>; byokEnabledAt?: string };
  keys: KeyStatus[];
  primaryVersion: number | null;
  columns: ColumnVersionCounts[];
  lastBackup: { jobId: number; finishedAt: string; ageHours: number; file: string | null; predatesPrimary: boolean } | null;
  headroom: Headroom;
  recentJobs: Array<Pick<JobRecord, 'id' | 'kind' | 'state' | 'from_version' | 'to_version' | 'rows_done' | 'rows_total' | 'error'> & { started_at: string; finished_at: string | null }>;
  attention: string[];
}

export function versionCounts(c: ColumnCensus): ColumnVersionCounts {
  const versions: Record<string, number> = {};
  for (const [v, n] of Object.entries(c.versions)) versions[v] = n.values;
  return { column: c.column, storage: c.storage, state: c.state, versions, malformed: c.malformed, plaintext: c.plaintext, nulls: c.nulls };
}

export async function countVersions(pool: Pool, col: EncryptedColumn): Promise<ColumnVersionCounts> {
  const problem = await columnTypeProblem(pool, col);
  if (problem) {
    return { column: formatColumnName(col), storage: col.storage, state: col.state, versions: {}, malformed: 0, plaintext: 0, nulls: 0, problem: problem.error.message };
  }
  return versionCounts(await censusColumn(pool, col));
}

const DAY = 86_400_000;

export async function collectStatus(
  pool: Pool,
  opts: ProviderOptions & HeadroomOptions & { checkProvider?: boolean; now?: Date } = {},
): Promise<StatusReport> {
  await requireInitialised(pool);
  const now = opts.now ?? new Date();
  await markOrphanedJobs(pool);
  const [settings, keyring, columns] = await Promise.all([readSettings(pool), readKeyring(pool), listColumns(pool)]);
  const counts = await Promise.all(columns.map((c) => countVersions(pool, c)));
  const attention: string[] = [];

  const provider = await providerStatus(settings, keyring, opts, attention);
  const keys: KeyStatus[] = keyring.map((k: KeyringRow) => {
    const valuesByColumn: Record<string, number> = {};
    let values = 0;
    for (const c of counts) {
      const n = c.versions[String(k.version)] ?? 0;
      if (n > 0) valuesByColumn[c.column] = n;
      values += n;
    }
    return {
      version: k.version,
      state: k.state,
      kekProvider: k.kek_provider,
      kekId: k.kek_id,
      createdAt: k.created_at.toISOString(),
      ageDays: Math.floor((now.getTime() - k.created_at.getTime()) / DAY),
      retiredAt: k.retired_at?.toISOString() ?? null,
      destroyedAt: k.destroyed_at?.toISOString() ?? null,
      values,
      valuesByColumn,
    };
  });
  const primary = keyring.find((k) => k.state === 'primary');
  if (!primary) attention.push('the keyring has no primary data key');

  const known = new Map(keyring.map((k) => [String(k.version), k.state]));
  for (const c of counts) {
    if (c.problem) attention.push(c.problem);
    if (c.malformed > 0) attention.push(`${c.column}: ${count(c.malformed, 'value')} ${verb(c.malformed, 'looks like an envelope but is', 'look like envelopes but are')} malformed; run \`alation-keys verify ${c.column}\``);
    if (c.plaintext > 0 && c.state === 'encrypted') {
      attention.push(`${c.column}: ${count(c.plaintext, 'plaintext value')} in an encrypted column; run \`alation-keys verify ${c.column}\`, then \`alation-keys encrypt ${c.column}\``);
    }
    if (c.state === 'encrypting') attention.push(`${c.column} is encrypting: ${count(c.plaintext, 'plaintext value')} left; run \`alation-keys encrypt ${c.column}\``);
    if (c.state === 'decrypting') attention.push(`${c.column} is decrypting: ${count(Object.values(c.versions).reduce((a, n) => a + n, c.malformed), 'envelope')} left; run \`alation-keys decrypt ${c.column}\` to finish`);
    for (const [v, n] of Object.entries(c.versions)) {
      const state = known.get(v);
      if (!state) attention.push(`${c.column}: ${count(n, 'value')} ${verb(n, 'uses', 'use')} data key v${v}, which the keyring does not have`);
      else if (state === 'destroyed') attention.push(`${c.column}: ${count(n, 'value')} ${verb(n, 'uses', 'use')} destroyed data key v${v}`);
      else if (state === 'retired') attention.push(`${c.column}: ${count(n, 'value')} ${verb(n, 'uses', 'use')} retired data key v${v}; run \`alation-keys rotate\``);
    }
  }

  const backupJob = await lastSucceededJob(pool, 'backup');
  let lastBackup: StatusReport['lastBackup'] = null;
  if (backupJob?.finished_at) {
    const predatesPrimary = !!primary && backupJob.finished_at < primary.created_at;
    lastBackup = {
      jobId: backupJob.id,
      finishedAt: backupJob.finished_at.toISOString(),
      ageHours: Math.round(((now.getTime() - backupJob.finished_at.getTime()) / 3_600_000) * 10) / 10,
      file: (backupJob.detail?.manifest?.file as string | undefined) ?? (backupJob.detail?.file as string | undefined) ?? null,
      predatesPrimary,
    };
    if (predatesPrimary) attention.push(`the newest backup (job ${backupJob.id}) predates the primary data key v${primary!.version}; take a backup`);
  } else {
    attention.push('no successful backup is recorded; run `alation-keys backup`');
  }

  const headroom = await measureHeadroom(pool, opts);
  if (headroom.ok === false) attention.push(`not enough free disk for a rotation (needs ${HEADROOM_RULE})`);

  const jobs = await listJobs(pool, { limit: 10 });
  for (const j of jobs) {
    if (j.kind === 'rotate' && (j.state === 'interrupted' || j.state === 'failed')) {
      const later = jobs.find((o) => o.kind === 'rotate' && o.id > j.id && o.state === 'succeeded');
      if (!later) attention.push(`rotation job ${j.id} is ${j.state}; run \`alation-keys rotate\` to resume it`);
      break;
    }
  }
  // The last verification that ran to its end: one that found values that do not decrypt stays an item until another passes.
  const [lastVerify] = (await listJobs(pool, { kind: 'verify', limit: 5 })).filter((j) => j.state === 'succeeded' || j.state === 'failed');
  if (lastVerify?.state === 'failed') attention.push(`the last verify, job ${lastVerify.id}, failed: ${lastVerify.error ?? 'see its record'}; see \`alation-keys jobs show ${lastVerify.id}\``);
  return {
    installationId: settings.installation_id ?? null,
    provider,
    keys,
    primaryVersion: primary?.version ?? null,
    columns: counts,
    lastBackup,
    headroom,
    recentJobs: jobs.map((j) => ({
      id: j.id,
      kind: j.kind,
      state: j.state,
      from_version: j.from_version,
      to_version: j.to_version,
      rows_done: j.rows_done,
      rows_total: j.rows_total,
      error: j.error,
      started_at: j.started_at.toISOString(),
      finished_at: j.finished_at?.toISOString() ?? null,
    })),
    attention,
  };
}

async function providerStatus(
  settings: Settings,
  keyring: KeyringRow[],
  opts: ProviderOptions & { checkProvider?: boolean },
  attention: string[],
): Promise<StatusReport['provider']> {
  const kind = settings.kek_provider ?? 'local';
  const out: StatusReport['provider'] = { kind, kekId: null, reachable: null };
  if (kind === 'aws-kms' && settings.aws) {
    out.kekId = settings.aws.key_arn;
    out.aws = { region: settings.aws.region, keyArn: settings.aws.key_arn, roleArn: settings.aws.role_arn, externalId: settings.aws.external_id };
    out.byokEnabledAt = settings.byok_enabled_at;
  }
  if (opts.checkProvider === false) return out;
  try {
    const provider = createKeyProvider(settings, opts);
    await provider.checkReachable();
    out.kekId = provider.currentKekId();
    out.reachable = true;
    // Every DEK must unwrap: proves the keyring matches the key provider.
    for (const k of keyring) {
      if (k.state === 'destroyed' || !k.wrapped_key) continue;
      (await provider.unwrapDataKey(k.version, k.wrapped_key, k.kek_id)).fill(0);
    }
  } catch (err) {
    out.reachable = false;
    out.error = (err as Error).message;
    attention.push(`key provider: ${(err as Error).message}`);
  }
  return out;
}
