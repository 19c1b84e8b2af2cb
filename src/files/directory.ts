/**
 * Directories the tool creates (the backup directory, the master key file's directory). Made
 * one path component at a time from the root down, each checked before it is created, so the
 * work is bounded by the number of components: nothing retries, nothing can loop (Node's own
 * recursive mkdir spins forever on a path under /proc, which answers every mkdir with ENOENT).
 * Any component that is not a directory, or cannot be made, fails at once with exit 3 naming it.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PreconditionError } from '../errors';

export interface DirectoryPurpose {
  /** What the directory is for, as the error names it: "backup directory". */
  what: string;
  /** How the operator picks another one. */
  hint: string;
}

function errnoCode(err: unknown): string {
  return (err as NodeJS.ErrnoException)?.code ?? String(err);
}

/** Why `mkdir(p)` failed, in words, with the errno code. */
function whyNotCreated(p: string, code: string): string {
  const parent = path.dirname(p);
  switch (code) {
    case 'EACCES':
    case 'EPERM':
      return `no permission to create ${p} in ${parent} (${code})`;
    case 'EROFS':
      return `${parent} is on a read-only filesystem (${code})`;
    case 'ENOENT':
      return `the filesystem of ${parent} refused to create ${p} (${code}; /proc, /sys and the like allow no new directories)`;
    case 'ENOSPC':
      return `no space left to create ${p} (${code})`;
    default:
      return `cannot create ${p} (${code})`;
  }
}

function kindOf(st: fs.Stats): string {
  if (st.isFile()) return 'a file';
  if (st.isSocket()) return 'a socket';
  if (st.isFIFO()) return 'a named pipe';
  if (st.isCharacterDevice() || st.isBlockDevice()) return 'a device';
  return 'not a directory';
}

/** Every path from the filesystem root down to `dir` (absolute), in order. */
function componentsOf(dir: string): string[] {
  const out: string[] = [];
  for (let p = path.resolve(dir); ; p = path.dirname(p)) {
    out.unshift(p);
    if (path.dirname(p) === p) return out;
  }
}

/**
 * Makes sure `dir` is a directory, creating it and any missing parents with `mode` (like
 * `mkdir -p`). Existing components may be symbolic links to directories. Throws a
 * PreconditionError (exit 3) naming the component that is in the way or could not be made.
 */
export function ensureDirectory(dir: string, mode: number, purpose: DirectoryPurpose): void {
  const target = path.resolve(dir);
  const fail = (why: string) => new PreconditionError(`cannot use ${target} as the ${purpose.what}: ${why}`, { hint: purpose.hint });
  for (const p of componentsOf(target)) {
    let st: fs.Stats | undefined;
    try {
      st = fs.statSync(p);
    } catch (err) {
      const code = errnoCode(err);
      if (code !== 'ENOENT') throw fail(code === 'EACCES' ? `no permission to look into ${path.dirname(p)} (${code})` : `cannot look at ${p} (${code})`);
    }
    if (st) {
      if (!st.isDirectory()) throw fail(p === target ? `it is ${kindOf(st)}, not a directory` : `${p} is ${kindOf(st)}, not a directory`);
      continue;
    }
    try {
      fs.mkdirSync(p, { mode });
    } catch (err) {
      const code = errnoCode(err);
      // Made by someone else between our look and our mkdir: fine if it is a directory.
      if (code === 'EEXIST' && isDirectory(p)) continue;
      throw fail(whyNotCreated(p, code));
    }
  }
}

function isDirectory(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}
