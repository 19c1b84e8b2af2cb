/**
 * README "The library": the package is private, so an application installs the tarball
 * `npm pack` makes; then README's example, import line first, runs as written. Offline: the
 * application's node_modules is seeded with copies of the package's production dependencies
 * from this checkout (npm finds them satisfied and installs only the tarball), so nothing is
 * fetched and the checkout's own node_modules is never touched.
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { createInstallation, Installation, tempDir } from './support/fixtures';

const run = promisify(execFile);
const ROOT = path.resolve(__dirname, '..');
const PKG = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
const README = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');

let inst: Installation;
let work: string;
let app: string;

/** The production dependency closure of this checkout, as npm lays it out (top-level directories). */
async function productionPackages(): Promise<string[]> {
  const { stdout } = await run('npm', ['ls', '--omit=dev', '--parseable', '--all'], { cwd: ROOT, maxBuffer: 16 << 20 });
  const top = path.join(ROOT, 'node_modules');
  return stdout
    .split('\n')
    .slice(1)
    .filter(Boolean)
    .map((p) => path.relative(top, p))
    .filter((rel) => !rel.startsWith('..') && !rel.includes('node_modules'));
}

beforeAll(async () => {
  inst = await createInstallation('library-install', { values: 10 });
  work = tempDir('library-install');
  await run('npm', ['pack', '--pack-destination', work], { cwd: ROOT, maxBuffer: 16 << 20 });
  app = path.join(work, 'app');
  fs.mkdirSync(path.join(app, 'node_modules'), { recursive: true });
  for (const rel of await productionPackages()) {
    fs.cpSync(fs.realpathSync(path.join(ROOT, 'node_modules', rel)), path.join(app, 'node_modules', rel), { recursive: true, dereference: true });
  }
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'an-application', version: '1.0.0', private: true, type: 'module' }));
  // README's command, offline: the tarball is recorded as a file: dependency.
  await run('npm', ['install', '--offline', '--no-audit', '--no-fund', '--ignore-scripts', path.join(work, `${PKG.name}-${PKG.version}.tgz`)], {
    cwd: app,
    maxBuffer: 16 << 20,
  });
}, 180_000);

afterAll(async () => {
  await inst?.cleanup();
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

test('npm pack makes the tarball README names, and installing it records a file: dependency', () => {
  expect(README).toContain(`npm install /path/to/${PKG.name}-${PKG.version}.tgz`);
  const deps = JSON.parse(fs.readFileSync(path.join(app, 'package.json'), 'utf8')).dependencies;
  expect(deps[PKG.name]).toMatch(new RegExp(`^file:.*${PKG.name}-${PKG.version}\\.tgz$`));
  const installed = path.join(app, 'node_modules', PKG.name);
  expect(fs.lstatSync(installed).isSymbolicLink()).toBe(false);
  expect(fs.existsSync(path.join(installed, 'dist/src/index.js'))).toBe(true);
  expect(fs.existsSync(path.join(installed, 'dist/src/index.d.ts'))).toBe(true);
});

test("README's example runs as written in an ES module of the application", async () => {
  const section = README.slice(README.indexOf('## The library'));
  const example = /```ts\n(.*?)```/s.exec(section)![1];
  expect(example.split('\n')[0]).toBe("import { openKeyring } from 'alation-keys';");
  // This installation's master key file in place of the production path; the result printed.
  const script = example.replace("'/etc/alation-keys/master.key'", JSON.stringify(inst.masterKeyFile)) + '\nconsole.log(JSON.stringify({ stored, plain }));\n';
  fs.writeFileSync(path.join(app, 'example.mjs'), script);
  const { stdout } = await run(process.execPath, ['example.mjs'], { cwd: app, env: { ...process.env, DATABASE_URL: inst.db.url }, timeout: 60_000 });
  const out = JSON.parse(stdout);
  expect(out.plain).toBe('hunter2');
  expect(out.stored).toMatch(/^ak1:/);
});

test('CommonJS require, as README says', async () => {
  const { stdout } = await run(process.execPath, ['-e', "const { openKeyring } = require('alation-keys'); console.log(typeof openKeyring)"], { cwd: app });
  expect(stdout.trim()).toBe('function');
});
