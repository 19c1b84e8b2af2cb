/**
 * Convergence: after the first pass, count the values still to do (written meanwhile by
 * application instances that had not loaded the new key yet) and run further passes until
 * none is left; once none is, wait until the settle time has passed and count once more.
 */
import { OperationError } from '../../errors';
import type { RewriteEvents } from './engine';
import { ColumnPlan } from './plan';
import { sleep } from './util';

export const MAX_CONVERGENCE_ROUNDS = 10;

export interface Convergence {
  /** Counts the values each column has still to do (columns with none may be left out). */
  countRemaining(): Promise<Map<ColumnPlan, number>>;
  /** Runs pass number `pass` over the columns with values left. */
  runPass(remaining: Map<ColumnPlan, number>, pass: number): Promise<void>;
  /** The last count is taken no earlier than this (epoch ms). */
  settleUntil: number;
  stop: AbortSignal;
  /** The error thrown when `stop` aborts. */
  interrupted(): Error;
  events: RewriteEvents;
  /** How the messages name what is converging. */
  wording: {
    settling(waitSeconds: number): string;
    nextPass(pass: number, total: number, perColumn: string): string;
    stuck(total: number, rounds: number): OperationError;
  };
}

/** Returns the number of passes run, the first included. */
export async function converge(c: Convergence): Promise<number> {
  let passes = 1;
  let rounds = 0;
  for (;;) {
    const remaining = await c.countRemaining();
    const total = [...remaining.values()].reduce((a, b) => a + b, 0);
    const wait = c.settleUntil - Date.now();
    if (total === 0) {
      if (wait <= 0) return passes;
      c.events.info?.(c.wording.settling(Math.ceil(wait / 1000)));
      c.events.settleWait?.({ waitMs: wait, untilMs: c.settleUntil });
      await sleep(wait, c.stop);
      if (c.stop.aborted) throw c.interrupted();
      continue;
    }
    rounds++;
    if (rounds > MAX_CONVERGENCE_ROUNDS) throw c.wording.stuck(total, MAX_CONVERGENCE_ROUNDS);
    passes++;
    c.events.info?.(c.wording.nextPass(passes, total, [...remaining].map(([p, n]) => `${p.name}: ${n}`).join(', ')));
    await sleep(Math.min(1000 * rounds, 5000), c.stop);
    if (c.stop.aborted) throw c.interrupted();
    await c.runPass(remaining, passes);
    if (c.stop.aborted) throw c.interrupted();
  }
}
