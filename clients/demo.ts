import * as fs from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import { makeS3Client } from '../activities/s3-client';
import { durableAt } from '../common/checkpoint';
import { checkpointWorkflowId } from '../common/queues';
import { REPO_ROOT } from '../deploy/local/paths';
import { configFromStack, status as stackStatus, up } from '../deploy/local/stack';
import { startAgent, startControlWorker } from '../deploy/local/workers';
import { KybernateClient } from './api';
import { formatBytes } from './bytes';
import { parseCriLog } from '../common/cri-log';
import type { JobStatus } from '../common/job';
import { jobSpecFromFields } from './job-flags';
import { JobsApi } from './jobs';

const GiB = 1024 ** 3;
const say = (m: string): void => console.log(`\n== ${m}`);

function ticks(log: string): number[] {
  return fs
    .readFileSync(log, 'utf8')
    .split('\n')
    .filter((l) => l.startsWith('tick '))
    .map((l) => Number(l.slice(5)));
}

async function waitFor<T>(what: string, fn: () => T | null | false | undefined, ms = 30000): Promise<T> {
  for (const end = Date.now() + ms; Date.now() < end; await sleep(200)) {
    const v = fn();
    if (v) return v;
  }
  throw new Error(`demo: timed out waiting for ${what}`);
}

/**
 * The whole story on the local stack: a real process with a known memory state starts on node-a, is
 * checkpointed (CRIU), sealed and uploaded to MinIO, restored on node-b, and proves its state survived
 * and that it keeps making progress. The stack stays up afterwards so the Temporal UI can be explored.
 */
async function main(): Promise<void> {
  const mib = Number(process.env.KYBERNATE_DEMO_MIB ?? 256);
  say('starting the local stack (Temporal dev server + UI, MinIO) and workers');
  const state = await up();
  const running = new Set((await stackStatus(state.home)).components.filter((c) => c.healthy).map((c) => c.component));
  if (!running.has('control-worker')) await startControlWorker(state);
  for (const [node, vram] of [
    ['node-a', 16 * GiB],
    ['node-b', 16 * GiB],
  ] as const) {
    if (!running.has(`agent:${node}`)) await startAgent(state, { node, declaredVramBytes: vram });
  }
  const k = await KybernateClient.connect(configFromStack(state));
  try {
    for (const n of ['node-a', 'node-b']) {
      const inv = (await k.node(n)).inventory!;
      console.log(
        `${n}: ${formatBytes(inv.freeVramBytes)} VRAM free (${inv.vramSource}; no GPU on this machine), CRIU ${inv.criuVersion}`,
      );
    }
    const job = `demo-${Date.now().toString(36)}`;
    say(`starting job ${job} on node-a: ${mib} MiB of memory filled with a known pattern, ticking a counter`);
    const w = await k.runWorkload({
      node: 'node-a',
      jobId: job,
      command: ['/usr/bin/python3', path.join(REPO_ROOT, 'deploy', 'workloads', 'pattern.py'), String(mib), job],
    });
    const start = await waitFor('workload start', () =>
      fs
        .readFileSync(w.logFile, 'utf8')
        .split('\n')
        .find((l) => l.startsWith('start ')),
    );
    console.log(`pid ${w.pid}: ${start}`);
    await waitFor('ticks', () => ticks(w.logFile).length >= 5);

    say(
      'checkpoint on node-a: CUDA lock/checkpoint (skipped: no CUDA context), CRIU dump, sha256 + metadata.json, upload',
    );
    const t0 = Date.now();
    const { request } = await k.startCheckpoint({
      target: job,
      node: 'node-a',
      checkpointId: `${job}-ck`,
      vramBytes: 2 * GiB,
    });
    const ck = await k.checkpointResult(request.checkpointId);
    const dumpedAt = Math.max(...ticks(w.logFile));
    const done = Date.now() - t0;
    const durable = durableAt(ck);
    console.log(
      `${ck.checkpointId}: ${ck.phase} on tier ${ck.tier} in ${durable ? durable - t0 : done} ms${durable && done - (durable - t0) > 50 ? ` (workflow done, memory freed, at ${done} ms)` : ''} (counter was at ${dumpedAt})`,
    );
    for (const h of ck.history) console.log(`  ${h.phase.padEnd(15)} ${h.outcome.padEnd(8)} ${h.detail}`);
    const s3 = makeS3Client(configFromStack(state).s3);
    const objects = await s3.send(
      new ListObjectsV2Command({ Bucket: state.s3.bucket, Prefix: `checkpoints/${ck.checkpointId}/` }),
    );
    s3.destroy();
    console.log(
      `S3 s3://${state.s3.bucket}/checkpoints/${ck.checkpointId}/: ${objects.KeyCount} objects, ${formatBytes((objects.Contents ?? []).reduce((s, o) => s + (o.Size ?? 0), 0))}`,
    );

    say(
      'restore on node-b: fetch + verify every checksum, CRIU restore, VRAM check, CUDA restore, unlock, verify progress',
    );
    const t1 = Date.now();
    const r = await k.startRestore({ checkpointId: ck.checkpointId, node: 'node-b' });
    const rs = await k.restoreResult(r.workflowId);
    console.log(`${rs.phase} on ${rs.node} as pid ${rs.pid} (fetched from ${rs.source}) in ${Date.now() - t1} ms`);

    say('proof: the restored process carries on from its counter and its memory pattern is intact');
    await waitFor('ticks after restore', () => Math.max(...ticks(w.logFile)) > dumpedAt + 5);
    process.kill(rs.pid!, 'SIGUSR1');
    const verify = await waitFor('verification', () =>
      fs
        .readFileSync(w.logFile, 'utf8')
        .split('\n')
        .reverse()
        .find((l) => l.startsWith('verify ')),
    );
    console.log(`counter: ${dumpedAt} at the dump -> ${Math.max(...ticks(w.logFile))} now, no restart from 0`);
    console.log(verify);
    if (!verify.includes('pattern_ok=True')) throw new Error('demo: memory pattern did not survive');
    if (ticks(w.logFile).filter((t) => t === 1).length !== 1)
      throw new Error('demo: the workload restarted instead of resuming');

    const jobId = await preemptedJobResumes(k, mib);

    say('where to look');
    console.log(`Temporal UI:     ${state.temporal.uiUrl}/namespaces/${state.temporal.namespace}/workflows`);
    console.log(`checkpoint:      ${k.uiLink(checkpointWorkflowId(ck.checkpointId))}`);
    console.log(`restore:         ${k.uiLink(r.workflowId)}`);
    console.log(`filter in the UI: KybernateJobId="${job}" or "${jobId}"`);
    console.log(
      `the job:         npm run kybernate -- describe job ${jobId}   (logs: npm run kybernate -- logs ${jobId})`,
    );
    console.log(`MinIO console:   ${state.s3.consoleUrl} (user ${state.s3.accessKeyId})`);
    console.log(`logs:            ${state.home}/logs, workload output ${w.logFile}`);
    console.log(`stop everything: npm run kybernate -- down`);
  } finally {
    await k.close();
  }
}

/** The counter a pattern workload printed, from its run's CRI log on this host. */
function jobTicks(logFile: string): number[] {
  if (!fs.existsSync(logFile)) return [];
  return parseCriLog(fs.readFileSync(logFile))
    .lines.filter((l) => l.text.startsWith('tick '))
    .map((l) => Number(l.text.slice(5)));
}

async function untilJob(
  jobs: JobsApi,
  jobId: string,
  what: string,
  ok: (s: JobStatus) => boolean,
  ms = 180000,
): Promise<JobStatus> {
  for (const end = Date.now() + ms; Date.now() < end; await sleep(500)) {
    const s = await jobs.status(jobId);
    if (ok(s)) return s;
  }
  throw new Error(`demo: job ${jobId} did not reach ${what} within ${ms / 1000} s`);
}

/**
 * A job (the operator's unit: limits, restarts, logs) is preempted: the job workflow checkpoints it, requeues
 * it, places it again by VRAM on another node and resumes it from that checkpoint; its counter carries on.
 */
async function preemptedJobResumes(k: KybernateClient, mib: number): Promise<string> {
  const jobs = new JobsApi(k);
  const jobId = `demo-job-${Date.now().toString(36)}`;
  say(`job ${jobId}: 6 GiB of VRAM, at most 1 GiB of memory and 64 pids, placed by the job workflow`);
  await jobs.start(
    jobSpecFromFields({
      jobId,
      vram: '6GiB',
      memory: '1GiB',
      pids: '64',
      cwd: REPO_ROOT,
      command: [
        '/usr/bin/python3',
        path.join(REPO_ROOT, 'deploy', 'workloads', 'pattern.py'),
        String(Math.min(mib, 64)),
        jobId,
      ],
    }),
  );
  const first = await untilJob(jobs, jobId, 'Running', (s) => s.state === 'Running');
  const run1 = first.runs[first.runs.length - 1];
  console.log(
    `Running on ${run1.node} as pid ${run1.process?.pid}; its log (CRI format, stdout and stderr apart): ${run1.logFile}`,
  );
  await waitFor('job ticks', () => jobTicks(run1.logFile!).length >= 10);

  say(`preempt ${jobId}: checkpoint (reason preemption), stop, requeue, place again, resume from the checkpoint`);
  const t0 = Date.now();
  const p = await jobs.preempt(jobId);
  console.log(`${p.outcome}: ${p.message} (checkpoint ${p.checkpointId})`);
  const resumed = await untilJob(
    jobs,
    jobId,
    'Running again from its checkpoint',
    (s) => s.state === 'Running' && s.runs.length > first.runs.length,
  );
  const run2 = resumed.runs[resumed.runs.length - 1];
  console.log(
    `Running again on ${run2.node} as pid ${run2.process?.pid}, from checkpoint ${run2.fromCheckpoint}, ${Date.now() - t0} ms after the preempt`,
  );
  for (const r of resumed.runs)
    console.log(
      `  run ${r.run} on ${r.node}: ${r.reason ?? 'running'}${r.fromCheckpoint ? ` (resumed from ${r.fromCheckpoint})` : ''}`,
    );
  if (!run2.fromCheckpoint) throw new Error('demo: the preempted job started again from scratch');
  if (run2.node === run1.node) console.log(`(resumed on the same node: no other node had room)`);
  const before = Math.max(...jobTicks(run2.logFile!));
  await waitFor('ticks after the resume', () => Math.max(...jobTicks(run2.logFile!)) > before + 5);
  const ticksNow = jobTicks(run2.logFile!);
  console.log(
    `counter: ${before} when preempted -> ${Math.max(...ticksNow)} now; started from 1 only once: ${ticksNow.filter((t) => t === 1).length === 1}`,
  );
  if (ticksNow.filter((t) => t === 1).length !== 1) throw new Error('demo: the job restarted instead of resuming');
  console.log(`restarts counted: ${resumed.restarts} (a preemption is not a crash)`);
  return jobId;
}

main().catch((e: unknown) => {
  console.error(`demo failed: ${(e as Error).message}`);
  process.exit(1);
});
