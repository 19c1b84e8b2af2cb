/**
 * A primary PostgreSQL with a real streaming standby, for tests: scripts/lib/streaming-standby.ts
 * (shared with the benchmark's --app-load).
 */
export type { PrimaryWithStandby } from '../../scripts/lib/streaming-standby';
export { STANDBY_NAME, startPrimaryWithStandby } from '../../scripts/lib/streaming-standby';
