import Table from 'cli-table3';
import { IOStreams } from './io';
import { formatDuration } from '../core/rewrite/util';

export function renderTable(io: IOStreams, head: string[], rows: Array<Array<string | number | null | undefined>>): string {
  const table = new Table({
    head,
    style: { head: io.color ? ['cyan'] : [], border: io.color ? ['grey'] : [] },
  });
  for (const r of rows) table.push(r.map((c) => (c === null || c === undefined ? '' : String(c))));
  return table.toString();
}

export function formatAge(from: Date | string, now = new Date()): string {
  return formatDuration(Math.max(0, now.getTime() - new Date(from).getTime()));
}

interface JobRow {
  id: number;
  kind: string;
  state: string;
  from_version: number | null;
  to_version: number | null;
  rows_done: number;
  rows_total: number | null;
  started_at: Date | string;
  finished_at: Date | string | null;
  actor?: string;
}

/** The job table of `jobs list` and `status` (the actor column when the rows have one). */
export function renderJobsTable(io: IOStreams, jobs: JobRow[], opts: { actor?: boolean } = {}): string {
  const head = ['id', 'kind', 'state', 'versions', 'rows', 'started', 'finished'];
  return renderTable(
    io,
    opts.actor ? [...head, 'actor'] : head,
    jobs.map((j) => {
      const row = [
        j.id,
        j.kind,
        j.state,
        j.to_version ? `${j.from_version ?? ''}→${j.to_version}` : '',
        j.rows_total !== null ? `${formatCount(j.rows_done)}/${formatCount(j.rows_total)}` : formatCount(j.rows_done || null),
        formatTime(j.started_at),
        formatTime(j.finished_at),
      ];
      return opts.actor ? [...row, j.actor] : row;
    }),
  );
}

export function formatTime(d: Date | string | null | undefined): string {
  if (!d) return '';
  return new Date(d).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

export function formatCount(n: number | null | undefined): string {
  return n === null || n === undefined ? '' : n.toLocaleString('en-US');
}
