/** Progress of a job that streams columns (rotate, verify, encrypt, decrypt) on stderr. */
import type { ColumnProgress } from '../core/rewrite/rotate';
import { IOStreams, Progress } from './io';
import { formatDuration } from '../core/rewrite/util';
import { formatCount } from './render';
import { count } from '../plural';

const MB = 1024 * 1024;

function describe(p: ColumnProgress): string {
  const pct = p.rowsTotal > 0 ? ` ${Math.min(100, Math.floor(((p.rowsDone + p.skipped) / p.rowsTotal) * 100))}%` : '';
  const eta = p.etaSeconds !== null && p.etaSeconds > 0 ? `, ETA ${formatDuration(p.etaSeconds * 1000)}` : '';
  const skipped = p.skipped ? `, ${formatCount(p.skipped)} changed by the application meanwhile` : '';
  return `${p.column}${p.pass > 1 ? ` (pass ${p.pass})` : ''}:${pct} ${formatCount(p.rowsDone)}/${formatCount(p.rowsTotal)} values, ${(p.bytesDone / MB).toFixed(1)} MB, ${formatCount(Math.round(p.rowsPerSecond))} values/s${eta}${skipped}`;
}

/** One spinner on a terminal (a line per active column), log lines elsewhere. */
export class ProgressDisplay {
  private progress: Progress | undefined;
  private active = new Map<string, ColumnProgress>();
  private countdown: NodeJS.Timeout | undefined;
  constructor(
    private readonly io: IOStreams,
    private readonly label: string,
  ) {}

  private bar(): Progress {
    if (!this.progress) this.progress = this.io.progress(this.label);
    return this.progress;
  }

  private render(): void {
    this.bar().update([...this.active.values()].map(describe).join(this.io.stderrIsTTY ? '\n  ' : ' | '));
  }

  events() {
    return {
      info: (m: string) => (this.progress ? this.progress.log(m) : this.io.info(m)),
      warn: (m: string) => (this.progress ? this.progress.log(`warning: ${m}`) : this.io.warn(m)),
      columnStart: (p: ColumnProgress) => {
        this.active.set(p.column, p);
        this.bar().log(`${p.column}: pass ${p.pass}, ${count(Math.max(p.rowsTotal - p.rowsDone - p.skipped, 0), 'value', 'values', formatCount)} to go`);
        this.render();
      },
      progress: (p: ColumnProgress) => {
        this.active.set(p.column, p);
        this.render();
      },
      columnDone: (p: ColumnProgress) => {
        this.active.delete(p.column);
        this.bar().log(`${p.column}: done, ${count(p.rowsDone, 'value', 'values', formatCount)}, ${(p.bytesDone / MB).toFixed(1)} MB${p.skipped ? `, ${formatCount(p.skipped)} changed by the application meanwhile` : ''}`);
        if (this.active.size) this.render();
      },
      settleWait: (w: { waitMs: number; untilMs: number }) => this.settleCountdown(w.untilMs),
    };
  }

  /**
   * The settle wait, counted down on the spinner (every second; every few seconds as log lines
   * elsewhere) so that it is not taken for a hang. Ends by itself at `untilMs`.
   */
  private settleCountdown(untilMs: number): void {
    this.stopCountdown();
    let first = true;
    const tick = () => {
      const left = Math.ceil((untilMs - Date.now()) / 1000);
      if (left <= 0) return this.stopCountdown();
      // Short enough for one line of a narrow terminal: the log line above says the rest.
      const text = `settle wait: ${formatDuration(left * 1000)} left (application instances load the new key)`;
      // Off a terminal updates are logged every few seconds at most: the first one at once.
      if (first && !this.io.stderrIsTTY) this.bar().log(text);
      else this.bar().update(text);
      first = false;
    };
    tick();
    this.countdown = setInterval(tick, 1000);
    this.countdown.unref();
  }

  private stopCountdown(): void {
    if (this.countdown) clearInterval(this.countdown);
    this.countdown = undefined;
  }

  stop(): void {
    this.stopCountdown();
    this.progress?.stop();
  }

  fail(): void {
    this.stopCountdown();
    this.progress?.stop();
  }
}

