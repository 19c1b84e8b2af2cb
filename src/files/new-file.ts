/**
 * Files the tool creates: always a new name (O_EXCL), never through a symbolic link
 * (O_NOFOLLOW), so a link planted where the file is to be written redirects nothing.
 * A dangling link is a taken name, not a free one.
 */
import * as fs from 'node:fs';
import { PreconditionError } from '../errors';

const NEW_FILE_FLAGS = fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW;

/** Opens `filePath` for writing as a new file with `mode`; throws EEXIST (also for any link there). */
export function openNewFile(filePath: string, mode: number): number {
  return fs.openSync(filePath, NEW_FILE_FLAGS, mode);
}

/** True when something (a file, a directory, a link even a dangling one) has this name. */
export function nameTaken(filePath: string): boolean {
  try {
    fs.lstatSync(filePath);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

/** Makes a rename or link in `dir` durable; some filesystems cannot fsync a directory. */
export function fsyncDirectory(dir: string): void {
  let fd: number | undefined;
  try {
    fd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
    fs.fsyncSync(fd);
  } catch {
    /* not supported here */
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

/**
 * Refuses a directory that group or others may write (they could plant links or swap files
 * between our checks and our writes), naming the chmod that fixes it. Exit 3.
 */
export function refuseSharedWritableDirectory(dir: string, what: string): void {
  const st = fs.statSync(dir);
  if ((st.mode & 0o022) !== 0) {
    const mode = (st.mode & 0o7777).toString(8).padStart(4, '0');
    throw new PreconditionError(`${what} ${dir} is writable by group or others (mode ${mode})`, {
      hint: `run: chmod go-w ${dir}`,
    });
  }
}
