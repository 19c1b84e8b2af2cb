/**
 * Worker-thread entry of rewrite passes: owns the reader connection, reads pages with binary
 * COPY, applies the pass's transform and encodes the staging rows, and posts finished chunks to the main
 * thread, which only writes them. At most CHUNK_CREDIT chunks wait unacknowledged, so the
 * reader runs a little ahead of the writer and memory stays bounded.
 *
 * Keeping the cryptography off the main thread is what lets it overlap with the writer: on
 * one thread, the writer's replies waited behind re-encryption bursts (measured: BEGIN alone
 * averaged 45 ms per chunk) and a rotation took 1.8 × the time of the same rewrite without
 * cryptography.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { Client, ClientConfig } from 'pg';
import { readChunks } from './chunk-reader';
import { PassDescription } from './pass';
import { serialiseWorkerError } from './worker-messages';

export const CHUNK_CREDIT = 2;

/**
 * One connection for the thread's life; passes come as messages ({type: 'pass'}), one after
 * another, each answered by its chunks and a 'done' (the thread is reused: a new thread and
 * connection cost ~150 ms, more than a small column takes to read).
 */
async function main(): Promise<void> {
  const port = parentPort!;
  const { config } = workerData as { config: ClientConfig };
  let credit = CHUNK_CREDIT;
  let wake: (() => void) | null = null;
  const passes: PassDescription[] = [];
  const nudge = () => {
    const w = wake;
    wake = null;
    w?.();
  };
  port.on('message', (m) => {
    if (m === 'ack') credit++;
    else if (m?.type === 'pass') passes.push(m.pass);
    nudge();
  });
  // The pool's settings, DateStyle ISO included (resolveConnectionConfig): watermarks are keys
  // in their text form, read back by later sessions.
  const client = new Client(config);
  client.on('error', () => undefined);
  await client.connect();
  try {
    for (;;) {
      while (passes.length === 0) await new Promise<void>((resolve) => (wake = resolve));
      const pass = passes.shift()!;
      // Every ack of the previous pass came before this pass's message (one port, in order).
      credit = CHUNK_CREDIT;
      for await (const chunk of readChunks(client, pass)) {
        while (credit === 0) await new Promise<void>((resolve) => (wake = resolve));
        credit--;
        const pieces = chunk.pieces.map((b) => ({ buffer: b.buffer as ArrayBuffer, offset: b.byteOffset, length: b.length }));
        port.postMessage({ type: 'chunk', chunk: { ...chunk, pieces } }, [...new Set(pieces.map((x) => x.buffer))]);
      }
      port.postMessage({ type: 'done' });
    }
  } finally {
    await client.end().catch(() => undefined);
  }
}

main().catch((err) => parentPort!.postMessage({ type: 'error', error: serialiseWorkerError(err) }));
