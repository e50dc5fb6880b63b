import { KybernateClient } from '../../clients/api';
import { DEFAULT_HEALTH_CONFIG } from '../../common/health';
import { CONTROL_QUEUE, restoreWorkflowId } from '../../common/queues';
import type { RestoreRequest, RestoreStatus } from '../../common/restore';
import { Agent, client, lastTick, PATTERN, PYTHON, until } from '../support/stack';
import { recordHistory } from '../support/histories';
import { PLACEMENT_WORKFLOW_ID } from '../../workflows/placement';

/**
 * A lying agent (KYBERNATE_TEST_LIE=restore: its criuRestore reports a process it never restored) on the real
 * stack: the restore's verification catches the lie, the restore runs on the honest node, the liar's node is
 * Quarantined and comes back by decay alone (a 20 s half-life here: one lie quarantines for ~10 s).
 */
const GiB = 1024 ** 3;
const HALF_LIFE_MS = 20_000;
let k: KybernateClient;
const agents: Agent[] = [];

beforeAll(async () => {
  k = await client();
  agents.push(
    await Agent.start({
      node: 'h-liar',
      zone: 'h-zone-1',
      declaredVramBytes: 8 * GiB,
      env: { KYBERNATE_TEST_MODE: '1', KYBERNATE_TEST_LIE: 'restore' },
    }),
  );
  agents.push(await Agent.start({ node: 'h-honest', zone: 'h-zone-2', declaredVramBytes: 8 * GiB }));
  await k.configureHealth({ halfLifeMs: HALF_LIFE_MS });
}, 120000);
afterAll(async () => {
  // The placement workflow is shared with the other suites of this run: its rules go back to the defaults.
  await k?.configureHealth({ halfLifeMs: DEFAULT_HEALTH_CONFIG.halfLifeMs }).catch(() => undefined);
  for (const a of agents) await a.stop();
  await k?.close();
});

test('a lying agent is caught by verification, its node quarantined, and it recovers by decay alone', async () => {
  const info = await k.runWorkload({ node: 'h-liar', jobId: 'liar-job', command: [PYTHON, PATTERN, '8', 'liar-job'] });
  await until('liar-job ticking', () => lastTick(info.logFile) >= 2, 30000);
  const { request } = await k.startCheckpoint({
    target: 'liar-job',
    node: 'h-liar',
    checkpointId: 'liar-job-ck',
    vramBytes: GiB,
  });
  expect((await k.checkpointResult(request.checkpointId)).phase).toBe('Durable');

  // The liar first (the checkpoint's own node), then the honest one: never another suite's node.
  const req: RestoreRequest = { checkpointId: request.checkpointId, prefer: ['h-liar', 'h-honest'] };
  const handle = await k.client.workflow.start('restore', {
    workflowId: restoreWorkflowId(request.checkpointId, 1),
    taskQueue: CONTROL_QUEUE,
    args: [req],
  });
  const s = (await handle.result()) as RestoreStatus;
  try {
    expect(s.phase).toBe('Running');
    expect(s.attempts.map((a) => `${a.node} ${a.outcome} ${a.phase}`)).toEqual([
      'h-liar failed Verifying',
      'h-honest running Running',
    ]);
    expect(s.attempts[0].reason).toMatch(/NoSuchProcess/);

    const caught = await k.health();
    const liar = caught?.nodes.find((n) => n.node === 'h-liar');
    expect(liar).toMatchObject({ state: 'Quarantined', zone: 'h-zone-1' });
    expect(liar?.recentFailures).toEqual([
      expect.objectContaining({ kind: 'failedVerification', detail: expect.stringMatching(/^liar-job-ck: /) }),
    ]);
    expect(caught?.nodes.find((n) => n.node === 'h-honest')).toMatchObject({ state: 'Healthy', zone: 'h-zone-2' });
    const untilMs = Date.parse(liar?.quarantinedUntil ?? '') - Date.now();
    expect(untilMs).toBeLessThanOrEqual(0.52 * HALF_LIFE_MS);

    // Decay alone: no success, no operator.
    await until(
      'h-liar Healthy again',
      async () => (await k.health())?.nodes.find((n) => n.node === 'h-liar')?.state === 'Healthy',
      untilMs + 15000,
    );
    const back = (await k.health())?.nodes.find((n) => n.node === 'h-liar');
    expect(back?.score).toBeGreaterThanOrEqual(0.3);
    expect(back?.recentFailures).toHaveLength(1);
    // The placement workflow never ends: its history so far (reservations, reports, quarantine) is replayed.
    await recordHistory('placement-health', k.client.workflow.getHandle(PLACEMENT_WORKFLOW_ID));
  } finally {
    if (s.pid) await k.stopWorkload({ node: s.node ?? 'h-honest', jobId: 'liar-job' }).catch(() => undefined);
  }
});
