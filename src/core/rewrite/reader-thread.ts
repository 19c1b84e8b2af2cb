/**
 * The main thread's end of a pass's reader thread (reader-worker.ts): starts it with the pass
 * description as is and yields the chunks it posts. Each chunk taken acknowledges one, letting
 * the reader run a little ahead of the writer.
 *
 * In the build the thread runs reader-worker.js beside this module. Inside the single
 * executable (`npm run package`) there is no such file: the packager bundles the reader on its
 * own and keeps it as the executable's asset READER_WORKER_ASSET, and the thread evaluates it.
 */
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { Pool } from 'pg';
import { connectionConfigOf } from '../../db/connection';
import { EncodedChunk } from './chunk-encoder';
import { PassDescription } from './pass';
import { reviveWorkerError, serialiseWorkerError, WorkerErrorData } from './worker-messages';

/** The name of the bundled reader among the single executable's assets. */
export const READER_WORKER_ASSET = 'reader-worker.js';

let bundledReader: string | null | undefined;

/** The bundled reader's code when this process is the single executable, else null. */
function bundledReaderCode(): string | null {
  if (bundledReader !== undefined) return bundledReader;
  let sea: typeof import('node:sea') | undefined;
  try {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    sea = require('node:sea');
  } catch {
    sea = undefined;
  }
  bundledReader = sea?.isSea() ? sea.getAsset(READER_WORKER_ASSET, 'utf8') : null;
  return bundledReader;
}

function startReaderThread(workerData: unknown): Worker {
  const code = bundledReaderCode();
  if (code !== null) return new Worker(code, { eval: true, workerData });
  return new Worker(path.join(__dirname, 'reader-worker.js'), { workerData });
}

export async function* chunksFromReader(pool: Pool, pass: PassDescription): AsyncGenerator<EncodedChunk> {
  const worker = startReaderThread({ config: connectionConfigOf(pool), pass });
  type Message =
    | { type: 'chunk'; chunk: Omit<EncodedChunk, 'pieces'> & { pieces: Array<{ buffer: ArrayBuffer; offset: number; length: number }> } }
    | { type: 'done' }
    | { type: 'error'; error: WorkerErrorData }
    | { type: 'exit'; code: number };
  const queue: Message[] = [];
  let wake: (() => void) | null = null;
  const push = (m: Message) => {
    queue.push(m);
    const w = wake;
    wake = null;
    w?.();
  };
  worker.on('message', push);
  worker.on('error', (err) => push({ type: 'error', error: serialiseWorkerError(err) }));
  worker.on('exit', (code) => push({ type: 'exit', code }));
  try {
    for (;;) {
      while (queue.length === 0) await new Promise<void>((resolve) => (wake = resolve));
      const m = queue.shift()!;
      if (m.type === 'chunk') {
        const pieces = m.chunk.pieces.map((x) => Buffer.from(x.buffer, x.offset, x.length));
        yield { ...m.chunk, pieces };
        worker.postMessage('ack');
      } else if (m.type === 'done') {
        return;
      } else if (m.type === 'error') {
        throw reviveWorkerError(m.error);
      } else {
        throw new Error(`the reader thread for ${pass.plan.name} exited unexpectedly (code ${m.code})`);
      }
    }
  } finally {
    await worker.terminate();
  }
}
