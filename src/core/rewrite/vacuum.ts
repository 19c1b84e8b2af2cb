/** VACUUM along a rewrite, so a table does not double in size while its rows are rewritten. */
import { Pool, PoolClient } from 'pg';

/**
 * Runs plain VACUUM on a table after every `everyBytes` rewritten in it, on its own
 * connection and outside any transaction, so later chunks reuse the space of the dead row
 * versions the earlier chunks left (an in-place rewrite otherwise doubles the table).
 */
export class Vacuumer {
  private since = new Map<string, number>();
  private running = new Map<string, Promise<void>>();
  vacuums = 0;
  constructor(
    private readonly pool: Pool,
    private readonly everyBytes: (table: string) => number,
    private readonly events: { warn?(message: string): void },
    /** Tables this user may not VACUUM (PostgreSQL would skip them with only a warning). */
    private readonly skip: ReadonlySet<string> = new Set(),
  ) {}

  wrote(table: string, bytes: number): void {
    if (this.skip.has(table)) return;
    const n = (this.since.get(table) ?? 0) + bytes;
    this.since.set(table, n);
    if (n < this.everyBytes(table) || this.running.has(table)) return;
    this.since.set(table, 0);
    const p = this.pool
      .query(`VACUUM ${table}`)
      .then(() => {
        this.vacuums++;
      })
      .catch((err) => this.events.warn?.(`VACUUM ${table} failed: ${(err as Error).message}`))
      .finally(() => this.running.delete(table));
    this.running.set(table, p);
  }

  async idle(): Promise<void> {
    await Promise.all([...this.running.values()]);
  }
}

/**
 * The tables (as given) the current user may not VACUUM: not a superuser, not the owner of
 * the table or of the database, and (PostgreSQL 17+) without the MAINTAIN privilege.
 */
export async function tablesWithoutVacuumRight(db: Pick<PoolClient, 'query'>, tables: string[]): Promise<string[]> {
  if (tables.length === 0) return [];
  const version = Number((await db.query<{ v: string }>(`SELECT current_setting('server_version_num') AS v`)).rows[0].v);
  const maintain = version >= 170000 ? `AND NOT has_table_privilege(c.oid, 'MAINTAIN')` : '';
  const r = await db.query<{ name: string }>(
    `SELECT u.name
       FROM unnest($1::text[]) WITH ORDINALITY AS u(name, n)
       JOIN pg_class c ON c.oid = u.name::regclass
      WHERE NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
        AND NOT pg_has_role(current_user, c.relowner, 'USAGE')
        AND NOT pg_has_role(current_user, (SELECT datdba FROM pg_database WHERE datname = current_database()), 'USAGE')
        ${maintain}
      ORDER BY u.n`,
    [tables],
  );
  return r.rows.map((x) => x.name);
}
