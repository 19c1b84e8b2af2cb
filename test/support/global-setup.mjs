// Starts one PostgreSQL for the whole jest run, unless TEST_DATABASE_URL names one.
// Every test file then creates its own fresh database on it (test/support/db.ts).
// ALATION_KEYS_TEST_PG_MAJOR (13 to 18, default 15) picks the embedded major (`npm run test:matrix`).
// Tests that run pg_dump need one at least as new as the server: when this machine has none,
// ALATION_KEYS_TEST_PG_DUMP_MISSING says why and those tests are skipped with that reason
// (test/support/pg-dump.ts).
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const require = createRequire(import.meta.url);

/** Modules of the build (the tests spawn the built binary, so it is there). */
function built(module) {
  try {
    return require(`../../dist/${module}.js`);
  } catch (err) {
    if (err.code === 'MODULE_NOT_FOUND') throw new Error('the tests need the build: run `npm run build` first');
    throw err;
  }
}

async function startEmbedded(major) {
  const { startEmbeddedPostgres } = built('scripts/lib/embedded-postgres');
  const dir = mkdtempSync(join(tmpdir(), `alation-keys-test-pg${major}-`));
  rmSync(dir, { recursive: true, force: true });
  const server = await startEmbeddedPostgres({
    dataDir: dir,
    major,
    flags: ['-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off', '-c', 'max_connections=200'],
  });
  // Where this run's server is, for a person looking at a hung run; the teardown removes it.
  const serverFile = join(tmpdir(), `alation-keys-test-server-${process.pid}.json`);
  globalThis.__ALATION_KEYS_PG__ = { pg: server, dir, serverFile };
  process.env.ALATION_KEYS_TEST_DATA_DIR = dir;
  writeFileSync(serverFile, JSON.stringify({ url: server.adminUrl, dir }));
  return server.adminUrl;
}

/** The server's version, and why backups cannot be tested against it here (undefined: they can). */
async function probeServer(url) {
  const { Client } = require('pg');
  const c = new Client({ connectionString: url });
  await c.connect();
  let num;
  let version;
  try {
    const r = await c.query(`SELECT current_setting('server_version_num') AS num, split_part(current_setting('server_version'), ' ', 1) AS version`);
    num = Number(r.rows[0].num);
    version = r.rows[0].version;
  } finally {
    await c.end();
  }
  const { findPgTool } = built('src/core/pg-tools');
  let pgDumpMissing;
  try {
    findPgTool('pg_dump', { minVersionNum: num, minReason: `the server is PostgreSQL ${version}`, flag: '--pg-dump PATH', env: process.env });
  } catch (err) {
    pgDumpMissing = err.message;
  }
  return { num, pgDumpMissing };
}

export default async function globalSetup() {
  const url = process.env.TEST_DATABASE_URL || (await startEmbedded(Number(process.env.ALATION_KEYS_TEST_PG_MAJOR || 15)));
  process.env.ALATION_KEYS_TEST_SERVER = url;
  const server = await probeServer(url);
  process.env.ALATION_KEYS_TEST_SERVER_VERSION_NUM = String(server.num);
  if (server.pgDumpMissing) process.env.ALATION_KEYS_TEST_PG_DUMP_MISSING = server.pgDumpMissing;
  else delete process.env.ALATION_KEYS_TEST_PG_DUMP_MISSING;
}
