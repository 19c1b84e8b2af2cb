/**
 * Finds the links of Markdown files and manual pages and says which ones leave the repository
 * or point at nothing: http(s) and other URLs, absolute paths, relative paths that climb out
 * of the repository root, files that do not exist, and #anchors a Markdown file lacks.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface DocLink {
  file: string;
  line: number;
  target: string;
}

export interface BadLink extends DocLink {
  why: string;
}

/** Blanks fenced code blocks and inline code (keeping line breaks), where brackets are not links. */
export function withoutCode(markdown: string): string {
  const blank = (s: string) => s.replace(/[^\n]/g, ' ');
  let fence: string | null = null;
  const lines = markdown.split('\n').map((line) => {
    const m = /^ {0,3}(`{3,}|~{3,})/.exec(line);
    if (fence === null) {
      if (!m) return line;
      fence = m[1];
      return blank(line);
    }
    if (m && m[1][0] === fence[0] && m[1].length >= fence.length && line.trim() === m[1]) fence = null;
    return blank(line);
  });
  // Inline code: a run of backticks up to the same run, not across a blank line.
  return lines.join('\n').replace(/(`+)(?!`)(?:(?!\n[ \t]*\n)[^`]|`(?!\1))+?\1(?!`)/g, blank);
}

function lineOf(text: string, index: number): number {
  return text.slice(0, index).split('\n').length;
}

export function markdownLinks(file: string, markdown: string): DocLink[] {
  const text = withoutCode(markdown);
  const out: DocLink[] = [];
  const add = (index: number, target: string) => out.push({ file, line: lineOf(text, index), target: target.trim() });
  // Inline links and images: [text](target "title") / ![alt](<target>)
  for (const m of text.matchAll(/!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^\s()]*(?:\([^\s()]*\)[^\s()]*)*)/g)) {
    add(m.index!, m[1].replace(/^<|>$/g, ''));
  }
  // Reference definitions: [label]: target
  for (const m of text.matchAll(/^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)/gm)) add(m.index!, m[1].replace(/^<|>$/g, ''));
  // Autolinks <scheme:...> and bare URLs (GitHub links those too), and HTML href/src.
  for (const m of text.matchAll(/<([a-z][a-z0-9+.-]*:[^\s<>]*)>/gi)) add(m.index!, m[1]);
  for (const m of text.matchAll(/(?<![(<\w])(?:https?|ftp):\/\/[^\s<>)]+/gi)) add(m.index!, m[0]);
  for (const m of text.matchAll(/\b(?:href|src)\s*=\s*["']([^"']+)["']/gi)) add(m.index!, m[1]);
  const seen = new Set<string>();
  return out.filter((l) => !seen.has(`${l.line} ${l.target}`) && !!seen.add(`${l.line} ${l.target}`));
}

/**
 * References in a roff manual page: URL macros (.UR/.MT), any URL in the text, and file paths
 * it names that are meant to be in this repository (relative paths).
 */
export function manPageLinks(file: string, roff: string): DocLink[] {
  const out: DocLink[] = [];
  roff.split('\n').forEach((raw, i) => {
    const line = i + 1;
    const m = /^\.(UR|MT)\s+(\S+)/.exec(raw);
    if (m) out.push({ file, line, target: m[1] === 'MT' ? `mailto:${m[2]}` : m[2] });
    for (const u of raw.matchAll(/(?:https?|ftp):\/\/[^\s"\\]+/gi)) out.push({ file, line, target: u[0] });
    for (const p of raw.matchAll(/(?:^|[\s"(]|\\f[BIRP])((?:\.\.?\/)[^\s"\\)]+)/g)) out.push({ file, line, target: p[1] });
  });
  return out;
}

/** GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens. */
export function headingAnchor(heading: string): string {
  return heading
    .replace(/`/g, '')
    .replace(/\[([^\]]*)\]\([^)]*\)/g, '$1')
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\s_-]/gu, '')
    .replace(/\s/g, '-');
}

export function markdownAnchors(markdown: string): Set<string> {
  const anchors = new Set<string>();
  const seen = new Map<string, number>();
  for (const m of withoutCode(markdown).matchAll(/^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$/gm)) {
    const base = headingAnchor(m[1]);
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    anchors.add(n === 0 ? base : `${base}-${n}`);
  }
  return anchors;
}

/** Why a link leaves the repository or points at nothing; undefined when it is fine. */
export function checkLink(root: string, link: DocLink): string | undefined {
  const { target } = link;
  if (target === '') return 'empty link';
  if (/^[a-z][a-z0-9+.-]*:/i.test(target)) return 'leaves the repository (a URL)';
  if (target.startsWith('//')) return 'leaves the repository (a protocol-relative URL)';
  const [rawPath, anchor] = target.split('#', 2) as [string, string | undefined];
  let filePath: string;
  try {
    filePath = decodeURIComponent(rawPath);
  } catch {
    return 'malformed percent-encoding';
  }
  if (path.isAbsolute(filePath)) return 'leaves the repository (an absolute path)';
  const resolved = filePath === '' ? link.file : path.resolve(path.dirname(link.file), filePath);
  const rel = path.relative(root, resolved);
  if (rel === '..' || rel.startsWith(`..${path.sep}`) || path.isAbsolute(rel)) return 'leaves the repository (outside its root)';
  if (!fs.existsSync(resolved)) return `points at ${rel}, which does not exist`;
  if (anchor !== undefined && resolved.endsWith('.md')) {
    if (!markdownAnchors(fs.readFileSync(resolved, 'utf8')).has(anchor)) return `${rel} has no heading #${anchor}`;
  }
  return undefined;
}

/** Every bad link of the given files (Markdown by extension, everything else as roff). */
export function badLinks(root: string, files: string[]): BadLink[] {
  const out: BadLink[] = [];
  for (const file of files) {
    const text = fs.readFileSync(file, 'utf8');
    const links = file.endsWith('.md') ? markdownLinks(file, text) : manPageLinks(file, text);
    for (const link of links) {
      const why = checkLink(root, link);
      if (why) out.push({ ...link, why });
    }
  }
  return out;
}
