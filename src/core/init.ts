/** `init`: create or migrate the schema, the installation id, the master key file, DEK v1. */
import { randomUUID } from 'node:crypto';
import { Pool } from 'pg';
import { ProviderError } from '../errors';
import { migrate, LATEST_SCHEMA_VERSION } from '../db/migrations';
import { withTransaction } from '../db/transaction';
import { createKeyProvider } from '../kms';
import { createMasterKeyFile, masterKeyFileExists, readMasterKeyFile, resolveMasterKeyPath } from '../kms/master-key-file';
import { addPrimaryDataKey, lockKeyring, readKeyring, unwrapKeyring } from './keyring';
import { ensureSetting, readSettings } from './settings';

export interface InitResult {
  schemaVersion: number;
  migrationsApplied: number[];
  installationId: string;
  kekProvider: string;
  masterKeyFile: string | null;
  masterKeyFileCreated: boolean;
  dataKeyCreated: number | null;
  changed: boolean;
}

export async function initialise(pool: Pool, opts: { masterKeyFile?: string } = {}): Promise<InitResult> {
  const migrationsApplied = await migrate(pool);
  return withTransaction(pool, async (client) => {
    await lockKeyring(client);
    const before = await readSettings(client);
    const installationId = await ensureSetting(client, 'installation_id', randomUUID());
    const kekProvider = await ensureSetting(client, 'kek_provider', 'local');
    const settings = await readSettings(client);
    const keys = await readKeyring(client);
    let masterKeyFile: string | null = null;
    let masterKeyFileCreated = false;
    if (kekProvider === 'local') {
      masterKeyFile = resolveMasterKeyPath(opts.masterKeyFile);
      if (!masterKeyFileExists(masterKeyFile)) {
        if (keys.some((k) => k.kek_provider === 'local' && k.state !== 'destroyed')) {
          throw new ProviderError(`master key file ${masterKeyFile} does not exist, but the keyring has data keys wrapped under it`, {
            hint: 'restore the master key file from your key backup, or pass --master-key-file with its path',
          });
        }
        await createMasterKeyFile(masterKeyFile);
        masterKeyFileCreated = true;
      } else {
        // Validates mode and content (exit 4 naming the fix) before anything relies on it.
        readMasterKeyFile(masterKeyFile);
      }
    }
    let dataKeyCreated: number | null = null;
    const provider = createKeyProvider(settings, opts);
    if (keys.length === 0) {
      dataKeyCreated = (await addPrimaryDataKey(client, provider)).version;
    } else {
      // Every DEK must unwrap with this key provider: a wrong master key file is caught here.
      (await unwrapKeyring(keys, provider)).forEach((k) => k.fill(0));
    }
    return {
      schemaVersion: LATEST_SCHEMA_VERSION,
      migrationsApplied,
      installationId,
      kekProvider,
      masterKeyFile,
      masterKeyFileCreated,
      dataKeyCreated,
      changed:
        migrationsApplied.length > 0 || masterKeyFileCreated || dataKeyCreated !== null || before.installation_id === undefined,
    };
  });
}
