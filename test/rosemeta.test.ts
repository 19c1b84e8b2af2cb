import { BLOBS, CREDENTIALS, DOCUMENTS, verifyRosemeta } from '../scripts/lib/rosemeta';
import { createInstallation, Installation } from './support/fixtures';

// The checker the rotation, backup and chaos tests rely on must itself catch what it claims to.
describe('synthetic rosemeta generator and verifier', () => {
  let inst: Installation;
  beforeAll(async () => {
    inst = await createInstallation('rosemeta', { values: 1500 });
  });
  afterAll(async () => {
    await inst.cleanup();
  });

  test('every generated value verifies, NULLs and multi-byte text included', async () => {
    const r = await verifyRosemeta(inst.db.pool, inst.keyring, inst.shape!);
    expect(r.mismatched).toEqual([]);
    expect(r.missing).toEqual([]);
    expect(r.unexpected).toEqual([]);
    expect(r.nulls).toBeGreaterThan(0);
    expect(r.checked + r.nulls).toBe(1500);
    const multibyte = await inst.db.query(`SELECT count(*)::int AS n FROM public.documents WHERE body IS NOT NULL`);
    expect(multibyte.rows[0].n).toBeGreaterThan(0);
  });

  test('a changed, deleted or added row is reported', async () => {
    await inst.db.query(`UPDATE public.credentials SET secret = $1 WHERE id = 3`, [await inst.keyring.encrypt('other', CREDENTIALS)]);
    await inst.db.query(`DELETE FROM public.documents WHERE id = 10`);
    await inst.db.query(`INSERT INTO public.blobs (id, kind, payload) VALUES (999999, 'x', NULL)`);
    const r = await verifyRosemeta(inst.db.pool, inst.keyring, inst.shape!);
    expect(r.mismatched).toEqual([{ column: CREDENTIALS, id: 3, why: 'plaintext differs' }]);
    expect(r.missing).toEqual([{ column: DOCUMENTS, id: 10 }]);
    expect(r.unexpected).toEqual([{ column: BLOBS, id: 999999 }]);
  });
});
