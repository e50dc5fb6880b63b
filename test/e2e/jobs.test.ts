import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { GetObjectCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { WorkflowFailedError, WorkflowNotFoundError } from '@temporalio/client';
import { makeS3Client } from '../../activities/s3-client';
import type { KybernateClient } from '../../clients/api';
import { configFromStack } from '../../deploy/local/stack';
import { jobWorkflowId, type JobState, type JobStatus } from '../../common/job';
import { checkpointWorkflowId, CONTROL_QUEUE, restoreWorkflowId } from '../../common/queues';
import { checkpoint as checkpointWorkflow } from '../../workflows/checkpoint';
import { migrate as migrateWorkflow } from '../../workflows/migrate';
import { restore as restoreWorkflow } from '../../workflows/restore';
import { recordHistory } from '../support/histories';
import { Agent, client, jobProcesses, othersNotPlaceable, PATTERN, PYTHON, stack, until } from '../support/stack';

/**
 * The job lifecycle on the real stack, driven through the CLI as an operator drives it: real processes under
 * the shim and real cgroups on the node, logs read back through Temporal and S3, agents killed mid-run.
 */
const CLI = path.resolve(__dirname, '../../dist/clients/cli.js');

interface CliResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[], timeoutMs = 120000): CliResult {
  const r = spawnSync(process.execPath, [CLI, ...args], {
    env: { ...process.env, KYBERNATE_HOME: stack().home },
    encoding: 'utf8',
    timeout: timeoutMs,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

let k: KybernateClient;
let a: Agent;
let b: Agent;
const A = 'job-a';
const B = 'job-b';

async function status(jobId: string): Promise<JobStatus> {
  return k.client.workflow.getHandle(jobWorkflowId(jobId)).query<JobStatus>('status');
}

async function untilState(jobId: string, states: JobState[], timeoutMs = 120000): Promise<JobStatus> {
  let last: JobStatus | null = null;
  try {
    return await until(
      `job ${jobId} in ${states.join('|')}`,
      async () => {
        last = await status(jobId);
        return states.includes(last.state) ? last : null;
      },
      timeoutMs,
      300,
    );
  } catch (e) {
    // What the job was doing instead: its state, reason and newest events.
    const s = last as JobStatus | null;
    throw new Error(
      `${(e as Error).message}; last seen ${
        s
          ? `${s.state} (${s.reason ?? '-'}); events: ${s.events
              .slice(-6)
              .map((x) => `${x.type}: ${x.message}`)
              .join(' | ')}`
          : 'nothing'
      }`,
      { cause: e },
    );
  }
}

/** The counter values a PATTERN job printed, across all its runs, in log order. */
function ticks(jobId: string): number[] {
  return cli(['logs', jobId])
    .stdout.split('\n')
    .filter((l) => l.startsWith('tick '))
    .map((l) => Number(l.slice(5)));
}

/** Cancels the job, waits until none of its processes is left and its workflow closed, and records its history. */
async function cancelAndRecord(jobId: string, history: string): Promise<void> {
  const h = k.client.workflow.getHandle(jobWorkflowId(jobId));
  await h.cancel();
  await until('no process of the job', () => jobProcesses(jobId).length === 0, 60000);
  await h.result().catch(() => undefined);
  await recordHistory(history, h);
}

/** The job's workload processes themselves (python running PATTERN), not the tini and shim above them. */
function workloadCopies(jobId: string): number[] {
  return jobProcesses(jobId).filter((pid) => {
    try {
      const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      return path.basename(argv[0]).startsWith('python') && argv.includes(PATTERN);
    } catch {
      return false; // gone meanwhile
    }
  });
}

/** The job's cgroup directories that still exist on this host (v1: one per controller). */
function jobCgroups(node: string, jobId: string): string[] {
  const roots = fs.existsSync('/sys/fs/cgroup/cgroup.controllers')
    ? ['/sys/fs/cgroup']
    : ['memory', 'pids', 'cpu', 'freezer'].map((c) => `/sys/fs/cgroup/${c}`);
  return roots.map((r) => path.join(r, 'kybernate', node, jobId)).filter((d) => fs.existsSync(d));
}

beforeAll(async () => {
  k = await client();
  [a, b] = await Promise.all([
    Agent.start({ node: A, declaredVramBytes: 8 * 2 ** 30 }),
    Agent.start({ node: B, declaredVramBytes: 8 * 2 ** 30 }),
  ]);
}, 180000);
afterAll(async () => {
  await Promise.all([a?.stop(), b?.stop()]);
  await k?.close();
});

describe('jobs on the real stack', () => {
  test('a crashing command: CrashLoopBackOff with growing delays, then Quarantined with diagnostics in S3', async () => {
    const job = 'crasher';
    const r = cli([
      'run',
      job,
      '--node',
      A,
      '--max-restarts',
      '2',
      '--backoff-initial',
      '1s',
      '--backoff-cap',
      '2s',
      '--',
      '/bin/sh',
      '-c',
      'echo out-line; echo err-line >&2; exit 3',
    ]);
    expect(r.status).toBe(0);
    await untilState(job, ['Quarantined'], 120000);
    // Quarantined at once; the diagnostics are stored right after.
    const s = await until(
      'diagnostics stored',
      async () => {
        const x = await status(job);
        return x.diagnostics ? x : null;
      },
      60000,
    );
    expect(s.runs.length).toBe(3);
    expect(s.runs.every((x) => x.exitCode === 3 && x.reason === 'Error')).toBe(true);
    expect(s.restarts).toBe(2);
    expect(s.events.some((e) => e.type === 'BackOff')).toBe(true);
    expect(s.diagnostics).toMatch(/^diagnostics\/crasher\//);
    const s3 = makeS3Client(configFromStack(stack()).s3);
    try {
      const listed = await s3.send(new ListObjectsV2Command({ Bucket: stack().s3.bucket, Prefix: s.diagnostics! }));
      const keys = (listed.Contents ?? []).map((o) => o.Key!);
      expect(keys.some((x) => x.endsWith('log-tail.txt'))).toBe(true);
      expect(keys.some((x) => x.endsWith('summary.json'))).toBe(true);
      expect(keys.some((x) => x.endsWith('node.json'))).toBe(true);
      const tail = await s3.send(
        new GetObjectCommand({ Bucket: stack().s3.bucket, Key: keys.find((x) => x.endsWith('log-tail.txt'))! }),
      );
      const text = await tail.Body!.transformToString();
      expect(text).toContain('out-line');
      expect(text).toContain('err-line');
    } finally {
      s3.destroy();
    }
    // A never-ending workflow: its history so far (Quarantined, waiting for a release) must replay too.
    await recordHistory('job-quarantined', k.client.workflow.getHandle(jobWorkflowId(job)));
    const jobs = cli(['jobs']);
    expect(jobs.stdout).toMatch(/NAME\s+STATUS\s+RESTARTS\s+NODE\s+AGE/);
    expect(jobs.stdout).toMatch(/crasher\s+Quarantined\s+2\s+job-a/);
    const d = cli(['describe', 'job', job]);
    expect(d.status).toBe(0);
    expect(d.stdout).toContain('Quarantined');
    expect(d.stdout.match(/exit code 3/g)?.length ?? 0).toBeGreaterThanOrEqual(3);
    // The logs of each run: stdout to stdout, stderr to stderr.
    const logs = cli(['logs', job, '--previous']);
    expect(logs.stdout).toContain('out-line');
    expect(logs.stderr).toContain('err-line');
  });

  test('a command that does not exist is StartFailure, and nothing is left running', async () => {
    const job = 'notfound';
    expect(cli(['run', job, '--node', A, '--', '/no/such/program']).status).toBe(0);
    const s = await untilState(job, ['StartFailure']);
    expect(s.reason).toMatch(/no\/such\/program/);
    expect(jobProcesses(job)).toEqual([]);
  });

  test('a hanging command hits its timeout and leaves no process and no cgroup behind', async () => {
    const job = 'hanger';
    // The command forks a child that leaves the process group (setsid): only the cgroup still finds it.
    expect(
      cli([
        'run',
        job,
        '--node',
        A,
        '--timeout',
        '3s',
        '--memory',
        '256MiB',
        '--',
        '/bin/sh',
        '-c',
        'setsid sleep 1000 & sleep 1000',
      ]).status,
    ).toBe(0);
    await untilState(job, ['Running']);
    await until('both sleeps', () => jobProcesses(job).length >= 3, 20000);
    const s = await untilState(job, ['TimedOut'], 60000);
    expect(s.runs[0].reason).toBe('TimedOut');
    await recordHistory('job-timed-out', k.client.workflow.getHandle(jobWorkflowId(job)));
    await until('no process of the job', () => jobProcesses(job).length === 0, 20000);
    expect(jobCgroups(A, job)).toEqual([]);
  });

  test('a command over its memory limit is OOMKilled', async () => {
    const job = 'hog';
    expect(
      cli([
        'run',
        job,
        '--node',
        A,
        '--memory',
        '64MiB',
        '--restart-policy',
        'Never',
        '--',
        PYTHON,
        '-c',
        'import time\nb = bytearray(512 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\ntime.sleep(60)',
      ]).status,
    ).toBe(0);
    const s = await untilState(job, ['OOMKilled'], 60000);
    expect(s.runs[0].reason).toBe('OOMKilled');
    await recordHistory('job-oomkilled', k.client.workflow.getHandle(jobWorkflowId(job)));
    expect(jobCgroups(A, job)).toEqual([]);
  });

  test('a fork bomb is stopped by its pids limit', async () => {
    const job = 'forkbomb';
    // Forks until fork fails, then exits non-zero: the limit, not the machine, ends it.
    const bomb =
      'import os, sys, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n            time.sleep(30); os._exit(0)\n        n += 1\nexcept OSError as e:\n    print(f"fork failed after {n}: {e}", flush=True); sys.exit(7)';
    expect(
      cli(['run', job, '--node', A, '--pids', '32', '--restart-policy', 'Never', '--', PYTHON, '-c', bomb]).status,
    ).toBe(0);
    const s = await untilState(job, ['Failed'], 60000);
    expect(s.runs[0].exitCode).toBe(7);
    const logs = cli(['logs', job]);
    expect(logs.stdout).toMatch(/fork failed after (\d+)/);
    expect(Number(/fork failed after (\d+)/.exec(logs.stdout)![1])).toBeLessThan(32);
    await until('no process of the job', () => jobProcesses(job).length === 0, 20000);
  });

  test('the agent is SIGKILLed mid-run: the job carries on without a restart and logs -f misses nothing', async () => {
    const job = 'survivor';
    const counter = 'import time\nfor i in range(1, 100000):\n    print(f"line {i}", flush=True)\n    time.sleep(0.05)';
    expect(cli(['run', job, '--node', A, '--', PYTHON, '-c', counter]).status).toBe(0);
    await untilState(job, ['Running']);
    const follower = spawn(process.execPath, [CLI, 'logs', job, '-f'], {
      env: { ...process.env, KYBERNATE_HOME: stack().home },
    });
    let followed = '';
    follower.stdout.on('data', (d: Buffer) => (followed += d.toString()));
    try {
      await until('some lines followed', () => followed.split('\n').length > 20, 30000);
      a.kill9();
      await new Promise((r) => setTimeout(r, 3000));
      await a.restart();
      const before = followed.split('\n').length;
      await until('lines after the agent came back', () => followed.split('\n').length > before + 40, 60000);
      const s = await status(job);
      expect(s.state).toBe('Running');
      expect(s.restarts).toBe(0);
      expect(s.runs.length).toBe(1);
    } finally {
      follower.kill('SIGINT');
    }
    const lines = followed
      .split('\n')
      .filter((l) => l.startsWith('line '))
      .map((l) => Number(l.slice(5)));
    // In order, from 1, none lost, none doubled.
    expect(lines).toEqual(lines.map((_, i) => i + 1));
    // Cancelled as an operator does it: the run is stopped and cleaned up before the command returns.
    const c = cli(['cancel', job]);
    expect(c.status).toBe(0);
    expect(c.stdout).toMatch(/cancelled \(Failed, Cancelled\)/);
    expect(jobProcesses(job)).toEqual([]);
    expect(jobCgroups(A, job)).toEqual([]);
    await recordHistory('job-agent-killed', k.client.workflow.getHandle(jobWorkflowId(job)));
  });

  test('a preempted job resumes from its checkpoint on another node, its counter carrying on', async () => {
    const job = 'preemptee';
    // Not pinned: placed by VRAM (6 GiB of either node's 8), and after the preemption placed again.
    await othersNotPlaceable(k, [A, B]);
    expect(cli(['run', job, '--vram', '6GiB', '--', PYTHON, PATTERN, '32', job]).status).toBe(0);
    const first = await untilState(job, ['Running']);
    const from = first.runs[0].node;
    await until('ticks', async () => ticks(job).length > 10, 30000);
    // A manual checkpoint of a job run by a job workflow leaves it running: stopping it there would end the run
    // behind the workflow's back and count as a crash.
    const c = cli(['checkpoint', job, '--node', from, '--id', `${job}-manual`]);
    expect({ status: c.status, stdout: c.stdout.trim().split('\n').pop() }).toEqual({
      status: 0,
      stdout: expect.stringMatching(
        new RegExp(
          `^${job}-manual: Durable \\(tier s3\\); [0-9.]+ [KMGT]?i?B sent to S3.*; workload frozen [0-9.]+ m?s by the dump$`,
        ),
      ),
    });
    expect(c.stderr).toContain('checkpointed in place');
    // Restored by hand while its job workflow runs it, the job would run twice: refused before anything starts.
    const twice = cli(['restore', `${job}-manual`, '--json']);
    expect({ status: twice.status, error: JSON.parse(twice.stderr).error }).toEqual({
      status: 1,
      error: {
        code: 'JOB_EXISTS',
        message: expect.stringMatching(
          new RegExp(
            `^checkpoint ${job}-manual is of job ${job}, which is still open \\(state Running\\).*kybernate migrate ${job}`,
          ),
        ),
      },
    });
    await expect(k.client.workflow.getHandle(restoreWorkflowId(`${job}-manual`, 1)).describe()).rejects.toBeInstanceOf(
      WorkflowNotFoundError,
    );
    // A restore workflow started directly (as with Temporal's own CLI or UI), past the client's check, refuses too.
    const direct = await k.client.workflow
      .execute(restoreWorkflow, {
        workflowId: restoreWorkflowId(`${job}-manual`, 1),
        taskQueue: CONTROL_QUEUE,
        args: [{ checkpointId: `${job}-manual` }],
      })
      .catch((e: unknown) => e);
    expect(direct).toBeInstanceOf(WorkflowFailedError);
    expect((direct as WorkflowFailedError).cause).toMatchObject({
      type: 'JobOpen',
      message: expect.stringMatching(new RegExp(`^checkpoint ${job}-manual is of job ${job}, which is still open`)),
    });
    await recordHistory('restore-refused-open-job', k.client.workflow.getHandle(restoreWorkflowId(`${job}-manual`, 1)));
    const after = await status(job);
    expect({
      state: after.state,
      runs: after.runs.length,
      pid: after.runs[0].process?.pid,
      restarts: after.restarts,
    }).toEqual({
      state: 'Running',
      runs: 1,
      pid: first.runs[0].process?.pid,
      restarts: 0,
    });
    const p = cli(['preempt', job]);
    expect(p.status).toBe(0);
    expect(p.stdout).toMatch(/requeued/);
    const s = await untilState(job, ['Running'], 180000).then(async () =>
      until(
        'the resumed run',
        async () => {
          const x = await status(job);
          return x.state === 'Running' && x.runs.length === 2 ? x : null;
        },
        180000,
      ),
    );
    const resumed = s.runs[1];
    expect(s.runs[0].reason).toBe('Preempted');
    expect(resumed.fromCheckpoint).toBeTruthy();
    expect(resumed.node).not.toBe(from);
    expect(s.restarts).toBe(0);
    await until(
      'ticks after the resume',
      async () => {
        const t = ticks(job);
        return t.length > 0 && Math.max(...t) > 20 ? t : null;
      },
      60000,
    );
    const counted = ticks(job);
    // One run of the counter across both nodes: it never went back to 1, and it is in order.
    expect(counted.filter((t) => t === 1).length).toBe(1);
    expect(counted).toEqual([...counted].sort((x, y) => x - y));
    const d = cli(['describe', 'job', job]);
    expect(d.stdout).toContain(resumed.fromCheckpoint!);
    await cancelAndRecord(job, 'job-preempted-resumed');
  }, 420000);

  test('kybernate migrate moves a job through its own workflow: one copy, on the node asked for, its counter carrying on', async () => {
    const job = 'migrant';
    await othersNotPlaceable(k, [A, B]);
    expect(cli(['run', job, '--vram', '6GiB', '--', PYTHON, PATTERN, '32', job]).status).toBe(0);
    const first = await untilState(job, ['Running']);
    const from = first.runs[0].node;
    const to = from === A ? B : A;
    await until('ticks', async () => ticks(job).length > 10, 30000);
    // A migrate workflow started directly (Temporal's CLI or UI, or an older client) would move the process behind
    // the job's back, and the job would start it again beside the moved copy: refused before anything is touched.
    const direct = await k.client.workflow
      .execute(migrateWorkflow, {
        workflowId: `migrate/${job}-direct`,
        taskQueue: CONTROL_QUEUE,
        args: [{ jobId: job, from, to, checkpointId: `${job}-direct` }],
      })
      .catch((e: unknown) => e);
    expect(direct).toBeInstanceOf(WorkflowFailedError);
    expect((direct as WorkflowFailedError).cause).toMatchObject({
      type: 'JobOpen',
      message: expect.stringMatching(new RegExp(`^job ${job} is run by its job workflow \\(state Running\\)`)),
    });
    await expect(k.client.workflow.getHandle(`checkpoint/${job}-direct`).describe()).rejects.toBeInstanceOf(
      WorkflowNotFoundError,
    );
    await recordHistory('migrate-refused-open-job', k.client.workflow.getHandle(`migrate/${job}-direct`));
    // So is a checkpoint workflow started directly that would stop the job's process (the CLI leaves it running).
    const stop = await k.client.workflow
      .execute(checkpointWorkflow, {
        workflowId: checkpointWorkflowId(`${job}-stop`),
        taskQueue: CONTROL_QUEUE,
        args: [{ checkpointId: `${job}-stop`, jobId: job, node: from, leaveRunning: false, reason: 'manual' }],
      })
      .catch((e: unknown) => e);
    expect(stop).toBeInstanceOf(WorkflowFailedError);
    expect((stop as WorkflowFailedError).cause).toMatchObject({
      type: 'JobOpen',
      message: expect.stringMatching(new RegExp(`^Pending: job ${job} is run by its job workflow \\(state Running\\)`)),
    });
    await recordHistory(
      'checkpoint-refused-open-job',
      k.client.workflow.getHandle(checkpointWorkflowId(`${job}-stop`)),
    );
    expect((await status(job)).runs).toHaveLength(1);
    expect(workloadCopies(job)).toHaveLength(1);
    // Through the CLI: the job's migrate update checkpoints and stops its run, then resumes it on `to`.
    const m = cli(['migrate', job, '--to', to, '--json'], 240000);
    expect({ status: m.status, stderr: m.stderr }).toEqual({ status: 0, stderr: '' });
    expect(JSON.parse(m.stdout)).toMatchObject({
      jobId: job,
      workflowId: jobWorkflowId(job),
      status: { phase: 'Migrated', from, to, failureReason: null },
    });
    const moved = await status(job);
    expect({
      state: moved.state,
      runs: moved.runs.map((r) => [r.node, r.reason]),
      restarts: moved.restarts,
    }).toEqual({
      state: 'Running',
      runs: [
        [from, 'Migrated'],
        [to, null],
      ],
      restarts: 0,
    });
    expect(moved.runs[1].fromCheckpoint).toBe(JSON.parse(m.stdout).checkpointId);
    // Past the first back-off (10 s), when a job that saw its run end behind its back would have started it again.
    await new Promise((r) => setTimeout(r, 12000));
    expect(workloadCopies(job)).toHaveLength(1);
    expect((await status(job)).runs).toHaveLength(2);
    const counted = ticks(job);
    // One counter across both nodes: never back to 1, in order, and going on after the move.
    expect(counted.filter((t) => t === 1).length).toBe(1);
    expect(counted).toEqual([...counted].sort((x, y) => x - y));
    await cancelAndRecord(job, 'job-migrated');
  }, 420000);

  test('apply with one broken job of three: the two good ones start, the summary names the broken field', async () => {
    const file = path.join(fs.mkdtempSync(path.join(stack().home, 'apply-')), 'jobs.yaml');
    fs.writeFileSync(
      file,
      [
        'jobs:',
        '  - name: applied-one',
        `    node: ${A}`,
        "    command: ['/bin/sleep', '300']",
        '  - name: applied-bad',
        `    node: ${A}`,
        '    memory: 1e30',
        "    command: ['/bin/sleep', '300']",
        '  - name: applied-two',
        `    node: ${B}`,
        "    command: ['/bin/sleep', '300']",
        '',
      ].join('\n'),
    );
    const r = cli(['apply', '-f', file]);
    expect(r.status).toBe(1);
    expect(`${r.stdout}${r.stderr}`).toMatch(/applied-bad.*memory/);
    await untilState('applied-one', ['Running']);
    await untilState('applied-two', ['Running']);
    await expect(k.client.workflow.getHandle(jobWorkflowId('applied-bad')).describe()).rejects.toThrow(
      WorkflowNotFoundError,
    );
    for (const j of ['applied-one', 'applied-two']) await k.client.workflow.getHandle(jobWorkflowId(j)).cancel();
  });
});
