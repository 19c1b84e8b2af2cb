/**
 * The reader thread's CPU side without a database: the strict text-envelope decoder against
 * the library's own, the COPY payload builder against the reference encoder, and the chunk
 * encoder (re-encryption, skipping, chunk limits, integrity errors).
 */
import { randomBytes } from 'node:crypto';
import { envelopeFromText, envelopeFromTextBytes as textEnvelope, envelopeToText, openEnvelope, sealEnvelope } from '../src/crypto/envelope';
import { IntegrityError } from '../src/errors';
import { CopyPayloadBuilder, CopyRow, encodeCopyBinary } from '../src/core/rewrite/copy-binary';
import { parseCopy } from './support/copy';
import { ColumnPlan } from '../src/core/rewrite/plan';
import { ChunkEncoder, EncodedChunk } from '../src/core/rewrite/chunk-encoder';

/** Small deterministic PRNG (mulberry32) so a failure replays. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function libraryDecode(raw: Buffer): Buffer | 'refused' {
  try {
    return envelopeFromText(raw.toString('latin1'));
  } catch {
    return 'refused';
  }
}

function fastDecode(raw: Buffer): Buffer | 'refused' {
  try {
    return textEnvelope(raw);
  } catch {
    return 'refused';
  }
}

test('textEnvelope accepts exactly what envelopeFromText accepts (20,000 seeded mutations)', () => {
  const rnd = prng(20261130);
  const pick = (n: number) => Math.floor(rnd() * n);
  const dek = randomBytes(32);
  let accepted = 0;
  let refused = 0;
  const disagreements: string[] = [];
  for (let i = 0; i < 20_000; i++) {
    // Lengths 0..40 cover every padding case (0, 1 and 2 '=').
    const sealed = sealEnvelope(dek, 1, randomBytes(pick(41)), 'ctx');
    const good = Buffer.from(envelopeToText(sealed), 'latin1');
    let raw = Buffer.from(good);
    const body = raw.length - 4;
    switch (i % 8) {
      case 0: // untouched
        break;
      case 1: // any byte at any position of the body
        raw[4 + pick(body)] = pick(256);
        break;
      case 2: // a byte from the troublesome set
        raw[4 + pick(body)] = Buffer.from('=-_ \n\r\t+/A\x80\xff')[pick(13)];
        break;
      case 3: // truncated
        raw = raw.subarray(0, pick(raw.length));
        break;
      case 4: // extended
        raw = Buffer.concat([raw, Buffer.from('A=-_ /'.slice(pick(6), 6 - pick(3)), 'latin1')]);
        break;
      case 5: // unused bits of the last character set
        raw[raw.length - 1 - (raw[raw.length - 2] === 0x3d ? 2 : raw[raw.length - 1] === 0x3d ? 1 : 0)] ^= 1 << pick(6);
        break;
      case 6: // padding removed or added
        raw = raw[raw.length - 1] === 0x3d ? raw.subarray(0, raw.length - 1) : Buffer.concat([raw, Buffer.from('==')]);
        break;
      case 7: // prefix damaged
        raw[pick(4)] ^= 1 + pick(255);
        break;
    }
    const want = libraryDecode(raw);
    const got = fastDecode(raw);
    const same = want === 'refused' ? got === 'refused' : got !== 'refused' && got.equals(want);
    if (!same) disagreements.push(`#${i} ${raw.toString('latin1')}: library ${want === 'refused' ? want : 'accepts'}, textEnvelope ${got === 'refused' ? got : 'accepts'}`);
    if (want === 'refused') refused++;
    else accepted++;
  }
  expect(disagreements).toEqual([]);
  // Both outcomes really happened, in numbers.
  expect(accepted).toBeGreaterThan(3000);
  expect(refused).toBeGreaterThan(10_000);
});


test('CopyPayloadBuilder writes the same bytes as the reference encoder, across piece boundaries', async () => {
  const rows: CopyRow[] = [
    [Buffer.from('1'), null, Buffer.alloc(0)],
    [Buffer.from('2'), Buffer.from('x'), Buffer.alloc(300_000, 9)], // larger than a piece
    ...Array.from({ length: 500 }, (_, i): CopyRow => [Buffer.from(String(i)), Buffer.from('7'), randomBytes(i * 3)]),
  ];
  const b = new CopyPayloadBuilder();
  for (const r of rows) {
    b.row(r.length);
    for (const f of r) b.field(f);
  }
  const pieces = b.finish();
  expect(pieces.length).toBeGreaterThan(2);
  for (const p of pieces) expect(p.byteOffset).toBe(0); // each on its own ArrayBuffer: transferable
  expect(Buffer.concat(pieces).equals(encodeCopyBinary(rows))).toBe(true);
  const back = await parseCopy(pieces);
  expect(back.length).toBe(rows.length);
  expect(back.every((r, i) => r.every((f, j) => (f === null ? rows[i][j] === null : f.equals(rows[i][j]!))))).toBe(true);
});

function plan(storage: 'bytea' | 'text'): ColumnPlan {
  return {
    col: { table_schema: 'public', table_name: 't', column_name: 'v', key_columns: ['id'], storage, context: 'public.t.v', state: 'encrypted', added_at: new Date() },
    name: 'public.t.v',
    table: '"public"."t"',
    keyColumns: ['id'],
    keyTypes: ['bigint'],
    index: 0,
  };
}

describe('ChunkEncoder', () => {
  const v1 = randomBytes(32);
  const v2 = randomBytes(32);
  const stored = (storage: 'bytea' | 'text', version: number, plain: Buffer) => {
    const env = sealEnvelope(version === 1 ? v1 : v2, version, plain, 'public.t.v');
    return storage === 'text' ? Buffer.from(envelopeToText(env), 'latin1') : env;
  };
  const encoder = (storage: 'bytea' | 'text', batchSize = 3) =>
    new ChunkEncoder({
      plan: plan(storage),
      transform: { kind: 'rotate', toVersion: 2, newDek: Buffer.from(v2), deks: [[1, Buffer.from(v1)]] },
      batchSize,
      chunkBytes: 1 << 20,
      watermark: null,
      pendingOnly: false,
    });

  for (const storage of ['bytea', 'text'] as const) {
    test(`${storage}: values under v1 are re-encrypted under v2 with the prefix read; v2 values skipped but counted`, async () => {
      const enc = encoder(storage);
      const plains = [0, 1, 2, 3, 4].map((i) => Buffer.from(`value ${i} ${'x'.repeat(i * 100)}`));
      const raws = plains.map((p, i) => stored(storage, i === 1 ? 2 : 1, p));
      const chunks: EncodedChunk[] = [];
      raws.forEach((raw, i) => {
        const c = enc.add([Buffer.from(String(i + 10)), Buffer.from(String(700 + i)), raw]);
        if (c) chunks.push(c);
      });
      const last = enc.take();
      if (last) chunks.push(last);
      expect(enc.watermark).toEqual(['14']);
      expect(chunks.map((c) => [c.lo, c.hi, c.count, c.versions])).toEqual([
        [['10'], ['13'], 3, { 1: 3, 2: 1 }],
        [['14'], ['14'], 1, { 1: 1 }],
      ]);
      const rows = (await parseCopy(chunks[0].pieces)).concat(await parseCopy(chunks[1].pieces));
      expect(rows.map((r) => r[0]!.toString())).toEqual(['10', '12', '13', '14']);
      for (const r of rows) {
        const i = Number(r[0]!.toString()) - 10;
        expect(r[1]!.toString()).toBe(String(700 + i));
        expect(r[2]).toEqual(raws[i].subarray(0, storage === 'bytea' ? 19 : 32));
        const env = storage === 'text' ? envelopeFromText(r[3]!.toString('latin1')) : r[3]!;
        expect(env.readUInt32BE(3)).toBe(2);
        expect(openEnvelope(v2, env, 'public.t.v')).toEqual(plains[i]);
      }
      expect(chunks[0].bytes).toBe(rows.slice(0, 3).reduce((n, r) => n + r[3]!.length, 0));
    });
  }

  test('a tampered value is an IntegrityError naming the column, key and version', () => {
    const enc = encoder('bytea');
    const raw = stored('bytea', 1, Buffer.from('secret'));
    raw[25] ^= 1;
    let err: unknown;
    try {
      enc.add([Buffer.from('42'), Buffer.from('1'), raw]);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(IntegrityError);
    expect((err as IntegrityError).message).toMatch(/value in public\.t\.v at id=42 failed authentication under data key v1/);
    expect((err as IntegrityError).location).toMatchObject({ table: 't', column: 'v', key: { id: '42' }, version: 1 });
  });

  test('a value under a key the reader does not have, and a non-envelope, are refused', () => {
    const enc = encoder('text');
    const under3 = Buffer.from(envelopeToText(sealEnvelope(v1, 3, Buffer.from('x'), 'public.t.v')), 'latin1');
    expect(() => enc.add([Buffer.from('1'), Buffer.from('1'), under3])).toThrow(/names data key v3, which the keyring does not have/);
    expect(() => enc.add([Buffer.from('2'), Buffer.from('1'), Buffer.from('plain text')])).toThrow(/at id=2 is not a valid envelope/);
  });
});
