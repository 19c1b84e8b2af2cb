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

type Message =
  | { type: 'chunk'; chunk: Omit<EncodedChunk, 'pieces'> & { pieces: Array<{ buffer: ArrayBuffer; offset: number; length: number }> } }
  | { type: 'done' }
  | { type: 'error'; error: WorkerErrorData }
  | { type: 'exit'; code: number };

/**
 * A reader thread kept for several passes, one after another (verify reads column after
 * column on one). A pass that ends early (the consumer stopped, or an error) ends the thread;
 * the next pass starts a new one.
 */
export class ReaderThread {
  private worker: Worker | null = null;
  private inbox: { queue: Message[]; wake: (() => void) | null } = { queue: [], wake: null };

  constructor(private readonly pool: Pool) {}

  private start(): Worker {
    const worker = startReaderThread({ config: connectionConfigOf(this.pool) });
    const inbox: ReaderThread['inbox'] = { queue: [], wake: null };
    const push = (m: Message) => {
      inbox.queue.push(m);
      const w = inbox.wake;
      inbox.wake = null;
      w?.();
    };
    worker.on('message', push);
    worker.on('error', (err) => push({ type: 'error', error: serialiseWorkerError(err) }));
    worker.on('exit', (code) => push({ type: 'exit', code }));
    this.inbox = inbox;
    return worker;
  }

  /** Starts the thread now (it loads and connects while the caller does other work). */
  warm(): this {
    this.worker ??= this.start();
    return this;
  }

  async *chunks(pass: PassDescription): AsyncGenerator<EncodedChunk> {
    const worker = (this.worker ??= this.start());
    const inbox = this.inbox;
    worker.postMessage({ type: 'pass', pass });
    let finished = false;
    try {
      for (;;) {
        while (inbox.queue.length === 0) await new Promise<void>((resolve) => (inbox.wake = resolve));
        const m = inbox.queue.shift()!;
        if (m.type === 'chunk') {
          const pieces = m.chunk.pieces.map((x) => Buffer.from(x.buffer, x.offset, x.length));
          yield { ...m.chunk, pieces };
          worker.postMessage('ack');
        } else if (m.type === 'done') {
          finished = true;
          return;
        } else if (m.type === 'error') {
          throw reviveWorkerError(m.error);
        } else {
          throw new Error(`the reader thread for ${pass.plan.name} exited unexpectedly (code ${m.code})`);
        }
      }
    } finally {
      if (!finished) await this.close();
    }
  }

  /** Ends the thread (and its connection). */
  async close(): Promise<void> {
    const worker = this.worker;
    this.worker = null;
    await worker?.terminate();
  }
}

/** One pass on a thread of its own. */
export async function* chunksFromReader(pool: Pool, pass: PassDescription): AsyncGenerator<EncodedChunk> {
  const reader = new ReaderThread(pool);
  try {
    yield* reader.chunks(pass);
  } finally {
    await reader.close();
  }
}
