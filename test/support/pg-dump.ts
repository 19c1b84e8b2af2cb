/**
 * Tests that run pg_dump (backup, restore, verify of a dump) need one at least as new as the
 * server. Where this machine has none (the global setup looked), they are skipped, never
 * silently: the reason is in the test's name, and `npm run test:matrix` shows it in its table.
 */
export const PG_DUMP_MISSING: string | undefined = process.env.ALATION_KEYS_TEST_PG_DUMP_MISSING || undefined;

/** The marker the matrix table looks for in the names of skipped tests. */
export const SKIP_MARK = '[skipped: ';

function skippedName(name: string): string {
  return `${name} ${SKIP_MARK}${PG_DUMP_MISSING}]`;
}

/** `describe`, or `describe.skip` with the reason when no suitable pg_dump is here. */
export function describeWithPgDump(name: string, fn: () => void): void {
  if (PG_DUMP_MISSING) describe.skip(skippedName(name), fn);
  else describe(name, fn);
}

/** `test`, or `test.skip` with the reason when no suitable pg_dump is here. */
export function testWithPgDump(name: string, fn: jest.ProvidesCallback, timeout?: number): void {
  if (PG_DUMP_MISSING) test.skip(skippedName(name), fn, timeout);
  else test(name, fn, timeout);
}

/** The server's major version as PostgreSQL names it ("13" … "18"), for expected messages. */
export function serverMajor(): string {
  const num = Number(process.env.ALATION_KEYS_TEST_SERVER_VERSION_NUM);
  if (!num) throw new Error('the global setup did not record the server version');
  return String(Math.floor(num / 10000));
}
