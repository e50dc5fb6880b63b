import * as fs from 'node:fs';
import * as path from 'node:path';
import { WorkflowFailedError } from '@temporalio/client';
import type { ApplicationFailure } from '@temporalio/common';
import { KybernateClient } from '../../clients/api';
import { REPO_ROOT } from '../../deploy/local/paths';
import { standinAgentEnv } from '../../deploy/local/standin';
import { Agent, alive, client, othersNotPlaceable, output, PYTHON, stack, until } from '../support/stack';

/**
 * Per-GPU truth and the restore compatibility gate on the real stack, with agents on the STAND-IN driver
 * (deploy/native/standin-cuda) whose standin.conf gives each node its GPU model and driver version: the
 * checkpoint measures its VRAM and records what a restore needs; placement sends the restore only to a node
 * that can take it, and fails at once, naming each node and why, when none can. Not NVIDIA's driver.
 */
const MiB = 1024 * 1024;
const WORKLOAD = path.join(REPO_ROOT, 'deploy', 'workloads', 'standin_gpu.py');
const OTHER_MODEL = 'NVIDIA A100-SXM4-80GB';
let k: KybernateClient;
const agents: Agent[] = [];
const pids: number[] = [];

beforeAll(async () => {
  k = await client();
});
afterAll(async () => {
  for (const p of pids) if (alive(p)) process.kill(p, 'SIGKILL');
  for (const a of agents) await a.stop();
  await k.close();
});

const deviceDir = (node: string): string => path.join(stack().home, 'standin', node);
const conf = (node: string, text: string): void => {
  fs.mkdirSync(deviceDir(node), { recursive: true });
  fs.writeFileSync(path.join(deviceDir(node), 'standin.conf'), text);
};

async function agent(node: string, standinConf: string): Promise<void> {
  conf(node, standinConf);
  agents.push(await Agent.start({ node, reportIntervalSeconds: 2, env: standinAgentEnv(deviceDir(node)) }));
  await until(
    `${node} reports its stand-in GPUs`,
    async () => (await k.node(node)).inventory?.vramSource === 'standin',
    30000,
    500,
  );
}

const verifies = (logFile: string): string[] => output(logFile).filter((l) => l.startsWith('verify '));

describe('restore compatibility gate with stand-in GPUs', () => {
  test('measured VRAM and the compatibility record at checkpoint; the restore skips the node with another GPU model and lands on the compatible one', async () => {
    await agent('gc-src', 'gpus=2\n');
    await agent('gc-a100', `name=${OTHER_MODEL}\n`);
    await agent('gc-ok', 'gpus=2\n');
    const inv = (await k.node('gc-src')).inventory!;
    expect(inv.gpus.map((g) => g.index)).toEqual([0, 1]);
    expect(new Set(inv.gpus.map((g) => g.uuid)).size).toBe(2);
    expect(inv.driverVersion).toBe('570.172.08');
    expect(inv.cudaVersion).toBe(12080);
    expect(inv.cpuFlags?.length).toBeGreaterThan(0);

    const w = await k.runWorkload({
      node: 'gc-src',
      jobId: 'gc-move',
      command: [PYTHON, WORKLOAD, '16', '301', '0.2', '5'],
      env: { KYBERNATE_STANDIN_DIR: deviceDir('gc-src') },
    });
    pids.push(w.pid);
    await until('gc-move verified its VRAM once', () => verifies(w.logFile).length >= 1, 30000);
    // No --vram declared: the need is what NVML measured for the process tree.
    const { request } = await k.startCheckpoint({ target: 'gc-move', node: 'gc-src', checkpointId: 'gc-move-1' });
    const ck = await k.checkpointResult(request.checkpointId);
    expect(ck.phase).toBe('Durable');
    expect(ck.vramBytes).toBe(0);
    expect(ck.measuredVramBytes).toBe(16 * MiB);
    expect(ck.compat).toMatchObject({
      gpuModel: inv.gpus[0].model,
      gpuIndex: 0,
      gpuUuid: inv.gpus[0].uuid,
      driverVersion: '570.172.08',
      cudaVersion: 12080,
      heldVram: true,
    });
    expect(ck.compat?.cpuFlags).toEqual(inv.cpuFlags);

    // gc-src is busy elsewhere in this story: take it out by its VRAM (a bigger GPU 0 elsewhere is not the point).
    conf('gc-src', 'gpus=2\ntotal_bytes.0=1\ntotal_bytes.1=1\n');
    await until(
      'gc-src reports no free VRAM',
      async () => Math.max(...(await k.node('gc-src')).inventory!.gpus.map((g) => g.freeVramBytes)) <= 1,
      30000,
      500,
    );
    const seen = verifies(w.logFile).length;
    const r = await k.startRestore({ checkpointId: 'gc-move-1' });
    const rs = await k.restoreResult(r.workflowId);
    expect(rs.phase).toBe('Running');
    expect(rs.node).toBe('gc-ok');
    expect(rs.vramBytes).toBe(16 * MiB);
    // driver 570 on gc-ok: only the source's GPU index, and placement says so.
    expect(rs.gpu).toEqual({ index: 0, note: 'driver 570.172.08 < 580: restore only onto the same GPU index 0' });
    // Other suites' nodes may still be registered on the shared stack (recently seen): only this test's matter.
    expect(rs.compatibility?.filter((c) => c.node.startsWith('gc-'))).toEqual([
      { node: 'gc-a100', reason: `GPU model '${OTHER_MODEL}', checkpoint needs '${inv.gpus[0].model}'` },
      { node: 'gc-ok', reason: null },
      { node: 'gc-src', reason: null },
    ]);
    expect(rs.attempts.map((a) => a.node)).toEqual(['gc-ok']);
    await until('the restored workload verified its VRAM', () => verifies(w.logFile).length > seen, 30000);
    expect(
      verifies(w.logFile)
        .slice(seen)
        .every((l) => l.includes('vram_ok=True')),
    ).toBe(true);
    process.kill(rs.pid!, 'SIGKILL');
  }, 300000);

  test('no compatible node: the restore fails at once (NoCompatibleNode) listing each node and why, and nothing is fetched', async () => {
    // Every node now has an older driver than the checkpoint's or another GPU model.
    conf('gc-src', 'gpus=2\ndriver_version=550.54.15\n');
    conf('gc-ok', 'gpus=2\ndriver_version=550.54.15\n');
    await until(
      'the old drivers are reported',
      async () =>
        (await k.node('gc-src')).inventory?.driverVersion === '550.54.15' &&
        (await k.node('gc-ok')).inventory?.driverVersion === '550.54.15',
      30000,
      500,
    );
    // The gate fails only when no node at all can restore it: another suite's stand-in node still counted live
    // would be a compatible one.
    await othersNotPlaceable(
      k,
      agents.map((a) => a.spec.node),
    );
    const started = Date.now();
    const r = await k.startRestore({ checkpointId: 'gc-move-1' });
    // The client reads the Failed status; the workflow itself failed (the UI counts it), the cause in its failure.
    expect((await k.restoreResult(r.workflowId)).phase).toBe('Failed');
    const err = await k.client.workflow
      .getHandle(r.workflowId)
      .result()
      .then(
        () => null,
        (e: unknown) => e,
      );
    expect(err).toBeInstanceOf(WorkflowFailedError);
    const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
    expect(cause.type).toBe('NoCompatibleNode');
    expect(cause.message).toMatch(/^no compatible node for checkpoint gc-move-1: /);
    // Each of this test's nodes with its reason (other suites' nodes on the shared stack may be listed too).
    for (const reason of [
      `gc-a100: GPU model '${OTHER_MODEL}', checkpoint needs 'Kybernate stand-in GPU (not a real device)'`,
      "gc-ok: driver 550.54.15 older than the checkpoint's 570.172.08",
      "gc-src: driver 550.54.15 older than the checkpoint's 570.172.08",
    ])
      expect(cause.message).toContain(reason);
    expect(Date.now() - started).toBeLessThan(60000);
    const st = await k.client.workflow.getHandle(r.workflowId).query<{ attempts: unknown[]; phase: string }>('status');
    expect(st.phase).toBe('Failed');
    expect(st.attempts).toEqual([]);
  }, 300000);

  test('driver 580 on the target: restored onto another GPU index, the CUDA restore passing the old -> new UUID pair, VRAM intact', async () => {
    // GPU 0 of gc-580 is too small, so its GPU 1 is the one with room: a different index than the source's 0.
    await agent('gc-580', `gpus=2\ndriver_version=580.65.06\ncuda_version=13000\ntotal_bytes.0=${MiB}\n`);
    const w = await k.runWorkload({
      node: 'gc-src',
      jobId: 'gc-remap',
      command: [PYTHON, WORKLOAD, '16', '302', '0.2', '5'],
      env: { KYBERNATE_STANDIN_DIR: deviceDir('gc-src') },
    });
    pids.push(w.pid);
    await until('gc-remap verified its VRAM once', () => verifies(w.logFile).length >= 1, 30000);
    const { request } = await k.startCheckpoint({ target: 'gc-remap', node: 'gc-src', checkpointId: 'gc-remap-1' });
    const ck = await k.checkpointResult(request.checkpointId);
    expect(ck.phase).toBe('Durable');
    expect(ck.compat).toMatchObject({ gpuIndex: 0, driverVersion: '550.54.15' });
    const seen = verifies(w.logFile).length;
    const rs = await k.restoreResult((await k.startRestore({ checkpointId: 'gc-remap-1', node: 'gc-580' })).workflowId);
    expect(rs.phase).toBe('Running');
    expect(rs.node).toBe('gc-580');
    expect(rs.gpu).toEqual({ index: 1, note: null });
    expect(rs.sourceGpuUuid).toBe(ck.compat?.gpuUuid);
    await until('the restored workload verified its VRAM', () => verifies(w.logFile).length > seen, 30000);
    const after = verifies(w.logFile).slice(seen);
    expect(after.every((l) => l.includes('vram_ok=True'))).toBe(true);
    // Its device memory is on gc-580's GPU 1 now.
    expect(after[after.length - 1]).toContain(`vram=${deviceDir('gc-580')}/gpu1/vram-`);
    process.kill(rs.pid!, 'SIGKILL');
  }, 300000);
});
