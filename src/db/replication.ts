/**
 * What the primary knows of its streaming standbys (pg_stat_replication) and of its own WAL
 * position. The standbys' positions and lag times are visible only to superusers and members
 * of pg_read_all_stats (or pg_monitor); to anyone else those columns read NULL.
 */
import { Queryable } from './transaction';

export interface StandbyPosition {
  /** application_name from the standby's primary_conninfo (the walreceiver's cluster_name, else "walreceiver"). */
  name: string;
  /** walsender state: startup, catchup, streaming, backup or stopping. */
  state: string | null;
  /** WAL bytes the standby has still to replay (null when not visible). */
  replayBehindBytes: number | null;
  /** replay_lsn as a byte position (null when not visible). */
  replayPosition: number | null;
  /** PostgreSQL's own replay_lag in ms (null while it has no measurement, or after the standby caught up). */
  replayLagMs: number | null;
}

export interface ReplicationSnapshot {
  /** pg_current_wal_lsn() as a byte position. */
  walPosition: number;
  standbys: StandbyPosition[];
}

/** The primary's WAL position and each connected standby's (one query). */
export async function readReplication(db: Queryable): Promise<ReplicationSnapshot> {
  const r = await db.query<{
    wal: string;
    name: string | null;
    state: string | null;
    replay: string | null;
    behind: string | null;
    lag_ms: number | null;
  }>(
    `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::text AS wal,
            s.application_name AS name, s.state,
            pg_wal_lsn_diff(s.replay_lsn, '0/0')::text AS replay,
            pg_wal_lsn_diff(pg_current_wal_lsn(), s.replay_lsn)::text AS behind,
            (extract(epoch FROM s.replay_lag) * 1000)::float8 AS lag_ms
       FROM (SELECT 1) one LEFT JOIN pg_stat_replication s ON true`,
  );
  const num = (t: string | null) => (t === null ? null : Number(t));
  return {
    walPosition: Number(r.rows[0].wal),
    standbys: r.rows
      .filter((x) => x.name !== null)
      .map((x) => ({ name: x.name!, state: x.state, replayPosition: num(x.replay), replayBehindBytes: num(x.behind), replayLagMs: x.lag_ms })),
  };
}

/** Whether this role may see the standbys' positions (superuser, pg_read_all_stats or pg_monitor). */
export async function canSeeReplication(db: Queryable): Promise<boolean> {
  const r = await db.query<{ ok: boolean }>(
    `SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
            OR pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') AS ok`,
  );
  return r.rows[0].ok;
}

/** The primary's WAL position alone, as a byte position. */
export async function walPosition(db: Queryable): Promise<number> {
  const r = await db.query<{ wal: string }>(`SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::text AS wal`);
  return Number(r.rows[0].wal);
}
