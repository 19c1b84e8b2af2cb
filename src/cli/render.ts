import Table from 'cli-table3';
import { IOStreams } from './io';

export function renderTable(io: IOStreams, head: string[], rows: Array<Array<string | number | null | undefined>>): string {
  const table = new Table({
    head,
    style: { head: io.color ? ['cyan'] : [], border: io.color ? ['grey'] : [] },
  });
  for (const r of rows) table.push(r.map((c) => (c === null || c === undefined ? '' : String(c))));
  return table.toString();
}

export function formatAge(from: Date | string, now = new Date()): string {
  const ms = now.getTime() - new Date(from).getTime();
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 90) return `${s}s`;
  const m = Math.round(s / 60);
  if (m < 90) return `${m}m`;
  const h = Math.round(m / 60);
  if (h < 48) return `${h}h`;
  return `${Math.round(h / 24)}d`;
}

export function formatTime(d: Date | string | null | undefined): string {
  if (!d) return '';
  return new Date(d).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

export function formatCount(n: number | null | undefined): string {
  return n === null || n === undefined ? '' : n.toLocaleString('en-US');
}
