import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { up } from '../deploy/local/stack';
import { startControlWorker } from '../deploy/local/workers';

/** One real stack (Temporal dev server, MinIO, toxiproxy, control worker) for the whole run. */
export default async function globalSetup(): Promise<void> {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'kybernate-test-'));
  process.env.KYBERNATE_HOME = home;
  // No scheduled collection in the shared stack: one firing mid-run would make a test's own `kybernate gc` find
  // chunk-gc running. The default schedule is tested on its own (test/e2e/dedup.test.ts).
  process.env.KYBERNATE_CHUNK_GC_EVERY = 'off';
  // The watchdog stops everything if jest dies without running globalTeardown (Ctrl-C, crash, SIGKILL).
  const state = await up({ home, ownerPid: process.pid, toxiproxy: true, log: () => undefined });
  await startControlWorker(state);
}
