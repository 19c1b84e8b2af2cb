/** Job records (SPEC 4.3). Never holds key material or secrets. */
import * as os from 'node:os';
import { Pool } from 'pg';
import { UsageError } from '../errors';
import { heldAdvisoryLockWhere, MAINTENANCE_LOCK, Queryable } from '../db/transaction';

export const JOB_STATES = ['running', 'succeeded', 'failed', 'interrupted'] as const;
export type JobState = (typeof JOB_STATES)[number];

export interface JobRecord {
  id: number;
  kind: string;
  state: JobState;
  started_at: Date;
  finished_at: Date | null;
  actor: string;
  from_version: number | null;
  to_version: number | null;
  rows_total: number | null;
  rows_done: number;
  bytes_done: number;
  detail: Record<string, any>;
  error: string | null;
  updated_at: Date;
}

const JOB_COLUMNS = `id::int AS id, kind, state, started_at, finished_at, actor, from_version, to_version,
  rows_total::float8 AS rows_total, rows_done::float8 AS rows_done, bytes_done::float8 AS bytes_done, detail, error, updated_at`;

/**
 * Who runs this process, as job records name it: `user@host pid N`, plus ` (sudo by NAME)`
 * when the caller says who ran sudo (the command line reads that from SUDO_USER; core does not
 * read the environment).
 */
export function processActor(sudoUser?: string): string {
  let user = 'unknown';
  try {
    user = os.userInfo().username;
  } catch {
    /* no passwd entry for this uid: the user stays unknown */
  }
  const sudo = sudoUser ? ` (sudo by ${sudoUser})` : '';
  return `${user}@${os.hostname()} pid ${process.pid}${sudo}`;
}

/** What a core function that records a job is told about who runs it. */
export interface JobActorOption {
  /** Who runs the job (default: processActor()). */
  actor?: string;
}

export async function createJob(
  db: Queryable,
  job: { kind: string; fromVersion?: number | null; toVersion?: number | null; rowsTotal?: number | null; detail?: object; actor?: string },
): Promise<JobRecord> {
  const r = await db.query<JobRecord>(
    `INSERT INTO alation_keys.jobs (kind, state, actor, from_version, to_version, rows_total, detail)
     VALUES ($1, 'running', $2, $3, $4, $5, $6::jsonb) RETURNING ${JOB_COLUMNS}`,
    [job.kind, job.actor ?? processActor(), job.fromVersion ?? null, job.toVersion ?? null, job.rowsTotal ?? null, JSON.stringify(job.detail ?? {})],
  );
  return r.rows[0];
}

export async function finishJob(db: Queryable, id: number, state: Exclude<JobState, 'running'>, error?: string, detail?: object): Promise<void> {
  await db.query(
    `UPDATE alation_keys.jobs SET state = $2, finished_at = now(), updated_at = now(), error = $3,
            detail = CASE WHEN $4::jsonb IS NULL THEN detail ELSE detail || $4::jsonb END
      WHERE id = $1`,
    [id, state, error ?? null, detail ? JSON.stringify(detail) : null],
  );
}

/** Marks job `id` failed unless something already recorded how it ended. */
export async function failJobIfRunning(db: Queryable, id: number, error: string): Promise<void> {
  await db.query(
    `UPDATE alation_keys.jobs SET state = 'failed', finished_at = now(), updated_at = now(), error = $2 WHERE id = $1 AND state = 'running'`,
    [id, error],
  );
}

/** Merges `patch` into job `id`'s detail (top-level keys replaced). */
export async function recordJobDetail(db: Queryable, id: number, patch: object): Promise<void> {
  await db.query(`UPDATE alation_keys.jobs SET detail = detail || $2::jsonb, updated_at = now() WHERE id = $1`, [id, JSON.stringify(patch)]);
}

/** Reopens an interrupted or crashed job for resumption. */
export async function reopenJob(db: Queryable, id: number): Promise<void> {
  await db.query(`UPDATE alation_keys.jobs SET state = 'running', finished_at = NULL, error = NULL, updated_at = now() WHERE id = $1`, [id]);
}

/**
 * Checkpoints one column of a rewrite job: merges `state` into detail.columns[column] and adds
 * the rows and bytes just written to the job's totals (in the caller's transaction, if any).
 */
export async function recordColumnCheckpoint(db: Queryable, jobId: number, column: string, state: object, rows = 0, bytes = 0): Promise<void> {
  await db.query(
    `UPDATE alation_keys.jobs
        SET rows_done = rows_done + $2, bytes_done = bytes_done + $3, updated_at = now(),
            detail = jsonb_set(detail, ARRAY['columns', $4::text], coalesce(detail->'columns'->$4::text, '{}'::jsonb) || $5::jsonb)
      WHERE id = $1`,
    [jobId, rows, bytes, column, JSON.stringify(state)],
  );
}

export async function getJob(db: Queryable, id: number): Promise<JobRecord | undefined> {
  const r = await db.query<JobRecord>(`SELECT ${JOB_COLUMNS} FROM alation_keys.jobs WHERE id = $1`, [id]);
  return r.rows[0];
}

export async function requireJob(db: Queryable, idText: string): Promise<JobRecord> {
  if (!/^\d{1,18}$/.test(idText)) throw new UsageError(`job id must be a positive whole number, got "${idText}"`);
  const job = await getJob(db, Number(idText));
  if (!job) throw new UsageError(`there is no job ${idText}`, { hint: 'see `alation-keys jobs list`' });
  return job;
}

export async function listJobs(db: Queryable, opts: { limit?: number; kind?: string } = {}): Promise<JobRecord[]> {
  const r = await db.query<JobRecord>(
    `SELECT ${JOB_COLUMNS} FROM alation_keys.jobs WHERE ($1::text IS NULL OR kind = $1) ORDER BY id DESC LIMIT $2`,
    [opts.kind ?? null, opts.limit ?? 20],
  );
  return r.rows;
}

export type LatestJob = Pick<JobRecord, 'id' | 'kind' | 'state' | 'started_at' | 'finished_at'>;

/** The latest job of each kind, by kind. */
export async function latestJobPerKind(db: Queryable): Promise<LatestJob[]> {
  const r = await db.query<LatestJob>(
    `SELECT DISTINCT ON (kind) id::int AS id, kind, state, started_at, finished_at FROM alation_keys.jobs ORDER BY kind, id DESC`,
  );
  return r.rows;
}

/** Backup jobs, newest first: succeeded and running ones, or every one with `all`. */
export async function listBackupJobs(db: Queryable, opts: { limit?: number; all?: boolean } = {}): Promise<JobRecord[]> {
  const r = await db.query<JobRecord>(
    `SELECT ${JOB_COLUMNS} FROM alation_keys.jobs WHERE kind = 'backup' AND ($1 OR state IN ('succeeded', 'running'))
      ORDER BY id DESC LIMIT $2`,
    [!!opts.all, opts.limit ?? 20],
  );
  return r.rows;
}

/** Succeeded backup jobs whose manifest lists DEK `version` among the keys in the dump, newest first. */
export async function backupJobsListingKey(db: Queryable, version: number): Promise<JobRecord[]> {
  const r = await db.query<JobRecord>(
    `SELECT ${JOB_COLUMNS} FROM alation_keys.jobs
      WHERE kind = 'backup' AND state = 'succeeded'
        AND detail->'manifest'->'keys'->'deks' @> jsonb_build_array(jsonb_build_object('version', $1::int))
      ORDER BY id DESC`,
    [version],
  );
  return r.rows;
}

/** The `keys.deks` list of every succeeded backup's manifest, with when the backup finished. */
export async function succeededBackupKeyLists<Dek>(db: Queryable): Promise<Array<{ finished_at: Date; deks: Dek[] | null }>> {
  const r = await db.query<{ finished_at: Date; deks: Dek[] | null }>(
    `SELECT finished_at, detail->'manifest'->'keys'->'deks' AS deks FROM alation_keys.jobs WHERE kind = 'backup' AND state = 'succeeded'`,
  );
  return r.rows;
}

/** Manifests of succeeded backup jobs that wrote the dump file named `file`, newest first. */
export async function backupManifestsForFile<Manifest>(db: Queryable, file: string): Promise<Array<{ id: number; manifest: Manifest }>> {
  const r = await db.query<{ id: number; manifest: Manifest }>(
    `SELECT id::int AS id, detail->'manifest' AS manifest FROM alation_keys.jobs
      WHERE kind = 'backup' AND state = 'succeeded' AND detail->'manifest'->>'file' = $1 ORDER BY id DESC`,
    [file],
  );
  return r.rows;
}

/** Records the bytes a running job has written so far (a backup's dump size). */
export async function recordBytesDone(db: Queryable, id: number, bytes: number): Promise<void> {
  await db.query('UPDATE alation_keys.jobs SET bytes_done = $2, updated_at = now() WHERE id = $1', [id, bytes]);
}

/** Master key ids the job history names: added by a rotation, or re-wrapped away from. */
export async function masterKeyIdsInJobs(db: Queryable): Promise<string[]> {
  const r = await db.query<{ id: string }>(
    `SELECT detail->>'masterKeyAdded' AS id FROM alation_keys.jobs WHERE detail->>'masterKeyAdded' IS NOT NULL
     UNION SELECT jsonb_array_elements_text(detail->'rewrappedFrom') FROM alation_keys.jobs WHERE jsonb_typeof(detail->'rewrappedFrom') = 'array'`,
  );
  return r.rows.map((x) => x.id);
}

export async function lastSucceededJob(db: Queryable, kind: string): Promise<JobRecord | undefined> {
  const r = await db.query<JobRecord>(
    `SELECT ${JOB_COLUMNS} FROM alation_keys.jobs WHERE kind = $1 AND state = 'succeeded' ORDER BY finished_at DESC LIMIT 1`,
    [kind],
  );
  return r.rows[0];
}

/**
 * application_name of the pg_dump sessions of backup job `jobId`: after the tool itself was
 * killed, pg_dump would otherwise run on (holding its snapshot) until it finished.
 */
export function pgDumpApplicationName(jobId: number): string {
  return `alation-keys/backup pg_dump job ${jobId}`;
}

const ORPHANED = `state = 'interrupted', finished_at = coalesce(finished_at, updated_at), updated_at = now(),
              error = coalesce(error, 'the process stopped without finishing (killed, or the database restarted)')`;

/**
 * Marks `running` jobs whose process is gone (no session holds the maintenance lock) as
 * interrupted, so history tells the truth after a kill -9 or a database restart, and ends the
 * pg_dump sessions an orphaned backup left behind.
 */
export async function markOrphanedJobs(db: Queryable, opts: { holdingLock?: boolean } = {}): Promise<number> {
  const r = opts.holdingLock
    ? // We hold the lock ourselves, so no other job can be running.
      await db.query<{ id: string; kind: string }>(`UPDATE alation_keys.jobs SET ${ORPHANED} WHERE state = 'running' RETURNING id::text, kind`)
    : await db.query<{ id: string; kind: string }>(
        `UPDATE alation_keys.jobs SET ${ORPHANED}
          WHERE state = 'running'
            AND NOT EXISTS (SELECT 1 FROM pg_locks WHERE ${heldAdvisoryLockWhere('$1', '$2')})
          RETURNING id::text, kind`,
        [MAINTENANCE_LOCK[0], MAINTENANCE_LOCK[1]],
      );
  const dumps = r.rows.filter((j) => j.kind === 'backup').map((j) => pgDumpApplicationName(Number(j.id)));
  if (dumps.length > 0) {
    // Best effort: ending another session needs the same role (or pg_signal_backend).
    await db
      .query(
        `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = current_database() AND application_name = ANY($1::text[]) AND pid <> pg_backend_pid()`,
        [dumps],
      )
      .catch(() => undefined);
  }
  return r.rowCount ?? 0;
}

/** Whether the process that recorded `actor` (`user@host pid N`) still runs: null when it cannot be told here. */
function recordedClientAlive(actor: string): { pid: number; host: string; alive: boolean | null } | undefined {
  const m = /@(\S+) pid (\d+)/.exec(actor);
  if (!m) return undefined;
  const pid = Number(m[2]);
  if (m[1] !== os.hostname()) return { pid, host: m[1], alive: null };
  try {
    process.kill(pid, 0);
    return { pid, host: m[1], alive: true };
  } catch (err) {
    return { pid, host: m[1], alive: (err as NodeJS.ErrnoException).code === 'EPERM' };
  }
}

/**
 * A human description of the job holding the maintenance lock, for lock-conflict errors: the
 * job, the backend, whether the client process that recorded the job is still alive, and how
 * to end a session whose client is gone.
 */
export async function describeLockHolder(pool: Pool, pid: number | undefined): Promise<string> {
  const running = await pool.query<JobRecord>(
    `SELECT ${JOB_COLUMNS} FROM alation_keys.jobs WHERE state = 'running' ORDER BY id DESC LIMIT 1`,
  );
  const job = running.rows[0];
  const proc = pid
    ? (await pool.query<{ application_name: string; client_addr: string | null }>(
        'SELECT application_name, client_addr::text FROM pg_stat_activity WHERE pid = $1',
        [pid],
      )).rows[0]
    : undefined;
  const parts: string[] = [];
  if (job) parts.push(`job ${job.id} (${job.kind}, started ${job.started_at.toISOString()} by ${job.actor})`);
  if (proc) parts.push(`${proc.application_name || 'a session'}, backend pid ${pid}`);
  let text = parts.join(', ') || `backend pid ${pid ?? 'unknown'}`;
  const client = job ? recordedClientAlive(job.actor) : undefined;
  if (client?.alive === false) text += `; its client process ${client.pid} on this host is gone`;
  else if (client?.alive === true) text += `; its client process ${client.pid} on this host is still running`;
  else if (client) text += `; its client process ${client.pid} ran on ${client.host} (check there whether it is alive)`;
  if (pid && client?.alive !== true) text += `; if that client is gone, end the session with SELECT pg_terminate_backend(${pid})`;
  return text;
}
