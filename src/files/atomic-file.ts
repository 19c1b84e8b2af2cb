/**
 * Replaces a file atomically: the content goes to a new temporary file in the same directory
 * (O_EXCL|O_NOFOLLOW, so nothing planted there is followed or reused), is fsynced, gets its
 * mode, and is renamed over the target; the directory is fsynced. A reader (node_exporter's
 * textfile collector) sees the old file or the new one, never half of one. The temporary name
 * starts with a dot and ends in `.tmp`, so collectors that read `*.prom` ignore it.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { UsageError } from '../errors';

const NEW_FILE_FLAGS = fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW;

export function replaceFileAtomically(target: string, content: string | Buffer, mode: number): void {
  const dir = path.dirname(path.resolve(target));
  const temp = path.join(dir, `.${path.basename(target)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  let fd: number;
  try {
    fd = fs.openSync(temp, NEW_FILE_FLAGS, mode);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? `directory ${dir} does not exist` : code === 'EACCES' ? `no permission to create files in ${dir}` : `${code ?? err}`;
    throw new UsageError(`cannot write ${target}: ${why}`, { hint: 'pass a file in an existing directory this user may write' });
  }
  try {
    fs.fchmodSync(fd, mode);
    fs.writeFileSync(fd, content);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fs.renameSync(temp, target);
  } catch (err) {
    try {
      fs.closeSync(fd);
    } catch {
      /* already closed */
    }
    fs.rmSync(temp, { force: true });
    const code = (err as NodeJS.ErrnoException).code;
    throw new UsageError(`cannot write ${target}: ${code === 'EISDIR' ? 'it is a directory' : (code ?? String(err))}`);
  }
  try {
    const dfd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
    try {
      fs.fsyncSync(dfd);
    } finally {
      fs.closeSync(dfd);
    }
  } catch {
    /* some filesystems cannot fsync a directory */
  }
}
