/**
 * The envelope's byte layout is spelled in src/crypto/ only: its magic bytes, the text prefix
 * and offsets into it appear nowhere else in src/, so a change of the format touches one folder.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

const ROOT = path.resolve(__dirname, '../src');

const SPELLINGS: Array<[string, RegExp]> = [
  ['the magic and format bytes in hex', /414b01/i],
  ['the magic bytes as numbers', /0x41\b[^\n]{0,60}0x4b\b/i],
  ['the magic as a string', /['"`]AK['"`]/],
  ['the text prefix', /ak1:/i],
  ['an offset into the envelope in SQL', /\bFROM\s+\d+\s+FOR\s+(7|9|12|16|19|32)\b/i],
];

/** The envelope spellings found in a file's text, as `line: what`. */
function spellingsIn(text: string): string[] {
  const found: string[] = [];
  text.split('\n').forEach((line, i) => {
    for (const [what, re] of SPELLINGS) if (re.test(line)) found.push(`${i + 1}: ${what}`);
  });
  return found;
}

function sourceFiles(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return sourceFiles(p);
    return e.name.endsWith('.ts') ? [p] : [];
  });
}

test('outside src/crypto/, no source file spells the envelope (magic bytes, ak1: prefix, offsets)', () => {
  const crypto = path.join(ROOT, 'crypto') + path.sep;
  const files = sourceFiles(ROOT).filter((f) => !f.startsWith(crypto));
  expect(files.length).toBeGreaterThan(20);
  const found = files.flatMap((f) => spellingsIn(fs.readFileSync(f, 'utf8')).map((x) => `${path.relative(ROOT, f)}:${x}`));
  expect(found).toEqual([]);
});

test('the check finds each spelling when one is planted', () => {
  const planted = [
    "return `'\\\\x414b01${hex}'::bytea`;",
    'const ok = h[0] === 0x41 && h[1] === 0x4b;',
    "const magic = Buffer.from('AK', 'latin1');",
    "if (value.startsWith('ak1:')) return true;",
    'substring(v FROM 1 FOR 19) = s.old_prefix',
  ];
  expect(planted.map((line) => spellingsIn(line).length)).toEqual([1, 1, 1, 1, 1]);
  // The maintenance lock's id is "AKEY" in hex, not the envelope.
  expect(spellingsIn('export const MAINTENANCE_LOCK = [0x414b4559, 1];')).toEqual([]);
});
