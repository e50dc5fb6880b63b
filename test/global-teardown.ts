import * as fs from 'node:fs';
import { down } from '../deploy/local/stack';

export default async function globalTeardown(): Promise<void> {
  const home = process.env.KYBERNATE_HOME;
  if (!home) return;
  await down({ home, log: () => undefined });
  if (!process.env.KYBERNATE_KEEP_TEST_HOME) fs.rmSync(home, { recursive: true, force: true });
}
