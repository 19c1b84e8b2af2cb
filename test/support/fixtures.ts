/** A ready installation on a fresh test database: schema, master key file, rosemeta tables, columns. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { addColumn } from '../../src/core/columns';
import { initialise } from '../../src/core/init';
import { openKeyring, Keyring } from '../../src/core/keyring-client';
import { createRosemetaTables, generateRosemeta, ROSEMETA_COLUMNS, RosemetaShape } from '../../scripts/lib/rosemeta';
import { createTestDatabase, TestDatabase } from './db';

export interface Installation {
  db: TestDatabase;
  dir: string;
  masterKeyFile: string;
  /** Environment for spawning the CLI against this installation. */
  env: NodeJS.ProcessEnv;
  keyring: Keyring;
  shape?: RosemetaShape;
  cleanup(): Promise<void>;
}

export function tempDir(label: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `alation-keys-${label}-`));
}

export async function createInstallation(
  label: string,
  opts: {
    values?: number;
    seed?: string;
    /** Another installation's (shared) master key file. */
    masterKeyFile?: string;
    /** Admin URL of another server to create the database on (default: the test server). */
    server?: string;
  } = {},
): Promise<Installation> {
  const db = await createTestDatabase(label, opts.server);
  const dir = tempDir(label);
  const masterKeyFile = opts.masterKeyFile ?? path.join(dir, 'master.key');
  await initialise(db.pool, { masterKeyFile });
  await createRosemetaTables(db.pool);
  for (const c of ROSEMETA_COLUMNS) await addColumn(db.pool, c);
  const keyring = await openKeyring({ pool: db.pool, masterKeyFile, refreshSeconds: 1 });
  let shape: RosemetaShape | undefined;
  if (opts.values) shape = await generateRosemeta(db.pool, keyring, { totalValues: opts.values, seed: opts.seed });
  return {
    db,
    dir,
    masterKeyFile,
    env: { ALATION_KEYS_DATABASE_URL: db.url, ALATION_KEYS_MASTER_KEY_FILE: masterKeyFile },
    keyring,
    shape,
    async cleanup() {
      await keyring.close();
      await db.drop();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
