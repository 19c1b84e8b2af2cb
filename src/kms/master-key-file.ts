/**
 * The local master key file (SPEC 2.1): JSON, mode 0600. Every rewrite holds an exclusive
 * lock on a lock file beside the (link-resolved) file, re-reads the file under it, appends,
 * writes a new file (O_EXCL|O_NOFOLLOW, 0600, fsync), renames it over the old one, fsyncs the
 * directory and reads the result back before the lock is released. A symbolic link is left
 * as it is: the file it points to is rewritten in its own directory.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ProviderError, UsageError } from '../errors';
import { fsyncDirectory, nameTaken, openNewFile } from '../files/new-file';
import { ensureDirectory } from '../files/directory';

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
  return nameTaken(filePath);
}

/** Reads and validates the file; refuses one that group or others can read. */
export function readMasterKeyFile(filePath: string): MasterKeyFile {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(filePath);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') {
      const dangling = nameTaken(filePath) ? ' (it is a symbolic link to a missing file)' : '';
      throw new ProviderError(`master key file ${filePath} does not exist${dangling}`, {
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

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** Parses the documented format; anything else is exit 4 with one line saying what is wrong (never the content). */
export function parseMasterKeyFile(filePath: string, text: string): MasterKeyFile {
  const bad = (why: string) =>
    new ProviderError(`master key file ${filePath} is not valid: ${why}`, { hint: 'restore it from your key backup' });
  if (text.trim() === '') throw bad('it is empty');
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    throw bad('not JSON');
  }
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) throw bad('not a JSON object');
  const d = doc as { format?: unknown; version?: unknown; keys?: unknown };
  if (d.format !== MASTER_KEY_FORMAT) throw bad(`format is not "${MASTER_KEY_FORMAT}"`);
  if (d.version !== 1) throw bad(`unsupported version ${JSON.stringify(d.version) ?? 'missing'}`);
  if (d.keys === undefined) throw bad('no "keys" array');
  if (!Array.isArray(d.keys)) throw bad('"keys" is not an array');
  if (d.keys.length === 0) throw bad('"keys" is empty');
  const seen = new Set<string>();
  const keys = d.keys.map((k: unknown, i: number): MasterKey => {
    if (k === null || typeof k !== 'object' || Array.isArray(k)) throw bad(`key ${i} is not an object`);
    const { id, created_at, material } = k as { id?: unknown; created_at?: unknown; material?: unknown };
    if (typeof id !== 'string' || !id) throw bad(`key ${i} has no id`);
    if (seen.has(id)) throw bad(`key id ${id} appears twice`);
    seen.add(id);
    if (typeof material !== 'string' || material === '') throw bad(`key ${id} has no material`);
    if (!BASE64.test(material) || material.length % 4 !== 0) throw bad(`key ${id}'s material is not base64`);
    const bytes = Buffer.from(material, 'base64');
    if (bytes.length !== 32) {
      bytes.fill(0);
      throw bad(`key ${id}'s material is not 32 bytes of base64`);
    }
    if (created_at !== undefined && typeof created_at !== 'string') throw bad(`key ${id}'s created_at is not a string`);
    return { id, created_at: created_at ?? '', material: bytes };
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

/** Zeroes the key material held in memory once it is no longer needed. */
export function forgetMasterKeys(file: MasterKeyFile): void {
  for (const k of file.keys) k.material.fill(0);
}

/** The file a rewrite replaces: the path itself, or the file a symbolic link there points to. */
export function resolveMasterKeyTarget(filePath: string): string {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(filePath);
  } catch {
    return filePath;
  }
  if (!st.isSymbolicLink()) return filePath;
  try {
    return fs.realpathSync(filePath);
  } catch (err) {
    throw new ProviderError(`master key file ${filePath} is a symbolic link that cannot be resolved: ${(err as NodeJS.ErrnoException).code}`, {
      hint: 'point the link at the real master key file, or pass --master-key-file with its path',
    });
  }
}

function tempPattern(target: string): RegExp {
  const base = path.basename(target).replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  return new RegExp(`^\\.${base}\\.\\d+\\.[0-9a-f]+\\.tmp$`);
}

/** Temp files of rewrites that died (kill -9) hold key material: removed under the lock. */
function removeStaleTempFiles(target: string): void {
  const dir = path.dirname(target);
  const pattern = tempPattern(target);
  for (const name of fs.readdirSync(dir)) {
    if (pattern.test(name)) fs.rmSync(path.join(dir, name), { force: true });
  }
}

export interface RewriteHooks {
  /** TEST ONLY: awaited before the lock is taken (a barrier for two processes). */
  beforeLock?: () => Promise<void>;
  /** TEST ONLY: awaited with the lock held, after the re-read and before the rename. */
  inRewriteWindow?: () => Promise<void>;
}

/**
 * Writes `file` to a new temp file beside `target` (0600, O_EXCL|O_NOFOLLOW, the given owner),
 * fsyncs it and returns its path.
 */
function writeTempFile(target: string, file: MasterKeyFile, owner?: { uid: number; gid: number }): string {
  const temp = path.join(path.dirname(target), `.${path.basename(target)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const fd = openNewFile(temp, 0o600);
  try {
    fs.fchmodSync(fd, 0o600);
    if (owner && (owner.uid !== process.getuid?.() || owner.gid !== process.getgid?.())) {
      try {
        fs.fchownSync(fd, owner.uid, owner.gid);
      } catch {
        /* not permitted (not root): the file stays ours, still 0600 */
      }
    }
    fs.writeFileSync(fd, serialise(file));
    fs.fsyncSync(fd);
    fs.closeSync(fd);
  } catch (err) {
    fs.closeSync(fd);
    fs.rmSync(temp, { force: true });
    throw err;
  }
  return temp;
}

async function withFileLock<T>(target: string, fn: () => Promise<T>): Promise<T> {
  // Loaded on demand: the application library only reads the file and never needs the lock.
  const lockfile = require('proper-lockfile') as typeof import('proper-lockfile');
  let compromised: Error | undefined;
  let release: () => Promise<void>;
  try {
    release = await lockfile.lock(target, {
      realpath: false,
      lockfilePath: `${target}.lock`,
      stale: 30_000,
      update: 5_000,
      retries: { retries: 600, factor: 1, minTimeout: 100, maxTimeout: 100 },
      onCompromised: (err) => {
        compromised = err;
      },
    });
  } catch (err) {
    throw new ProviderError(`cannot lock master key file ${target}: ${(err as Error).message}`, {
      hint: `another alation-keys command is rewriting it; if none is, remove the stale lock ${target}.lock`,
    });
  }
  try {
    const result = await fn();
    if (compromised) throw new ProviderError(`the lock on master key file ${target} was lost while rewriting it: ${compromised.message}`);
    return result;
  } finally {
    await release().catch(() => undefined);
  }
}

function checkReadBack(target: string, expected: MasterKeyFile): MasterKeyFile {
  const back = readMasterKeyFile(target);
  for (const k of expected.keys) {
    const got = findMasterKey(back, k.id);
    if (!got || !got.material.equals(k.material)) {
      throw new ProviderError(`master key file ${target} does not hold master key ${k.id} after it was rewritten`, {
        hint: 'check the filesystem (full, read-only, or another program rewriting the file); nothing was committed',
      });
    }
  }
  return back;
}

/**
 * Rewrites the master key file under its lock: re-read, `edit` the key list, atomic write,
 * read back and check. Returns the file as read back.
 */
async function rewriteMasterKeyFile(
  filePath: string,
  edit: (current: MasterKeyFile) => MasterKey[],
  hooks: RewriteHooks = {},
): Promise<MasterKeyFile> {
  const target = resolveMasterKeyTarget(filePath);
  await hooks.beforeLock?.();
  return withFileLock(target, async () => {
    const current = readMasterKeyFile(target);
    const next: MasterKeyFile = { path: target, keys: edit(current) };
    const st = fs.statSync(target);
    removeStaleTempFiles(target);
    const temp = writeTempFile(target, next, { uid: st.uid, gid: st.gid });
    try {
      await hooks.inRewriteWindow?.();
      fs.renameSync(temp, target);
    } catch (err) {
      fs.rmSync(temp, { force: true });
      throw err;
    }
    fsyncDirectory(path.dirname(target));
    const back = checkReadBack(target, next);
    if (back.keys.length !== next.keys.length) {
      throw new ProviderError(`master key file ${target} holds ${back.keys.length} keys after it was rewritten, not ${next.keys.length}`);
    }
    forgetMasterKeys(current);
    return { ...back, path: filePath };
  });
}

/** Appends `key` (it becomes the current master key). Returns the file as read back. */
export function appendMasterKey(filePath: string, key: MasterKey, hooks: RewriteHooks = {}): Promise<MasterKeyFile> {
  return rewriteMasterKeyFile(
    filePath,
    (current) => {
      if (findMasterKey(current, key.id)) throw new ProviderError(`master key ${key.id} is already in ${filePath}`);
      return [...current.keys.map(copyKey), key];
    },
    hooks,
  );
}

/**
 * Removes the master keys `ids` from the file; the current (last) key is never removed.
 * Returns the ids actually removed.
 */
export async function removeMasterKeys(filePath: string, ids: Set<string>): Promise<string[]> {
  let removed: string[] = [];
  const back = await rewriteMasterKeyFile(filePath, (current) => {
    const last = currentMasterKey(current).id;
    removed = current.keys.filter((k) => ids.has(k.id) && k.id !== last).map((k) => k.id);
    return current.keys.filter((k) => !removed.includes(k.id)).map(copyKey);
  });
  forgetMasterKeys(back);
  return removed;
}

function copyKey(k: MasterKey): MasterKey {
  return { ...k, material: Buffer.from(k.material) };
}

/**
 * Creates a new master key file with one key; refuses any existing name (a dangling link
 * included). The file belongs to the user running the command, mode 0600: when the
 * application runs as another user, chown the file to it.
 */
export async function createMasterKeyFile(filePath: string): Promise<MasterKeyFile> {
  if (nameTaken(filePath)) throw new UsageError(`master key file ${filePath} already exists`);
  const dir = path.dirname(filePath);
  ensureDirectory(dir, 0o700, {
    what: 'directory of the master key file',
    hint: 'pass --master-key-file PATH (or set ALATION_KEYS_MASTER_KEY_FILE) in a directory this user may create or write',
  });
  const file: MasterKeyFile = { path: filePath, keys: [newMasterKey()] };
  return withFileLock(filePath, async () => {
    removeStaleTempFiles(filePath);
    const temp = writeTempFile(filePath, file);
    try {
      // link(2) never replaces an existing name: two inits at once cannot both create it.
      fs.linkSync(temp, filePath);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new UsageError(`master key file ${filePath} already exists`);
      throw err;
    } finally {
      fs.rmSync(temp, { force: true });
    }
    fsyncDirectory(dir);
    return checkReadBack(filePath, file);
  });
}
