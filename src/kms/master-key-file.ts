/**
 * The local master key file (SPEC 2.1): JSON, mode 0600, rewritten atomically
 * (temporary file, fsync, rename, fsync of the directory), keeping owner and group.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ProviderError, UsageError } from '../errors';

export const DEFAULT_MASTER_KEY_FILE = '/etc/alation-keys/master.key';
export const MASTER_KEY_FORMAT = 'alation-keys/master-key';

export interface MasterKey {
  id: string;
  created_at: string;
  material: Buffer;
}

export interface MasterKeyFile {
  path: string;
  keys: MasterKey[];
}

export function resolveMasterKeyPath(flag?: string, env: NodeJS.ProcessEnv = process.env): string {
  return flag || env.ALATION_KEYS_MASTER_KEY_FILE || DEFAULT_MASTER_KEY_FILE;
}

export function currentMasterKey(file: MasterKeyFile): MasterKey {
  return file.keys[file.keys.length - 1];
}

export function findMasterKey(file: MasterKeyFile, id: string): MasterKey | undefined {
  return file.keys.find((k) => k.id === id);
}

export function newMasterKey(now = new Date()): MasterKey {
  return {
    id: `mk_${randomBytes(4).toString('hex')}`,
    created_at: now.toISOString().replace(/\.\d{3}Z$/, 'Z'),
    material: randomBytes(32),
  };
}

export function masterKeyFileExists(filePath: string): boolean {
  return fs.existsSync(filePath);
}

/** Reads and validates the file; refuses one that group or others can read. */
export function readMasterKeyFile(filePath: string): MasterKeyFile {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(filePath);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') {
      throw new ProviderError(`master key file ${filePath} does not exist`, {
        hint: 'pass --master-key-file or set ALATION_KEYS_MASTER_KEY_FILE to the file `init` created',
      });
    }
    throw new ProviderError(`cannot read master key file ${filePath}: ${code ?? String(err)}`);
  }
  if (!stat.isFile()) throw new ProviderError(`master key file ${filePath} is not a regular file`);
  if ((stat.mode & 0o077) !== 0) {
    const mode = (stat.mode & 0o777).toString(8).padStart(4, '0');
    throw new ProviderError(`master key file ${filePath} is readable by group or others (mode ${mode})`, {
      hint: `run: chmod 600 ${filePath}`,
    });
  }
  let text: string;
  try {
    text = fs.readFileSync(filePath, 'utf8');
  } catch (err) {
    throw new ProviderError(`cannot read master key file ${filePath}: ${(err as NodeJS.ErrnoException).code ?? err}`);
  }
  return parseMasterKeyFile(filePath, text);
}

export function parseMasterKeyFile(filePath: string, text: string): MasterKeyFile {
  const bad = (why: string) =>
    new ProviderError(`master key file ${filePath} is not valid: ${why}`, { hint: 'restore it from your key backup' });
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    throw bad('not JSON');
  }
  const d = doc as { format?: unknown; version?: unknown; keys?: unknown };
  if (d.format !== MASTER_KEY_FORMAT) throw bad(`format is not "${MASTER_KEY_FORMAT}"`);
  if (d.version !== 1) throw bad(`unsupported version ${String(d.version)}`);
  if (!Array.isArray(d.keys) || d.keys.length === 0) throw bad('no keys');
  const keys = d.keys.map((k: { id?: unknown; created_at?: unknown; material?: unknown }, i: number) => {
    if (typeof k.id !== 'string' || !k.id) throw bad(`key ${i} has no id`);
    if (typeof k.material !== 'string') throw bad(`key ${k.id} has no material`);
    const material = Buffer.from(k.material, 'base64');
    if (material.length !== 32 || material.toString('base64') !== k.material) throw bad(`key ${k.id} is not 32 bytes of base64`);
    return { id: k.id, created_at: String(k.created_at ?? ''), material };
  });
  return { path: filePath, keys };
}

function serialise(file: MasterKeyFile): string {
  return (
    JSON.stringify(
      {
        format: MASTER_KEY_FORMAT,
        version: 1,
        keys: file.keys.map((k) => ({ id: k.id, created_at: k.created_at, material: k.material.toString('base64') })),
      },
      null,
      2,
    ) + '\n'
  );
}

/**
 * Writes the file atomically with mode 0600. An existing file's owner and group are kept;
 * a new file takes the owner and group of its directory when the process may set them.
 */
export function writeMasterKeyFile(file: MasterKeyFile): void {
  const target = file.path;
  const dir = path.dirname(target);
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw new UsageError(`cannot create directory ${dir} for the master key file: ${(err as NodeJS.ErrnoException).code}`);
  }
  let owner: { uid: number; gid: number } | undefined;
  try {
    const st = fs.statSync(target);
    owner = { uid: st.uid, gid: st.gid };
  } catch {
    owner = undefined;
  }
  const temp = path.join(dir, `.${path.basename(target)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const fd = fs.openSync(temp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
  try {
    fs.fchmodSync(fd, 0o600);
    if (owner && (owner.uid !== process.getuid?.() || owner.gid !== process.getgid?.())) {
      try {
        fs.fchownSync(fd, owner.uid, owner.gid);
      } catch {
        /* not permitted: the file stays ours, still 0600 */
      }
    }
    fs.writeFileSync(fd, serialise(file));
    fs.fsyncSync(fd);
  } catch (err) {
    fs.closeSync(fd);
    fs.rmSync(temp, { force: true });
    throw err;
  }
  fs.closeSync(fd);
  fs.renameSync(temp, target);
  try {
    const dfd = fs.openSync(dir, 'r');
    fs.fsyncSync(dfd);
    fs.closeSync(dfd);
  } catch {
    /* some filesystems cannot fsync a directory */
  }
}

/** Creates a new master key file with one key. Refuses to overwrite. */
export function createMasterKeyFile(filePath: string): MasterKeyFile {
  if (fs.existsSync(filePath)) throw new UsageError(`master key file ${filePath} already exists`);
  const file = { path: filePath, keys: [newMasterKey()] };
  writeMasterKeyFile(file);
  return file;
}
