import * as fs from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { cudaApi, cudaStep, cudaUnavailableReason } from '../activities/node/cuda';
import { BIN, REPO_ROOT } from '../deploy/local/paths';
import { listFiles } from '../activities/node/seal';
import { type CheckpointStatus, durableAt } from '../common/checkpoint';
import { benchStack, GiB, run, secs, table, timed, uploadBaseline } from './harness';
import type { KybernateClient } from '../clients/api';

const VICTIM = path.join(REPO_ROOT, 'deploy', 'workloads', 'torch_victim.py');

async function victim(k: KybernateClient, job: string, gib: number): Promise<{ pid: number; logFile: string }> {
  const w = await k.runWorkload({ node: 'gpu-0', jobId: job, command: ['python3', VICTIM, String(gib)] });
  for (let i = 0; i < 1200; i++) {
    if (fs.existsSync(w.logFile) && fs.readFileSync(w.logFile, 'utf8').includes('tick 1 ')) return w;
    await sleep(250);
  }
  throw new Error(`${job} did not start`);
}

/** Seconds between consecutive history records of a checkpoint: the time each phase took. */
function phaseTimes(s: CheckpointStatus, startedAt: number): Record<string, number> {
  const out: Record<string, number> = {};
  let prev = startedAt;
  for (const h of s.history) {
    const at = Date.parse(h.at);
    out[h.phase] = (out[h.phase] ?? 0) + (at - prev);
    prev = at;
  }
  return out;
}

/**
 * For 8 and 32 GiB of VRAM: time per phase, request-to-Durable and request-to-Running, and the ratio of the
 * end-to-end checkpoint time to the slowest single stage measured alone in the same run (CUDA checkpoint
 * alone, CRIU dump alone, and the upload of that dump alone). Target: within 1.2x of the slowest stage.
 */
async function main(): Promise<void> {
  if (!fs.existsSync('/dev/nvidiactl') || !cudaApi()) {
    console.log(
      `bench/gpu: no NVIDIA GPU on this machine (${cudaUnavailableReason() || '/dev/nvidiactl missing'}); nothing measured`,
    );
    return;
  }
  const sizes = (process.env.KYBERNATE_BENCH_VRAM_GIB ?? '8,32').split(',').map(Number);
  const { state, k, close } = await benchStack(['gpu-0']);
  const rows = [
    [
      'VRAM',
      'CUDA ckpt alone',
      'CRIU dump alone',
      'upload alone',
      'Locking',
      'DumpingVram',
      'DumpingProcess',
      'Sealing',
      'Uploading',
      'request->Durable',
      'request->Running',
      'Durable / slowest stage',
    ],
  ];
  try {
    for (const gib of sizes) {
      // Stages alone, on their own process: lock + checkpoint, then criu dump of the checkpointed process.
      const a = await victim(k, `alone-${gib}`, gib);
      await cudaStep('lock', a.pid);
      const [, cudaMs] = await timed(async () => cudaStep('checkpoint', a.pid));
      const dir = path.join(state.home, 'alone', `g${gib}`);
      fs.mkdirSync(dir, { recursive: true });
      const [, criuMs] = await timed(async () =>
        run(BIN.criu, ['dump', '-t', String(a.pid), '-D', dir, '-o', 'dump.log']),
      );
      const files = listFiles(dir).filter((f) => f.endsWith('.img'));
      const [, uploadMs] = await timed(async () => uploadBaseline(state, dir, files, `alone/g${gib}/`));
      fs.rmSync(dir, { recursive: true, force: true });

      await victim(k, `wf-${gib}`, gib);
      const t0 = Date.now();
      const { request } = await k.startCheckpoint({
        target: `wf-${gib}`,
        node: 'gpu-0',
        checkpointId: `gpu-${gib}-ck`,
        vramBytes: Math.ceil(gib * 1.2 * GiB),
      });
      const ck = await k.checkpointResult(request.checkpointId);
      if (ck.phase !== 'Durable') throw new Error(`checkpoint ended ${ck.phase}: ${ck.failureReason}`);
      const durableMs = (durableAt(ck) ?? Date.now()) - t0;
      const p = phaseTimes(ck, t0);
      const t1 = Date.now();
      const r = await k.startRestore({ checkpointId: request.checkpointId, node: 'gpu-0' });
      const rs = await k.restoreResult(r.workflowId);
      const runningMs = Date.now() - t1;
      if (rs.pid) process.kill(rs.pid, 'SIGKILL');
      const slowest = Math.max(cudaMs, criuMs, uploadMs);
      rows.push([
        `${gib} GiB`,
        secs(cudaMs),
        secs(criuMs),
        secs(uploadMs),
        secs(p.Locking ?? 0),
        secs(p.DumpingVram ?? 0),
        secs(p.DumpingProcess ?? 0),
        secs(p.Sealing ?? 0),
        secs(p.Uploading ?? 0),
        secs(durableMs),
        secs(runningMs),
        (durableMs / slowest).toFixed(2),
      ]);
    }
  } finally {
    await close();
  }
  table('GPU checkpoint/restore (target: request->Durable within 1.2x of the slowest stage alone)', rows);
}

main().catch((e: unknown) => {
  console.error(`bench failed: ${(e as Error).stack}`);
  process.exit(1);
});
