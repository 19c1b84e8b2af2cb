// Stops the PostgreSQL the global setup started (its data directory goes with it) and removes
// the file the setup wrote to say where that server is.
import { rmSync } from 'node:fs';

export default async function globalTeardown() {
  const state = globalThis.__ALATION_KEYS_PG__;
  if (!state) return;
  try {
    await state.pg.stop();
  } finally {
    rmSync(state.serverFile, { force: true });
    rmSync(state.dir, { recursive: true, force: true });
  }
}
