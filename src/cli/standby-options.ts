/** The flags that keep a rewrite (rotate, encrypt, decrypt) gentle on standbys and WAL archives. */
import { Command } from 'commander';
import { DEFAULT_REPLICA_TIMEOUT_MS, StandbyGateOptions, ThrottledTime } from '../core/rewrite/standby-gate';
import { parseDuration, parsePositiveNumber } from '../core/rewrite/util';

export interface StandbyFlags {
  maxReplicaLag?: string;
  replica?: string[];
  replicaTimeout?: string;
  maxWalRate?: string;
}

export function addStandbyOptions(cmd: Command): Command {
  return cmd
    .option('--max-replica-lag <duration>', 'pause before each chunk while a streaming standby replays more than this behind (e.g. 5s); needs pg_read_all_stats')
    .option('--replica <name>', 'watch only this standby (its application_name; repeat for several); default: every connected standby', (v: string, prev: string[] = []) => [...prev, v])
    .option('--replica-timeout <duration>', 'stop (exit 3, resumable) when a watched standby is gone or behind for this long', `${DEFAULT_REPLICA_TIMEOUT_MS / 60_000}m`)
    .option('--max-wal-rate <MB/s>', 'write at most this many MB of WAL per second (for a WAL archive or a slow link)');
}

export function parseStandbyOptions(flags: StandbyFlags): StandbyGateOptions {
  return {
    maxReplicaLagMs: flags.maxReplicaLag !== undefined ? parseDuration(flags.maxReplicaLag, '--max-replica-lag') : undefined,
    replicas: flags.replica,
    replicaTimeoutMs: parseDuration(flags.replicaTimeout ?? '10m', '--replica-timeout'),
    maxWalBytesPerSecond: flags.maxWalRate !== undefined ? parsePositiveNumber(flags.maxWalRate, '--max-wal-rate') * 1048576 : undefined,
  };
}

/** "waited 12.3 s for standbys, 4.0 s for the WAL rate", or nothing when it did not wait. */
export function describeThrottled(t: ThrottledTime | undefined): string | undefined {
  if (!t) return undefined;
  const parts: string[] = [];
  if (t.replicaLagMs > 0) parts.push(`${(t.replicaLagMs / 1000).toFixed(1)} s for standbys (--max-replica-lag)`);
  if (t.walRateMs > 0) parts.push(`${(t.walRateMs / 1000).toFixed(1)} s for the WAL rate (--max-wal-rate)`);
  return parts.length ? `waited ${parts.join(', ')}` : undefined;
}
