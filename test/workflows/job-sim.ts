import { ApplicationFailure, Context } from '@temporalio/activity';
import { WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import { finalStatus } from '../../clients/outcome';
import type { UploadResult } from '../../common/checkpoint';
import {
  DEFAULT_BACKOFF,
  FAILED_JOB_STATES,
  type JobSpec,
  type JobStatus,
  jobWorkflowId,
  JOB_STATUS_QUERY,
  type RunExit,
} from '../../common/job';
import { decideEviction, EMPTY_EVICTION_GATE, type EvictionGateState } from '../../common/eviction-gate';
import { evictionRates, tallyZones } from '../../common/health';
import type { ProcessIdentity } from '../../common/journal';
import type { NodeStanding } from '../../common/standing';
import { CONTROL_QUEUE } from '../../common/queues';
import type { Candidate, Reservation } from '../../common/restore';
import type { JobNodeActivities } from '../../workflows/job-activities';
import { type ControlMock, Harness, type NodeMock } from './harness';

/** The job tests' in-memory cluster and helpers (shared by job.test.ts, job-eviction.test.ts and job-migrate.test.ts). */
let current: Harness | null = null;
/** The file's harness (its test environment: env.sleep, env.client). */
export function harness(): Harness {
  if (current === null) throw new Error('setUpJobTests() was not called: no harness');
  return current;
}

/**
 * The hooks of a job test file: one harness for the file, reset after each test, its worker's VM warmed up by one
 * short job (see checkpoint.test.ts: a first test must not race the bundle load).
 *
 * Each test is retried twice. The Java time-skipping test server strands a run whose workflow task cancels a timer
 * that fired, or an activity that completed, while the task was with the worker: it refuses the completion
 * ("invalid history builder state for action", "ACTIVITY_UNKNOWN for scheduledEventId=N"; temporalio/sdk-java#2606,
 * #3088) and never times the task out or sends it again. These jobs' periodic-checkpoint timers fire in real time
 * while a run's activity holds the clock, so a test can lose that race (seen twice in fresh-clone runs, in core's
 * log: temporal-sdk.log in the test home). Such a test then fails at its wait's deadline with the job's state; it
 * is run again, and the failed attempt's errors are printed. A test that fails for a reason of ours fails every
 * attempt.
 */
export function setUpJobTests(warmupJobId: string): void {
  jest.retryTimes(2, { logErrorsBeforeRetry: true });
  beforeAll(async () => {
    current = await Harness.create();
    const sim = new Sim({ 'node-a': 16 });
    sim.script = [{ kind: 'exit', reason: 'Completed', exitCode: 0 }];
    await sim.runJob(spec({ jobId: warmupJobId, restartPolicy: 'OnFailure' })).catch(() => undefined);
  }, 120000);
  afterAll(async () => current?.teardown());
  afterEach(async () => current?.reset());
}

export const GiB = 1024 ** 3;

/** What one run's process does, by run number: exits (after upMs of its own time), or runs until stopped. */
export type Behaviour =
  | { kind: 'exit'; reason: RunExit['reason']; exitCode: number | null; signal?: string; upMs?: number }
  | { kind: 'wait' }
  /** The agent dies during the first awaitRunExit (no heartbeat, no reply); the next one sees this exit. */
  | { kind: 'lost'; then: RunExit['reason']; exitCode: number | null };

export type JobNodeMock = NodeMock & Partial<JobNodeActivities>;

let jobSeq = 0;
export function spec(over: Partial<JobSpec> = {}): JobSpec {
  return {
    jobId: `job-${++jobSeq}`,
    command: ['/bin/train', '--epochs', '3'],
    vramBytes: 4 * GiB,
    limits: { memoryBytes: GiB },
    priority: 5,
    tier: 'normal',
    restartPolicy: 'OnFailure',
    maxRestarts: 10,
    backoff: DEFAULT_BACKOFF,
    ...over,
  };
}

/**
 * An in-memory cluster for the job workflow: nodes with free VRAM, reservations, processes that run until
 * stopped, checkpoints taken (and restored) through the real checkpoint and restore workflows with their node
 * steps mocked. `calls` records every activity, node-qualified.
 */
export class Sim {
  calls: string[] = [];
  script: Behaviour[] = [];
  /** Run number -> server time (ms) its startRun was scheduled: the gaps are the backoff delays. */
  startedAt = new Map<number, number>();
  /** Pids whose process is gone. */
  stopped = new Set<number>();
  /** Pids whose end their awaitRunExit has not seen yet (gone while out of sight). */
  unseen = new Set<number>();
  private lostOnce = new Set<number>();
  /** Pids that a test ends (exit behaviour for a waiting run). */
  exitNow = new Map<number, RunExit>();
  nextPid = 1000;
  /** What each node's registry says (absent: Ready); 'Gone': no registry runs for it. */
  standing: Record<string, NodeStanding['state']> = {};
  /** Nodes whose agent is dead: a run's awaitRunExit there stops heartbeating (the job loses sight of it). */
  dead = new Set<string>();
  control: ControlMock = {};
  /** The eviction gate's state (the placement workflow's, here in memory). */
  gate: EvictionGateState = EMPTY_EVICTION_GATE;
  node: Record<string, JobNodeMock> = {};

  constructor(readonly free: Record<string, number>) {
    for (const name of Object.keys(free)) this.node[name] = this.nodeMock(name);
  }

  behaviour(run: number): Behaviour {
    return (
      this.script[run - 1] ?? this.script[this.script.length - 1] ?? { kind: 'exit', reason: 'Error', exitCode: 1 }
    );
  }

  controlMock(): ControlMock {
    const calls = this.calls;
    return {
      // Every node can restore every checkpoint here (the compatibility gate has tests of its own).
      placementSurvey: async () => ({
        nodes: Object.keys(this.free).map((node) => ({ node, reason: null })),
        largestGpuBytes: Math.max(...Object.values(this.free)) * GiB,
      }),
      placementCandidates: async ({ bytes, exclude, prefer, only }) =>
        Object.entries(this.free)
          .filter(([n, g]) => g * GiB >= bytes && !exclude.includes(n) && (!only || only === n))
          .map(([node, g]): Candidate => ({ node, freeVramBytes: g * GiB, vramSource: 'declared' }))
          .sort(
            (a, b) =>
              (prefer.includes(b.node) ? 1 : 0) - (prefer.includes(a.node) ? 1 : 0) ||
              b.freeVramBytes - a.freeVramBytes,
          ),
      reserve: async ({ reservationId, bytes, candidates }): Promise<Reservation | null> => {
        const pick = candidates[0];
        if (!pick) return null;
        calls.push(`reserve ${pick.node}`);
        return { reservationId, node: pick.node, bytes };
      },
      release: async () => undefined,
      // Node health reports (tested in health.test.ts) are taken and dropped here.
      reportNodeOutcome: async () => undefined,
      raiseAlert: async (a) => {
        calls.push(`alert ${a.kind} ${a.node}`);
        return `alert/${a.kind}/x`;
      },
      raiseIncident: async (i) => {
        calls.push(`incident ${i.kind} ${i.jobId} ${i.node}`);
        return { posted: false };
      },
      deleteCheckpoint: async ({ checkpointId }) => {
        calls.push(`deleteCheckpoint ${checkpointId}`);
        return { deletedObjects: 3 };
      },
      // The restore's look-up: every checkpoint of these tests was taken on node-a.
      checkpointInfo: async ({ checkpointId }) => ({
        checkpointId,
        jobId: 'job',
        node: 'node-a',
        tier: 's3',
        vramBytes: 4 * GiB,
      }),
      enqueuePromotion: async () => undefined,
      nodeStanding: async ({ node }): Promise<NodeStanding> => {
        const state = (n: string): NodeStanding['state'] => this.standing[n] ?? 'Ready';
        return {
          node,
          state: state(node),
          since: null,
          zone: null,
          zones: tallyZones(
            Object.keys(this.free)
              .filter((n) => state(n) !== 'Gone')
              .map((n) => ({ zone: null, ready: state(n) === 'Ready' })),
          ),
        };
      },
      // The real rule (common/health.ts, tested in test/unit/health.test.ts) over the nodes the job names.
      evictionBudget: async ({ zones }) => evictionRates(zones ?? []),
      // The real gate (common/eviction-gate.ts) at the test server's clock, as the placement workflow holds it.
      askEviction: async (ask) => {
        const r = decideEviction(this.gate, ask, Context.current().info.currentAttemptScheduledTimestampMs);
        this.gate = r.state;
        calls.push(`askEviction ${ask.jobId} ${ask.node} ${r.decision.granted ? 'granted' : 'held'}`);
        return r.decision;
      },
      ...this.control,
    };
  }

  private nodeMock(name: string): JobNodeMock {
    const calls = this.calls;
    const uploaded: UploadResult = {
      bucket: 'b',
      prefix: 'checkpoints/c/',
      bytesSent: 100,
      partsSent: 3,
      partsResumed: 0,
    };
    const rec =
      <T>(what: string, v: T) =>
      async (): Promise<T> => {
        calls.push(`${what} ${name}`);
        return v;
      };
    return {
      startRun: async (i) => {
        calls.push(`startRun ${name} ${i.run}`);
        this.startedAt.set(i.run, Context.current().info.currentAttemptScheduledTimestampMs);
        const pid = this.nextPid++;
        return {
          process: { pid, startTime: 1 },
          logFile: `/data/${name}/workloads/${i.jobId}/runs/${i.run}/log`,
          exitFile: `/data/${name}/workloads/${i.jobId}/runs/${i.run}/exit.json`,
        };
      },
      awaitRunExit: async (i) => this.awaitExit(name, i),
      stopRun: async (i) => {
        calls.push(`stopRun ${name} ${i.run} grace=${i.graceMs}`);
        if (i.process) this.stopped.add(i.process.pid);
        return { signal: i.graceMs > 0 ? ('SIGTERM' as const) : null, killedStragglers: 0 };
      },
      attachRunLimits: async (i) => {
        calls.push(`attachRunLimits ${name} ${i.process.pid}`);
        return { cgroup: ['/sys/fs/cgroup/memory/kybernate/x'] };
      },
      archiveRunLog: async (i) => {
        calls.push(`archiveRunLog ${name} ${i.run}`);
        return { key: `logs/${i.jobId}/${i.run}`, bytes: 10 };
      },
      collectDiagnostics: async (i) => {
        calls.push(`collectDiagnostics ${name} runs=${i.runs.length}`);
        return { prefix: `diagnostics/${i.jobId}/${i.at}/` };
      },
      inspectRun: async (i) => {
        calls.push(`inspectRun ${name} ${i.process.pid}`);
        return { running: !this.stopped.has(i.process.pid) };
      },
      deleteLocalCheckpoint: async (i) => {
        calls.push(`deleteLocalCheckpoint ${name} ${i.checkpointId}`);
        return { deleted: true };
      },
      // The checkpoint workflow's steps (a process without CUDA).
      resolveTarget: async (i) => {
        calls.push(`resolveTarget ${name} ${i.pid}`);
        return { pid: i.pid ?? 0, startTime: 1 };
      },
      cudaLock: rec('cudaLock', { outcome: 'skipped' as const, detail: 'no CUDA context' }),
      criuDump: async (i) => {
        calls.push(`criuDump ${name} ${i.checkpointId}`);
        if (!i.leaveRunning) this.stopped.add(i.pid);
        return { imageBytes: 1000, durationMs: 5, processStopped: !i.leaveRunning };
      },
      seal: rec('seal', { files: 3, totalBytes: 1000, metadataSha256: 'x' }),
      upload: rec('upload', uploaded),
      deleteCheckpointDir: rec('deleteCheckpointDir', { deleted: true }),
      // The restore workflow's steps.
      fetch: async ({ checkpointId }) => {
        calls.push(`fetch ${name} ${checkpointId}`);
        return {
          dir: `/data/${name}/checkpoints/${checkpointId}`,
          bytes: 100,
          source: 's3' as const,
          staged: false,
          jobId: 'job',
          vramBytes: 4 * GiB,
        };
      },
      criuRestore: async ({ checkpointId }) => {
        calls.push(`criuRestore ${name} ${checkpointId}`);
        return { pid: this.nextPid++, startTime: 1 };
      },
      checkVram: rec('checkVram', { freeVramBytes: 16 * GiB }),
      cudaRestore: rec('cudaRestore', { outcome: 'skipped' as const, detail: 'no CUDA context' }),
      cudaUnlock: rec('cudaUnlock', { outcome: 'skipped' as const, detail: 'no CUDA context' }),
      verifyRunning: rec('verifyRunning', {
        state: 'S',
        cuda: 'none',
        probes: 0,
        afterMs: 1000,
        detail: 'no readiness probe declared',
      }),
      adoptWorkload: rec('adoptWorkload', undefined),
      killProcess: rec('killProcess', { killed: true }),
      releaseStaging: rec('releaseStaging', { released: true }),
    };
  }

  /** A run's process: exits as scripted, or runs (heartbeating) until stopped or told to exit. */
  private async awaitExit(
    name: string,
    i: { jobId: string; run: number; process: ProcessIdentity; exitFile: string },
  ): Promise<RunExit> {
    this.calls.push(`awaitRunExit ${name} ${i.run}`);
    const ctx = Context.current();
    const b = this.behaviour(i.run);
    if (b.kind === 'lost') {
      if (!this.lostOnce.has(i.run)) {
        this.lostOnce.add(i.run);
        await ctx.sleep(600_000); // the agent died here: no heartbeat, no reply
      }
      return {
        exitCode: b.exitCode,
        signal: null,
        reason: b.then,
        message: `${b.then} (exit code ${b.exitCode})`,
        endedAt: new Date().toISOString(),
      };
    }
    if (b.kind === 'exit') {
      const endedAt = new Date(
        (this.startedAt.get(i.run) ?? ctx.info.currentAttemptScheduledTimestampMs) + (b.upMs ?? 1000),
      ).toISOString();
      return {
        exitCode: b.exitCode,
        signal: b.signal ?? null,
        reason: b.reason,
        message: `${b.reason}${b.exitCode !== null ? ` (exit code ${b.exitCode})` : ''}`,
        endedAt,
      };
    }
    for (;;) {
      if (this.dead.has(name)) {
        // The agent died: no heartbeat, no reply, until the test brings it back (the server gave up on it by then).
        while (this.dead.has(name)) await ctx.sleep(50);
        throw new Error('this attempt was given up on while the agent was dead');
      }
      const told = this.exitNow.get(i.process.pid);
      if (told) return told;
      if (this.stopped.has(i.process.pid) && !this.unseen.has(i.process.pid)) {
        return {
          exitCode: null,
          signal: 'SIGTERM',
          reason: 'Signaled',
          message: 'stopped',
          endedAt: new Date().toISOString(),
        };
      }
      ctx.heartbeat();
      await ctx.sleep(50);
    }
  }

  private started: WorkflowHandle[] = [];

  async start(s: JobSpec): Promise<WorkflowHandle> {
    const wf = await harness().env.client.workflow.start('job', {
      workflowId: jobWorkflowId(s.jobId),
      taskQueue: CONTROL_QUEUE,
      args: [{ spec: s }],
    });
    this.started.push(wf);
    return wf;
  }

  /**
   * Runs fn while the workers poll. A job a failed test left running is cancelled before the workers stop: its
   * heartbeating run would hold the test server's clock for the tests after it.
   */
  async with<T>(fn: () => Promise<T>): Promise<T> {
    return harness().with(this.controlMock(), this.node, async () => {
      try {
        return await fn();
      } finally {
        this.dead.clear(); // a dead agent's stalled awaitRunExit ends, so the worker can shut down
        this.standing = {}; // every node Ready: a cancelled job's owed kills settle and it closes
        for (const wf of this.started) await cancelled(wf);
      }
    });
  }

  /**
   * The job's final status as a client reads it (finalStatus); a job that ended Failed, OOMKilled, StartFailure
   * or TimedOut is checked to be a FAILED workflow (JobFailed, its status in the details), any other COMPLETED.
   */
  async runJob(s: JobSpec): Promise<JobStatus> {
    return this.with(async () => {
      const wf = await this.start(s);
      const out = await finalStatus('job', wf);
      expect((await wf.describe()).status.name).toBe(FAILED_JOB_STATES.includes(out.state) ? 'FAILED' : 'COMPLETED');
      if (FAILED_JOB_STATES.includes(out.state)) {
        const err = await wf.result().then(
          () => null,
          (e: unknown) => e as WorkflowFailedError,
        );
        const cause = err?.cause as ApplicationFailure | undefined;
        expect(cause?.type).toBe('JobFailed');
        expect(cause?.message).toBe(`job ${out.jobId} ${out.state}: ${out.reason ?? 'no reason recorded'}`);
        expect(cause?.details?.[1]).toEqual(out.events);
      }
      return out;
    });
  }
}

/** The message a rejected update carries (the client wraps the validator's error). */
export async function rejection(p: Promise<unknown>): Promise<string> {
  const err = await p.then(
    () => null,
    (e: unknown) => e as Error & { cause?: Error },
  );
  if (err === null) throw new Error('the update was accepted');
  return `${err.message}: ${err.cause?.message ?? ''}`;
}

export const status = (wf: WorkflowHandle): Promise<JobStatus> => wf.query<JobStatus>(JOB_STATUS_QUERY);

/** Skips server time in steps (never past a heartbeat timeout in one go) until the job's status passes. */
export async function until(
  wf: WorkflowHandle,
  pred: (s: JobStatus) => boolean,
  what: string,
  stepMs = 5000,
  maxSteps = 400,
): Promise<JobStatus> {
  // Also bounded by wall time, under the harness's hang limit: a test that cannot get there fails with the job's
  // state and events rather than as a bare jest timeout.
  const deadline = Date.now() + 240_000;
  for (let i = 0; i < maxSteps && Date.now() < deadline; i++) {
    const s = await status(wf);
    if (pred(s)) return s;
    await harness().env.sleep(stepMs);
  }
  const s = await status(wf);
  // What it waits on (an activity no worker polls holds the test server's clock: real time).
  const pending = ((await wf.describe()).raw.pendingActivities ?? [])
    .map(
      (a) =>
        `${a.activityType?.name} ${a.state} attempt ${a.attempt}${a.lastFailure ? `: ${a.lastFailure.message}` : ''}`,
    )
    .join(', ');
  throw new Error(
    `job never reached: ${what}; it is ${s.state} (${s.reason}); pending: ${pending || 'none'}; events: ${s.events.map((e) => `${e.type}: ${e.message}`).join(' | ')}`,
  );
}

export const delaysFromEvents = (s: JobStatus): number[] =>
  s.events.filter((e) => e.type === 'BackOff').map((e) => Number(/in (\d+) s/.exec(e.message)?.[1]));

export const types = (s: JobStatus): string[] => s.events.map((e) => e.type);
export const crash: Behaviour = { kind: 'exit', reason: 'Error', exitCode: 1 };
export const wait: Behaviour = { kind: 'wait' };
/** Real time for runs that wait: the test server does not skip time while an activity runs. */
export const FAST = 400;

export async function finish(wf: WorkflowHandle): Promise<JobStatus> {
  await cancelled(wf);
  return status(wf);
}

/**
 * Cancels a job at the end of a test and waits for it to close, at most `ms`; then terminates it. The Java test
 * server can refuse the workflow task that answers a cancel ("ACTIVITY_UNKNOWN for scheduledEventId=N" when an
 * activity was scheduled in the same instant) and never retries it: seen in temporal-sdk.log of a run where a
 * job's cleanup waited forever, and most likely the CI run whose critical-tier test hit the 300 s limit.
 */
export async function cancelled(wf: WorkflowHandle, ms = 60_000): Promise<void> {
  await wf.cancel().catch(() => undefined);
  let timer: NodeJS.Timeout | undefined;
  const closed = await Promise.race([
    wf.result().then(
      () => true,
      () => true,
    ),
    new Promise<boolean>((r) => (timer = setTimeout(() => r(false), ms))),
  ]);
  clearTimeout(timer);
  if (!closed) await wf.terminate('cancel never completed on the test server').catch(() => undefined);
}
