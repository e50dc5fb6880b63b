import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import type { KybernateClient } from '../../clients/api';
import type { ScheduleJson, SchedulesJson } from '../../clients/json-output';
import type { CheckpointStatus } from '../../common/checkpoint';
import { jobWorkflowId, type JobState, type JobStatus } from '../../common/job';
import { checkpointWorkflowId } from '../../common/queues';
import type { SweepStatus } from '../../common/sweep';
import { recordHistory } from '../support/histories';
import { Agent, client, PATTERN, PYTHON, stack, until } from '../support/stack';

/**
 * Scheduled preemption on the real dev server (the time-skipping test server has no schedules): a schedule
 * created through the CLI, triggered; its sweep preempts the right job, whose checkpoint is Durable and which
 * resumes from it; pause, unpause and delete. The agent's zone is this suite's own and the sweep is limited to
 * it, so other suites' jobs on the shared stack are never candidates (and theirs run at priority 0 anyway).
 */
const CLI = path.resolve(__dirname, '../../dist/clients/cli.js');
const NODE = 'sched-a';
const ZONE = 'sched-zone-e2e';
const SCHEDULE = `sweep-e2e-${process.pid}`;
// Each job pinned to this suite's node: the resume comes back to it at once (no other node of the stack is used).
const JOBS = { low: 'sched-low', mid: 'sched-mid', crit: 'sched-crit' };

function cli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], {
    env: { ...process.env, KYBERNATE_HOME: stack().home },
    encoding: 'utf8',
    timeout: 60000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

let k: KybernateClient;
let agent: Agent;

const status = (jobId: string): Promise<JobStatus> =>
  k.client.workflow.getHandle(jobWorkflowId(jobId)).query<JobStatus>('status');

async function untilRunning(jobId: string, runs: number, timeoutMs = 60000): Promise<JobStatus> {
  return until(
    `job ${jobId} Running its run ${runs}`,
    async () => {
      const s = await status(jobId);
      return s.state === ('Running' satisfies JobState) && s.runs.length === runs ? s : null;
    },
    timeoutMs,
    300,
  );
}

beforeAll(async () => {
  k = await client();
  agent = await Agent.start({ node: NODE, zone: ZONE });
}, 120000);

afterAll(async () => {
  try {
    await k?.schedules.delete(SCHEDULE).catch(() => undefined);
    await Promise.all(
      Object.values(JOBS).map(async (j) => {
        const h = k.client.workflow.getHandle(jobWorkflowId(j));
        await h.cancel().catch(() => undefined);
        await h.result().catch(() => undefined);
      }),
    );
  } finally {
    await agent?.stop();
    await k?.close();
  }
}, 120000);

test('a triggered schedule preempts the least important job of its zone, which resumes from a Durable checkpoint; pause, unpause, delete', async () => {
  // Bad flags: refused naming the flag, nothing created.
  const bad = cli(['preempt', 'schedule', 'create', SCHEDULE, '--cron', '* * *', '--json']);
  expect(bad.status).toBe(2);
  expect(JSON.parse(bad.stderr)).toEqual({
    error: { code: 'INVALID_INPUT', message: expect.stringMatching(/^--cron: /) },
  });

  const run = (job: string, priority: number, tier = 'normal'): void => {
    const r = cli([
      'run',
      job,
      '--node',
      NODE,
      '--priority',
      String(priority),
      '--tier',
      tier,
      '--',
      PYTHON,
      PATTERN,
      '4',
      job,
    ]);
    expect({ job, status: r.status, stderr: r.stderr }).toEqual({ job, status: 0, stderr: '' });
  };
  run(JOBS.low, 9);
  run(JOBS.mid, 5);
  run(JOBS.crit, 10, 'critical');
  const before = await Promise.all(Object.values(JOBS).map((j) => untilRunning(j, 1)));

  // A cron that will not fire during the test: the sweep runs when triggered.
  const created = cli([
    'preempt',
    'schedule',
    'create',
    SCHEDULE,
    '--cron',
    '0 0 1 1 *',
    '--below-priority',
    '4',
    '--max',
    '1',
    '--zone',
    ZONE,
    '--json',
  ]);
  expect({ status: created.status, stderr: created.stderr }).toEqual({ status: 0, stderr: '' });
  const info = (JSON.parse(created.stdout) as ScheduleJson).schedule;
  expect(info).toMatchObject({
    name: SCHEDULE,
    cron: '0 0 1 1 *',
    overlap: 'SKIP',
    paused: false,
    sweep: { schedule: SCHEDULE, belowPriority: 4, max: 1, zone: ZONE },
  });
  expect(cli(['preempt', 'schedule', 'create', SCHEDULE, '--cron', '@daily']).status).toBe(1);

  // Listed (Temporal's schedule list is eventually consistent).
  await until(
    'the schedule listed',
    () => {
      const l = cli(['preempt', 'schedule', 'list', '--json']);
      return (JSON.parse(l.stdout) as SchedulesJson).schedules.some((s) => s.name === SCHEDULE);
    },
    30000,
    1000,
  );

  expect(cli(['preempt', 'schedule', 'pause', SCHEDULE, '--note', 'e2e']).stdout).toMatch(/Paused \(e2e\)/);
  expect((await k.schedules.describe(SCHEDULE)).paused).toBe(true);
  expect(cli(['preempt', 'schedule', 'unpause', SCHEDULE]).stdout).toMatch(/Active/);

  expect(cli(['preempt', 'schedule', 'trigger', SCHEDULE]).status).toBe(0);
  const sweepId = await until(
    'the triggered sweep',
    async () => (await k.schedules.describe(SCHEDULE)).recent[0]?.workflowId,
    30000,
    500,
  );
  const sweep = (await k.client.workflow.getHandle(sweepId).result()) as SweepStatus;
  expect(sweep.victims.map((v) => [v.job.jobId, v.outcome])).toEqual([[JOBS.low, 'requeued']]);
  expect(
    Object.fromEntries(
      sweep.skipped.filter((s) => Object.values(JOBS).includes(s.jobId)).map((s) => [s.jobId, s.reason]),
    ),
  ).toEqual({
    [JOBS.mid]: 'over-max',
    [JOBS.crit]: 'critical',
  });
  const checkpointId = sweep.victims[0].checkpointId as string;
  const cp = await k.client.workflow.getHandle(checkpointWorkflowId(checkpointId)).query<CheckpointStatus>('status');
  expect(cp.phase).toBe('Durable');

  // The victim resumes from that checkpoint; the others ran on untouched.
  const resumed = await untilRunning(JOBS.low, 2, 90000);
  expect(resumed.runs[0].reason).toBe('Preempted');
  expect(resumed.runs[1].fromCheckpoint).toBe(checkpointId);
  for (const [i, j] of [JOBS.mid, JOBS.crit].entries()) {
    const s = await status(j);
    expect({ j, state: s.state, runs: s.runs.length, pid: s.runs[0].process?.pid }).toEqual({
      j,
      state: 'Running',
      runs: 1,
      pid: before[i + 1].runs[0].process?.pid,
    });
  }
  const described = cli(['preempt', 'schedule', 'describe', SCHEDULE]);
  expect(described.stdout).toContain(`${JOBS.low} on ${NODE}: requeued (checkpoint ${checkpointId})`);
  await recordHistory('sweep-preempted', k.client.workflow.getHandle(sweepId));

  expect(cli(['preempt', 'schedule', 'delete', SCHEDULE]).status).toBe(0);
  const gone = cli(['preempt', 'schedule', 'describe', SCHEDULE, '--json']);
  expect(gone.status).toBe(2);
  expect(JSON.parse(gone.stderr)).toEqual({
    error: { code: 'INVALID_INPUT', message: `name: no preemption schedule '${SCHEDULE}'` },
  });
}, 240000);
