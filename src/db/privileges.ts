/**
 * What the database role may do, checked before a command relies on it: a missing privilege
 * is a precondition (exit 3) naming the privilege, the object and the GRANT that gives it,
 * never a raw SQL error halfway through. README "Database privileges" lists the full set.
 */
import { PRIVILEGES_DOC, PreconditionError } from '../errors';
import { Queryable } from './transaction';

export interface TableRef {
  schema: string;
  table: string;
}

export interface MissingPrivilege {
  /** e.g. "UPDATE on table public.credentials". */
  what: string;
  /** The statement a DBA runs to grant it. */
  grant: string;
}

function missingError(role: string, missing: MissingPrivilege[], purpose: string): PreconditionError {
  const shown = missing.slice(0, 5);
  const more = missing.length > shown.length ? ` and ${missing.length - shown.length} more` : '';
  return new PreconditionError(`the database role ${role} lacks ${shown.map((m) => m.what).join(', ')}${more}, needed ${purpose}`, {
    hint: `${[...new Set(shown.map((m) => m.grant))].join('; ')} (see ${PRIVILEGES_DOC})`,
  });
}

async function currentRole(db: Queryable): Promise<string> {
  return (await db.query<{ r: string }>('SELECT quote_ident(current_user) AS r')).rows[0].r;
}

/** Throws exit 3 unless the role has USAGE on the tables' schemas and each privilege on each table. */
export async function requireTablePrivileges(db: Queryable, tables: TableRef[], privileges: Array<'SELECT' | 'UPDATE'>, purpose: string): Promise<void> {
  if (tables.length === 0) return;
  const r = await db.query<{ role: string; schema: string; name: string; privilege: string; is_schema: boolean }>(
    `WITH t AS (SELECT DISTINCT s, n FROM unnest($1::text[], $2::text[]) AS u(s, n))
     SELECT quote_ident(current_user) AS role, quote_ident(s) AS schema, NULL AS name, 'USAGE' AS privilege, true AS is_schema
       FROM (SELECT DISTINCT s FROM t) x
      WHERE NOT has_schema_privilege(s, 'USAGE')
     UNION ALL
     SELECT quote_ident(current_user), quote_ident(s), quote_ident(n), p, false
       FROM t CROSS JOIN unnest($3::text[]) AS p
      WHERE has_schema_privilege(s, 'USAGE') AND NOT has_table_privilege(format('%I.%I', s, n), p)
      ORDER BY 2, 3 NULLS FIRST, 4`,
    [tables.map((t) => t.schema), tables.map((t) => t.table), privileges],
  );
  if (r.rows.length === 0) return;
  const role = r.rows[0].role;
  const list = privileges.join(', ');
  const missing = r.rows.map((m) =>
    m.is_schema
      ? { what: `USAGE on schema ${m.schema}`, grant: `GRANT USAGE ON SCHEMA ${m.schema} TO ${role}` }
      : { what: `${m.privilege} on table ${m.schema}.${m.name}`, grant: `GRANT ${list} ON ${m.schema}.${m.name} TO ${role}` },
  );
  throw missingError(role, missing, purpose);
}

/** Throws exit 3 unless the role may create temporary tables (rotation stages its writes in one). */
export async function requireTemporaryTables(db: Queryable, purpose: string): Promise<void> {
  const r = await db.query<{ ok: boolean; db: string }>(
    `SELECT has_database_privilege(current_database(), 'TEMPORARY') AS ok, quote_ident(current_database()) AS db`,
  );
  if (r.rows[0].ok) return;
  const role = await currentRole(db);
  throw missingError(role, [{ what: `TEMPORARY on database ${r.rows[0].db}`, grant: `GRANT TEMPORARY ON DATABASE ${r.rows[0].db} TO ${role}` }], purpose);
}

/**
 * Throws exit 3 unless the role may create or migrate the schema: CREATE on the database when
 * the schema does not exist yet; else ownership of the schema and of the tables in it.
 * Returns whether the schema exists.
 */
export async function requireSchemaOwnership(db: Queryable, schema: string): Promise<boolean> {
  const r = await db.query<{ role: string; db: string; exists: boolean; can_create: boolean; owns: boolean; owner: string | null; foreign_tables: string[] }>(
    `SELECT quote_ident(current_user) AS role, quote_ident(current_database()) AS db,
            n.oid IS NOT NULL AS exists,
            has_database_privilege(current_database(), 'CREATE') AS can_create,
            coalesce(pg_has_role(current_user, n.nspowner, 'USAGE'), false) AS owns,
            quote_ident(pg_get_userbyid(n.nspowner)) AS owner,
            coalesce((SELECT array_agg(quote_ident(c.relname) ORDER BY c.relname) FROM pg_class c
                       WHERE c.relnamespace = n.oid AND c.relkind IN ('r', 'p', 'S')
                         AND NOT pg_has_role(current_user, c.relowner, 'USAGE')), '{}') AS foreign_tables
       FROM (SELECT 1) one LEFT JOIN pg_namespace n ON n.nspname = $1`,
    [schema],
  );
  const s = r.rows[0];
  const purpose = `to create and migrate the ${schema} schema`;
  if (!s.exists) {
    if (s.can_create) return false;
    throw new PreconditionError(`the database role ${s.role} lacks CREATE on database ${s.db}, needed ${purpose}`, {
      hint: `CREATE SCHEMA ${schema} AUTHORIZATION ${s.role} (or GRANT CREATE ON DATABASE ${s.db} TO ${s.role}) (see ${PRIVILEGES_DOC})`,
    });
  }
  if (!s.owns) {
    throw new PreconditionError(`the database role ${s.role} lacks ownership of schema ${schema} (owned by ${s.owner}), needed ${purpose}`, {
      hint: `ALTER SCHEMA ${schema} OWNER TO ${s.role} (see ${PRIVILEGES_DOC})`,
    });
  }
  if (s.foreign_tables.length > 0) {
    throw new PreconditionError(
      `the database role ${s.role} lacks ownership of ${s.foreign_tables.map((t) => `${schema}.${t}`).join(', ')}, needed ${purpose}`,
      { hint: `${s.foreign_tables.map((t) => `ALTER TABLE ${schema}.${t} OWNER TO ${s.role}`).join('; ')} (see ${PRIVILEGES_DOC})` },
    );
  }
  return true;
}

/**
 * Throws exit 3 unless pg_dump, connected as this role, can read everything it dumps: USAGE on
 * every schema and SELECT on every table and sequence outside the system schemas.
 */
export async function requireDumpPrivileges(db: Queryable): Promise<void> {
  const r = await db.query<{ role: string; kind: 'schema' | 'table' | 'sequence'; schema: string; name: string }>(
    `SELECT quote_ident(current_user) AS role, kind, schema, name FROM (
       SELECT 0 AS ord, 'schema' AS kind, quote_ident(n.nspname) AS schema, quote_ident(n.nspname) AS name
         FROM pg_namespace n
        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
          AND NOT has_schema_privilege(n.oid, 'USAGE')
       UNION ALL
       SELECT 1, CASE c.relkind WHEN 'S' THEN 'sequence' ELSE 'table' END, quote_ident(n.nspname), format('%I.%I', n.nspname, c.relname)
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'S') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
          AND has_schema_privilege(n.oid, 'USAGE') AND NOT has_table_privilege(c.oid, 'SELECT')
     ) m ORDER BY ord, kind, name`,
  );
  if (r.rows.length === 0) return;
  const role = r.rows[0].role;
  const missing = r.rows.map((m) =>
    m.kind === 'schema'
      ? { what: `USAGE on schema ${m.name}`, grant: `GRANT USAGE ON SCHEMA ${m.name} TO ${role}` }
      : { what: `SELECT on ${m.kind} ${m.name}`, grant: `GRANT SELECT ON ALL ${m.kind === 'sequence' ? 'SEQUENCES' : 'TABLES'} IN SCHEMA ${m.schema} TO ${role}` },
  );
  throw missingError(role, missing, 'for pg_dump to back the database up');
}
