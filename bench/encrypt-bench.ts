/**
 * The encrypt phase of `npm run bench`: `encrypt` of plaintext against the same no-crypto
 * rewrite limit the rotate phase uses (referencePipeline), on the same data.
 *
 *  1. The rosemeta is returned to plaintext with the real `decrypt` of each column (measured
 *     too), then each column is registered again (`columns add`: `encrypting`).
 *  2. limit: the no-crypto rewrite of those plaintext values (COPY out, COPY to staging,
 *     UPDATE … FROM, same chunks and VACUUM cadence), after a CHECKPOINT.
 *  3. encrypt: the real CLI (`encrypt --skip-backup-check --settle-time 0`), spawned, after a
 *     CHECKPOINT, in the table state the limit run left (tables rewritten once, space reused).
 *     Its rewrite time (the job's, without process start and without the settle wait) is what
 *     the ratio compares; the time with process start is printed beside it.
 * Twice, alternating; the fastest of each phase is compared (the machine is shared). Afterwards
 * every value is an envelope again and is checked against its plaintext.
 */
import { ROSEMETA_COLUMNS } from '../scripts/lib/rosemeta';
import { fmt, Installation, MB, runMeasured } from './installation';

export interface EncryptBench {
  values: number;
  mb: number;
  decrypt: { seconds: number; valuesPerSecond: number };
  limit: { seconds: number; valuesPerSecond: number; mbPerSecond: number };
  encrypt: { seconds: number; rewriteSeconds: number; valuesPerSecond: number; mbPerSecond: number; peakRssMb: number };
  /** limit ÷ encrypt (its rewrite time): the target is ≥ 0.9. */
  ratio: number;
  /**
   * The same limit once more on what encrypt wrote (envelopes: a text value grows by a third
   * and more values are TOASTed), right after it: the rewrite limit at the size encrypt writes.
   */
  envelopeLimit: { seconds: number; mbPerSecond: number };
  envelopeRatio: number;
}

/** Runs of each, alternating; the fastest of each counts (the machine is shared: the others are noise). */
const RUNS = 2;

export async function benchEncrypt(
  inst: Installation,
  phases: { checkpoint(): Promise<void>; limit(): Promise<{ seconds: number; rows: number; bytes: number }> },
): Promise<EncryptBench> {
  let best: EncryptBench | undefined;
  for (let i = 0; i < RUNS; i++) {
    let decryptSeconds = 0;
    let decrypted = 0;
    for (const column of ROSEMETA_COLUMNS) {
      const d = await runMeasured(inst, ['decrypt', column, '--yes', '--skip-backup-check', '--settle-time', '0']);
      decryptSeconds += d.json.rewriteSeconds;
      decrypted += d.json.rows;
    }
    for (const column of ROSEMETA_COLUMNS) {
      const a = await runMeasured(inst, ['columns', 'add', column]);
      if (a.json.state !== 'encrypting') throw new Error(`${column} was registered ${a.json.state}, not encrypting`);
    }
    await phases.checkpoint();
    const limit = await phases.limit();
    await phases.checkpoint();
    const run = await runMeasured(inst, ['encrypt', '--skip-backup-check', '--settle-time', '0']);
    const s = run.json;
    const mb = limit.bytes / MB;
    const b: EncryptBench = {
      values: s.rows,
      mb,
      decrypt: { seconds: decryptSeconds, valuesPerSecond: decrypted / decryptSeconds },
      limit: { seconds: limit.seconds, valuesPerSecond: limit.rows / limit.seconds, mbPerSecond: mb / limit.seconds },
      encrypt: {
        seconds: run.seconds,
        rewriteSeconds: s.rewriteSeconds,
        valuesPerSecond: s.rows / s.rewriteSeconds,
        mbPerSecond: mb / s.rewriteSeconds,
        peakRssMb: run.peakRssKb / 1024,
      },
      ratio: 0,
      envelopeLimit: { seconds: 0, mbPerSecond: 0 },
      envelopeRatio: 0,
    };
    if (best) {
      // The fastest of each phase over the runs.
      if (b.limit.seconds > best.limit.seconds) b.limit = best.limit;
      if (b.encrypt.rewriteSeconds > best.encrypt.rewriteSeconds) b.encrypt = { ...best.encrypt, peakRssMb: Math.max(best.encrypt.peakRssMb, b.encrypt.peakRssMb) };
      if (b.decrypt.seconds > best.decrypt.seconds) b.decrypt = best.decrypt;
    }
    b.ratio = b.limit.seconds / b.encrypt.rewriteSeconds;
    best = b;
  }
  await phases.checkpoint();
  const again = await phases.limit();
  best!.envelopeLimit = { seconds: again.seconds, mbPerSecond: again.bytes / MB / again.seconds };
  best!.envelopeRatio = again.seconds / best!.encrypt.rewriteSeconds;
  return best!;
}

export function describeEncryptBench(e: EncryptBench): string {
  return (
    `  decrypt:    ${e.decrypt.seconds.toFixed(1)} s rewriting, ${fmt(e.decrypt.valuesPerSecond)} values/s (the rosemeta back to plaintext, column by column)\n` +
    `  pt. limit:  ${e.limit.seconds.toFixed(1)} s, ${fmt(e.limit.valuesPerSecond)} values/s, ${e.limit.mbPerSecond.toFixed(1)} MB/s (the same no-crypto rewrite, of the plaintext)\n` +
    `  encrypt:    ${e.encrypt.rewriteSeconds.toFixed(1)} s rewriting (${e.encrypt.seconds.toFixed(1)} s with process start), ${fmt(e.encrypt.valuesPerSecond)} values/s, ${e.encrypt.mbPerSecond.toFixed(1)} MB/s of plaintext; peak RSS ${e.encrypt.peakRssMb.toFixed(0)} MB\n` +
    `  env. limit: ${e.envelopeLimit.seconds.toFixed(1)} s, ${e.envelopeLimit.mbPerSecond.toFixed(1)} MB/s (the same no-crypto rewrite of what encrypt wrote, right after it)\n` +
    `  ratio:      encrypt = ${e.ratio.toFixed(2)} × the limit on the plaintext (target ≥ 0.9), ${e.envelopeRatio.toFixed(2)} × the limit at the size it writes; fastest of ${RUNS} runs each, alternating`
  );
}
