/**
 * Keeps a rewrite from running away from the primary's streaming standbys and WAL archive:
 * before each chunk, waits while a standby's replay lag is over --max-replica-lag, and holds the
 * WAL written by this run to --max-wal-rate. A standby that is gone (or stays behind) for
 * longer than --replica-timeout stops the job with exit 3; the job stays resumable.
 *
 * Lag is measured on the primary. PostgreSQL's replay_lag is only updated when the standby
 * replays past a sampled position, so a standby whose replay is paused or stuck keeps showing
 * an old, small figure. The gate therefore also keeps its own samples of the primary's WAL
 * position over time: a standby that has replayed up to position R is at least as far behind
 * as the time since the primary first was past R. The lag used is the larger of the two.
 */
import { Pool } from 'pg';
import { PreconditionError } from '../../errors';
import { canSeeReplication, readReplication, ReplicationSnapshot, StandbyPosition, walPosition } from '../../db/replication';
import { ChunkPacer } from './throttle';
import { sleep } from './util';

export const DEFAULT_REPLICA_TIMEOUT_MS = 10 * 60_000;
const POLL_MS = 250;
const REPORT_EVERY_MS = 10_000;
const MAX_SAMPLES = 4096;

export interface StandbyGateOptions {
  /** Pause while a standby's replay lag is over this (--max-replica-lag). */
  maxReplicaLagMs?: number;
  /** Only these standbys (application_name), else every standby connected at the start (--replica). */
  replicas?: string[];
  /** How long one wait may last before the job stops with exit 3 (--replica-timeout). */
  replicaTimeoutMs?: number;
  /** WAL bytes per second this run may write (--max-wal-rate). */
  maxWalBytesPerSecond?: number;
}

export interface StandbyGateEvents {
  info?(message: string): void;
  warn?(message: string): void;
}

/** Time this run spent waiting, by reason (recorded in the job). */
export interface ThrottledTime {
  replicaLagMs: number;
  walRateMs: number;
}

interface WalSample {
  at: number;
  position: number;
}

export class StandbyGate implements ChunkPacer {
  readonly throttled: ThrottledTime = { replicaLagMs: 0, walRateMs: 0 };
  private readonly samples: WalSample[] = [];
  private readonly watched: Set<string>;
  private walStart: WalSample | undefined;

  private constructor(
    private readonly pool: Pool,
    private readonly opts: StandbyGateOptions,
    private readonly events: StandbyGateEvents,
    watched: string[],
  ) {
    this.watched = new Set(watched);
  }

  /**
   * A gate for `opts`, or undefined when no bound is set. Checks the role may see the standbys
   * (exit 3 naming the privilege otherwise) and which standbys are watched.
   */
  static async open(pool: Pool, opts: StandbyGateOptions, events: StandbyGateEvents): Promise<StandbyGate | undefined> {
    if (opts.maxReplicaLagMs === undefined && opts.maxWalBytesPerSecond === undefined) return undefined;
    let watched: string[] = [];
    if (opts.maxReplicaLagMs !== undefined) {
      if (!(await canSeeReplication(pool))) {
        throw new PreconditionError('--max-replica-lag needs to read the standbys\' replay positions in pg_stat_replication, which this role may not see', {
          hint: 'GRANT pg_read_all_stats TO this role (or pg_monitor), or leave out --max-replica-lag',
        });
      }
      const now = await readReplication(pool);
      const connected = now.standbys.map((s) => s.name);
      watched = opts.replicas?.length ? opts.replicas : connected;
      const missing = watched.filter((n) => !connected.includes(n));
      if (missing.length) events.warn?.(`standby ${missing.join(', ')} is not connected now: waiting for it before each chunk (up to ${Math.round((opts.replicaTimeoutMs ?? DEFAULT_REPLICA_TIMEOUT_MS) / 1000)} s)`);
      if (watched.length === 0) events.warn?.('no standby is connected: --max-replica-lag has nothing to wait for (standbys that connect later are watched)');
      else events.info?.(`keeping standby replay lag under ${(opts.maxReplicaLagMs / 1000).toFixed(1)} s: ${watched.join(', ')}`);
    }
    const gate = new StandbyGate(pool, opts, events, watched);
    if (opts.maxWalBytesPerSecond !== undefined) gate.walStart = { at: Date.now(), position: await walPosition(pool) };
    return gate;
  }

  async take(_rows: number, signal: AbortSignal): Promise<void> {
    await this.holdWalRate(signal);
    if (this.opts.maxReplicaLagMs !== undefined) await this.waitForStandbys(this.opts.maxReplicaLagMs, signal);
  }

  /** Sleeps until the WAL this run wrote is within --max-wal-rate of the time it has run. */
  private async holdWalRate(signal: AbortSignal): Promise<void> {
    const rate = this.opts.maxWalBytesPerSecond;
    if (rate === undefined || !this.walStart) return;
    const written = (await walPosition(this.pool)) - this.walStart.position;
    const waitMs = this.walStart.at + (written / rate) * 1000 - Date.now();
    if (waitMs <= 0) return;
    const t0 = Date.now();
    await sleep(waitMs, signal);
    this.throttled.walRateMs += Date.now() - t0;
  }

  private async waitForStandbys(maxLagMs: number, signal: AbortSignal): Promise<void> {
    const timeoutMs = this.opts.replicaTimeoutMs ?? DEFAULT_REPLICA_TIMEOUT_MS;
    const t0 = Date.now();
    let lastReport = 0;
    // Set when the first check finds a standby behind: only real waits count as throttled, not
    // the one check every chunk makes.
    let waitingSince: number | undefined;
    for (;;) {
      const snapshot = await readReplication(this.pool);
      const now = Date.now();
      this.addSample({ at: now, position: snapshot.walPosition });
      const behind = this.standbysBehind(snapshot, maxLagMs, now);
      if (behind.length === 0 || signal.aborted) break;
      waitingSince ??= now;
      if (now - t0 > timeoutMs) {
        throw new PreconditionError(`gave up waiting for ${behind.join('; ')} after ${Math.round(timeoutMs / 1000)} s (--replica-timeout)`, {
          hint: 'bring the standby back (or leave it out with --replica NAME), then run the command again: the job resumes where it stopped',
        });
      }
      if (now - lastReport >= REPORT_EVERY_MS) {
        this.events.info?.(`waiting for ${behind.join('; ')} (bound ${(maxLagMs / 1000).toFixed(1)} s)`);
        lastReport = now;
      }
      await sleep(POLL_MS, signal);
    }
    if (waitingSince !== undefined) this.throttled.replicaLagMs += Date.now() - waitingSince;
  }

  /** Descriptions of the watched standbys that are gone or over the bound. */
  private standbysBehind(snapshot: ReplicationSnapshot, maxLagMs: number, now: number): string[] {
    const out: string[] = [];
    if (!this.opts.replicas?.length) for (const s of snapshot.standbys) this.watched.add(s.name);
    for (const name of this.watched) {
      const s = snapshot.standbys.find((x) => x.name === name);
      if (!s) {
        out.push(`standby ${name}: not connected`);
        continue;
      }
      const lag = this.lagOf(s, snapshot.walPosition, now);
      if (lag > maxLagMs) out.push(`standby ${name}: lag ${(lag / 1000).toFixed(1)} s${s.replayBehindBytes ? `, ${formatMB(s.replayBehindBytes)} of WAL to replay` : ''}`);
    }
    return out;
  }

  /** Replay lag of `s` in ms: the larger of PostgreSQL's figure and the time since the primary was past its replay position. */
  lagOf(s: StandbyPosition, current: number, now: number): number {
    if (s.replayPosition === null) return s.replayLagMs ?? 0;
    if (s.replayPosition >= current) return 0;
    // The first sample past the standby's position: unreplayed WAL existed at least since then.
    const past = this.samples.find((x) => x.position > s.replayPosition!);
    const own = past ? now - past.at : 0;
    return Math.max(own, s.replayLagMs ?? 0);
  }

  private addSample(x: WalSample): void {
    const last = this.samples[this.samples.length - 1];
    if (last && last.position === x.position) return;
    this.samples.push(x);
    // Bounded: drop every other old sample, keeping the span (and the oldest, the conservative one).
    if (this.samples.length > MAX_SAMPLES) {
      const kept = this.samples.filter((_, i) => i % 2 === 0 || i >= MAX_SAMPLES / 2);
      this.samples.splice(0, this.samples.length, ...kept);
    }
  }
}

function formatMB(bytes: number): string {
  return `${(bytes / 1048576).toFixed(1)} MB`;
}
