/** Helpers shared by the rotate tests. */
import { ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { Pool } from 'pg';
import { spawnCli, CliResult, CliOptions } from './cli';

export const FAST = ['--skip-backup-check', '--settle-time', '0'];

/** Spawns the CLI and resolves once `marker` shows up on stderr (or rejects on exit/timeout). */
export function spawnUntil(args: string[], marker: string, opts: CliOptions = {}, timeoutMs = 60_000) {
  const child = spawnCli(args, opts);
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  const exited = new Promise<CliResult>((resolve) => {
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
  const seen = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for "${marker}"; stderr:\n${stderr}`)), timeoutMs);
    child.stderr!.on('data', (d) => {
      stderr += d;
      if (stderr.includes(marker)) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      if (!stderr.includes(marker)) reject(new Error(`exited ${code} before "${marker}"; stderr:\n${stderr}`));
    });
  });
  child.stdin!.end('');
  return { child, seen, exited, get stderr() { return stderr; } };
}

export function kill(child: ChildProcess, signal: NodeJS.Signals): void {
  child.kill(signal);
}

export async function keyringRows(pool: Pool) {
  const r = await pool.query<{ version: number; state: string; kek_id: string }>(
    'SELECT version, state, kek_id FROM alation_keys.keyring ORDER BY version',
  );
  return r.rows;
}

export async function rotateJobs(pool: Pool) {
  const r = await pool.query<{ id: string; state: string; from_version: number; to_version: number; detail: any; error: string | null }>(
    `SELECT id::text, state, from_version, to_version, detail, error FROM alation_keys.jobs WHERE kind = 'rotate' ORDER BY id`,
  );
  return r.rows;
}

/** A digest of every encrypted value in the rosemeta tables, to prove nothing changed. */
export async function tableDigest(pool: Pool): Promise<string> {
  const h = createHash('sha256');
  for (const [t, c] of [['credentials', 'secret'], ['documents', 'body'], ['blobs', 'payload']]) {
    const r = await pool.query(`SELECT id::text, md5(${c}::bytea) AS m FROM public.${t} ORDER BY id`);
    for (const row of r.rows) h.update(`${t}/${row.id}/${row.m}\n`);
  }
  return h.digest('hex');
}
