import { spawnSync } from 'node:child_process';
import type { NodeContext } from './context';

/**
 * TEST ONLY: an agent that lies. KYBERNATE_TEST_LIE=restore makes this node's criuRestore report a restored
 * process without running CRIU (the pid of a process that has already exited), so that the restore's
 * verification catches the lie and the node's health score falls (test/e2e/health.test.ts). Refused unless
 * KYBERNATE_TEST_MODE=1: a production agent never starts with it.
 */
export type TestLie = 'restore';

export function testLie(env: NodeJS.ProcessEnv = process.env): TestLie | null {
  const v = env.KYBERNATE_TEST_LIE;
  if (v === undefined || v === '') return null;
  if (env.KYBERNATE_TEST_MODE !== '1')
    throw new Error('KYBERNATE_TEST_LIE is test-only and refused unless KYBERNATE_TEST_MODE=1');
  if (v !== 'restore') throw new Error(`KYBERNATE_TEST_LIE: expected 'restore' (got '${v}')`);
  return v;
}

/**
 * A "restored" process that is no process: the pid of a child that has exited, with a start time no live
 * process has (1 clock tick after boot), so a later kill by identity can never hit whatever reuses the pid.
 */
export function lyingRestore(ctx: NodeContext, checkpointId: string): { pid: number; startTime: number } {
  const child = spawnSync('/bin/true');
  const pid = child.pid ?? 0;
  ctx.logger.warn(
    { node: ctx.node, checkpoint: checkpointId, pid },
    'TEST-ONLY LIE: criuRestore reports success without restoring',
  );
  return { pid, startTime: 1 };
}
