/**
 * `npm run bench -- --app-load`: what an application sees while `rotate` runs, and how far a
 * real streaming standby falls behind.
 *
 * A primary and a streaming standby of our own (scripts/lib/streaming-standby.ts, the same as
 * the tests'), a generated rosemeta, and an application stand-in going through the library
 * (openKeyring: decrypt after SELECT, encrypt before UPDATE) at a fixed rate over a small pool
 * of connections: 80 % read one value by primary key and check its plaintext, 20 % re-encrypt
 * one and UPDATE it. Operations are scheduled at fixed times (open loop), and latency runs from
 * the scheduled time, so time spent waiting for a connection counts.
 *
 * Each scenario: the workload alone for --before seconds ("before"), then a rotation with the
 * workload running ("during"); the standby's lag sampled every 250 ms during the rotation.
 * Scenarios: the no-crypto limit (the same rewrite without cryptography, at full speed: what
 * any rewrite of these values does to the application, for reference); default rotate;
 * --max-rate N; --max-replica-lag 5s; and the same two without and
 * with --max-replica-lag against a slow standby (replay paused for part of every second:
 * pg_wal_replay_pause/resume), since a standby on the same host keeps up on its own.
 *
 * Options (after --app-load): --values N (150000)  --rate OPS/S (200)  --connections N (4)
 * --before S (10)  --max-rate N (3000)  --replica-lag D (5s)  --replay-duty PCT (25)
 * --batch-size N (every rotation's; default rotate's)  --timeline (p99 per second of a rotation)
 * --only limit,default,max-rate,replica-lag,slow,slow-replica-lag.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Client, Pool } from 'pg';
import { Keyring, openKeyring } from '../src/core/keyring-client';
import { sleep } from '../src/core/rewrite/util';
import { BLOBS, DOCUMENTS, expectedPlaintext, isNullValue, RosemetaColumn, verifyRosemeta } from '../scripts/lib/rosemeta';
import { PrimaryWithStandby, startPrimaryWithStandby } from '../scripts/lib/streaming-standby';
import { fmt, Installation, log, runRotate, setUp } from './installation';
import { referencePipeline } from './no-crypto-limit';

const SCENARIOS = ['limit', 'default', 'max-rate', 'replica-lag', 'slow', 'slow-replica-lag'] as const;
type Scenario = (typeof SCENARIOS)[number];

export interface AppLoadArgs {
  values: number;
  rate: number;
  connections: number;
  beforeSeconds: number;
  maxRate: number;
  replicaLag: string;
  replayDuty: number;
  only: Scenario[];
  /** --batch-size for every rotation (else rotate's default). */
  batchSize?: number;
  /** Print p99 and max latency per second of each rotation. */
  timeline: boolean;
}

export function parseAppLoadArgs(argv: string[]): AppLoadArgs {
  const a: AppLoadArgs = { values: 150_000, rate: 200, connections: 4, beforeSeconds: 10, maxRate: 3000, replicaLag: '5s', replayDuty: 25, only: [...SCENARIOS], timeline: false };
  const num = (flag: string, v: string | undefined, min: number) => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < min) throw new Error(`${flag} takes a number ≥ ${min}, got ${v}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const f = argv[i];
    if (f === '--values') a.values = num(f, argv[++i], 1000);
    else if (f === '--rate') a.rate = num(f, argv[++i], 1);
    else if (f === '--connections') a.connections = num(f, argv[++i], 1);
    else if (f === '--before') a.beforeSeconds = num(f, argv[++i], 1);
    else if (f === '--max-rate') a.maxRate = num(f, argv[++i], 1);
    else if (f === '--replica-lag') a.replicaLag = argv[++i];
    else if (f === '--replay-duty') a.replayDuty = num(f, argv[++i], 1);
    else if (f === '--batch-size') a.batchSize = num(f, argv[++i], 1);
    else if (f === '--timeline') a.timeline = true;
    else if (f === '--only') {
      const names = String(argv[++i]).split(',');
      const bad = names.filter((n) => !(SCENARIOS as readonly string[]).includes(n));
      if (bad.length) throw new Error(`--only takes ${SCENARIOS.join(',')}; not ${bad.join(',')}`);
      a.only = names as Scenario[];
    } else throw new Error(`unknown --app-load option ${f} (--values --rate --connections --before --max-rate --replica-lag --replay-duty --batch-size --timeline --only)`);
  }
  return a;
}

/** The value at fraction q (0–1) of sorted numbers, nearest rank. */
export function percentile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

interface OpSample {
  kind: 'read' | 'update';
  ms: number;
  /** When it was scheduled (performance.now()). */
  at: number;
}

export interface LatencySummary {
  ops: number;
  errors: number;
  p50: number;
  p95: number;
  p99: number;
  max: number;
  readP99: number;
  updateP99: number;
  firstErrors: string[];
}

function summarise(samples: OpSample[], errors: string[]): LatencySummary {
  const all = samples.map((s) => s.ms).sort((a, b) => a - b);
  const of = (k: OpSample['kind']) => samples.filter((s) => s.kind === k).map((s) => s.ms).sort((a, b) => a - b);
  return {
    ops: samples.length,
    errors: errors.length,
    p50: percentile(all, 0.5),
    p95: percentile(all, 0.95),
    p99: percentile(all, 0.99),
    max: all[all.length - 1] ?? NaN,
    readP99: percentile(of('read'), 0.99),
    updateP99: percentile(of('update'), 0.99),
    firstErrors: errors.slice(0, 5),
  };
}

const APP_COLUMNS: Array<{ column: RosemetaColumn; table: string; field: string }> = [
  { column: DOCUMENTS, table: 'public.documents', field: 'body' },
  { column: BLOBS, table: 'public.blobs', field: 'payload' },
];

/** The application stand-in's application_name, so its sessions can be told apart. */
const APP_NAME = 'bench-application';

/** What the application's sessions were doing while active, as shares of samples. */
export interface WaitBreakdown {
  samples: number;
  /** "CPU" (active, no wait event) or "type:event", with its share of the active samples. */
  shares: Array<{ event: string; share: number }>;
}

/**
 * Samples pg_stat_activity every 25 ms for the application's active sessions and counts
 * their wait events (no wait event: on CPU, or waiting for the CPU), to say what the
 * application's queries waited for during the rotation.
 */
class WaitSampler {
  private counts = new Map<string, number>();
  private samples = 0;
  private running = true;
  private loop: Promise<void>;
  constructor(private readonly client: Client) {
    this.loop = this.run();
  }
  private async run(): Promise<void> {
    while (this.running) {
      try {
        const r = await this.client.query(
          `SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') AS w FROM pg_stat_activity
            WHERE application_name = $1 AND state = 'active'`,
          [APP_NAME],
        );
        for (const row of r.rows) {
          this.counts.set(row.w, (this.counts.get(row.w) ?? 0) + 1);
          this.samples++;
        }
      } catch {
        /* a sample lost */
      }
      await sleep(25);
    }
  }
  async stop(): Promise<WaitBreakdown> {
    this.running = false;
    await this.loop;
    const shares = [...this.counts].map(([event, n]) => ({ event, share: n / Math.max(this.samples, 1) })).sort((a, b) => b.share - a.share);
    return { samples: this.samples, shares };
  }
}

function describeWaits(w: WaitBreakdown): string {
  const top = w.shares.slice(0, 6).map((x) => `${x.event} ${(x.share * 100).toFixed(0)} %`);
  return `application sessions, while active (${fmt(w.samples)} samples): ${top.join(', ')}`;
}

/** The application stand-in: fixed-rate reads and updates through the library. */
class AppWorkload {
  private samples: OpSample[] = [];
  lastSamples: OpSample[] = [];
  private errors: string[] = [];
  private running = false;
  private loop: Promise<void> | undefined;
  private inFlight = new Set<Promise<void>>();

  private constructor(
    private readonly pool: Pool,
    private readonly keyring: Keyring,
    private readonly inst: Installation,
    private readonly rate: number,
  ) {}

  static async open(inst: Installation, rate: number, connections: number): Promise<AppWorkload> {
    const pool = new Pool({ connectionString: inst.url, max: connections, application_name: APP_NAME });
    pool.on('error', () => undefined);
    // Re-read the keyring every 2 s (the rotation's --settle-time is 5 s here, 35 s by default).
    const keyring = await openKeyring({ pool, masterKeyFile: inst.masterKeyFile, refreshSeconds: 2 });
    return new AppWorkload(pool, keyring, inst, rate);
  }

  start(): void {
    this.running = true;
    this.loop = this.run();
  }

  /** Samples and errors since the last call. */
  take(): LatencySummary {
    this.lastSamples = this.samples;
    const s = summarise(this.samples, this.errors);
    this.samples = [];
    this.errors = [];
    return s;
  }

  private pickRow(): { c: (typeof APP_COLUMNS)[number]; id: number } {
    for (;;) {
      const c = APP_COLUMNS[Math.floor(Math.random() * APP_COLUMNS.length)];
      const count = c.column === DOCUMENTS ? this.inst.shape.documents : this.inst.shape.blobs;
      const id = 1 + Math.floor(Math.random() * count);
      if (!isNullValue(c.column, id)) return { c, id };
    }
  }

  private async op(scheduled: number): Promise<void> {
    const { c, id } = this.pickRow();
    const kind: OpSample['kind'] = Math.random() < 0.8 ? 'read' : 'update';
    const expected = expectedPlaintext(c.column, id, 'bench')!;
    try {
      if (kind === 'read') {
        const r = await this.pool.query(`SELECT ${c.field} AS v FROM ${c.table} WHERE id = $1`, [id]);
        const plain = await this.keyring.decrypt(r.rows[0].v, c.column);
        const same = Buffer.isBuffer(expected) ? Buffer.isBuffer(plain) && plain.equals(expected) : plain === expected;
        if (!same) throw new Error(`${c.column} id ${id}: plaintext differs`);
      } else {
        const sealed = await this.keyring.encrypt(expected as any, c.column);
        await this.pool.query(`UPDATE ${c.table} SET ${c.field} = $1 WHERE id = $2`, [sealed, id]);
      }
      this.samples.push({ kind, ms: performance.now() - scheduled, at: scheduled });
    } catch (err) {
      this.errors.push(`${kind}: ${(err as Error).message}`);
    }
  }

  private async run(): Promise<void> {
    const interval = 1000 / this.rate;
    let next = performance.now();
    while (this.running) {
      const wait = next - performance.now();
      if (wait > 0) await sleep(wait);
      if (this.inFlight.size >= 1000) {
        this.errors.push('overload: 1000 operations in flight');
      } else {
        const p = this.op(next).finally(() => this.inFlight.delete(p));
        this.inFlight.add(p);
      }
      next += interval;
    }
  }

  async close(): Promise<void> {
    this.running = false;
    await this.loop;
    await Promise.all([...this.inFlight]);
    await this.keyring.close();
    await this.pool.end();
  }
}

export interface LagSummary {
  samples: number;
  /** Seconds behind: now minus when the primary was at the standby's replay position. */
  maxSeconds: number;
  p99Seconds: number;
  maxBytes: number;
  /** pg_stat_replication.replay_lag, as PostgreSQL measures it. */
  maxReplayLagSeconds: number | null;
}

/**
 * Samples the standby's lag every 250 ms: the primary's WAL position (kept as a history), the
 * standby's own replay position (pg_last_wal_replay_lsn on the standby), and replay_lag.
 */
class LagSampler {
  private history: Array<{ t: number; wal: number }> = [];
  private seconds: number[] = [];
  private bytes: number[] = [];
  private replayLag: number[] = [];
  private running = true;
  private loop: Promise<void>;

  constructor(
    private readonly primary: Client,
    private readonly standby: Client,
  ) {
    this.loop = this.run();
  }

  /** When (interpolated) the primary's WAL position passed `pos`, from the history. */
  private timeAt(pos: number): number | undefined {
    const h = this.history;
    for (let i = 0; i < h.length; i++) {
      if (h[i].wal >= pos) {
        if (i === 0) return h[0].t;
        const a = h[i - 1];
        const b = h[i];
        return a.t + ((pos - a.wal) / Math.max(b.wal - a.wal, 1)) * (b.t - a.t);
      }
    }
    return undefined;
  }

  private async run(): Promise<void> {
    while (this.running) {
      const tick = performance.now();
      try {
        const [p, s] = await Promise.all([
          this.primary.query(
            `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8 AS wal,
                    (SELECT extract(epoch FROM replay_lag)::float8 FROM pg_stat_replication LIMIT 1) AS lag`,
          ),
          this.standby.query(`SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::float8 AS replay`),
        ]);
        const now = performance.now();
        const wal = Number(p.rows[0].wal);
        const replay = Number(s.rows[0].replay);
        this.history.push({ t: now, wal });
        const at = replay >= wal ? now : this.timeAt(replay);
        this.seconds.push(at === undefined ? (now - this.history[0].t) / 1000 : (now - at) / 1000);
        this.bytes.push(Math.max(wal - replay, 0));
        if (p.rows[0].lag !== null) this.replayLag.push(Number(p.rows[0].lag));
      } catch {
        /* a sample lost; the next one counts */
      }
      await sleep(Math.max(0, 250 - (performance.now() - tick)));
    }
  }

  async stop(): Promise<LagSummary> {
    this.running = false;
    await this.loop;
    const secs = [...this.seconds].sort((a, b) => a - b);
    return {
      samples: secs.length,
      maxSeconds: secs[secs.length - 1] ?? NaN,
      p99Seconds: percentile(secs, 0.99),
      maxBytes: Math.max(0, ...this.bytes),
      maxReplayLagSeconds: this.replayLag.length ? Math.max(...this.replayLag) : null,
    };
  }
}

/** A standby that replays only `duty` % of each second (pg_wal_replay_pause/resume). */
class SlowReplay {
  private running = true;
  private loop: Promise<void>;
  constructor(
    private readonly standby: Client,
    private readonly duty: number,
  ) {
    this.loop = this.run();
  }
  private async run(): Promise<void> {
    while (this.running) {
      await this.standby.query('SELECT pg_wal_replay_resume()');
      await sleep(10 * this.duty);
      if (!this.running) break;
      await this.standby.query('SELECT pg_wal_replay_pause()');
      await sleep(10 * (100 - this.duty));
    }
  }
  async stop(): Promise<void> {
    this.running = false;
    await this.loop;
    await this.standby.query('SELECT pg_wal_replay_resume()');
  }
}

interface ScenarioResult {
  scenario: Scenario;
  options: string[];
  rotationSeconds: number;
  valuesPerSecond: number;
  waitedForStandbySeconds: number | null;
  before: LatencySummary;
  during: LatencySummary;
  lag: LagSummary;
  waitsBefore: WaitBreakdown;
  waitsDuring: WaitBreakdown;
}

function optionsFor(s: Scenario, a: AppLoadArgs): string[] {
  if (s === 'max-rate') return ['--max-rate', String(a.maxRate)];
  if (s === 'replica-lag' || s === 'slow-replica-lag') return ['--max-replica-lag', a.replicaLag];
  return [];
}

/** Per second of the rotation: operations, p99 and max latency (--timeline). */
function describeTimeline(samples: OpSample[], start: number): string {
  const buckets = new Map<number, number[]>();
  for (const x of samples) {
    const sec = Math.floor((x.at - start) / 1000);
    if (!buckets.has(sec)) buckets.set(sec, []);
    buckets.get(sec)!.push(x.ms);
  }
  const lines = [...buckets.keys()].sort((a, b) => a - b).map((sec) => {
    const v = buckets.get(sec)!.sort((a, b) => a - b);
    return `    ${String(sec).padStart(3)} s: ${String(v.length).padStart(4)} ops, p99 ${ms(percentile(v, 0.99))} ms, max ${ms(v[v.length - 1])} ms`;
  });
  return ['  timeline (seconds since the rotation started):', ...lines].join('\n');
}

const ms = (n: number) => (Number.isFinite(n) ? n.toFixed(n < 10 ? 1 : 0) : '–');

function describeLatency(l: LatencySummary): string {
  return `p50 ${ms(l.p50)} / p95 ${ms(l.p95)} / p99 ${ms(l.p99)} ms (read p99 ${ms(l.readP99)}, update p99 ${ms(l.updateP99)}, max ${ms(l.max)}), ${fmt(l.ops)} ops, ${l.errors} errors`;
}

async function runScenario(cluster: PrimaryWithStandby, inst: Installation, app: AppWorkload, s: Scenario, a: AppLoadArgs): Promise<ScenarioResult> {
  await cluster.waitForCatchUp(300_000);
  await inst.pool.query('CHECKPOINT');
  const options = [...optionsFor(s, a), ...(a.batchSize ? ['--batch-size', String(a.batchSize)] : [])];
  log(
    s === 'limit'
      ? `\n-- limit: the same rewrite without cryptography at full speed (npm run bench's limit; no rotation), for reference`
      : `\n-- ${s}: rotate ${options.join(' ') || '(default settings)'}${s.startsWith('slow') ? `, standby replaying ${a.replayDuty} % of each second` : ''}`,
  );
  const primary = new Client({ connectionString: cluster.primary.adminUrl });
  const standby = new Client({ connectionString: cluster.standbyUrl('postgres') });
  const control = new Client({ connectionString: cluster.standbyUrl('postgres') });
  const watcher = new Client({ connectionString: cluster.primary.adminUrl });
  await Promise.all([primary.connect(), standby.connect(), control.connect(), watcher.connect()]);
  app.take();
  let waits = new WaitSampler(watcher);
  await sleep(a.beforeSeconds * 1000);
  const before = app.take();
  const waitsBefore = await waits.stop();
  log(`  before:  ${describeLatency(before)}`);
  log(`           ${describeWaits(waitsBefore)}`);
  waits = new WaitSampler(watcher);
  const slow = s.startsWith('slow') ? new SlowReplay(control, a.replayDuty) : undefined;
  const sampler = new LagSampler(primary, standby);
  let rot: { seconds: number; summary: any; stderr: string };
  let rotationStart = 0;
  let lag: LagSummary;
  try {
    rotationStart = performance.now();
    if (s === 'limit') {
      const r = await referencePipeline(inst.pool, a.batchSize);
      rot = { seconds: r.seconds, summary: {}, stderr: '' };
    } else rot = await runRotate(inst, options, '5s');
  } finally {
    await slow?.stop();
    lag = await sampler.stop();
  }
  const during = app.take();
  const waitsDuring = await waits.stop();
  await Promise.all([primary.end(), standby.end(), control.end(), watcher.end()]);
  if (a.timeline) log(describeTimeline(app.lastSamples, rotationStart));
  const waited = rot.summary.throttled ? rot.summary.throttled.replicaLagMs / 1000 : null;
  log(`  during:  ${describeLatency(during)}`);
  log(`           ${describeWaits(waitsDuring)}`);
  log(`  ${s === 'limit' ? 'rewrite' : 'rotation'} ${rot.seconds.toFixed(1)} s (${fmt(inst.values / rot.seconds)} values/s${s === 'limit' ? '' : ', --settle-time 5s included'})${waited ? `, waited ${waited.toFixed(1)} s for the standby` : ''}`);
  log(
    `  standby: lag max ${lag.maxSeconds.toFixed(2)} s, p99 ${lag.p99Seconds.toFixed(2)} s (${lag.samples} samples every 250 ms); ` +
      `max ${fmt(lag.maxBytes / 1024 / 1024, 1)} MB behind; replay_lag max ${lag.maxReplayLagSeconds === null ? '–' : lag.maxReplayLagSeconds.toFixed(2) + ' s'}`,
  );
  if (process.env.BENCH_VERBOSE) log(rot.stderr);
  return { scenario: s, options, rotationSeconds: rot.seconds, valuesPerSecond: inst.values / rot.seconds, waitedForStandbySeconds: waited, before, during, lag, waitsBefore, waitsDuring };
}

export async function runAppLoad(argv: string[], o: { dir: string; pgBin: string; settings: string[] }): Promise<void> {
  const a = parseAppLoadArgs(argv);
  const cluster = await startPrimaryWithStandby('bench-app', { binDir: o.pgBin, flags: o.settings.flatMap((x) => ['-c', x]) });
  log(`alation-keys application-view benchmark — ${new Date().toISOString()}, node ${process.version}`);
  log(`  primary and streaming standby on this host (${o.pgBin}); workload ${a.rate} ops/s over ${a.connections} connections (80 % read, 20 % update)`);
  const results: ScenarioResult[] = [];
  try {
    log(`\n== ${fmt(a.values)} values`);
    const inst = await setUp(cluster, a.values, o.dir);
    const app = await AppWorkload.open(inst, a.rate, a.connections);
    app.start();
    try {
      for (const s of a.only) results.push(await runScenario(cluster, inst, app, s, a));
    } finally {
      await app.close();
    }
    const keyring = await openKeyring({ pool: inst.pool, masterKeyFile: inst.masterKeyFile });
    const report = await verifyRosemeta(inst.pool, keyring, inst.shape, { seed: 'bench' });
    await keyring.close();
    const bad = report.mismatched.length + report.missing.length;
    log(`\n  verified: ${fmt(report.checked)} values decrypt to their plaintext, ${bad} problems`);
    await inst.pool.end();
    fs.writeFileSync(path.join(o.dir, 'app-load.json'), JSON.stringify(results, null, 2));
    log(`results written to ${path.join(o.dir, 'app-load.json')}`);
    if (bad) throw new Error('verification failed');
  } finally {
    await cluster.stop();
  }
}
