import type { ApplicationFailure } from '@temporalio/activity';
import { WorkflowFailedError } from '@temporalio/client';
import { candidateOf, surveyNodes } from '../../activities/control';
import type { GpuInventory, NodeInventory } from '../../activities/node/inventory';
import type { CompatRecord } from '../../common/compat';
import { CONTROL_QUEUE, restoreWorkflowId } from '../../common/queues';
import type { Candidate, CheckpointInfo, RestoreStatus } from '../../common/restore';
import { PLACEMENT_WORKFLOW_ID, reservationsQuery, reserveUpdate } from '../../workflows/placement';
import { type ControlMock, Harness, type NodeMock } from './harness';

/**
 * Per-GPU placement and the restore compatibility gate, with the control activities' real pure logic
 * (candidateOf, surveyNodes) over inventories as nodes report them, and mocked node activities.
 */
let h: Harness;
beforeAll(async () => {
  h = await Harness.create();
  // The first workflow on a cold test server can time out while the worker warms up (as in restore.test.ts).
  await restore([inv('node-warm', [gpu(0, H100, 80)])], {}, []).catch(() => undefined);
}, 120000);
afterAll(async () => h?.teardown());
afterEach(async () => h?.reset());

const GiB = 1024 ** 3;
const H100 = 'NVIDIA H100 80GB HBM3';
const A100 = 'NVIDIA A100-SXM4-80GB';
const FLAGS = ['avx', 'avx2', 'avx512f', 'fpu', 'sse4_2'];

const gpu = (index: number, model: string, freeGiB: number, totalGiB = 80): GpuInventory => ({
  index,
  uuid: `GPU-${model.length}-${index}`,
  model,
  totalVramBytes: totalGiB * GiB,
  freeVramBytes: freeGiB * GiB,
});

function inv(node: string, gpus: GpuInventory[], over: Partial<NodeInventory> = {}): NodeInventory {
  return {
    node,
    zone: null,
    vramSource: 'standin',
    gpus,
    totalVramBytes: gpus.reduce((s, g) => s + g.totalVramBytes, 0),
    freeVramBytes: gpus.reduce((s, g) => s + g.freeVramBytes, 0),
    freeDiskBytes: 100 * GiB,
    criuVersion: '4.1.1',
    driverVersion: '580.65.06',
    cudaVersion: 13000,
    kernelRelease: '6.18.0',
    cpuFlags: FLAGS,
    reportedAt: '2026-01-01T00:00:00Z',
    ...over,
  };
}

/** Checkpoint taken on node-src, GPU 0 (an H100), holding VRAM. */
const compat = (over: Partial<CompatRecord> = {}): CompatRecord => ({
  gpuModel: H100,
  gpuIndex: 0,
  gpuUuid: 'GPU-src-0',
  driverVersion: '580.65.06',
  cudaVersion: 13000,
  criuVersion: '4.1.1',
  kernelRelease: '6.18.0',
  cpuFlags: FLAGS,
  heldVram: true,
  ...over,
});

function control(calls: string[], nodes: NodeInventory[], info: Partial<CheckpointInfo> = {}): ControlMock {
  const healthy = nodes.map((i) => ({ node: i.node, inv: i }));
  return {
    checkpointInfo: async ({ checkpointId }) => ({
      checkpointId,
      jobId: 'job-1',
      node: 'node-src',
      tier: 's3',
      vramBytes: 20 * GiB,
      source: 'workflow',
      ...info,
    }),
    jobOpen: async () => ({ open: false, state: null }),
    placementSurvey: async (input) => {
      calls.push('placementSurvey');
      return surveyNodes(healthy, input.compat);
    },
    placementCandidates: async ({ bytes, exclude, only, compat: c }) => {
      calls.push('placementCandidates');
      return healthy
        .filter(({ node }) => !exclude.includes(node) && (!only || only === node))
        .map(({ node, inv: i }) => candidateOf(node, i, bytes, c))
        .filter((x): x is Candidate => x !== null);
    },
    // As the placement workflow picks: the first candidate with one GPU that has the room.
    reserve: async ({ reservationId, bytes, candidates }) => {
      for (const c of candidates) {
        const g = c.gpus?.find((x) => x.freeVramBytes >= bytes);
        if (g) {
          calls.push(`reserve ${c.node} gpu ${g.index}`);
          return { reservationId, node: c.node, bytes, gpuIndex: g.index };
        }
      }
      return null;
    },
    release: async () => undefined,
    // Node health reports (tested in health.test.ts) are taken and dropped here.
    reportNodeOutcome: async () => undefined,
    raiseAlert: async (a) => `alert/${a.kind}/x`,
  };
}

function nodeMock(calls: string[], name: string): NodeMock {
  const rec =
    <T>(what: string, v: T) =>
    async (): Promise<T> => {
      calls.push(`${what} ${name}`);
      return v;
    };
  return {
    fetch: async ({ checkpointId }) => {
      calls.push(`fetch ${name}`);
      return {
        dir: `/data/${name}/${checkpointId}`,
        bytes: 100,
        source: 's3' as const,
        staged: false,
        jobId: 'job-1',
        vramBytes: 20 * GiB,
      };
    },
    criuRestore: rec('criuRestore', { pid: 777, startTime: 5000 }),
    checkVram: async (input) => {
      calls.push(`checkVram ${name} gpu ${String(input.gpuIndex)}`);
      return { freeVramBytes: 80 * GiB };
    },
    cudaRestore: rec('cudaRestore', { outcome: 'done' as const, detail: 'restored' }),
    cudaUnlock: rec('cudaUnlock', { outcome: 'done' as const, detail: 'unlocked' }),
    verifyRunning: rec('verifyRunning', { state: 'S', cuda: 'running', probes: 0, afterMs: 1000, detail: 'ok' }),
    adoptWorkload: rec('adoptWorkload', undefined),
    killProcess: rec('killProcess', { killed: true }),
  };
}

let seq = 0;
async function restore(
  nodes: NodeInventory[],
  info: Partial<CheckpointInfo>,
  calls: string[],
  req: { node?: string; vramBytes?: number } = {},
): Promise<RestoreStatus> {
  const mocks = Object.fromEntries(nodes.map((n) => [n.node, nodeMock(calls, n.node)]));
  const checkpointId = `ck-gpu-${++seq}`;
  return h.with(control(calls, nodes, info), mocks, () =>
    h.env.client.workflow.execute('restore', {
      workflowId: restoreWorkflowId(checkpointId, 1),
      taskQueue: CONTROL_QUEUE,
      args: [{ checkpointId, placementDeadline: '1m', ...req }],
    }),
  );
}

const failure = async (p: Promise<unknown>): Promise<ApplicationFailure> => {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(WorkflowFailedError);
  return (err as WorkflowFailedError).cause as ApplicationFailure;
};

describe('placement by one GPU', () => {
  test('a node whose GPUs together have the room but none alone is no candidate; the node with one GPU that has it is chosen', async () => {
    const calls: string[] = [];
    // node-sum: 4 x 8 GiB free = 32 GiB summed, no single GPU with 20; node-one: one GPU with 24 free.
    const s = await restore(
      [
        inv(
          'node-sum',
          [0, 1, 2, 3].map((i) => gpu(i, H100, 8)),
        ),
        inv('node-one', [gpu(0, H100, 2), gpu(1, H100, 24)]),
      ],
      {},
      calls,
    );
    expect(s.phase).toBe('Running');
    expect(s.node).toBe('node-one');
    expect(s.gpu).toEqual({ index: 1, note: null });
    expect(calls).toContain('reserve node-one gpu 1');
    expect(calls).toContain('checkVram node-one gpu 1');
    expect(calls.some((c) => c.includes('node-sum'))).toBe(false);
  });

  test('more VRAM than any single GPU anywhere: refused at once as a multi-GPU job, nothing placed', async () => {
    const calls: string[] = [];
    const f = await failure(
      restore([inv('node-a', [gpu(0, H100, 80), gpu(1, H100, 80)])], { vramBytes: 100 * GiB }, calls),
    );
    expect(f.type).toBe('MultiGpuUnsupported');
    expect(f.message).toMatch(
      /107374182400 bytes of VRAM needed, more than any single GPU has \(largest: 85899345920 bytes\); multi-GPU jobs are out of scope/,
    );
    expect(calls).toEqual(['placementSurvey']);
  });

  test('candidateOf: the largest single GPU is the free figure; a declared node is one pseudo-GPU', () => {
    const c = candidateOf('n', inv('n', [gpu(0, H100, 10), gpu(1, H100, 30)]), 20 * GiB);
    expect(c).toEqual({
      node: 'n',
      freeVramBytes: 30 * GiB,
      vramSource: 'standin',
      gpus: [
        { index: 0, freeVramBytes: 10 * GiB },
        { index: 1, freeVramBytes: 30 * GiB },
      ],
    });
    expect(candidateOf('n', inv('n', [gpu(0, H100, 10), gpu(1, H100, 15)]), 20 * GiB)).toBeNull();
    const declared = inv(
      'd',
      [{ index: 0, uuid: 'declared', model: 'declared', totalVramBytes: 16 * GiB, freeVramBytes: 16 * GiB }],
      { vramSource: 'declared', driverVersion: null },
    );
    expect(candidateOf('d', declared, 8 * GiB)?.gpus).toEqual([{ index: 0, freeVramBytes: 16 * GiB }]);
  });
});

describe('restore compatibility gate', () => {
  test('incompatible nodes are filtered before any bytes move, each with its reason; the restore lands on the compatible one', async () => {
    const calls: string[] = [];
    const s = await restore(
      [
        inv('node-a100', [gpu(0, A100, 80)]),
        inv('node-olddrv', [gpu(0, H100, 80)], { driverVersion: '570.172.08', cudaVersion: 12080 }),
        inv('node-oldcriu', [gpu(0, H100, 80)], { criuVersion: '3.17' }),
        inv('node-noavx512', [gpu(0, H100, 80)], { cpuFlags: ['avx', 'avx2', 'fpu', 'sse4_2'] }),
        inv('node-ok', [gpu(0, H100, 80)]),
      ],
      { compat: compat() },
      calls,
    );
    expect(s.phase).toBe('Running');
    expect(s.node).toBe('node-ok');
    expect(s.compatibility).toEqual([
      { node: 'node-a100', reason: `GPU model '${A100}', checkpoint needs '${H100}'` },
      { node: 'node-noavx512', reason: 'CPU lacks 1 flag(s) the source had: avx512f' },
      { node: 'node-ok', reason: null },
      { node: 'node-oldcriu', reason: "CRIU 3.17 older than the checkpoint's 4.1.1" },
      { node: 'node-olddrv', reason: "driver 570.172.08 older than the checkpoint's 580.65.06" },
    ]);
    expect(calls.filter((c) => c.startsWith('fetch'))).toEqual(['fetch node-ok']);
  });

  test('no compatible node: NoCompatibleNode at once, listing each node and why, nothing fetched', async () => {
    const calls: string[] = [];
    const started = Date.now();
    const f = await failure(
      restore(
        [inv('node-a100', [gpu(0, A100, 80)]), inv('node-oldcriu', [gpu(0, H100, 80)], { criuVersion: '3.17' })],
        { compat: compat() },
        calls,
      ),
    );
    expect(f.type).toBe('NoCompatibleNode');
    expect(f.nonRetryable).toBe(true);
    expect(f.message).toBe(
      `no compatible node for checkpoint ck-gpu-${seq}: node-a100: GPU model '${A100}', checkpoint needs '${H100}'; node-oldcriu: CRIU 3.17 older than the checkpoint's 4.1.1`,
    );
    expect(calls).toEqual(['placementSurvey']);
    expect(Date.now() - started).toBeLessThan(30000);
  });

  test('a CPU-only checkpoint (no VRAM held) ignores GPU model and driver', async () => {
    const calls: string[] = [];
    const s = await restore(
      [inv('node-a100', [gpu(0, A100, 80)], { driverVersion: '550.1' })],
      { vramBytes: 0, compat: compat({ heldVram: false }) },
      calls,
    );
    expect(s.phase).toBe('Running');
    expect(s.compatibility).toEqual([{ node: 'node-a100', reason: null }]);
  });

  test('a driver older than 580 on the target: the same GPU index only, and placement says so', async () => {
    const calls: string[] = [];
    // Source GPU index 1; the target's GPU 0 has more room, but without GPU remapping only GPU 1 will do.
    const s = await restore(
      [inv('node-t', [gpu(0, H100, 80), gpu(1, H100, 40)], { driverVersion: '575.1.2' })],
      { compat: compat({ gpuIndex: 1, driverVersion: '570.1' }) },
      calls,
    );
    expect(s.phase).toBe('Running');
    expect(s.gpu).toEqual({ index: 1, note: 'driver 575.1.2 < 580: restore only onto the same GPU index 1' });
    expect(calls).toContain('checkVram node-t gpu 1');
  });

  test('an old-driver node without the source GPU index is excluded with that reason', async () => {
    const calls: string[] = [];
    const f = await failure(
      restore(
        [inv('node-t', [gpu(0, H100, 80)], { driverVersion: '575.1.2' })],
        { compat: compat({ gpuIndex: 1, driverVersion: '570.1' }) },
        calls,
      ),
    );
    expect(f.type).toBe('NoCompatibleNode');
    expect(f.message).toMatch(/node-t: driver 575\.1\.2 < 580: restore only onto the same GPU index 1/);
  });
});

describe('placement workflow reserves per GPU', () => {
  test('two reservations on one node land on different GPUs; a third that fits no single GPU is refused', async () => {
    const cand: Candidate = {
      node: 'n1',
      freeVramBytes: 40 * GiB,
      vramSource: 'standin',
      gpus: [
        { index: 0, freeVramBytes: 40 * GiB },
        { index: 1, freeVramBytes: 30 * GiB },
      ],
    };
    await h.with({}, {}, async () => {
      const handle = await h.env.client.workflow.start('placement', {
        workflowId: PLACEMENT_WORKFLOW_ID,
        taskQueue: CONTROL_QUEUE,
        args: [{}],
      });
      const r1 = await handle.executeUpdate(reserveUpdate, {
        args: [{ reservationId: 'r1', bytes: 25 * GiB, candidates: [cand] }],
      });
      const r2 = await handle.executeUpdate(reserveUpdate, {
        args: [{ reservationId: 'r2', bytes: 25 * GiB, candidates: [cand] }],
      });
      // 15 GiB left on GPU 0 and 5 GiB on GPU 1: 20 GiB summed, but no single GPU has 20.
      const r3 = await handle.executeUpdate(reserveUpdate, {
        args: [{ reservationId: 'r3', bytes: 20 * GiB, candidates: [cand] }],
      });
      expect(r1).toEqual({ reservationId: 'r1', node: 'n1', bytes: 25 * GiB, gpuIndex: 0 });
      expect(r2).toEqual({ reservationId: 'r2', node: 'n1', bytes: 25 * GiB, gpuIndex: 1 });
      expect(r3).toBeNull();
      expect(await handle.query(reservationsQuery)).toHaveLength(2);
      await handle.terminate('test done');
    });
  });
});
