import { Queryable } from '../db/transaction';
import { KekProviderKind } from '../kms/provider';

export interface AwsSettings {
  region: string;
  key_arn: string;
  role_arn: string;
  external_id: string;
}

export interface Settings {
  installation_id?: string;
  kek_provider?: KekProviderKind;
  aws?: AwsSettings;
  byok_enabled_at?: string;
  /** The KMS key ARNs replaced by `byok onboard --replace`, oldest first. */
  aws_previous_key_arns?: string[];
  [key: string]: unknown;
}

export async function readSettings(db: Queryable): Promise<Settings> {
  const r = await db.query<{ key: string; value: unknown }>('SELECT key, value FROM alation_keys.settings');
  const out: Settings = {};
  for (const row of r.rows) out[row.key] = row.value;
  return out;
}

export async function writeSetting(db: Queryable, key: string, value: unknown): Promise<void> {
  await db.query(
    `INSERT INTO alation_keys.settings (key, value) VALUES ($1, $2::jsonb)
     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value`,
    [key, JSON.stringify(value)],
  );
}

/** Inserts the setting only when absent; returns the value now stored. */
export async function ensureSetting<T>(db: Queryable, key: string, value: T): Promise<T> {
  await db.query(
    `INSERT INTO alation_keys.settings (key, value) VALUES ($1, $2::jsonb) ON CONFLICT (key) DO NOTHING`,
    [key, JSON.stringify(value)],
  );
  const r = await db.query<{ value: T }>('SELECT value FROM alation_keys.settings WHERE key = $1', [key]);
  return r.rows[0].value;
}
