import * as fs from 'node:fs';
import * as path from 'node:path';
import { cudaApi, cudaUnavailableReason } from '../../activities/node/cuda';
import { KybernateClient } from '../../clients/api';
import { REPO_ROOT } from '../../deploy/local/paths';
import { Agent, alive, client, output, until } from '../support/stack';

/**
 * The real thing on a GPU host: a PyTorch process holding N GiB of VRAM is checkpointed by the workflow (CUDA
 * driver API through koffi, then CRIU), uploaded to MinIO, restored, and must find its tensor intact and keep
 * going. On a machine without an NVIDIA driver it is skipped, and says so.
 */
const gpu = fs.existsSync('/dev/nvidiactl') && cudaApi() !== null;
if (!gpu) {
  console.warn(`test/gpu skipped: no NVIDIA GPU here (${cudaUnavailableReason() || '/dev/nvidiactl missing'})`);
}
const GIB = Number(process.env.KYBERNATE_GPU_GIB ?? 2);

(gpu ? describe : describe.skip)('GPU checkpoint and restore on a real device', () => {
  let k: KybernateClient;
  let agent: Agent;
  beforeAll(async () => {
    k = await client();
    agent = await Agent.start({ node: 'gpu-0' });
  }, 120000);
  afterAll(async () => {
    await agent?.stop();
    await k?.close();
  });

  test(`a PyTorch process with ${GIB} GiB in VRAM survives checkpoint -> S3 -> restore`, async () => {
    const inv = (await k.node('gpu-0')).inventory!;
    expect(inv.vramSource).toBe('measured');
    const w = await k.runWorkload({
      node: 'gpu-0',
      jobId: 'torch',
      command: ['python3', path.join(REPO_ROOT, 'deploy', 'workloads', 'torch_victim.py'), String(GIB)],
    });
    await until('torch ticking', () => output(w.logFile).some((l) => l.startsWith('tick 2 sum_ok=True')), 120000);
    const { request } = await k.startCheckpoint({
      target: 'torch',
      node: 'gpu-0',
      checkpointId: 'torch-ck',
      vramBytes: Math.ceil(GIB * 1.2 * 1024 ** 3),
    });
    const ck = await k.checkpointResult(request.checkpointId);
    expect(ck.phase).toBe('Durable');
    expect(ck.history.find((h) => h.phase === 'DumpingVram')?.outcome).toBe('ok');
    await until('original stopped', () => !alive(w.pid), 30000);
    const lastBefore = output(w.logFile).filter((l) => l.startsWith('tick ')).length;
    // Restore from S3, not from the local copy: drop it first.
    fs.rmSync(path.join(agent.dataDir, 'checkpoints', 'torch-ck'), { recursive: true, force: true });
    const r = await k.startRestore({ checkpointId: 'torch-ck', node: 'gpu-0' });
    const rs = await k.restoreResult(r.workflowId);
    expect(rs.phase).toBe('Running');
    expect(rs.source).toBe('s3');
    await until(
      'ticks after restore',
      () => output(w.logFile).filter((l) => l.startsWith('tick ')).length > lastBefore + 4,
      60000,
    );
    const after = output(w.logFile)
      .filter((l) => l.startsWith('tick '))
      .slice(lastBefore);
    expect(after.every((l) => l.includes('sum_ok=True'))).toBe(true);
    process.kill(rs.pid!, 'SIGKILL');
  }, 600000);
});
