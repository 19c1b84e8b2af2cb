/**
 * The binary COPY parser and writer of the rotation pipeline, without a database: round trips,
 * every split of the stream, NULLs, empty fields, and malformed input.
 */
import { parseCopy } from './support/copy';
import { CopyRow, COPY_SIGNATURE, encodeCopyBinary } from '../src/core/rewrite/copy-binary';
import { notUnderSql, readPageSql, updateFromStageSql, ColumnPlan } from '../src/core/rewrite/plan';
import { headerLiteralSql as headerLiteral } from '../src/crypto/envelope-sql';
import { parseDuration } from '../src/core/rewrite/util';

const parse = parseCopy;

const ROWS: CopyRow[] = [
  [Buffer.from('1'), Buffer.from('734'), Buffer.from('ak1:QUsB')],
  [Buffer.from('2'), null, Buffer.alloc(0)],
  [Buffer.from('O\'Brien "x"'), Buffer.from('9'), Buffer.alloc(70_000, 7)],
];

test('round trip through the encoder and the parser', async () => {
  const payload = encodeCopyBinary(ROWS);
  expect(payload.subarray(0, COPY_SIGNATURE.length)).toEqual(COPY_SIGNATURE);
  expect(await parse([payload])).toEqual(ROWS);
});

test('any split of the stream parses the same', async () => {
  const small = encodeCopyBinary(ROWS.slice(0, 2));
  for (let i = 1; i < small.length; i++) {
    expect(await parse([small.subarray(0, i), small.subarray(i)])).toEqual(ROWS.slice(0, 2));
  }
  const big = encodeCopyBinary(ROWS);
  const bytes: Buffer[] = [];
  for (let i = 0; i < big.length; i += 997) bytes.push(big.subarray(i, i + 997));
  expect(await parse(bytes)).toEqual(ROWS);
});

test('malformed streams are errors, not silently short', async () => {
  await expect(parse([Buffer.from('not a copy stream at all')])).rejects.toThrow(/not a binary COPY stream/);
  const payload = encodeCopyBinary(ROWS);
  await expect(parse([payload.subarray(0, payload.length - 2)])).rejects.toThrow(/without its trailer/);
});

test('SQL: watermark literals are escaped, keys cast to their types, header literal exact', () => {
  const plan: ColumnPlan = {
    col: { table_schema: 'public', table_name: 'Tenant Secrets', column_name: 'Secret', key_columns: ['tenant', 'n'], storage: 'bytea', context: 'c', state: 'encrypted', added_at: new Date() },
    name: 'public."Tenant Secrets"."Secret"',
    table: '"public"."Tenant Secrets"',
    keyColumns: ['tenant', 'n'],
    keyTypes: ['text', 'integer'],
    index: 0,
  };
  const esc = (s: string) => `'${s.replace(/'/g, "''")}'`;
  const sql = readPageSql(plan, ["O'Brien", '12'], 4000, esc, notUnderSql(plan, 7, 't'));
  expect(sql).toContain(`(t."tenant", t."n") > ('O''Brien'::text, '12'::integer)`);
  expect(sql).toContain('ORDER BY t."tenant", t."n" LIMIT 4000');
  expect(sql).toContain(`IS DISTINCT FROM '\\x414b0100000007'::bytea`);
  expect(readPageSql(plan, null, 10, esc)).not.toContain('IS DISTINCT FROM');
  const upd = updateFromStageSql(plan, 'prefix');
  expect(upd).toContain(`t."tenant" = s.k0::text AND t."n" = s.k1::integer`);
  expect(upd).toContain(`substring(t."Secret" FROM 1 FOR 19) = s.old_match`);
  // Plaintext (encrypt) is recognised by the digest of the whole value.
  expect(updateFromStageSql(plan, 'digest')).toContain(`sha256(t."Secret") = s.old_match`);
  expect(upd).toContain(`(t."tenant", t."n") >= ($1::text, $2::integer) AND (t."tenant", t."n") <= ($3::text, $4::integer)`);
  expect(headerLiteral(0x01020304)).toBe(`'\\x414b0101020304'::bytea`);
});

test('durations', () => {
  expect(parseDuration('90d', '--x')).toBe(90 * 86_400_000);
  expect(parseDuration('24h', '--x')).toBe(86_400_000);
  expect(parseDuration('30m', '--x')).toBe(1_800_000);
  for (const bad of ['', '90', 'd', '1y', '-1h', '3 days']) expect(() => parseDuration(bad, '--x')).toThrow(/--x must be a duration/);
});
