/** Small helpers of the rotation: durations, abortable sleep. */
import { UsageError } from '../../errors';

const UNITS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };

/** Parses `90d`, `24h`, `30m`, `45s`, `2w` into milliseconds; anything else is a UsageError. */
export function parseDuration(text: string, flag: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$/i.exec(String(text));
  if (!m) throw new UsageError(`${flag} must be a duration such as 90d, 24h, 30m or 45s, got "${text}"`);
  return Math.round(Number(m[1]) * UNITS[m[2].toLowerCase()]);
}

export function parsePositiveInt(text: string, flag: string, max = Number.MAX_SAFE_INTEGER): number {
  if (!/^\s*\d+\s*$/.test(String(text)) || Number(text) < 1 || Number(text) > max) {
    throw new UsageError(`${flag} must be a whole number from 1 to ${max}, got "${text}"`);
  }
  return Number(text);
}

export function parsePositiveNumber(text: string, flag: string): number {
  const n = Number(text);
  if (!/^\s*\d+(\.\d+)?\s*$/.test(String(text)) || !(n > 0)) throw new UsageError(`${flag} must be a positive number, got "${text}"`);
  return n;
}

export function formatDuration(ms: number): string {
  const s = Math.round(ms / 1000);
  if (s < 90) return `${s}s`;
  const m = Math.round(s / 60);
  if (m < 90) return `${m}m`;
  const h = Math.round(m / 60);
  if (h < 48) return `${h}h`;
  return `${Math.round(h / 24)}d`;
}

/** Resolves after ms, or at once when the signal aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (ms <= 0 || signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const t = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}
