/**
 * The benchmark's own arithmetic (no timing): pg_waldump --stats parsing, percentiles, and the
 * --app-load options. The benchmark itself runs apart from the tests (npm run bench).
 */
import { parseAppLoadArgs, percentile } from '../bench/app-load';
import { parseWaldumpStats } from '../bench/wal-stats';

// As PostgreSQL 15's pg_waldump --stats prints it (columns padded with spaces).
const WALDUMP_STATS = `WAL statistics between 0/1A000028 and 0/5C3F1D20:
Type                                           N      (%)          Record size      (%)             FPI size      (%)        Combined size      (%)
----                                           -      ---          -----------      ---             --------      ---        -------------      ---
XLOG                                          23 (  0.00)                 2714 (  0.00)                    0 (  0.00)                 2714 (  0.00)
Transaction                                  210 (  0.01)                31920 (  0.01)                    0 (  0.00)                31920 (  0.00)
Storage                                        0 (  0.00)                    0 (  0.00)                    0 (  0.00)                    0 (  0.00)
Heap2                                     277241 ( 16.78)             16987341 (  2.78)              1153408 (  0.22)             18140749 (  1.58)
Heap                                      924743 ( 55.98)            556895221 ( 91.21)            523660876 ( 99.70)           1080556097 ( 94.18)
Btree                                     448290 ( 27.14)             32085812 (  5.26)              9961472 (  1.90)             42047284 (  3.66)
                                        --------                      --------                      --------                      --------
Total                                    1651886                     606003008 [52.85%]            534775756 [47.15%]           1140778764 [100%]
`;

test('pg_waldump --stats: full-page image bytes from the total, records and bytes per resource manager, empty ones left out', () => {
  const s = parseWaldumpStats(WALDUMP_STATS);
  expect(s.fpiBytes).toBe(534775756);
  expect(Object.keys(s.byRmgr).sort()).toEqual(['Btree', 'Heap', 'Heap2', 'Transaction', 'XLOG']);
  expect(s.byRmgr.Heap).toEqual({ records: 924743, recordBytes: 556895221, fpiBytes: 523660876 });
  expect(s.byRmgr.Btree.fpiBytes).toBe(9961472);
});

test('percentile: nearest rank of sorted values; NaN for none', () => {
  const xs = Array.from({ length: 100 }, (_, i) => i + 1);
  expect(percentile(xs, 0.5)).toBe(50);
  expect(percentile(xs, 0.99)).toBe(99);
  expect(percentile(xs, 1)).toBe(100);
  expect(percentile([7], 0.99)).toBe(7);
  expect(percentile([], 0.5)).toBeNaN();
});

test('--app-load options: defaults, values, and a clear error for an unknown scenario or option', () => {
  const d = parseAppLoadArgs([]);
  expect(d).toMatchObject({ values: 150_000, rate: 200, connections: 4, replicaLag: '5s', replayDuty: 25 });
  expect(d.only).toEqual(['limit', 'default', 'max-rate', 'replica-lag', 'slow', 'slow-replica-lag']);
  expect(d.batchSize).toBeUndefined();
  expect(d.timeline).toBe(false);
  expect(parseAppLoadArgs(['--batch-size', '200', '--timeline', '--only', 'limit,default'])).toMatchObject({ batchSize: 200, timeline: true, only: ['limit', 'default'] });
  expect(parseAppLoadArgs(['--values', '100000', '--rate', '100', '--only', 'default,slow'])).toMatchObject({ values: 100_000, rate: 100, only: ['default', 'slow'] });
  expect(() => parseAppLoadArgs(['--only', 'fast'])).toThrow('--only takes limit,default,max-rate,replica-lag,slow,slow-replica-lag; not fast');
  expect(() => parseAppLoadArgs(['--rate', 'many'])).toThrow('--rate takes a number ≥ 1, got many');
  expect(() => parseAppLoadArgs(['--workers', '2'])).toThrow('unknown --app-load option --workers');
});
