// Placeholder: the backup work (issue 4) replaces this file. The signature is what `rotate --backup` calls.
import { Pool } from 'pg';
import { OperationError } from '../errors';

export interface BackupOptions {
  outDir: string;
  jobs?: number;
  pgDump?: string;
  /** Connection settings for pg_dump (same precedence as the pool). */
  databaseUrl?: string;
  masterKeyFile?: string;
  /** The caller (e.g. rotate --backup) already holds the maintenance lock. */
  lockHeld?: boolean;
  signal?: AbortSignal;
  onProgress?: (p: { bytes: number; elapsedMs: number }) => void;
}

export interface BackupResult {
  jobId: number;
  file: string;
  manifestFile: string;
  bytes: number;
  sha256: string;
  manifest: Record<string, unknown>;
}

export async function takeBackup(_pool: Pool, _opts: BackupOptions): Promise<BackupResult> {
  throw new OperationError('backup is not available in this build');
}
