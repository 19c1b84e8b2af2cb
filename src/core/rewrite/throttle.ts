import { sleep } from './util';

/** What the engine waits on before writing each chunk: rate limits, standby lag, WAL rate. */
export interface ChunkPacer {
  /** Resolves when a chunk of `rows` rows may be written (at once when `signal` aborts). */
  take(rows: number, signal: AbortSignal): Promise<void>;
}

/** Throttle shared by all workers (--max-rate ROWS/S). */
export class RateLimiter implements ChunkPacer {
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

/** Every pacer in turn. */
export function allPacers(...pacers: Array<ChunkPacer | undefined>): ChunkPacer {
  const list = pacers.filter((p): p is ChunkPacer => !!p);
  return {
    async take(rows, signal) {
      for (const p of list) await p.take(rows, signal);
    },
  };
}
