/**
 * `status --prometheus`: the status report as metric families, named and measured the way
 * Prometheus expects (base units: seconds, bytes; one family per quantity, labels for the
 * dimensions). Every family here is a gauge: each is a snapshot of the database, none counts
 * events of this process, so none is a counter ending in `_total`.
 */
import { Pool } from 'pg';
import { HEADROOM_RULE } from './headroom';
import { JOB_STATES, latestJobPerKind, LatestJob } from './jobs';
import { collectStatus, StatusReport } from './status';

type StatusOptions = NonNullable<Parameters<typeof collectStatus>[1]>;

export interface MetricSample {
  labels: Record<string, string>;
  value: number;
}

export interface MetricFamily {
  name: string;
  help: string;
  type: 'gauge';
  samples: MetricSample[];
}

const DEK_STATES = ['primary', 'active', 'retired', 'destroyed'] as const;

export async function collectMetrics(pool: Pool, opts: StatusOptions = {}): Promise<MetricFamily[]> {
  const now = opts.now ?? new Date();
  const report = await collectStatus(pool, { ...opts, now });
  return statusMetrics(report, await latestJobPerKind(pool), now);
}

const seconds = (ms: number) => Math.round(ms) / 1000;

export function statusMetrics(report: StatusReport, latestJobs: LatestJob[], now: Date): MetricFamily[] {
  const families: MetricFamily[] = [];
  const gauge = (name: string, help: string, samples: MetricSample[]) => {
    families.push({ name: `alation_keys_${name}`, help, type: 'gauge', samples });
  };
  const one = (value: number): MetricSample[] => [{ labels: {}, value }];

  gauge('collected_timestamp_seconds', 'When these metrics were collected (Unix time).', one(seconds(now.getTime())));

  const primary = report.keys.find((k) => k.state === 'primary');
  if (primary) {
    gauge('primary_key_version', 'Version of the primary data key (DEK).', one(primary.version));
    gauge('primary_key_age_seconds', 'Age of the primary data key (DEK): time since it was created.', one(seconds(now.getTime() - Date.parse(primary.createdAt))));
  }
  gauge(
    'data_keys',
    'Data keys (DEKs) in the keyring per state.',
    DEK_STATES.map((state) => ({ labels: { state }, value: report.keys.filter((k) => k.state === state).length })),
  );
  gauge(
    'values',
    'Encrypted values per registered column and DEK version, counted from envelope headers.',
    report.columns.flatMap((c) =>
      Object.entries(c.versions)
        .sort(([a], [b]) => Number(a) - Number(b))
        .map(([version, n]) => ({ labels: { column: c.column, version }, value: n })),
    ),
  );
  gauge(
    'plaintext_values',
    'Non-NULL values of a registered column that are not envelopes.',
    report.columns.map((c) => ({ labels: { column: c.column }, value: c.plaintext })),
  );
  gauge(
    'malformed_values',
    'Values of a registered column that start like an envelope but whose header cannot be read.',
    report.columns.map((c) => ({ labels: { column: c.column }, value: c.malformed })),
  );

  if (report.lastBackup) {
    gauge('last_backup_timestamp_seconds', 'When the last successful backup finished (Unix time).', one(seconds(Date.parse(report.lastBackup.finishedAt))));
  }

  gauge(
    'last_job_state',
    'State of the latest job of each kind: 1 for its state, 0 for the others.',
    latestJobs.flatMap((j) => JOB_STATES.map((state) => ({ labels: { kind: j.kind, state }, value: j.state === state ? 1 : 0 }))),
  );
  gauge(
    'last_job_start_timestamp_seconds',
    'When the latest job of each kind started (Unix time).',
    latestJobs.map((j) => ({ labels: { kind: j.kind }, value: seconds(j.started_at.getTime()) })),
  );
  gauge(
    'last_job_duration_seconds',
    'How long the latest job of each kind ran (until now while it runs).',
    latestJobs.map((j) => ({ labels: { kind: j.kind }, value: seconds((j.finished_at ?? now).getTime() - j.started_at.getTime()) })),
  );

  const h = report.headroom;
  if (h.freeBytes !== null) {
    gauge('disk_free_bytes', "Free bytes on the filesystem of the server's data directory.", one(h.freeBytes));
  }
  gauge('disk_needed_bytes', `Free bytes a rotation needs (${HEADROOM_RULE}).`, one(h.requiredBytes));
  gauge('database_size_bytes', 'Size of the database (pg_database_size).', one(h.databaseBytes));

  if (report.provider.reachable !== null) {
    gauge(
      'key_provider_up',
      'Whether the key provider answered and every data key unwrapped (1) or not (0).',
      [{ labels: { provider: report.provider.kind }, value: report.provider.reachable ? 1 : 0 }],
    );
  }
  gauge('attention_items', 'Things that need attention (what status --check reports).', one(report.attention.length));
  return families;
}
