/** Errors crossing from the reader thread to the main thread keep their kind, code and hint. */
import { AlationKeysError, IntegrityError } from '../../errors';

export interface WorkerErrorData {
  kind: 'integrity' | 'other';
  message: string;
  code?: string;
  hint?: string;
  location?: IntegrityError['location'];
  stack?: string;
}

export function serialiseWorkerError(err: unknown): WorkerErrorData {
  const e = err as { message?: string; code?: unknown; hint?: unknown; stack?: string };
  const data: WorkerErrorData = { kind: err instanceof IntegrityError ? 'integrity' : 'other', message: e?.message ?? String(err), stack: e?.stack };
  if (typeof e?.code === 'string') data.code = e.code;
  if (err instanceof AlationKeysError && typeof e.hint === 'string') data.hint = e.hint;
  if (err instanceof IntegrityError) data.location = err.location;
  return data;
}

export function reviveWorkerError(data: WorkerErrorData): Error {
  if (data.kind === 'integrity') return new IntegrityError(data.message, data.location, { hint: data.hint });
  const err = new Error(data.message) as Error & { code?: string };
  if (data.code) err.code = data.code;
  if (data.stack) err.stack = data.stack;
  return err;
}
