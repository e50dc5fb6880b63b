import * as fs from 'node:fs';
import * as path from 'node:path';
import { holdsCuda } from '../../activities/node/cuda';
import type { RestoreRequest } from '../../common/restore';
import { CONTROL_QUEUE, restoreWorkflowId } from '../../common/queues';
import { KybernateClient } from '../../clients/api';
import { REPO_ROOT } from '../../deploy/local/paths';
import { standinAgentEnv } from '../../deploy/local/standin';
import { Agent, alive, client, output, PYTHON, stack, until } from '../support/stack';

/**
 * The CUDA path on the real stack, with agents that load the STAND-IN driver (deploy/native/standin-cuda)
 * through LD_LIBRARY_PATH as a real node loads libcuda.so.1: a workload holding a stand-in context is
 * locked, its "VRAM" moved to host memory and dumped by CRIU, restored on another node and checked byte for
 * byte. This proves Kybernate's calls, order, compensations and timing, not NVIDIA's driver (test/gpu).
 */
const MiB = 1024 * 1024;
const WORKLOAD = path.join(REPO_ROOT, 'deploy', 'workloads', 'standin_gpu.py');
const CTL = '/tmp/kybernate-standin-ctl';
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

async function agent(
  node: string,
  opts: { faults?: string; totalBytes?: number; env?: Record<string, string> } = {},
): Promise<Agent> {
  const a = await Agent.start({
    node,
    reportIntervalSeconds: 2,
    env: { ...standinAgentEnv(deviceDir(node), { faults: opts.faults, totalBytes: opts.totalBytes }), ...opts.env },
  });
  agents.push(a);
  await until(
    `${node} reports its stand-in GPU`,
    async () => (await k.node(node)).inventory?.vramSource === 'standin',
    30000,
    500,
  );
  return a;
}

async function workload(
  node: string,
  job: string,
  mib: number,
  seed: number,
): Promise<{ pid: number; logFile: string }> {
  const w = await k.runWorkload({
    node,
    jobId: job,
    command: [PYTHON, WORKLOAD, String(mib), String(seed), '0.2', '5'],
    env: { KYBERNATE_STANDIN_DIR: deviceDir(node) },
  });
  pids.push(w.pid);
  await until(`${job} verified its VRAM once`, () => verifies(w.logFile).length >= 1, 30000);
  expect(verifies(w.logFile).every((l) => l.includes('vram_ok=True'))).toBe(true);
  return w;
}

const verifies = (logFile: string): string[] => output(logFile).filter((l) => l.startsWith('verify '));
const vramFiles = (node: string): string[] => fs.readdirSync(deviceDir(node)).filter((f) => f.startsWith('vram-'));
/** The driver state the stand-in published for a process (0 running, 1 locked, 2 checkpointed, 3 failed). */
const driverState = (pid: number): number | null => {
  try {
    return Number(fs.readFileSync(path.join(CTL, `${pid}.state`), 'utf8').split(' ')[0]);
  } catch {
    return null;
  }
};
/** Live processes of this workload (by its seed) that hold the stand-in driver: tini, their init, does not. */
const copies = (seed: number): number[] =>
  fs
    .readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .filter((d) => {
      try {
        const argv = fs.readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0');
        return (
          argv.some((x) => x.endsWith('standin_gpu.py')) &&
          argv.includes(String(seed)) &&
          alive(Number(d)) &&
          holdsCuda(Number(d))
        );
      } catch {
        return false;
      }
    })
    .map(Number);

describe('the CUDA path with the stand-in driver, end to end', () => {
  test('a workload holding a stand-in context is checkpointed (CUDA lock + checkpoint really run) and restored on another node with its VRAM intact', async () => {
    await agent('gs-a');
    await agent('gs-b');
    const w = await workload('gs-a', 'gs-move', 16, 101);
    const { request } = await k.startCheckpoint({
      target: 'gs-move',
      node: 'gs-a',
      checkpointId: 'gs-move-1',
      vramBytes: 16 * MiB,
    });
    const ck = await k.checkpointResult(request.checkpointId);
    expect(ck.phase).toBe('Durable');
    expect(ck.history.find((h) => h.phase === 'Locking' && h.outcome === 'ok')?.detail).toMatch(
      /lock ok .*stand-in driver/,
    );
    expect(ck.history.find((h) => h.phase === 'DumpingVram')?.outcome).toBe('ok');
    expect(ck.history.find((h) => h.phase === 'DumpingVram')?.detail).toMatch(
      /checkpoint ok in \d+ ms, state now checkpointed/,
    );
    expect(alive(w.pid)).toBe(false);
    expect(vramFiles('gs-a')).toEqual([]); // the VRAM went into the image, not left on the device
    const seen = verifies(w.logFile).length;
    const r = await k.startRestore({ checkpointId: 'gs-move-1', node: 'gs-b' });
    const rs = await k.restoreResult(r.workflowId);
    expect(rs.phase).toBe('Running');
    expect(rs.node).toBe('gs-b');
    await until('the restored workload verified its VRAM', () => verifies(w.logFile).length > seen, 30000);
    const after = verifies(w.logFile).slice(seen);
    expect(after.every((l) => l.includes('vram_ok=True'))).toBe(true);
    // Its device memory now lives on gs-b's stand-in device, under its new host pid.
    expect(after[after.length - 1]).toContain(`vram=${deviceDir('gs-b')}/vram-`);
    expect(vramFiles('gs-b')).toHaveLength(1);
    // The stand-in NVML counts it: gs-b reports 16 MiB less free than its total.
    await until(
      'gs-b reports the restored VRAM in use',
      async () => {
        const g = (await k.node('gs-b')).inventory!.gpus[0];
        return g.freeVramBytes === g.totalVramBytes - 16 * MiB;
      },
      30000,
      500,
    );
    expect(copies(101)).toHaveLength(1);
    process.kill(rs.pid!, 'SIGKILL');
  }, 300000);

  test('a CRIU failure after DumpingVram is compensated with CUDA restore + unlock of that pid, and the workload runs on with its VRAM', async () => {
    const script = path.join(stack().home, 'criu-fail-pre-dump.sh');
    fs.writeFileSync(script, '#!/bin/sh\n[ "$CRTOOLS_SCRIPT_ACTION" = pre-dump ] && exit 1\nexit 0\n', { mode: 0o755 });
    await agent('gs-fail', { env: { KYBERNATE_CRIU_ACTION_SCRIPT: script } });
    const w = await workload('gs-fail', 'gs-fail', 16, 102);
    const { request } = await k.startCheckpoint({
      target: 'gs-fail',
      node: 'gs-fail',
      checkpointId: 'gs-fail-1',
      vramBytes: 16 * MiB,
    });
    const ck = await k.checkpointResult(request.checkpointId);
    expect(ck.phase).toBe('Failed');
    expect(ck.history.find((h) => h.phase === 'DumpingVram')?.outcome).toBe('ok');
    expect(ck.failureReason).toMatch(/^DumpingProcess/);
    const details = ck.history.filter((h) => h.outcome === 'compensated').map((h) => h.detail);
    // The pid the driver holds is the workload's CUDA process (tini's child), found under the root pid.
    expect(details.some((d) => /^CUDA restore of pid \d+: pid \d+: restore ok/.test(d))).toBe(true);
    expect(details.some((d) => /^CUDA unlock of pid \d+: pid \d+: unlock ok .*state now running/.test(d))).toBe(true);
    expect(alive(w.pid)).toBe(true);
    const [cudaPid] = copies(102);
    expect(driverState(cudaPid)).toBe(0);
    const seen = verifies(w.logFile).length;
    await until('the workload reads its VRAM again', () => verifies(w.logFile).length > seen, 30000);
    expect(verifies(w.logFile).every((l) => l.includes('vram_ok=True'))).toBe(true);
    expect(vramFiles('gs-fail')).toEqual([`vram-${cudaPid}`]);
  }, 300000);

  test('a failure after CRIU stopped the workload: restored in place, then CUDA restore + unlock of the new pid; it runs on with its VRAM', async () => {
    // Sealing fails once CRIU has dumped (and stopped) the process: a directory stands where metadata.json goes.
    const script = path.join(stack().home, 'criu-block-seal.sh');
    fs.writeFileSync(
      script,
      '#!/bin/sh\n[ "$CRTOOLS_SCRIPT_ACTION" = post-dump ] && mkdir -p "$CRTOOLS_IMAGE_DIR/../metadata.json"\nexit 0\n',
      { mode: 0o755 },
    );
    await agent('gs-inplace', { env: { KYBERNATE_CRIU_ACTION_SCRIPT: script } });
    const w = await workload('gs-inplace', 'gs-inplace', 16, 107);
    const [before] = copies(107);
    const { request } = await k.startCheckpoint({
      target: 'gs-inplace',
      node: 'gs-inplace',
      checkpointId: 'gs-inplace-1',
      vramBytes: 16 * MiB,
    });
    const ck = await k.checkpointResult(request.checkpointId);
    expect(ck.phase).toBe('Failed');
    expect(ck.failureReason).toMatch(/^Sealing/);
    const details = ck.history.filter((h) => h.outcome === 'compensated').map((h) => h.detail);
    const root = Number(
      /^restored in place as pid (\d+)$/.exec(details.find((d) => d.startsWith('restored in place')) ?? '')?.[1],
    );
    expect(root).toBeGreaterThan(0);
    expect(root).not.toBe(w.pid);
    // The CUDA undo acts on the process as it is now: the restored tree, not the pid the checkpoint began with.
    expect(details.some((d) => d.startsWith(`CUDA restore of pid ${root}: pid `) && d.includes('restore ok'))).toBe(
      true,
    );
    expect(
      details.some((d) => d.startsWith(`CUDA unlock of pid ${root}: pid `) && d.includes('state now running')),
    ).toBe(true);
    const [after] = copies(107);
    expect(after).not.toBe(before);
    expect(copies(107)).toHaveLength(1);
    pids.push(root);
    expect(driverState(after)).toBe(0);
    expect(vramFiles('gs-inplace')).toEqual([`vram-${after}`]);
    const seen = verifies(w.logFile).length;
    await until('the restored workload reads its VRAM', () => verifies(w.logFile).length > seen, 30000);
    expect(verifies(w.logFile).every((l) => l.includes('vram_ok=True'))).toBe(true);
  }, 300000);

  test("OUT_OF_MEMORY in the driver on restore: that attempt's process is killed and the restore placed on another node", async () => {
    await agent('gs-oom-src');
    await agent('gs-oom', { faults: 'restore-oom' });
    await agent('gs-oom-ok');
    const w = await workload('gs-oom-src', 'gs-oom', 16, 103);
    const { request } = await k.startCheckpoint({
      target: 'gs-oom',
      node: 'gs-oom-src',
      checkpointId: 'gs-oom-1',
      vramBytes: 16 * MiB,
    });
    expect((await k.checkpointResult(request.checkpointId)).phase).toBe('Durable');
    const seen = verifies(w.logFile).length;
    // gs-oom first (its driver fails the restore); never the source node nor the other tests' nodes.
    const others = agents.map((a) => a.spec.node).filter((n) => n !== 'gs-oom' && n !== 'gs-oom-ok');
    const req: RestoreRequest = { checkpointId: 'gs-oom-1', prefer: ['gs-oom'], exclude: others };
    const workflowId = restoreWorkflowId('gs-oom-1', 1);
    await k.client.workflow.start('restore', { workflowId, taskQueue: CONTROL_QUEUE, args: [req] });
    const rs = await k.restoreResult(workflowId);
    expect(rs.phase).toBe('Running');
    expect(rs.node).toBe('gs-oom-ok');
    expect(rs.attempts[0]).toMatchObject({ node: 'gs-oom', outcome: 'failed', phase: 'RestoringVram' });
    expect(rs.attempts[0].reason).toMatch(/CUresult 2 \(out of memory\)/);
    expect(rs.excluded).toContain('gs-oom');
    // One copy runs, the one on gs-oom-ok; gs-oom's failed process was killed and holds no device memory.
    await until('one copy left', () => copies(103).length === 1, 20000);
    expect(vramFiles('gs-oom')).toEqual([]);
    expect(vramFiles('gs-oom-ok')).toEqual([`vram-${copies(103)[0]}`]);
    await until('the restored workload verified its VRAM', () => verifies(w.logFile).length > seen, 30000);
    expect(
      verifies(w.logFile)
        .slice(seen)
        .every((l) => l.includes('vram_ok=True') && l.includes(deviceDir('gs-oom-ok'))),
    ).toBe(true);
    process.kill(rs.pid!, 'SIGKILL');
  }, 300000);

  test("a VRAM checkpoint slower than the step's 10 s heartbeat timeout ends Durable: the agent heartbeats while the driver works", async () => {
    await agent('gs-slow', { faults: 'checkpoint-delay-ms=14000' });
    const w = await workload('gs-slow', 'gs-slow', 8, 104);
    const { request } = await k.startCheckpoint({
      target: 'gs-slow',
      node: 'gs-slow',
      checkpointId: 'gs-slow-1',
      vramBytes: 8 * MiB,
    });
    const ck = await k.checkpointResult(request.checkpointId);
    expect(ck.phase).toBe('Durable');
    const vram = ck.history.find((h) => h.phase === 'DumpingVram');
    expect(vram?.outcome).toBe('ok');
    const ms = Number(/checkpoint ok in (\d+) ms/.exec(vram!.detail)?.[1]);
    expect(ms).toBeGreaterThanOrEqual(14000);
    expect(ck.history.some((h) => /HEARTBEAT|agent lost|killed/i.test(h.detail))).toBe(false);
    expect(alive(w.pid)).toBe(false); // stopped by the dump, held in the checkpoint
  }, 300000);

  test('a lock that times out in the driver (CUDA_ERROR_TIMEOUT) fails Locking cleanly: nothing to undo, the workload runs on untouched', async () => {
    await agent('gs-lock', { faults: 'lock-hang' });
    const w = await workload('gs-lock', 'gs-lock', 8, 105);
    const { request } = await k.startCheckpoint({
      target: 'gs-lock',
      node: 'gs-lock',
      checkpointId: 'gs-lock-1',
      vramBytes: 8 * MiB,
    });
    const ck = await k.checkpointResult(request.checkpointId);
    expect(ck.phase).toBe('Failed');
    expect(ck.failureReason).toMatch(/^Locking: .*CUresult 909 \(the operation timed out\)/);
    expect(ck.history.some((h) => h.phase === 'DumpingVram')).toBe(false);
    expect(ck.history.some((h) => /CUDA (restore|unlock)|killed/.test(h.detail))).toBe(false);
    expect(alive(w.pid)).toBe(true);
    const [cudaPid] = copies(105);
    expect(driverState(cudaPid)).toBe(0);
    const seen = verifies(w.logFile).length;
    await until('the workload still reads its VRAM', () => verifies(w.logFile).length > seen, 30000);
    expect(verifies(w.logFile).every((l) => l.includes('vram_ok=True'))).toBe(true);
  }, 300000);

  test('each compensation runs even if the one before failed: a CUDA restore that runs out of memory is recorded, and the unlock is still tried', async () => {
    const script = path.join(stack().home, 'criu-fail-pre-dump-2.sh');
    fs.writeFileSync(script, '#!/bin/sh\n[ "$CRTOOLS_SCRIPT_ACTION" = pre-dump ] && exit 1\nexit 0\n', { mode: 0o755 });
    await agent('gs-comp', { faults: 'restore-oom', env: { KYBERNATE_CRIU_ACTION_SCRIPT: script } });
    const w = await workload('gs-comp', 'gs-comp', 8, 106);
    const { request } = await k.startCheckpoint({
      target: 'gs-comp',
      node: 'gs-comp',
      checkpointId: 'gs-comp-1',
      vramBytes: 8 * MiB,
    });
    const ck = await k.checkpointResult(request.checkpointId);
    expect(ck.phase).toBe('Failed');
    const failed = ck.history.filter((h) => h.outcome === 'failed').map((h) => h.detail);
    expect(failed.some((d) => /^CUDA restore failed: .*CUresult 2 \(out of memory\)/.test(d))).toBe(true);
    // The driver left the process FAILED, so the unlock fails too; what matters is that it was tried.
    expect(failed.some((d) => /^CUDA unlock failed: .*CUresult 401/.test(d))).toBe(true);
    expect(ck.history.some((h) => h.detail === 'partial checkpoint directory deleted')).toBe(true);
    const [cudaPid] = copies(106);
    expect(driverState(cudaPid)).toBe(3);
    process.kill(w.pid, 'SIGKILL');
  }, 300000);
});
