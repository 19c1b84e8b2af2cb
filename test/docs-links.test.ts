/**
 * No link in the documentation leaves the repository or points at nothing: a user who
 * downloads the project has every page the README, CHANGELOG, docs/ and the manual page name.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { badLinks, checkLink, headingAnchor, manPageLinks, markdownLinks } from './support/doc-links';

const ROOT = path.resolve(__dirname, '..');

function documentationFiles(): string[] {
  const under = (dir: string, ext: RegExp) =>
    fs
      .readdirSync(path.join(ROOT, dir), { recursive: true, encoding: 'utf8' })
      .filter((f) => ext.test(f))
      .map((f) => path.join(ROOT, dir, f));
  return [path.join(ROOT, 'README.md'), path.join(ROOT, 'CHANGELOG.md'), ...under('docs', /\.md$/), ...under('man', /\.\d$/)];
}

describe('documentation links', () => {
  test('README, CHANGELOG, docs/ and man/ link only to files and headings inside the repository', () => {
    const files = documentationFiles();
    expect(files.map((f) => path.relative(ROOT, f))).toEqual(
      expect.arrayContaining(['README.md', 'CHANGELOG.md', 'docs/README.md', 'docs/format.md', 'docs/database.md', 'docs/cli.md', 'man/alation-keys.1']),
    );
    const bad = badLinks(ROOT, files).map((b) => `${path.relative(ROOT, b.file)}:${b.line}: ${b.target} — ${b.why}`);
    expect(bad).toEqual([]);
  });

  test('the README links to the contract in docs/', () => {
    const links = markdownLinks('README.md', fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8')).map((l) => l.target);
    expect(links).toEqual(expect.arrayContaining(['docs/README.md', 'docs/format.md']));
  });
});

describe('the link checker', () => {
  const at = (target: string, file = path.join(ROOT, 'README.md')) => checkLink(ROOT, { file, line: 1, target });

  test('refuses URLs, absolute paths, paths outside the repository and missing files or headings', () => {
    expect(at('../shared/SPEC.md')).toBe('leaves the repository (outside its root)');
    expect(at('../docs/format.md', path.join(ROOT, 'docs', 'README.md'))).toBeUndefined();
    expect(at('../../x.md', path.join(ROOT, 'docs', 'README.md'))).toBe('leaves the repository (outside its root)');
    expect(at('https://keepachangelog.com/en/1.1.0/')).toBe('leaves the repository (a URL)');
    expect(at('http://example.com')).toBe('leaves the repository (a URL)');
    expect(at('mailto:ops@example.com')).toBe('leaves the repository (a URL)');
    expect(at('//example.com/x')).toBe('leaves the repository (a protocol-relative URL)');
    expect(at('/etc/alation-keys/master.key')).toBe('leaves the repository (an absolute path)');
    expect(at('docs/missing.md')).toBe('points at docs/missing.md, which does not exist');
    expect(at('docs/format.md#no-such-heading')).toBe('docs/format.md has no heading #no-such-heading');
    expect(at('docs/format.md#41-storage')).toBeUndefined();
    expect(at('test/vectors/envelope-v1.json')).toBeUndefined();
  });

  test('finds inline, reference, autolink, bare and HTML links, but not text inside code', () => {
    const md = [
      'See [the spec](../shared/SPEC.md "title") and ![logo](<img/logo.png>).',
      '[ref]: https://example.com/ref',
      'Mail <mailto:ops@example.com> or visit https://example.com/bare.',
      '<a href="/abs/path">x</a>',
      'Inline `[not](a-link.md)` stays code.',
      '```sh',
      'curl [x](http://in-a-fence) https://in-a-fence',
      '```',
      'Last [one](docs/cli.md#exit-codes).',
    ].join('\n');
    expect(markdownLinks('f.md', md).map((l) => [l.line, l.target])).toEqual([
      [1, '../shared/SPEC.md'],
      [1, 'img/logo.png'],
      [9, 'docs/cli.md#exit-codes'],
      [2, 'https://example.com/ref'],
      [3, 'mailto:ops@example.com'],
      [3, 'https://example.com/bare.'],
      [4, '/abs/path'],
    ]);
  });

  test('finds URLs and relative paths in a manual page', () => {
    const roff = ['.UR https://example.com', 'text', '.UE', 'see \\fI../shared/SPEC.md\\fR and /etc/alation-keys/master.key'].join('\n');
    expect(manPageLinks('m.1', roff).map((l) => [l.line, l.target])).toEqual([
      [1, 'https://example.com'],
      [1, 'https://example.com'],
      [4, '../shared/SPEC.md'],
    ]);
  });

  test('makes heading anchors the way GitHub does', () => {
    expect(headingAnchor('4.1 Storage')).toBe('41-storage');
    expect(headingAnchor('`alation_keys.keyring`')).toBe('alation_keyskeyring');
    expect(headingAnchor('Commands, options & exit codes')).toBe('commands-options--exit-codes');
  });
});
