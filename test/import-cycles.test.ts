/**
 * No import cycles in src/: the same check CI runs (`npm run check:cycles`), and proof that it
 * finds a cycle when one is planted.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

// madge ships no types; this is the part of its API used here.
const madge = require('madge') as (dir: string, config: { fileExtensions: string[]; tsConfig: string }) => Promise<{ circular(): string[][] }>;

const ROOT = path.resolve(__dirname, '..');

async function cyclesIn(dir: string): Promise<string[][]> {
  const res = await madge(dir, { fileExtensions: ['ts'], tsConfig: path.join(ROOT, 'tsconfig.json') });
  return res.circular();
}

test('src/ has no import cycle', async () => {
  expect(await cyclesIn(path.join(ROOT, 'src'))).toEqual([]);
}, 120_000);

test('a planted cycle (a imports b, b imports a) is found', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cycle-'));
  try {
    fs.writeFileSync(path.join(dir, 'a.ts'), "import { b } from './b';\nexport const a = () => b();\n");
    fs.writeFileSync(path.join(dir, 'b.ts'), "import { a } from './a';\nexport const b = () => a;\n");
    fs.writeFileSync(path.join(dir, 'c.ts'), "import { a } from './a';\nexport const c = a;\n");
    expect(await cyclesIn(dir)).toEqual([['a.ts', 'b.ts']]);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}, 120_000);
