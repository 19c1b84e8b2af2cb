import { sleep } from './util';

/** Throttle shared by all workers (--max-rate ROWS/S). */
export class RateLimiter {
  private granted = 0;
  private readonly start = Date.now();
  constructor(private readonly rowsPerSecond: number | undefined) {}
  async take(rows: number, signal: AbortSignal): Promise<void> {
    if (!this.rowsPerSecond) return;
    this.granted += rows;
    const due = this.start + (this.granted / this.rowsPerSecond) * 1000;
    await sleep(due - Date.now(), signal);
  }
}
