import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { WorkflowFailedError } from '@temporalio/client';
import { createControlActivities } from '../../activities/control';
import { makeS3Client } from '../../activities/s3-client';
import { chunkKey } from '../../activities/chunk-store';
import { MetadataSchema } from '../../common/metadata';
import { KybernateClient } from '../../clients/api';
import { REPO_ROOT } from '../../deploy/local/paths';
import { configFromStack, unregisterProcess } from '../../deploy/local/stack';
import { startControlWorker } from '../../deploy/local/workers';
import { procStatFields } from '../../activities/node/process';
import { recordHistory } from '../support/histories';
import { Agent, alive, client, lastTick, output, PATTERN, PYTHON, stack, until } from '../support/stack';

const GiB = 1024 ** 3;
let k: KybernateClient;
const agents: Agent[] = [];

beforeAll(async () => {
  k = await client();
  // r-small's inventory goes stale on purpose: it reports only at start, as an agent cut off from Temporal would.
  agents.push(await Agent.start({ node: 'r-small', declaredVramBytes: 8 * GiB, reportIntervalSeconds: 3600 }));
  agents.push(await Agent.start({ node: 'r-big', declaredVramBytes: 16 * GiB }));
}, 120000);
afterAll(async () => {
  for (const a of agents) await a.stop();
  await k.close();
});

async function workload(node: string, job: string, mib = 32): Promise<{ pid: number; logFile: string }> {
  const info = await k.runWorkload({ node, jobId: job, command: [PYTHON, PATTERN, String(mib), job] });
  await until(`${job} ticking`, () => lastTick(info.logFile) >= 2, 30000);
  return info;
}

async function checkpointed(
  node: string,
  job: string,
  vramGiB: number,
  leaveRunning = false,
): Promise<{ id: string; pid: number; logFile: string; tick: number }> {
  const w = await workload(node, job);
  const { request } = await k.startCheckpoint({
    target: job,
    node,
    checkpointId: `${job}-ck`,
    vramBytes: vramGiB * GiB,
    leaveRunning,
  });
  const s = await k.checkpointResult(request.checkpointId);
  expect(s.phase).toBe('Durable');
  return { id: request.checkpointId, pid: w.pid, logFile: w.logFile, tick: lastTick(w.logFile) };
}

/** Where a restore's (first) fetch put its verified copy, as its history records it. */
async function fetchedInto(workflowId: string): Promise<string> {
  const events = (await k.client.workflow.getHandle(workflowId).fetchHistory()).events ?? [];
  const fetchId = events.find((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'fetch')?.eventId;
  const fetched = events.find(
    (e) => String(e.activityTaskCompletedEventAttributes?.scheduledEventId) === String(fetchId),
  )?.activityTaskCompletedEventAttributes?.result?.payloads?.[0]?.data;
  return (JSON.parse(Buffer.from(fetched ?? []).toString()) as { dir: string }).dir;
}

/** The restored process carries on from its dumped counter and its memory pattern is intact. */
async function provesState(pid: number, logFile: string, dumpedTick: number): Promise<void> {
  await until('progress after restore', () => lastTick(logFile) > dumpedTick + 2, 20000);
  process.kill(pid, 'SIGUSR1');
  // pid 2 of its namespace: tini is pid 1 and forwards the SIGUSR1 to it.
  await until('pattern verified', () => output(logFile).some((l) => l.includes(`pid=2 pattern_ok=True`)), 20000);
  expect(output(logFile).some((l) => l.includes('pattern_ok=False'))).toBe(false);
}

describe('restore, end to end on the real stack', () => {
  test('migration with the CLI: checkpoint on r-small, restore on r-big; state and progress survive', async () => {
    const w = await workload('r-small', 'mig');
    const cli = path.resolve(__dirname, '../../dist/clients/cli.js');
    const out = execFileSync(process.execPath, [cli, 'migrate', 'mig', '--to', 'r-big'], {
      env: { ...process.env, KYBERNATE_HOME: stack().home },
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'], // its progress lines (stderr) stay out of the test's output
    });
    expect(out).toMatch(/mig: Migrated/);
    expect(alive(w.pid)).toBe(false);
    let workflowId = '';
    for await (const wf of k.client.workflow.list({ query: `WorkflowType = 'migrate' AND KybernateJobId = 'mig'` }))
      workflowId = wf.workflowId;
    const m = (await k.client.workflow.getHandle(workflowId).result()) as {
      restores: { node: string; pid: number }[];
      checkpoint: { history: { phase: string; detail: string }[] };
    };
    const r = m.restores[0];
    expect(r.node).toBe('r-big');
    expect(alive(r.pid)).toBe(true);
    await provesState(r.pid, w.logFile, 0);
    await recordHistory('migrate', k.client.workflow.getHandle(workflowId));
    process.kill(r.pid, 'SIGKILL');
  });

  test("from S3 through memory: fetched into r-big's staging directory, restored, the memory freed; state survives", async () => {
    const c = await checkpointed('r-small', 'staged', 0);
    const r = await k.startRestore({ checkpointId: c.id, node: 'r-big' });
    const s = await k.restoreResult(r.workflowId);
    expect(s.phase).toBe('Running');
    expect(s.source).toBe('s3');
    const events = (await k.client.workflow.getHandle(r.workflowId).fetchHistory()).events ?? [];
    const activities = events
      .map((e) => e.activityTaskScheduledEventAttributes?.activityType?.name)
      .filter((name) => name && name !== 'reportNodeOutcome'); // the node's health report comes between
    // Fetched into the restore attempt's own copy in memory (restore/<id>/<n>, attempt 1), not the checkpoint's
    // staging name.
    expect(await fetchedInto(r.workflowId)).toBe(
      path.join(agents[1].stagingDir!, `${c.id}.restore-${c.id}.r${r.workflowId.split('/').at(-1)}.a1`),
    );
    // The staging memory is released once CRIU restored the process, beside the steps after it.
    expect(activities[activities.indexOf('criuRestore') + 1]).toBe('releaseStaging');
    expect(activities.indexOf('releaseStaging')).toBeLessThan(activities.indexOf('verifyRunning'));
    expect(activities.filter((a) => a === 'releaseStaging')).toHaveLength(1);
    expect(activities.slice(-2)).toEqual(['adoptWorkload', 'release']);
    // Its own copy in memory (<id>.restore-<attempt>) is gone, and nothing else of it was left there.
    expect(fs.readdirSync(agents[1].stagingDir!).filter((n) => n.startsWith(c.id))).toEqual([]);
    expect(fs.existsSync(path.join(agents[1].dataDir, 'checkpoints', c.id))).toBe(false);
    await provesState(s.pid!, c.logFile, c.tick);
    await recordHistory('restore-staged', k.client.workflow.getHandle(r.workflowId));
    process.kill(s.pid!, 'SIGKILL');
  });

  test('VRAM out of memory on the first node: cleaned up, excluded, restored on the second; both attempts in the history', async () => {
    // X takes 6 of r-small's 8 GiB; r-small's last report still says 8 GiB free.
    const x = await checkpointed('r-small', 'oom-x', 6);
    const rx = await k.startRestore({ checkpointId: x.id });
    const sx = await k.restoreResult(rx.workflowId);
    expect(sx.node).toBe('r-small');
    // Y also wants 6 GiB and has its local copy on r-small: placement tries r-small first.
    const y = await checkpointed('r-small', 'oom-y', 6);
    const ry = await k.startRestore({ checkpointId: y.id });
    const sy = await k.restoreResult(ry.workflowId);
    expect(sy.phase).toBe('Running');
    expect(sy.node).toBe('r-big');
    expect(sy.attempts.map((a) => `${a.node}:${a.outcome}:${a.phase}`)).toEqual([
      'r-small:failed:RestoringVram',
      'r-big:running:Running',
    ]);
    expect(sy.attempts[0].reason).toMatch(
      /CudaOutOfMemory: node r-small has 2147483648 bytes of VRAM free \(declared\), 6442450944 needed/,
    );
    await provesState(sy.pid!, y.logFile, y.tick);
    await recordHistory('restore-oom-rescheduled', k.client.workflow.getHandle(ry.workflowId));
    for (const p of [sx.pid!, sy.pid!]) process.kill(p, 'SIGKILL');
  });

  test('a corrupted object in S3: the verified nvme copy is used; with no good copy left, it fails as corrupt', async () => {
    const c = await checkpointed('r-small', 'corrupt', 0);
    const s3 = makeS3Client(configFromStack(stack()).s3);
    // The workload's memory is content-addressed chunks (format v2): one chunk of its pages image, from the
    // middle of its buffer (its seed is this job's name, so no other checkpoint names that chunk).
    const md = MetadataSchema.parse(
      JSON.parse(
        await (
          await s3.send(new GetObjectCommand({ Bucket: stack().s3.bucket, Key: `checkpoints/${c.id}/metadata.json` }))
        ).Body!.transformToString(),
      ),
    );
    const pages = md.files.reduce((a, b) => (b.size > a.size ? b : a));
    const key = chunkKey(pages.chunks![pages.chunks!.length >> 1].sha256);
    const orig = Buffer.from(
      await (await s3.send(new GetObjectCommand({ Bucket: stack().s3.bucket, Key: key }))).Body!.transformToByteArray(),
    );
    const bad = Buffer.from(orig);
    bad[bad.length >> 1] ^= 0xff; // one flipped byte, same size
    await s3.send(new PutObjectCommand({ Bucket: stack().s3.bucket, Key: key, Body: bad }));
    s3.destroy();

    const r1 = (await k.client.workflow.execute('restore', {
      workflowId: `restore/${c.id}/1`,
      taskQueue: 'kybernate-control',
      args: [{ checkpointId: c.id, prefer: ['r-big'] }],
    })) as {
      phase: string;
      node: string;
      source: string;
      pid: number;
      attempts: { node: string; phase: string; reason: string }[];
    };
    expect(r1.phase).toBe('Running');
    expect(r1.node).toBe('r-small');
    expect(r1.source).toBe('nvme');
    expect(r1.attempts[0]).toMatchObject({ node: 'r-big', phase: 'Fetching' });
    expect(r1.attempts[0].reason).toMatch(/ChecksumMismatch/);
    expect(fs.existsSync(path.join(agents[1].dataDir, 'checkpoints', c.id))).toBe(false); // nothing unverified kept on r-big
    await recordHistory('restore-corrupt-s3', k.client.workflow.getHandle(`restore/${c.id}/1`));
    process.kill(r1.pid, 'SIGKILL');

    // The nvme copy goes bad too: nothing verifiable is left.
    const local = path.join(agents[0].dataDir, 'checkpoints', c.id, 'images', 'pages-1.img');
    const fd = fs.openSync(local, 'r+');
    fs.writeSync(fd, Buffer.from([0x42]), 0, 1, 4096);
    fs.closeSync(fd);
    const err = await k.client.workflow
      .execute('restore', {
        workflowId: `restore/${c.id}/2`,
        taskQueue: 'kybernate-control',
        args: [{ checkpointId: c.id, prefer: ['r-big'] }],
      })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    expect(String((err as WorkflowFailedError).cause?.message)).toMatch(/is corrupt/);
    const put = makeS3Client(configFromStack(stack()).s3);
    await put.send(new PutObjectCommand({ Bucket: stack().s3.bucket, Key: key, Body: orig }));
    put.destroy();
  });

  test('a restore beside the still-running original on the same host: new PID namespace, no conflict', async () => {
    const c = await checkpointed('r-small', 'beside', 0, true);
    expect(alive(c.pid)).toBe(true);
    const r = await k.startRestore({ checkpointId: c.id, node: 'r-small' });
    const s = await k.restoreResult(r.workflowId);
    expect(s.phase).toBe('Running');
    expect(s.pid).not.toBe(c.pid);
    expect(alive(c.pid) && alive(s.pid!)).toBe(true);
    expect(fs.readFileSync(`/proc/${s.pid}/status`, 'utf8')).toMatch(/NSpid:\s+\d+\s+1\n/);
    for (const p of [c.pid, s.pid!]) process.kill(p, 'SIGKILL');
  });

  test('two restores of one checkpoint on one node at once (two replicas): each from its own copy in memory, both Running, the memory freed', async () => {
    const c = await checkpointed('r-small', 'replicas', 0);
    const rs = await Promise.all([1, 2].map(() => k.startRestore({ checkpointId: c.id, node: 'r-big' })));
    const ss = await Promise.all(rs.map((r) => k.restoreResult(r.workflowId)));
    expect(ss.map((s) => [s.phase, s.source])).toEqual([
      ['Running', 's3'],
      ['Running', 's3'],
    ]);
    const [a, b] = ss.map((s) => s.pid!);
    expect(a).not.toBe(b);
    expect(alive(a) && alive(b)).toBe(true);
    const dirs = await Promise.all(rs.map((r) => fetchedInto(r.workflowId)));
    expect(new Set(dirs).size).toBe(2);
    for (const d of dirs) expect(path.dirname(d)).toBe(agents[1].stagingDir!);
    // Both copies freed once their CRIU restored, neither before the other's: nothing of the checkpoint is left.
    await until(
      'both copies in memory freed',
      () => fs.readdirSync(agents[1].stagingDir!).filter((n) => n.startsWith(c.id)).length === 0,
      10000,
    );
    await until('progress after the restores', () => lastTick(c.logFile) > c.tick + 2, 20000);
    expect(alive(a) && alive(b)).toBe(true);
    for (const p of [a, b]) process.kill(p, 'SIGKILL');
  });

  test('two restores racing for the last free VRAM: only one gets the reservation', async () => {
    const acts = createControlActivities(k.client);
    const cand = [{ node: 'r-race', freeVramBytes: 8 * GiB, vramSource: 'declared' as const }];
    const [a, b] = await Promise.all([
      acts.reserve({ reservationId: 'race-1', bytes: 6 * GiB, candidates: cand }),
      acts.reserve({ reservationId: 'race-2', bytes: 6 * GiB, candidates: cand }),
    ]);
    expect([a, b].filter(Boolean)).toHaveLength(1);
    await acts.release({ reservationId: a ? 'race-1' : 'race-2' });
    expect(await acts.reserve({ reservationId: 'race-3', bytes: 6 * GiB, candidates: cand })).toMatchObject({
      node: 'r-race',
    });
    await acts.release({ reservationId: 'race-3' });
  });

  test('restore CLI rejects bad input naming the field', async () => {
    await expect(k.startRestore({ checkpointId: 'no-such-ck' })).rejects.toThrow(
      /checkpoint: no checkpoint 'no-such-ck'/,
    );
    await expect(k.startRestore({ checkpointId: 'x', node: 'nowhere' })).rejects.toThrow(
      /node: unknown node 'nowhere'/,
    );
    await expect(k.startRestore({ checkpointId: '../x' })).rejects.toThrow(/checkpoint: /);
  });

  test('an idle workload (no CPU while it waits): Running without a probe, and with --ready-exec once its probe passes', async () => {
    const w = await k.runWorkload({ node: 'r-small', jobId: 'idle', command: [PYTHON, IDLE_PIPE] });
    const token = (await until(
      'waiting',
      () =>
        output(w.logFile)
          .map((l) => /^waiting .*token=(\w+)/.exec(l)?.[1])
          .find(Boolean),
      30000,
    ))!;
    const { request } = await k.startCheckpoint({
      target: 'idle',
      node: 'r-small',
      checkpointId: 'idle-ck',
      leaveRunning: false,
    });
    const c = await k.checkpointResult(request.checkpointId);
    expect(`${c.phase} ${c.failureReason ?? ''}`).toBe('Durable ');
    expect(alive(w.pid)).toBe(false);
    const idleFor2s = (pid: number): Promise<boolean> => {
      const cpu = (): number => {
        const f = procStatFields(pid);
        return Number(f[11]) + Number(f[12]);
      };
      const before = cpu();
      return new Promise((res) => setTimeout(() => res(cpu() === before), 2000));
    };

    // No probe: idle, yet Running (verifyProgress failed exactly this as NoProgress).
    const r1 = await k.startRestore({ checkpointId: 'idle-ck', node: 'r-big' });
    const s1 = await k.restoreResult(r1.workflowId);
    expect(s1.phase).toBe('Running');
    expect(await idleFor2s(s1.pid!)).toBe(true);
    process.kill(s1.pid!, 'SIGKILL');

    // With --ready-exec: the probe runs on the node (it leaves a mark) before the restore says Running.
    const mark = path.join(stack().home, 'idle-probe-ran');
    const cli = path.resolve(__dirname, '../../dist/clients/cli.js');
    const out = execFileSync(
      process.execPath,
      [cli, 'restore', 'idle-ck', '--node', 'r-big', '--ready-exec', `test -d /proc/$KYBERNATE_PID && touch ${mark}`],
      // Its progress lines (stderr) stay out of the test's output.
      { env: { ...process.env, KYBERNATE_HOME: stack().home }, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] },
    );
    expect(out).toMatch(/idle-ck: Running on r-big as pid (\d+)/);
    const pid = Number(/as pid (\d+)/.exec(out)![1]);
    expect(fs.existsSync(mark)).toBe(true);
    expect(await idleFor2s(pid)).toBe(true);
    // Its memory came back: the token it drew before the checkpoint.
    process.kill(pid, 'SIGUSR1');
    await until('token printed', () => output(w.logFile).includes(`token=${token}`), 20000);
    let workflowId = '';
    for await (const wf of k.client.workflow.list({
      query: `WorkflowType = 'restore' AND KybernateCheckpointId = 'idle-ck'`,
    })) {
      if (wf.workflowId !== r1.workflowId) workflowId = wf.workflowId;
    }
    const acts = ((await k.client.workflow.getHandle(workflowId).fetchHistory()).events ?? [])
      .map((e) => e.activityTaskScheduledEventAttributes?.activityType?.name)
      .filter(Boolean);
    expect(acts).toContain('verifyRunning');
    expect(acts).not.toContain('verifyProgress');
    await recordHistory('restore-idle-ready', k.client.workflow.getHandle(workflowId));
    process.kill(pid, 'SIGKILL');
  });

  test('the agent killed -9 while CRIU restores, CRIU finishing without it: the restore carries on with that copy, exactly one runs', async () => {
    const home = stack().home;
    const marker = path.join(home, 'criu-post-restore.marker');
    const script = path.join(home, 'criu-hold-restore.sh');
    // A CRIU action script holds the restore (tasks created, not yet resumed) long enough to kill the agent.
    fs.writeFileSync(
      script,
      `#!/bin/sh\nif [ "$CRTOOLS_SCRIPT_ACTION" = post-restore ]; then touch ${marker}; sleep 8; fi\nexit 0\n`,
      { mode: 0o755 },
    );
    const a = await Agent.start({
      node: 'r-crash',
      declaredVramBytes: 8 * GiB,
      env: { KYBERNATE_CRIU_ACTION_SCRIPT: script },
    });
    agents.push(a);
    const c = await checkpointed('r-small', 'agent-kill', 0);
    const r = await k.startRestore({ checkpointId: c.id, node: 'r-crash' });
    await until('CRIU inside the restore', () => fs.existsSync(marker), 60000);
    a.kill9();
    // CRIU goes on without the agent and resumes the workload; the agent comes back before the heartbeat timeout.
    await until('the restored copy runs', () => runningCopies('agent-kill').length === 1, 30000);
    await a.restart();
    const s = await k.restoreResult(r.workflowId);
    expect(s.phase).toBe('Running');
    expect(s.node).toBe('r-crash');
    expect(s.attempts.map((x) => `${x.node}:${x.outcome}`)).toEqual(['r-crash:running']);
    expect(s.recoveries).toHaveLength(1);
    expect(s.recoveries?.[0]).toMatch(
      /r-crash: agent lost during RestoringProcess \(criuRestore: HEARTBEAT timeout\); CRIU restored pid \d+/,
    );
    expect(runningCopies('agent-kill')).toEqual([workloadUnder(s.pid!)]);
    const acts = ((await k.client.workflow.getHandle(r.workflowId).fetchHistory()).events ?? [])
      .map((e) => e.activityTaskScheduledEventAttributes?.activityType?.name)
      .filter(Boolean);
    expect(acts).toContain('inspectRestore');
    await provesState(s.pid!, c.logFile, c.tick);
    await recordHistory('restore-agent-killed', k.client.workflow.getHandle(r.workflowId));
    process.kill(s.pid!, 'SIGKILL');
  }, 180000);

  test('the control worker killed mid-restore and started again: the restore completes with exactly one copy running', async () => {
    const c = await checkpointed('r-small', 'ctl-kill', 0);
    const r = await k.startRestore({ checkpointId: c.id, node: 'r-big' });
    const handle = k.client.workflow.getHandle(r.workflowId);
    const scheduled = async (name: string): Promise<boolean> =>
      ((await handle.fetchHistory()).events ?? []).some(
        (e) => e.activityTaskScheduledEventAttributes?.activityType?.name === name,
      );
    await until('restore reached CRIU', () => scheduled('criuRestore'), 60000, 50);
    const worker = stack().processes.find((p) => p.component === 'control-worker');
    expect(worker).toBeDefined();
    process.kill(worker!.pid, 'SIGKILL');
    unregisterProcess(worker!.pid, stack().home);
    await new Promise((res) => setTimeout(res, 3000)); // the agent finishes CRIU and more with no worker to report to
    await startControlWorker(stack()); // registered in the stack, so the run's teardown stops it
    const s = await k.restoreResult(r.workflowId);
    expect(s.phase).toBe('Running');
    expect(s.node).toBe('r-big');
    expect(s.attempts.map((a) => `${a.node}:${a.outcome}`)).toEqual(['r-big:running']);
    const copies = runningCopies('ctl-kill');
    expect(copies).toEqual([workloadUnder(s.pid!)]);
    await provesState(s.pid!, c.logFile, c.tick);
    process.kill(s.pid!, 'SIGKILL');
  });
});

const IDLE_PIPE = path.join(REPO_ROOT, 'deploy', 'workloads', 'idle_pipe.py');

/** Host pids of live processes running the pattern workload of this job (the seed is the job name). */
/**
 * The workload process under a pid a restore reports: that pid is tini's (pid 1 of the workload's namespace),
 * whose only child is the workload; without an init it is the workload itself.
 */
function workloadUnder(root: number): number {
  const argv0 = fs.readFileSync(`/proc/${root}/cmdline`, 'utf8').split('\0')[0];
  if (path.basename(argv0) !== 'tini') return root;
  return Number(fs.readFileSync(`/proc/${root}/task/${root}/children`, 'utf8').trim().split(' ')[0]);
}

/** Every running copy of a job's pattern workload (the python process itself). */
function runningCopies(job: string): number[] {
  const out: number[] = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const argv = fs.readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0');
      // argv[0] python: the workload itself, not the unshare that started the original
      if (argv[0] === PYTHON && argv.includes(PATTERN) && argv.includes(job) && alive(Number(e))) out.push(Number(e));
    } catch {
      /* exited meanwhile */
    }
  }
  return out;
}
