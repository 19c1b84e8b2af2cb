/**
 * TEST ONLY: hooks the test suite uses to make a race happen at a chosen point. Each is inert
 * unless its variable is set, which only the tests do. Core does not read them: the CLI builds
 * them from its environment and hands them to core as options.
 */
import { RewriteHooks } from '../kms/master-key-file';

/**
 * The points where ALATION_KEYS_TEST_PAUSE_AT can hold a command:
 * - `after-key`: rotate, the new data key is primary and the job row written, no value touched;
 * - `chunk-read`: rotate, a chunk has been read (the pause line names the column and the chunk's
 *   first and last keys as JSON arrays) and not yet written: a row of it changed now is skipped
 *   by the compare-and-swap;
 * - `mid-column`: rotate, just after a chunk and its checkpoint were committed;
 * - `between-columns`: rotate, the first column is done and others are left;
 * - `convergence`: rotate, the first pass is over and the values left have not been counted;
 * - `job-start`: encrypt and decrypt, the job row written (decrypt: the column `decrypting`),
 *   no value touched (the other rewrite points apply to them as to rotate); verify, its job row
 *   written and its reader threads started, no value read;
 * - `destroy-planned`: keys destroy, checked and planned, the maintenance lock taken, the
 *   transaction that destroys the key not begun;
 * - `master-key-lock`: before the master key file's lock is taken (see masterKeyRewriteHooks).
 */
export type PausePoint = 'after-key' | 'job-start' | 'chunk-read' | 'mid-column' | 'between-columns' | 'convergence' | 'destroy-planned' | 'master-key-lock';

/** Holds the command at `point` if a test asked for it; `detail` goes on the pause line. */
export type TestPause = (point: PausePoint, signal?: AbortSignal, detail?: string) => Promise<void>;

/** No pause anywhere: what core uses unless the caller passes another. */
export const noPause: TestPause = async () => undefined;

function pausePoints(env: NodeJS.ProcessEnv): string[] {
  return (env.ALATION_KEYS_TEST_PAUSE_AT ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
}

/**
 * ALATION_KEYS_TEST_PAUSE_AT=<point>[,<point>…]: the first time the command reaches one of
 * these points it prints `ALATION_KEYS_TEST_PAUSED <point> [detail]` on stderr and waits
 * there until it is signalled (SIGUSR2 carries on as if the pause had not been there; SIGINT
 * or SIGTERM abort `signal`, and the command stops at its next checkpoint) or killed.
 */
export function testPauseFromEnv(env: NodeJS.ProcessEnv): TestPause {
  const wanted = new Set(pausePoints(env));
  if (wanted.size === 0) return noPause;
  const paused = new Set<PausePoint>();
  return async (point, signal, detail) => {
    if (!wanted.has(point) || paused.has(point)) return;
    paused.add(point);
    await new Promise<void>((resolve) => {
      const keepAlive = setInterval(() => undefined, 1000);
      const done = () => {
        clearInterval(keepAlive);
        process.removeListener('SIGUSR2', done);
        signal?.removeEventListener('abort', done);
        resolve();
      };
      if (signal?.aborted) return done();
      signal?.addEventListener('abort', done, { once: true });
      process.once('SIGUSR2', done);
      process.stderr.write(`ALATION_KEYS_TEST_PAUSED ${point}${detail ? ` ${detail}` : ''}\n`);
    });
  };
}

/**
 * Hooks around a rewrite of the master key file:
 * - ALATION_KEYS_TEST_PAUSE_AT containing `master-key-lock`: before taking the file's lock the
 *   process prints `ALATION_KEYS_TEST_PAUSED master-key-lock` on stderr and waits for SIGUSR2
 *   (a barrier: two processes released together);
 * - ALATION_KEYS_TEST_MASTER_KEY_REWRITE_MS=<ms>: holds the rewrite window (lock held, file
 *   re-read, new file not yet renamed) open that long.
 */
export function masterKeyRewriteHooks(env: NodeJS.ProcessEnv): RewriteHooks {
  const pause = pausePoints(env).includes('master-key-lock');
  const windowMs = Number(env.ALATION_KEYS_TEST_MASTER_KEY_REWRITE_MS ?? 0);
  return {
    beforeLock: pause
      ? () =>
          new Promise<void>((resolve) => {
            process.once('SIGUSR2', () => resolve());
            process.stderr.write('ALATION_KEYS_TEST_PAUSED master-key-lock\n');
          })
      : undefined,
    inRewriteWindow: windowMs > 0 ? () => new Promise<void>((resolve) => setTimeout(resolve, windowMs)) : undefined,
  };
}

/**
 * ALATION_KEYS_TEST_FREE_BYTES=<bytes>: the free space the disk checks see (rotate's headroom
 * and backup's), to exercise them without filling a disk.
 */
export function testFreeBytesOverride(env: NodeJS.ProcessEnv): number | undefined {
  const fake = env.ALATION_KEYS_TEST_FREE_BYTES;
  return fake !== undefined && fake !== '' ? Number(fake) : undefined;
}
