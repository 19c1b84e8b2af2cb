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
import { fsyncDirectory, openNewFile } from './new-file';

export function replaceFileAtomically(target: string, content: string | Buffer, mode: number): void {
  const dir = path.dirname(path.resolve(target));
  const temp = path.join(dir, `.${path.basename(target)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  let fd: number;
  try {
    fd = openNewFile(temp, mode);
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
  fsyncDirectory(dir);
}
