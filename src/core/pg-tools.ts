/**
 * Finding PostgreSQL client programs (pg_dump, pg_restore) of a suitable major version, and
 * the environment that hands them our connection settings without putting a password in argv.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ClientConfig } from 'pg';
import { PreconditionError } from '../errors';

export type PgTool = 'pg_dump' | 'pg_restore';

export interface PgToolVersion {
  /** As printed, e.g. "15.20". */
  text: string;
  /** Comparable number like server_version_num: 150020, 90600. */
  num: number;
}

export interface FoundPgTool {
  tool: PgTool;
  path: string;
  version: PgToolVersion;
}

/** Comparable major version: 15 → 1500, 9.6 → 906. */
export function majorKey(versionNum: number): number {
  return versionNum >= 100000 ? Math.floor(versionNum / 10000) * 100 : Math.floor(versionNum / 100);
}

/** The major version as PostgreSQL names it: "15", "9.6". */
export function majorName(versionNum: number): string {
  if (versionNum >= 100000) return String(Math.floor(versionNum / 10000));
  return `${Math.floor(versionNum / 10000)}.${Math.floor(versionNum / 100) % 100}`;
}

/** Parses `pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)`, `pg_dump (PostgreSQL) 9.6.0`, `17beta1`. */
export function parsePgToolVersion(output: string): PgToolVersion | undefined {
  const m = /\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?(?:\.(\d+))?/.exec(output);
  if (!m) return undefined;
  const a = Number(m[1]);
  const b = m[2] === undefined ? 0 : Number(m[2]);
  const c = m[3] === undefined ? 0 : Number(m[3]);
  const num = a >= 10 ? a * 10000 + b : a * 10000 + b * 100 + c;
  const text = [m[1], m[2], m[3]].filter((x) => x !== undefined).join('.');
  return { text, num };
}

/**
 * Debian's pg_wrapper (/usr/bin/pg_dump) picks a version by the cluster PGPORT names, so what
 * `--version` said may not be what runs: use the versioned binary it stands for instead.
 */
function unwrapDebianWrapper(toolPath: string, tool: PgTool, version: PgToolVersion): { path: string; version: PgToolVersion } {
  let real: string;
  try {
    real = fs.realpathSync(toolPath);
  } catch {
    return { path: toolPath, version };
  }
  if (path.basename(real) !== 'pg_wrapper') return { path: toolPath, version };
  const direct = path.join('/usr/lib/postgresql', majorName(version.num), 'bin', tool);
  const v = probePgTool(direct, tool);
  return v ? { path: direct, version: v } : { path: toolPath, version };
}

/** Runs `<path> --version`; undefined when it cannot be run or does not look like the tool. */
export function probePgTool(toolPath: string, tool: PgTool): PgToolVersion | undefined {
  try {
    const st = fs.statSync(toolPath);
    if (!st.isFile()) return undefined;
  } catch {
    return undefined;
  }
  const r = spawnSync(toolPath, ['--version'], { encoding: 'utf8', timeout: 10_000, stdio: ['ignore', 'pipe', 'pipe'] });
  if (r.error || r.status !== 0) return undefined;
  const out = `${r.stdout ?? ''}`;
  if (!out.includes(tool)) return undefined;
  return parsePgToolVersion(out);
}

export interface FindPgToolOptions {
  /** An explicit path (e.g. --pg-dump): only this one is considered. */
  explicit?: string;
  /** The lowest acceptable version (server_version_num style); its major is what counts. */
  minVersionNum: number;
  /** What the minimum is, for messages: "the server is PostgreSQL 15.18". */
  minReason: string;
  /** The flag that points at a binary, for the hint: "--pg-dump PATH". */
  flag: string;
  /** Whose PATH is searched: the caller's environment. */
  env: NodeJS.ProcessEnv;
  /** Roots holding per-version installs (tests). Default /usr/lib/postgresql/<major>/bin and /usr/pgsql-<major>/bin. */
  versionedDirs?: () => Array<{ dir: string; major: number }>;
}

/** Per-version install directories on this host, e.g. /usr/lib/postgresql/15/bin, /usr/pgsql-16/bin. */
export function defaultVersionedDirs(): Array<{ dir: string; major: number }> {
  const out: Array<{ dir: string; major: number }> = [];
  const scan = (root: string, re: RegExp, sub: string) => {
    let names: string[];
    try {
      names = fs.readdirSync(root);
    } catch {
      return;
    }
    for (const n of names) {
      const m = re.exec(n);
      if (!m) continue;
      const [a, b = '0'] = m[1].split('.');
      out.push({ dir: path.join(root, n, sub), major: Number(a) >= 10 ? Number(a) * 100 : Number(a) * 100 + Number(b) });
    }
  };
  scan('/usr/lib/postgresql', /^(\d+(?:\.\d+)?)$/, 'bin');
  scan('/usr', /^pgsql-(\d+(?:\.\d+)?)$/, 'bin');
  // Lowest first: the closest version at or above the server's wins.
  return out.sort((x, y) => x.major - y.major);
}

/**
 * Finds the tool: the explicit path if given, else the first on PATH that is new enough, else
 * the closest per-version install. Throws exit 3 naming the version needed and how to point at one.
 */
export function findPgTool(tool: PgTool, opts: FindPgToolOptions): FoundPgTool {
  const needMajor = majorKey(opts.minVersionNum);
  const needName = majorName(opts.minVersionNum);
  const hint = `install the PostgreSQL ${needName} client programs (e.g. postgresql-client-${needName}) or pass ${opts.flag} with the path of a ${tool} ${needName} or newer`;
  if (opts.explicit) {
    const p = path.resolve(opts.explicit);
    const v = probePgTool(p, tool);
    if (!v) {
      throw new PreconditionError(`${p} is not a runnable ${tool} (it is missing, not executable, or \`${p} --version\` does not print a ${tool} version)`, {
        hint,
      });
    }
    if (majorKey(v.num) < needMajor) {
      throw new PreconditionError(`${p} is ${tool} ${v.text}, but ${opts.minReason}: ${tool} ${needName} or newer is needed`, { hint });
    }
    return { tool, ...unwrapDebianWrapper(p, tool, v) };
  }
  const env = opts.env;
  const candidates: string[] = [];
  for (const dir of (env.PATH ?? '').split(path.delimiter)) if (dir) candidates.push(path.join(dir, tool));
  for (const d of (opts.versionedDirs ?? defaultVersionedDirs)()) candidates.push(path.join(d.dir, tool));
  const seen = new Set<string>();
  const tooOld: string[] = [];
  for (const c of candidates) {
    let real: string;
    try {
      real = fs.realpathSync(c);
    } catch {
      continue;
    }
    // pg_wrapper (Debian) dispatches on its own name: keep distinct paths that share it.
    const key = path.basename(real) === 'pg_wrapper' ? c : real;
    if (seen.has(key)) continue;
    seen.add(key);
    const v = probePgTool(c, tool);
    if (!v) continue;
    if (majorKey(v.num) >= needMajor) return { tool, ...unwrapDebianWrapper(c, tool, v) };
    tooOld.push(`${c} (${v.text})`);
  }
  const found = tooOld.length ? `only found ${tooOld.join(', ')}` : `no ${tool} found on PATH, in /usr/lib/postgresql/<major>/bin or /usr/pgsql-<major>/bin`;
  throw new PreconditionError(`${tool} ${needName} or newer is needed (${opts.minReason}); ${found}`, { hint });
}

/**
 * The libpq environment that connects pg_dump/pg_restore where `config` (from
 * resolveConnectionConfig) connects node-pg: same host, port, user, password, database, SSL.
 * Defaults follow node-pg (TCP to localhost:5432), not libpq (unix socket), so both reach the
 * same server the same way. The password travels in PGPASSWORD, never in argv.
 */
export function pgToolEnv(
  config: ClientConfig,
  opts: { applicationName: string; database?: string; env: NodeJS.ProcessEnv },
): NodeJS.ProcessEnv {
  const base = opts.env;
  const out: NodeJS.ProcessEnv = { ...base };
  const set = (k: string, v: string | number | undefined | null) => {
    if (v !== undefined && v !== null && v !== '') out[k] = String(v);
  };
  let host: string | undefined;
  let port: string | undefined;
  let user: string | undefined;
  let password: string | undefined;
  let database: string | undefined;
  if (config.connectionString) {
    const u = new URL(config.connectionString);
    const q = u.searchParams;
    const hostname = u.hostname ? decodeURIComponent(u.hostname).replace(/^\[|\]$/g, '') : '';
    // As pg-connection-string reads it: query parameters win over the authority part.
    host = q.get('host') || hostname || undefined;
    port = q.get('port') || u.port || undefined;
    user = q.get('user') || (u.username ? decodeURIComponent(u.username) : undefined);
    password = q.get('password') || (u.password ? decodeURIComponent(u.password) : undefined);
    database = u.pathname && u.pathname !== '/' ? decodeURIComponent(u.pathname.slice(1)) : q.get('dbname') || undefined;
    const map: Record<string, string> = {
      sslmode: 'PGSSLMODE',
      sslcert: 'PGSSLCERT',
      sslkey: 'PGSSLKEY',
      sslrootcert: 'PGSSLROOTCERT',
      sslcrl: 'PGSSLCRL',
      options: 'PGOPTIONS',
      connect_timeout: 'PGCONNECT_TIMEOUT',
      target_session_attrs: 'PGTARGETSESSIONATTRS',
      gssencmode: 'PGGSSENCMODE',
      krbsrvname: 'PGKRBSRVNAME',
      passfile: 'PGPASSFILE',
      service: 'PGSERVICE',
    };
    for (const [param, envName] of Object.entries(map)) set(envName, q.get(param));
    const ssl = q.get('ssl');
    if (!q.get('sslmode') && ssl && ssl !== '0' && ssl !== 'false') out.PGSSLMODE = 'require';
  }
  host = host || (config.host as string | undefined) || base.PGHOST || 'localhost';
  port = port || (config.port !== undefined ? String(config.port) : undefined) || base.PGPORT || '5432';
  user = user || (config.user as string | undefined) || base.PGUSER || defaultUser(base);
  if (!password && typeof config.password === 'string') password = config.password;
  database = opts.database || database || (config.database as string | undefined) || base.PGDATABASE;
  set('PGHOST', host);
  set('PGPORT', port);
  set('PGUSER', user);
  set('PGPASSWORD', password);
  set('PGDATABASE', database);
  out.PGAPPNAME = opts.applicationName;
  return out;
}

function defaultUser(env: NodeJS.ProcessEnv): string | undefined {
  try {
    return os.userInfo().username;
  } catch {
    return env.USER;
  }
}
