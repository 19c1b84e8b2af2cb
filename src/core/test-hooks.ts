/**
 * TEST ONLY: hooks the test suite uses to make a race happen at a chosen point. Each is inert
 * unless its variable is set, which only the tests do.
 */
import { RewriteHooks } from '../kms/master-key-file';

/**
 * Hooks around a rewrite of the master key file:
 * - ALATION_KEYS_TEST_PAUSE_AT containing `master-key-lock`: before taking the file's lock the
 *   process prints `ALATION_KEYS_TEST_PAUSED master-key-lock` on stderr and waits for SIGUSR2
 *   (a barrier: two processes released together);
 * - ALATION_KEYS_TEST_MASTER_KEY_REWRITE_MS=<ms>: holds the rewrite window (lock held, file
 *   re-read, new file not yet renamed) open that long.
 */
export function masterKeyRewriteHooks(env: NodeJS.ProcessEnv = process.env): RewriteHooks {
  const pause = (env.ALATION_KEYS_TEST_PAUSE_AT ?? '').split(',').map((s) => s.trim()).includes('master-key-lock');
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
export function testFreeBytesOverride(env: NodeJS.ProcessEnv = process.env): number | undefined {
  const fake = env.ALATION_KEYS_TEST_FREE_BYTES;
  return fake !== undefined && fake !== '' ? Number(fake) : undefined;
}
