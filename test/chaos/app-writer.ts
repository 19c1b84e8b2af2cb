/**
 * The application during a rotation, for the chaos suite: updates and inserts encrypted values
 * through the library and logs every acknowledged write (after COMMIT) as one JSON line.
 * Half the writes go through an instance with a long refresh interval that keeps encrypting
 * with the old primary for a while (a stale application instance).
 *
 * argv: <databaseUrl> <masterKeyFile> <logFile> <maxId> <insertFromId> <durationMs> <seed>
 */
import * as fs from 'node:fs';
import { Pool } from 'pg';
import { openKeyring } from '../../src/core/keyring-client';
import { BLOBS, CREDENTIALS, DOCUMENTS } from '../../scripts/lib/rosemeta';
import { seededRandom } from './random';

const TABLES = {
  [CREDENTIALS]: { table: 'public.credentials', column: 'secret', label: 'name' },
  [DOCUMENTS]: { table: 'public.documents', column: 'body', label: 'title' },
  [BLOBS]: { table: 'public.blobs', column: 'payload', label: 'kind' },
} as const;

async function main() {
  const [url, masterKeyFile, logFile, maxIdText, insertFromText, durationText, seedText] = process.argv.slice(2);
  const maxId = Number(maxIdText);
  let nextInsert = Number(insertFromText);
  const until = Date.now() + Number(durationText);
  const random = seededRandom(Number(seedText));
  const pool = new Pool({ connectionString: url, max: 2, application_name: 'chaos/app-writer' });
  pool.on('error', () => undefined);
  const fresh = await openKeyring({ pool, masterKeyFile, refreshSeconds: 1 });
  const stale = await openKeyring({ pool, masterKeyFile, refreshSeconds: 8 });
  const log = fs.openSync(logFile, 'a');
  const columns = [CREDENTIALS, DOCUMENTS, BLOBS] as const;
  let writes = 0;
  let failures = 0;
  while (Date.now() < until) {
    const column = columns[Math.floor(random() * 3)];
    const t = TABLES[column];
    const keyring = random() < 0.5 ? stale : fresh;
    const insert = random() < 0.2;
    const id = insert ? nextInsert++ : 1 + Math.floor(random() * maxId);
    const text = `app-write-${writes}-${Math.floor(random() * 1e9).toString(36)}-ü`;
    const plain = column === BLOBS ? Buffer.from(text) : column === CREDENTIALS ? text : text.repeat(3);
    try {
      const sealed = await keyring.encrypt(plain as any, column);
      if (insert) {
        await pool.query(`INSERT INTO ${t.table} (id, ${t.label}, ${t.column}) VALUES ($1, 'app', $2)`, [id, sealed]);
      } else {
        const r = await pool.query(`UPDATE ${t.table} SET ${t.column} = $2 WHERE id = $1`, [id, sealed]);
        if (r.rowCount === 0) continue;
      }
      writes++;
      fs.writeSync(
        log,
        JSON.stringify({ column, id, insert, value: Buffer.isBuffer(plain) ? { hex: plain.toString('hex') } : plain, version: keyring.primaryVersion() }) + '\n',
      );
    } catch {
      failures++; // not acknowledged: not logged, so not expected
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  fs.closeSync(log);
  await fresh.close();
  await stale.close();
  await pool.end();
  process.stdout.write(JSON.stringify({ writes, failures }) + '\n');
}

main().catch((err) => {
  process.stderr.write(`app-writer: ${err.message}\n`);
  process.exit(1);
});
