export default async function globalTeardown() {
  const state = globalThis.__ALATION_KEYS_PG__;
  if (state) await state.pg.stop();
}
