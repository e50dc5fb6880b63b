import {
  ActivityFailure,
  allHandlersFinished,
  ApplicationFailure,
  CancellationScope,
  ChildWorkflowCancellationType,
  condition,
  continueAsNew,
  defineQuery,
  defineSignal,
  defineUpdate,
  executeChild,
  isCancellation,
  log,
  ParentClosePolicy,
  patched,
  proxyActivities,
  setCurrentDetails,
  setHandler,
  sleep,
  upsertSearchAttributes,
  uuid4,
  workflowInfo,
} from '@temporalio/workflow';
import type { ControlActivities } from '../activities/control';
import type { NodeActivities } from '../activities/node';
import type { CheckpointStatus } from '../common/checkpoint';
import { ErrorType } from '../common/errors';
import {
  DEFAULT_CRITICAL_EVICT_AFTER_MS,
  DEFAULT_EVICT_AFTER_MS,
  FAILED_JOB_STATES,
  type FenceRecord,
  type JobCheckpointRecord,
  type JobInput,
  type JobState,
  type JobStatus,
  type MigrateJobRequest,
  JOB_MIGRATE_UPDATE,
  JOB_PREEMPT_UPDATE,
  JOB_RELEASE_UPDATE,
  JOB_REQUEUE_SIGNAL,
  JOB_STATUS_QUERY,
  type PreemptResult,
  type RunEndReason,
  type RunExit,
  type RunRecord,
  TERMINAL_JOB_STATES,
} from '../common/job';
import { NO_ZONE, talliesOf } from '../common/health';
import { isSafeId } from '../common/ids';
import type { ProcessIdentity } from '../common/journal';
import { failedWith, isCheckpointStatus, PATCH_FAILED_WORKFLOWS_FAIL, statusFromFailure } from '../common/outcome';
import { checkpointWorkflowId, CONTROL_QUEUE, nodeQueue, restoreWorkflowId } from '../common/queues';
import { SA_JOB, SA_NODE, SA_PHASE } from '../common/search-attributes';
import { checkpoint } from './checkpoint';
import { agentLost, agentUnreachable, describeFailure, failureType } from './failures';
import type { JobNodeActivities } from './job-activities';
import { backoffDelayMs, pushEvent, retentionVictims, specProblem } from './job-policy';
import { restore } from './restore';
import { settleAdmission } from './admission-settle';
import { countJobRestart } from './metrics';

export const jobStatusQuery = defineQuery<JobStatus>(JOB_STATUS_QUERY);
export const preemptUpdate = defineUpdate<PreemptResult, []>(JOB_PREEMPT_UPDATE);
export const migrateUpdate = defineUpdate<PreemptResult, [MigrateJobRequest]>(JOB_MIGRATE_UPDATE);
export const releaseUpdate = defineUpdate<JobStatus, [{ fromCheckpoint?: boolean }]>(JOB_RELEASE_UPDATE);
export const requeueSignal = defineSignal<[{ reason: string; checkpointId: string }]>(JOB_REQUEUE_SIGNAL);

/** Waits for a node with room: 10 s doubling to this cap (never a failure: a job waits like a pending pod). */
const PLACEMENT_RETRY_CAP_MS = 60_000;
/** A node whose agent did not pick up startRun within a minute is passed over for this long. */
const UNREACHABLE_NODE_PAUSE_MS = 5 * 60_000;
/** Grace of SIGTERM before SIGKILL when the job is stopped (timeout, cancel), as kubelet's default. */
const STOP_GRACE_MS = 30_000;
/**
 * Histories that lost an agent before fencing asked the node (inspectRun, waiting days); with it the job asks the
 * node's registry, is Unknown while the node is Unhealthy or Left, and is evicted past its grace (old run fenced).
 */
const PATCH_NODE_FENCING = 'job-node-fencing';
/**
 * Histories whose cancel ended the workflow with kills still owed (the fence loops died with it, and a run on an
 * Unknown node was "stopped" by a stopRun that waited days on a dead agent); with it the cancel fences such a run
 * and the workflow stays open until every owed kill is settled (killed, or the node recorded lost).
 */
const PATCH_CANCEL_KEEPS_FENCES = 'job-cancel-keeps-fences';
/**
 * Histories whose jobs asked evictionBudget each on their own (every job of a dark zone restarted at once); with
 * it a job past its grace asks the eviction gate of the placement workflow (askEviction), which grants nodes at
 * one rate per zone shared by every job, critical first.
 */
const PATCH_EVICTION_GATE = 'job-eviction-gate';
/** How often a job that lost its agent asks the node's registry while it waits out the grace. */
const NODE_POLL_MS = 10_000;
/** How often a job held by the eviction budget (its zone, or every zone, dark) asks again. */
const EVICTION_HELD_POLL_MS = 60_000;
/** A fence asks its node's registry at 5 s doubling to this cap: days of a dead node stay a short history. */
const FENCE_POLL_CAP_MS = 5 * 60_000;

/** Where the next run starts from: its checkpoint, or scratch (null). */
interface Start {
  checkpointId: string | null;
  /** Nodes the restore must not use (failedOn, for a critical job's escalation). */
  exclude: string[];
  /**
   * A node to pass over while another has room: the one the job was preempted from (it was preempted to make
   * room there). Unlike exclude, a resume falls back to it when no other node fits.
   */
  avoid?: string;
  /** The node the job is moving to (the migrate update): tried first. */
  prefer?: string;
}

/** How long a resume looks for a node other than the one it was preempted from before it takes that one too. */
const AVOID_PLACEMENT_DEADLINE = '20s';

/** How a Running run stopped being supervised. */
type Ended =
  | { kind: 'exit'; exit: RunExit }
  | { kind: 'timeout' }
  /** Checkpointed and stopped by the preempt update, or by the migrate update (`to`: the node it moves to). */
  | { kind: 'preempted'; checkpointId: string; to?: string }
  /** The process is gone by our own hand or a checkpoint's (not a crash): resume from the last good checkpoint. */
  | { kind: 'gone'; why: string }
  /** Its node stayed Unhealthy past the grace: restarted elsewhere, the old process fenced. */
  | { kind: 'evicted'; why: string }
  | { kind: 'continue' };

const FROM_SCRATCH: Start = { checkpointId: null, exclude: [] };

/** What watching a run came to when it did not see the run end: the node was given up on (why). */
interface Evicted {
  evicted: string;
}

/**
 * A job: Pending (placed by VRAM) -> Running -> (CrashLoopBackOff -> Pending)* -> Succeeded | Failed |
 * OOMKilled | StartFailure | TimedOut, or Quarantined past its restart limit (a critical job restored from its
 * last good checkpoint elsewhere) until released. Preemption checkpoints, requeues and resumes it from that
 * checkpoint. A lost agent is "unknown": the run is watched again when the agent is back, never restarted.
 */
export async function job(input: JobInput): Promise<JobStatus> {
  const spec = input.spec;
  const invalid = specProblem(spec);
  if (invalid) throw ApplicationFailure.nonRetryable(`invalid job spec: ${invalid}`, ErrorType.InvalidInput);
  const jobId = spec.jobId;
  const status: JobStatus = input.carried ?? {
    jobId,
    state: 'Pending',
    reason: null,
    node: null,
    restarts: 0,
    createdAt: new Date().toISOString(),
    nextRetryAt: null,
    runs: [],
    events: [],
    checkpoints: [],
    lastGoodCheckpoint: null,
    failedOn: [],
    diagnostics: null,
    spec,
    backoffStep: 0,
    resumeFrom: null,
  };
  status.spec = spec;
  status.backoffStep ??= 0;
  setHandler(jobStatusQuery, () => status);

  // ---- handlers: asks the main loop answers ----
  /** A preempt update waiting for the main loop; with `to`, a migrate update (preempted, resumed there). */
  let preemptAsk: { result: PreemptResult | null; to?: string } | null = null;
  let releaseAsk: { fromCheckpoint: boolean } | null = null;
  let requeueAsks: { reason: string; checkpointId: string; run: number }[] = [];
  /** The run now started (process on its node) and not yet cleaned up. */
  let active: RunRecord | null = null;
  /** A VRAM reservation held between placement and the run's start. */
  let held: string | null = null;

  setHandler(
    preemptUpdate,
    async () => {
      const ask: { result: PreemptResult | null } = { result: null };
      preemptAsk = ask;
      await condition(() => ask.result !== null);
      return ask.result as unknown as PreemptResult;
    },
    {
      validator: () => {
        if (status.state !== 'Running' || active === null)
          throw new Error(`job ${jobId} is ${status.state}: only a Running job can be preempted`);
        if (preemptAsk !== null) throw new Error(`job ${jobId} is being preempted or migrated already`);
      },
    },
  );
  setHandler(
    migrateUpdate,
    async (req) => {
      const ask: { result: PreemptResult | null; to?: string } = { result: null, to: req.to };
      preemptAsk = ask;
      await condition(() => ask.result !== null);
      return ask.result as unknown as PreemptResult;
    },
    {
      // Refused before anything is touched: the job runs on where it is.
      validator: (req) => {
        const to: unknown = req?.to;
        if (typeof to !== 'string' || !isSafeId(to)) throw new Error(`to: ${JSON.stringify(to)} is not a node name`);
        if (status.state !== 'Running' || active === null)
          throw new Error(`job ${jobId} is ${status.state}: only a Running job can be migrated`);
        if (preemptAsk !== null) throw new Error(`job ${jobId} is being preempted or migrated already`);
        if (to === active.node) throw new Error(`to: job ${jobId} runs on ${to} already`);
        if (spec.node !== undefined)
          throw new Error(`to: job ${jobId} runs only on ${spec.node} (its spec's node): it cannot move to ${to}`);
      },
    },
  );
  setHandler(
    releaseUpdate,
    async (opts) => {
      releaseAsk = { fromCheckpoint: opts?.fromCheckpoint === true };
      await condition(() => releaseAsk === null);
      return status;
    },
    {
      validator: (opts) => {
        if (status.state !== 'Quarantined')
          throw new Error(`job ${jobId} is ${status.state}: only a Quarantined job can be released`);
        if (opts?.fromCheckpoint === true && !status.lastGoodCheckpoint)
          throw new Error(`job ${jobId} has no good checkpoint to release from (fromCheckpoint)`);
      },
    },
  );
  setHandler(requeueSignal, (s) => {
    event('Requeue', `checkpoint ${s.checkpointId} asks to requeue the job: ${s.reason}`);
    requeueAsks.push({ ...s, run: active?.run ?? 0 });
  });

  // ---- activities ----
  const control = proxyActivities<ControlActivities>({
    taskQueue: CONTROL_QUEUE,
    startToCloseTimeout: '30s',
    retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '1m' },
  });
  // Records that must get out (release, incident, alert, retention) wait out a control-plane outage.
  const lasting = proxyActivities<ControlActivities>({
    taskQueue: CONTROL_QUEUE,
    startToCloseTimeout: '1m',
    scheduleToCloseTimeout: '1d',
    retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '5m' },
  });
  // startRun once: a start retried blindly could start a second copy; a lost one is cleaned up by stopRun.
  const starter = (node: string) =>
    proxyActivities<JobNodeActivities>({
      taskQueue: nodeQueue(node),
      scheduleToStartTimeout: '1m',
      startToCloseTimeout: '2m',
      retry: { maximumAttempts: 1 },
    });
  // One attempt per call: a heartbeat timeout is seen here (AgentLost) and answered by asking the node.
  const watcher = (node: string) =>
    proxyActivities<JobNodeActivities>({
      taskQueue: nodeQueue(node),
      startToCloseTimeout: '3650d',
      heartbeatTimeout: '30s',
      retry: { maximumAttempts: 1 },
    });
  // Node work that must happen (cleanup, questions after a loss): waits for the agent however long it is away.
  const patient = (node: string) =>
    proxyActivities<JobNodeActivities & Pick<NodeActivities, 'resolveTarget' | 'deleteLocalCheckpoint'>>({
      taskQueue: nodeQueue(node),
      scheduleToCloseTimeout: '7d',
      startToCloseTimeout: '10m',
      retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '1m' },
    });
  // A question to a node its registry calls Ready: answered within a minute, or the registry is asked again.
  const prompt = (node: string) =>
    proxyActivities<JobNodeActivities>({
      taskQueue: nodeQueue(node),
      scheduleToCloseTimeout: '1m',
      startToCloseTimeout: '30s',
      retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '10s' },
    });
  // Useful but never worth blocking the job for: a log archive, diagnostics.
  const helpful = (node: string) =>
    proxyActivities<JobNodeActivities>({
      taskQueue: nodeQueue(node),
      scheduleToCloseTimeout: '10m',
      startToCloseTimeout: '5m',
      retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '30s' },
    });

  // ---- state ----
  function event(type: string, message: string): void {
    pushEvent(status.events, { at: new Date().toISOString(), type, message });
    log.info(message, { job: jobId, node: status.node, event: type });
  }
  let settled = false;
  function enter(state: JobState, reason: string | null = status.reason): void {
    if (state === 'Running' && !settled) {
      settled = true; // its first Running ends its wait for placement (admission's backlog)
      void settleAdmission('placed'); // the workflow goes on: the signal leaves with its next task
    }
    status.state = state;
    status.reason = reason;
    upsertSearchAttributes([
      { key: SA_PHASE, value: state },
      ...(status.node ? [{ key: SA_NODE, value: status.node }] : []),
    ]);
    showDetails();
  }
  /** The UI's current details: state, node, run, restarts, next retry, why. Not a command: replay-safe. */
  function showDetails(): void {
    const run = status.runs.at(-1);
    const parts = [`phase: ${status.state}`];
    if (status.node && status.state !== 'Pending') parts.push(`on ${status.node}`);
    if (run && status.state === 'Running')
      parts.push(
        `run ${run.run}${run.process ? ` as pid ${run.process.pid}` : ''}${run.fromCheckpoint ? ` (resumed from ${run.fromCheckpoint})` : ''}`,
      );
    if (status.restarts > 0) parts.push(`${status.restarts} restart${status.restarts === 1 ? '' : 's'}`);
    if (status.nextRetryAt) parts.push(`next retry at ${status.nextRetryAt}`);
    if (status.reason) parts.push(status.reason);
    setCurrentDetails(parts.join(', '));
  }
  const deadlineMs = (): number | null =>
    spec.timeoutMs !== undefined && status.runs.length > 0
      ? Date.parse(status.runs[0].startedAt) + spec.timeoutMs
      : null;
  const timedOut = (): boolean => {
    const d = deadlineMs();
    return d !== null && Date.now() >= d;
  };
  /** Sleeps ms, or until the job's timeout if that comes first: true when the job timed out. why: the timer's summary in the UI. */
  const pause = async (ms: number, why: string): Promise<boolean> => {
    const d = deadlineMs();
    if (d !== null && d <= Date.now() + ms) {
      await sleep(Math.max(1, d - Date.now()), { summary: `${why}; the job's timeout comes first` });
      return true;
    }
    await sleep(ms, { summary: why });
    return false;
  };
  const healthyNow = (run: RunRecord | null): boolean =>
    status.backoffStep === 0 || (run !== null && Date.now() - Date.parse(run.startedAt) >= spec.backoff.resetAfterMs);
  const releaseReservation = async (): Promise<void> => {
    if (held === null) return;
    const reservationId = held;
    try {
      await lasting.release.executeWithOptions({ summary: `release VRAM reservation ${reservationId}` }, [
        { reservationId },
      ]);
    } catch (err) {
      if (isCancellation(err)) throw err; // still held: the cancel's cleanup releases it
      event('ReleaseFailed', `reservation ${reservationId} not released: ${describeFailure(err)}`);
    }
    held = null;
  };

  upsertSearchAttributes([
    { key: SA_JOB, value: jobId },
    { key: SA_PHASE, value: status.state },
    ...(status.node ? [{ key: SA_NODE, value: status.node }] : []),
  ]);
  showDetails();

  // ---- Pending: placement and start ----
  const unreachable = new Map<string, number>();
  async function place(runNo: number): Promise<string | null> {
    let failedFor = 0;
    for (let n = 1; ; n++) {
      const now = Date.now();
      const exclude = [...unreachable].filter(([, until]) => until > now).map(([node]) => node);
      for (const n of fencedNodes()) if (!exclude.includes(n)) exclude.push(n);
      const candidates = await control.placementCandidates.executeWithOptions(
        { summary: `nodes with ${spec.vramBytes} bytes of VRAM free` },
        [{ bytes: spec.vramBytes, exclude, prefer: [], ...(spec.node ? { only: spec.node } : {}) }],
      );
      const reservationId = `${workflowInfo().workflowId}/run-${runNo}/${n}`;
      const r =
        candidates.length === 0
          ? null
          : await control.reserve.executeWithOptions({ summary: `reserve ${spec.vramBytes} bytes of VRAM` }, [
              { reservationId, bytes: spec.vramBytes, candidates },
            ]);
      if (r) {
        held = reservationId;
        status.node = r.node;
        event('Scheduled', `run ${runNo} placed on ${r.node}`);
        return r.node;
      }
      if (failedFor === 0) {
        event(
          'FailedScheduling',
          `no node has ${spec.vramBytes} bytes of VRAM free${spec.node ? ` (only ${spec.node})` : ''}${exclude.length ? `; passed over: ${exclude.join(', ')}` : ''}; waiting`,
        );
      }
      const wait = Math.min(10_000 * 2 ** failedFor, PLACEMENT_RETRY_CAP_MS);
      if (await pause(wait, `no node has ${spec.vramBytes} bytes of VRAM free: place again in ${wait / 1000} s`))
        return null;
      failedFor++;
    }
  }

  /** A run from scratch: placed, started. null: the job ended (StartFailure, or timed out while pending). */
  async function startFresh(): Promise<RunRecord | null> {
    for (;;) {
      enter('Pending');
      const runNo = status.runs.length + 1;
      const node = await place(runNo);
      if (node === null) return timeOutIdle();
      try {
        // Shielded from a cancel: a start cut off would leave a process nobody knows of; once it is known (active),
        // the cancel that arrived meanwhile stops it like any run.
        const r = await CancellationScope.nonCancellable(() =>
          starter(node).startRun.executeWithOptions({ summary: `start run ${runNo} of ${jobId} on ${node}` }, [
            {
              jobId,
              run: runNo,
              command: spec.command,
              limits: spec.limits,
              vramBytes: spec.vramBytes,
              ...(spec.cwd !== undefined ? { cwd: spec.cwd } : {}),
              ...(spec.env !== undefined ? { env: spec.env } : {}),
              ...(spec.user !== undefined ? { user: spec.user } : {}),
            },
          ]),
        );
        const run: RunRecord = {
          run: runNo,
          node,
          startedAt: r.startedAt ?? new Date().toISOString(),
          endedAt: null,
          exitCode: null,
          signal: null,
          reason: null,
          message: null,
          fromCheckpoint: null,
          process: r.process,
          logFile: r.logFile,
          exitFile: r.exitFile,
          logObject: null,
        };
        status.runs.push(run);
        active = run;
        // The node counts the run's VRAM from here (StartRunInput.vramBytes), as restore does after Running.
        await releaseReservation();
        event('Started', `run ${runNo} started on ${node} as pid ${r.process.pid}`);
        enter('Running', null);
        return run;
      } catch (err) {
        if (isCancellation(err)) throw err;
        await releaseReservation();
        const why = describeFailure(err);
        if (agentUnreachable(err)) {
          unreachable.set(node, Date.now() + UNREACHABLE_NODE_PAUSE_MS);
          event(
            'NodeUnreachable',
            `the agent of ${node} did not take run ${runNo} within a minute: placing again without it for a while`,
          );
          continue;
        }
        if (agentLost(err)) {
          // Unknown: the command may have started. Whatever it left is stopped (by the job's cgroup) before
          // the run is placed again, so that no second copy runs beside it.
          event(
            'AgentLost',
            `the agent of ${node} was lost while starting run ${runNo}: stopping whatever it started before placing again`,
          );
          await patient(node).stopRun.executeWithOptions({ summary: `clean up the lost start of run ${runNo}` }, [
            { jobId, run: runNo, process: null, graceMs: 0, reason: 'start lost with the agent' },
          ]);
          unreachable.set(node, Date.now() + UNREACHABLE_NODE_PAUSE_MS);
          continue;
        }
        const cause = err instanceof ActivityFailure && err.cause instanceof ApplicationFailure ? err.cause : null;
        // StartFailure, or anything else the node refuses for good (limits it cannot enforce, a bad field).
        if (cause?.nonRetryable || failureType(err) === ErrorType.StartFailure) {
          const message = cause?.message ?? why;
          status.runs.push({
            run: runNo,
            node,
            startedAt: new Date().toISOString(),
            endedAt: new Date().toISOString(),
            exitCode: null,
            signal: null,
            reason: 'StartFailure',
            message,
            fromCheckpoint: null,
            process: null,
            logFile: null,
            exitFile: null,
            logObject: null,
          });
          event('Failed', `run ${runNo} could not start on ${node}: ${message}`);
          enter('StartFailure', message);
          return null;
        }
        event('FailedStart', `run ${runNo} on ${node}: ${why}; placing again`);
        if (await pause(backoffDelayMs(spec.backoff, 0), `run ${runNo} failed to start on ${node}: place again`))
          return timeOutIdle();
      }
    }
  }

  /**
   * A run resumed from a checkpoint by a child restore (placed by VRAM, excluding `exclude`). A checkpoint that
   * cannot be fetched yet is CheckpointPullBackOff and retried; string: it cannot be restored at all (why).
   */
  async function resume(
    given: string[],
    checkpointId: string,
    avoid?: string,
    prefer?: string,
  ): Promise<RunRecord | string | null> {
    let pullK = 0;
    // Never where an evicted run's old copy may still run (its kill is owed): given plus the fenced nodes.
    let exclude = [...given, ...fencedNodes().filter((n) => !given.includes(n))];
    let avoiding = avoid !== undefined && spec.node === undefined && !exclude.includes(avoid);
    for (let attempt = 1; ; attempt++) {
      // Preempted and CheckpointPullBackOff say more than Pending while the restore places and fetches.
      if (status.state !== 'CheckpointPullBackOff' && status.state !== 'Preempted' && status.state !== 'Migrating')
        enter('Pending');
      exclude = [...given, ...fencedNodes().filter((n) => !given.includes(n))];
      const runNo = status.runs.length + 1;
      let restored: Awaited<ReturnType<typeof restore>>;
      try {
        // Shielded from a cancel like startRun: a restore cut off halfway could leave a process nobody watches.
        restored = await CancellationScope.nonCancellable(() =>
          executeChild(restore, {
            workflowId: `${restoreWorkflowId(checkpointId, runNo)}.${attempt}`,
            taskQueue: CONTROL_QUEUE,
            staticSummary: `Restore ${checkpointId} for job ${jobId}${spec.node ? ` on ${spec.node}` : ''} (run ${runNo})`,
            args: [
              {
                checkpointId,
                exclude: avoiding && avoid ? [...exclude, avoid] : exclude,
                ...(prefer ? { prefer: [prefer] } : {}),
                vramBytes: spec.vramBytes,
                placementDeadline: avoiding ? AVOID_PLACEMENT_DEADLINE : '10m',
                ...(spec.node ? { node: spec.node } : {}),
                ...(spec.readiness ? { readiness: spec.readiness } : {}),
              },
            ],
          }),
        );
      } catch (err) {
        if (isCancellation(err)) throw err;
        const cause = err instanceof Error && err.cause ? err.cause : err;
        const type = failureType(cause);
        const why = describeFailure(cause);
        if (type === ErrorType.NoNodeFits && avoiding) {
          avoiding = false;
          event(
            'FailedScheduling',
            `resuming from ${checkpointId}: no node other than ${avoid} has room; ${avoid} may take it back`,
          );
          continue;
        }
        if (type === ErrorType.NoNodeFits) {
          event('FailedScheduling', `resuming from ${checkpointId}: ${why}; waiting`);
          if (await pause(PLACEMENT_RETRY_CAP_MS, `no node has room to resume from ${checkpointId}: try again`))
            return timeOutIdle();
          continue;
        }
        if (!cannotFetchYet(type, why)) return why;
        const delay = backoffDelayMs(spec.backoff, pullK++);
        status.nextRetryAt = new Date(Date.now() + delay).toISOString();
        enter('CheckpointPullBackOff', `checkpoint ${checkpointId} cannot be fetched yet: ${why}`);
        event('BackOff', `Back-off pulling checkpoint ${checkpointId}: retry in ${delay / 1000} s (${why})`);
        if (await pause(delay, `back-off pulling checkpoint ${checkpointId}`)) return timeOutIdle();
        status.nextRetryAt = null;
        continue;
      }
      const node = restored.node ?? '';
      status.node = node;
      const source = status.checkpoints.find((c) => c.checkpointId === checkpointId);
      const from = status.runs.find((r) => r.run === source?.run) ?? null;
      const run: RunRecord = {
        run: runNo,
        node,
        startedAt: new Date().toISOString(),
        endedAt: null,
        exitCode: null,
        signal: null,
        reason: null,
        message: null,
        fromCheckpoint: checkpointId,
        process: null,
        logFile: from?.logFile ?? null,
        exitFile: from?.exitFile ?? null,
        logObject: null,
      };
      status.runs.push(run);
      active = run;
      try {
        // The restore knows the pid; the start time (needed for every later kill) comes from the node.
        const ref = await CancellationScope.nonCancellable(() =>
          patient(node).resolveTarget.executeWithOptions(
            { summary: `identify restored pid ${restored.pid} on ${node}` },
            [{ pid: restored.pid ?? 0, jobId }],
          ),
        );
        if (ref.startTime === undefined)
          throw ApplicationFailure.nonRetryable(
            `pid ${ref.pid} on ${node} reported no start time`,
            ErrorType.NoSuchProcess,
          );
        run.process = { pid: ref.pid, startTime: ref.startTime };
      } catch (err) {
        if (isCancellation(err)) throw err;
        // Gone at once: returned without a process, and ended as a failed run by the caller.
        run.message = `restored from ${checkpointId} but gone at once: ${describeFailure(err)}`;
        return run;
      }
      const process = run.process;
      // Shielded too: stopRun removes the job's cgroup, so the tree must be in it before a cancel stops the run.
      await CancellationScope.nonCancellable(() =>
        patient(node).attachRunLimits.executeWithOptions({ summary: `limits for restored run ${runNo}` }, [
          { jobId, limits: spec.limits, process },
        ]),
      ).catch((err: unknown) =>
        event('LimitsNotAttached', `run ${runNo}: limits not attached after the restore: ${describeFailure(err)}`),
      );
      event('Resumed', `run ${runNo} resumed from checkpoint ${checkpointId} on ${node} as pid ${run.process.pid}`);
      status.nextRetryAt = null;
      enter('Running', null);
      return run;
    }
  }

  /** Timed out with no run on a node: nothing to stop. */
  function timeOutIdle(): null {
    status.nextRetryAt = null;
    event('TimedOut', `job ran past its timeout of ${spec.timeoutMs} ms`);
    enter('TimedOut', `job ran past its timeout of ${spec.timeoutMs} ms`);
    return null;
  }

  // ---- Running ----
  /**
   * Waits for the run's process to end. A lost agent: its node's registry is asked (whileLost); older histories
   * asked the node itself when its agent was back. lost: the run was Unknown when this workflow run began.
   */
  async function watch(run: RunRecord, process: ProcessIdentity, lost: boolean): Promise<RunExit | Evicted> {
    for (let failures = 0; ; failures++) {
      if (lost) {
        lost = false;
        const out = await whileLost(run, process);
        if (out !== null) return out;
      }
      try {
        return await watcher(run.node).awaitRunExit.executeWithOptions(
          { summary: `wait for run ${run.run} (pid ${process.pid}) to end` },
          [{ jobId, run: run.run, process, exitFile: run.exitFile ?? '' }],
        );
      } catch (err) {
        if (isCancellation(err)) throw err;
        if ((agentLost(err) || agentUnreachable(err)) && patched(PATCH_NODE_FENCING)) {
          event(
            'AgentLost',
            `lost sight of run ${run.run} on ${run.node}: ${describeFailure(err)}; asking the node's registry`,
          );
          lost = true;
          continue;
        }
        event(
          'AgentLost',
          `lost sight of run ${run.run} on ${run.node}: ${describeFailure(err)}; asking the node when its agent is back`,
        );
        const seen = await patient(run.node).inspectRun.executeWithOptions(
          { summary: `is run ${run.run} (pid ${process.pid}) still running?` },
          [{ process }],
        );
        event(
          'Reattached',
          seen.running
            ? `run ${run.run} still runs on ${run.node}: watching it again, no restart counted`
            : `run ${run.run} ended while out of sight: reading its exit record`,
        );
        if (!agentLost(err) && !agentUnreachable(err))
          await sleep(Math.min(1000 * 2 ** failures, 60_000), { summary: `watch run ${run.run} again` });
      }
    }
  }

  /**
   * The run's agent is lost: its node's registry says what is known. Ready: the node is asked about the run
   * (null: watch it again, no restart). Unhealthy or Left: the job is Unknown; past the grace, and when the
   * eviction budget of the node's zone allows it, the run is given up (Evicted). Gone: given up at once.
   */
  async function whileLost(run: RunRecord, process: ProcessIdentity): Promise<Evicted | null> {
    const grace =
      spec.evictAfterMs ?? (spec.tier === 'critical' ? DEFAULT_CRITICAL_EVICT_AFTER_MS : DEFAULT_EVICT_AFTER_MS);
    let unknownSince: number | null = null;
    let heldWhy: string | null = null;
    for (;;) {
      const st = await control.nodeStanding.executeWithOptions(
        { summary: `state of node ${run.node} (run ${run.run} out of sight)` },
        [{ node: run.node }],
      );
      if (st.state === 'Ready') {
        try {
          const seen = await prompt(run.node).inspectRun.executeWithOptions(
            { summary: `is run ${run.run} (pid ${process.pid}) still running?` },
            [{ process }],
          );
          event(
            'Reattached',
            seen.running
              ? `run ${run.run} still runs on ${run.node} (Ready): watching it again, no restart counted`
              : `run ${run.run} ended while out of sight: reading its exit record`,
          );
          if (status.state === 'Unknown') enter('Running', null);
          return null;
        } catch (err) {
          if (isCancellation(err)) throw err;
          // Ready by its registry, but its agent does not answer (it died within the node's timeout): ask again.
        }
        await sleep(NODE_POLL_MS, { summary: `ask about node ${run.node} again` });
        continue;
      }
      const now = Date.now();
      if (unknownSince === null) {
        const since = st.since ? Date.parse(st.since) : NaN;
        unknownSince = Number.isFinite(since) ? Math.min(now, since) : now;
      }
      if (status.state !== 'Unknown') {
        const why = `node ${run.node} is ${st.state}: whether run ${run.run} still runs there is unknown`;
        enter('Unknown', why);
        event('NodeUnhealthy', `${why}; restarted elsewhere if it stays so for ${grace / 1000} s`);
      }
      if (st.state === 'Gone') return { evicted: `node ${run.node} is gone (no registry runs for it)` };
      const dueAt = unknownSince + grace;
      if (now < dueAt) {
        await sleep(Math.min(NODE_POLL_MS, dueAt - now), { summary: `grace for node ${run.node}` });
        continue;
      }
      if (patched(PATCH_EVICTION_GATE)) {
        const d = await control.askEviction.executeWithOptions(
          { summary: `may run ${run.run} be evicted from ${run.node}? (eviction gate)` },
          [
            {
              jobId,
              node: run.node,
              zone: st.zone,
              since: st.since,
              critical: spec.tier === 'critical',
              priority: spec.priority,
              zones: talliesOf(st),
            },
          ],
        );
        if (!d.granted) {
          // The reason changes with the queue ("next grant in N s"): recorded when the kind of hold changes only.
          const kind = d.why.replace(/\d+/g, '#');
          if (heldWhy !== kind) {
            heldWhy = kind;
            enter('Unknown', `node ${run.node} is ${st.state}; eviction held: ${d.why}`);
            event('EvictionHeld', `run ${run.run} is not restarted elsewhere yet: ${d.why}; waiting`);
          }
          await sleep(d.retryAfterMs, { summary: `eviction from ${run.node} held: ${d.why}` });
          continue;
        }
        return {
          evicted: `node ${run.node} ${st.state} for ${Math.round((now - unknownSince) / 1000)} s, past the grace of ${grace / 1000} s (${d.why})`,
        };
      }
      const budget = await control.evictionBudget.executeWithOptions(
        { summary: `may run ${run.run} be evicted from ${run.node}?` },
        [{ zones: talliesOf(st) }],
      );
      const zone = budget.zones.find((z) => z.zone === (st.zone ?? NO_ZONE));
      if (zone !== undefined && zone.perMinute === 0) {
        if (heldWhy !== zone.why) {
          heldWhy = zone.why;
          enter('Unknown', `node ${run.node} is ${st.state}; eviction held: ${zone.why}`);
          event('EvictionHeld', `run ${run.run} is not restarted elsewhere yet: ${zone.why}; waiting`);
        }
        await sleep(EVICTION_HELD_POLL_MS, { summary: `eviction from ${run.node} held: ${zone.why}` });
        continue;
      }
      return {
        evicted: `node ${run.node} ${st.state} for ${Math.round((now - unknownSince) / 1000)} s, past the grace of ${grace / 1000} s`,
      };
    }
  }

  // ---- fences: kills owed to evicted runs' old processes ----
  const fencedNodes = (): string[] => [
    ...new Set((status.fences ?? []).filter((f) => f.settled === null).map((f) => f.node)),
  ];
  /** Starts the loop that settles a fence; shielded from a cancel (the kill is owed whatever the job does). */
  function startFence(f: FenceRecord): void {
    void CancellationScope.nonCancellable(() => fence(f)).catch((err: unknown) =>
      log.error('a fence loop failed', { job: jobId, node: f.node, error: describeFailure(err) }),
    );
  }
  /**
   * Waits for the old node to be Ready and kills the old run's process there by identity (stopRun, no grace),
   * or records the node as lost when its registry is gone. A registry or agent that does not answer: again later.
   */
  async function fence(f: FenceRecord): Promise<void> {
    for (let k = 0; ; k++) {
      try {
        const st = await control.nodeStanding.executeWithOptions(
          { summary: `is ${f.node} back, to kill the old copy of run ${f.run}?` },
          [{ node: f.node }],
        );
        if (st.state === 'Gone') {
          settle(
            f,
            'node lost',
            `node ${f.node} is gone (no registry runs for it: removed from the cluster): no agent there to kill run ${f.run}`,
          );
          event('NodeLost', `the kill owed to run ${f.run} on ${f.node} is settled: ${f.detail}`);
          return;
        }
        if (st.state === 'Ready') {
          const r = await prompt(f.node).stopRun.executeWithOptions(
            { summary: `kill the old copy of run ${f.run} (pid ${f.process.pid}) on ${f.node}` },
            [
              {
                jobId,
                run: f.run,
                process: f.process,
                graceMs: 0,
                reason: `run ${f.run} was evicted and restarted elsewhere: never two copies`,
              },
            ],
          );
          settle(
            f,
            'killed',
            r.signal ? `killed (${r.signal}) on ${f.node}` : `already gone on ${f.node}: nothing to kill`,
          );
          event('Fenced', `the old copy of run ${f.run} (pid ${f.process.pid}) on ${f.node}: ${f.detail}`);
          return;
        }
      } catch (err) {
        if (isCancellation(err)) throw err;
        // Unknown (the control plane or the agent did not answer): nothing settled, asked again below.
      }
      await sleep(Math.min(5_000 * 2 ** Math.min(k, 10), FENCE_POLL_CAP_MS), {
        summary: `wait for ${f.node} to kill the old copy of run ${f.run}`,
      });
    }
  }
  /** A run whose node does not answer is given up: its process is owed a kill (fence) when the node is back. */
  function owe(r: RunRecord): FenceRecord {
    const f: FenceRecord = {
      run: r.run,
      node: r.node,
      process: r.process as ProcessIdentity,
      since: new Date().toISOString(),
      settled: null,
      settledAt: null,
      detail: null,
    };
    (status.fences ??= []).push(f);
    startFence(f);
    return f;
  }
  const owedFences = (): FenceRecord[] => (status.fences ?? []).filter((f) => f.settled === null);
  function settle(f: FenceRecord, how: NonNullable<FenceRecord['settled']>, detail: string): void {
    f.settled = how;
    f.settledAt = new Date().toISOString();
    f.detail = detail;
  }

  async function supervise(run: RunRecord): Promise<Ended> {
    const process = run.process as ProcessIdentity;
    const scope = new CancellationScope();
    let exit: RunExit | Evicted | null = null;
    const lost = status.state === 'Unknown';
    void scope
      .run(() => watch(run, process, lost))
      .then(
        (e) => void (exit = e),
        (err: unknown) => {
          if (!isCancellation(err))
            log.error('watching a run failed', { job: jobId, node: run.node, error: describeFailure(err) });
        },
      );
    const every = spec.checkpointEveryMs;
    let nextPeriodic = every !== undefined ? Date.now() + every : null;
    try {
      for (;;) {
        const wakes = [deadlineMs(), nextPeriodic].filter((t): t is number => t !== null);
        const wake = wakes.length ? Math.min(...wakes) : null;
        const ready = (): boolean =>
          exit !== null || preemptAsk !== null || requeueAsks.length > 0 || workflowInfo().continueAsNewSuggested;
        if (!ready()) {
          if (wake === null) await condition(ready);
          else await condition(ready, Math.max(1, wake - Date.now()));
        }
        if (preemptAsk !== null) {
          const ended = await preempt(run, process, preemptAsk);
          preemptAsk = null;
          if (ended) return ended;
          continue;
        }
        if (requeueAsks.length > 0) {
          const asks = requeueAsks.filter((a) => a.run === run.run);
          requeueAsks = [];
          if (asks.length > 0) {
            const seen = await patient(run.node).inspectRun.executeWithOptions(
              { summary: `is run ${run.run} still running after a requeue?` },
              [{ process }],
            );
            if (!seen.running)
              return { kind: 'gone', why: `requeued by checkpoint ${asks[0].checkpointId}: ${asks[0].reason}` };
            event('Requeue', `run ${run.run} still runs on ${run.node}: nothing to requeue`);
          }
          continue;
        }
        // Set by the watch's callback: TypeScript cannot see that, hence the widening.
        const e = exit as RunExit | Evicted | null;
        if (e !== null) return 'evicted' in e ? { kind: 'evicted', why: e.evicted } : { kind: 'exit', exit: e };
        if (timedOut()) return { kind: 'timeout' };
        if (nextPeriodic !== null && Date.now() >= nextPeriodic && status.state === 'Unknown') {
          // No checkpoint of a run on a node that does not answer: the next one when it is watched again.
          nextPeriodic = Date.now() + (every ?? 0);
          continue;
        }
        if (nextPeriodic !== null && Date.now() >= nextPeriodic) {
          await periodic(run, process);
          nextPeriodic = Date.now() + (every ?? 0);
          continue;
        }
        if (workflowInfo().continueAsNewSuggested && allHandlersFinished()) return { kind: 'continue' };
        if (workflowInfo().continueAsNewSuggested) await condition(allHandlersFinished);
      }
    } finally {
      scope.cancel();
    }
  }

  /**
   * The preempt update: a checkpoint that stops the run; requeued from it, or what became of the run if it failed.
   * The migrate update is the same with a destination (`ask.to`): resumed from that checkpoint there.
   */
  async function preempt(
    run: RunRecord,
    process: ProcessIdentity,
    ask: { result: PreemptResult | null; to?: string },
  ): Promise<Ended | null> {
    const to = ask.to;
    const checkpointId = `${jobId}-${to ? 'migrate' : 'preempt'}-${uuid4().slice(0, 8)}`;
    if (to) event('Migrating', `checkpointing run ${run.run} on ${run.node} as ${checkpointId} to move it to ${to}`);
    else event('Preempting', `checkpointing run ${run.run} on ${run.node} as ${checkpointId} for preemption`);
    const taken = await takeCheckpoint(run, process, checkpointId, to ? 'migration' : 'preemption');
    if (taken.phase === 'Durable' || taken.phase === 'PendingUpload') {
      ask.result = {
        checkpointId,
        outcome: 'requeued',
        message: to
          ? `checkpointed (${taken.phase}) and stopped; resumed from ${checkpointId} on ${to}, or another node if ${to} has no room`
          : `checkpointed (${taken.phase}) and stopped; resumed from ${checkpointId} once placed again`,
      };
      return { kind: 'preempted', checkpointId, ...(to ? { to } : {}) };
    }
    const seen = await patient(run.node).inspectRun.executeWithOptions(
      { summary: `is run ${run.run} still running after a failed checkpoint?` },
      [{ process }],
    );
    if (seen.running) {
      event(
        to ? 'MigrationFailed' : 'PreemptionFailed',
        `checkpoint ${checkpointId} failed (${taken.failure}); run ${run.run} runs on`,
      );
      ask.result = {
        checkpointId,
        outcome: 'still-running',
        message: `checkpoint failed cleanly: ${taken.failure}; the job runs on`,
      };
      return null;
    }
    const from = status.lastGoodCheckpoint;
    ask.result = {
      checkpointId,
      outcome: 'restarted-from-last-good',
      message: `checkpoint failed (${taken.failure}) and the process is gone: restarted from ${from ?? 'scratch'}`,
    };
    return {
      kind: 'gone',
      why: `${to ? 'migration' : 'preemption'} checkpoint ${checkpointId} failed and took the process: ${taken.failure}`,
    };
  }

  /** A child checkpoint workflow of the run's process, recorded in the job's checkpoints. */
  async function takeCheckpoint(
    run: RunRecord,
    process: ProcessIdentity,
    checkpointId: string,
    reason: JobCheckpointRecord['reason'],
  ): Promise<{ phase: string; failure: string | null }> {
    const healthy = healthyNow(run);
    const rec: JobCheckpointRecord = {
      checkpointId,
      takenAt: new Date().toISOString(),
      reason,
      phase: 'Pending',
      healthy,
      deleted: false,
      run: run.run,
      node: run.node,
    };
    status.checkpoints.push(rec);
    let out: CheckpointStatus | null;
    let failure: string | null = null;
    try {
      // Abandoned, not cancelled, with the job: a dump cut off by a cancel would leave the process frozen.
      out = await executeChild(checkpoint, {
        workflowId: checkpointWorkflowId(checkpointId),
        taskQueue: CONTROL_QUEUE,
        cancellationType: ChildWorkflowCancellationType.ABANDON,
        parentClosePolicy: ParentClosePolicy.ABANDON,
        staticSummary: `Checkpoint ${jobId} on ${run.node} (${reason}, run ${run.run})`,
        args: [
          {
            checkpointId,
            jobId,
            node: run.node,
            pid: process.pid,
            // A migration stops the run like a preemption, and like it is requeued if its checkpoint fails late.
            leaveRunning: reason === 'periodic',
            reason: reason === 'periodic' ? 'manual' : 'preemption',
            vramBytes: spec.vramBytes,
          },
        ],
      });
    } catch (err) {
      if (isCancellation(err)) throw err;
      // A checkpoint that ended Failed fails its workflow with its status in the details (older ones returned it).
      out = statusFromFailure(err, isCheckpointStatus);
      if (out === null) failure = describeFailure(err instanceof Error && err.cause ? err.cause : err);
    }
    rec.phase = out?.phase ?? 'Failed';
    failure ??= out?.phase === 'Failed' ? (out.failureReason ?? 'failed') : null;
    if (rec.phase === 'Durable' && healthy) status.lastGoodCheckpoint = checkpointId;
    if (rec.phase === 'Durable' || rec.phase === 'PendingUpload')
      event(
        'CheckpointTaken',
        `checkpoint ${checkpointId} of run ${run.run}: ${rec.phase}${healthy ? '' : ' (taken while failing: not a good one)'}`,
      );
    else event('CheckpointFailed', `checkpoint ${checkpointId} of run ${run.run}: ${failure}`);
    return { phase: rec.phase, failure };
  }

  /** A periodic checkpoint (the run goes on), then retention: the oldest beyond keep deleted. */
  async function periodic(run: RunRecord, process: ProcessIdentity): Promise<void> {
    const seq = status.checkpoints.filter((c) => c.reason === 'periodic').length + 1;
    const checkpointId = `${jobId}-p${seq}-${uuid4().slice(0, 8)}`;
    const taken = await takeCheckpoint(run, process, checkpointId, 'periodic');
    if (taken.phase !== 'Durable' || spec.keep === undefined) return;
    const inUse = new Set(
      status.runs.filter((r) => r.endedAt === null && r.fromCheckpoint).map((r) => r.fromCheckpoint as string),
    );
    for (const victim of retentionVictims(status.checkpoints, spec.keep, status.lastGoodCheckpoint, inUse)) {
      try {
        await lasting.deleteCheckpoint.executeWithOptions(
          { summary: `delete checkpoint ${victim.checkpointId} from S3 (keep ${spec.keep})` },
          [{ checkpointId: victim.checkpointId, node: victim.node ?? run.node }],
        );
        await patient(victim.node ?? run.node).deleteLocalCheckpoint.executeWithOptions(
          { summary: `delete checkpoint ${victim.checkpointId} from its node` },
          [{ checkpointId: victim.checkpointId }],
        );
        victim.deleted = true;
        event('CheckpointDeleted', `checkpoint ${victim.checkpointId} deleted (keep ${spec.keep})`);
      } catch (err) {
        if (isCancellation(err)) throw err;
        event('CheckpointDeleteFailed', `checkpoint ${victim.checkpointId} not deleted: ${describeFailure(err)}`);
      }
    }
  }

  /**
   * A run's end: its process tree and cgroup cleaned up by stopRun (idempotent; with a grace when the job
   * stops it), its log archived (recorded when that fails, never blocking), the exit recorded.
   */
  async function finish(
    run: RunRecord,
    exit: { exitCode: number | null; signal: string | null; reason: RunEndReason; message: string; endedAt: string },
    graceMs = 0,
  ): Promise<void> {
    if (graceMs > 0) event('Killing', `stopping run ${run.run} on ${run.node}: ${exit.message}`);
    try {
      await patient(run.node).stopRun.executeWithOptions({ summary: `clean up run ${run.run} (${exit.reason})` }, [
        { jobId, run: run.run, process: run.process, graceMs, reason: exit.message },
      ]);
    } catch (err) {
      if (isCancellation(err)) throw err;
      event('StopFailed', `run ${run.run} on ${run.node} not cleaned up: ${describeFailure(err)}`);
    }
    Object.assign(run, {
      exitCode: exit.exitCode,
      signal: exit.signal,
      reason: exit.reason,
      message: exit.message,
      endedAt: exit.endedAt,
    });
    if (active === run) active = null;
    if (run.logFile) {
      try {
        const a = await helpful(run.node).archiveRunLog.executeWithOptions(
          { summary: `store the log of run ${run.run}` },
          [{ jobId, run: run.run, logFile: run.logFile }],
        );
        run.logObject = a.key;
      } catch (err) {
        if (isCancellation(err)) throw err;
        event('LogArchiveFailed', `log of run ${run.run} not stored: ${describeFailure(err)}`);
      }
    }
  }

  // ---- after a run ----
  /** The exit of a run: done, terminal, escalated, or CrashLoopBackOff and the next start. null: the job ended. */
  async function afterExit(run: RunRecord, exit: RunExit): Promise<Start | 'quarantine' | null> {
    await finish(run, exit);
    const failed = exit.reason !== 'Completed';
    event(
      exit.reason === 'OOMKilled' ? 'OOMKilled' : 'Exited',
      `run ${run.run} on ${run.node}: ${exit.message}${exit.exitCode !== null ? ` (exit code ${exit.exitCode})` : ''}${exit.signal ? ` (${exit.signal})` : ''}`,
    );
    if (Date.parse(exit.endedAt) - Date.parse(run.startedAt) >= spec.backoff.resetAfterMs) status.backoffStep = 0;
    if (!failed && spec.restartPolicy !== 'Always') {
      enter('Succeeded', exit.message);
      return null;
    }
    if (failed && spec.restartPolicy === 'Never') {
      enter(exit.reason === 'OOMKilled' ? 'OOMKilled' : 'Failed', exit.message);
      return null;
    }
    if (status.restarts >= spec.maxRestarts) {
      if (!failed) {
        enter('Succeeded', `${exit.message}; restart limit (${spec.maxRestarts}) reached`);
        return null;
      }
      return escalate(run, exit.message);
    }
    const delay = backoffDelayMs(spec.backoff, status.backoffStep ?? 0);
    status.nextRetryAt = new Date(Date.now() + delay).toISOString();
    enter('CrashLoopBackOff', exit.message);
    event('BackOff', `Back-off restarting run ${run.run}: next start in ${delay / 1000} s`);
    if (await pause(delay, `back-off restarting after run ${run.run}`)) return timeOutIdle();
    status.nextRetryAt = null;
    status.restarts++;
    countJobRestart(exit.reason);
    status.backoffStep = (status.backoffStep ?? 0) + 1;
    return FROM_SCRATCH;
  }

  /** Past the restart limit: quarantined at once, diagnostics, incident, alert; a critical job restored elsewhere. */
  async function escalate(run: RunRecord, error: string): Promise<Start | 'quarantine'> {
    const reason = `restart limit (${spec.maxRestarts}) reached: ${error}`;
    enter('Quarantined', reason);
    event('Quarantined', `${reason}; no more restarts until released`);
    if (!status.failedOn.includes(run.node)) status.failedOn.push(run.node);
    const at = new Date().toISOString();
    try {
      const d = await helpful(run.node).collectDiagnostics.executeWithOptions(
        { summary: `diagnostics of ${jobId} on ${run.node}` },
        [{ jobId, at, error, runs: status.runs, logFile: run.logFile }],
      );
      status.diagnostics = d.prefix;
    } catch (err) {
      if (isCancellation(err)) throw err;
      event('DiagnosticsFailed', `diagnostics not stored: ${describeFailure(err)}`);
    }
    // Not awaited: a webhook down for hours must not hold back a critical job's restore. Each records its own failure.
    void lasting.raiseIncident
      .executeWithOptions({ summary: `incident: ${jobId} quarantined` }, [
        { kind: 'job-quarantined', jobId, node: run.node, message: reason, at, diagnostics: status.diagnostics },
      ])
      .catch((err: unknown) => event('IncidentFailed', `incident not raised: ${describeFailure(err)}`));
    void lasting.raiseAlert
      .executeWithOptions({ summary: `alert: ${jobId} quarantined` }, [
        {
          kind: 'job-quarantined',
          checkpointId: status.lastGoodCheckpoint ?? jobId,
          node: run.node,
          message: `job ${jobId}: ${reason}`,
          raisedAt: at,
        },
      ])
      .catch((err: unknown) => event('AlertFailed', `alert not raised: ${describeFailure(err)}`));
    if (spec.tier !== 'critical') return 'quarantine';
    if (!status.lastGoodCheckpoint) {
      enter('Quarantined', `${reason}; critical, but no good checkpoint to restore from`);
      return 'quarantine';
    }
    event(
      'Restoring',
      `critical job: restoring from its last good checkpoint ${status.lastGoodCheckpoint}, not on ${status.failedOn.join(', ')}`,
    );
    return { checkpointId: status.lastGoodCheckpoint, exclude: [...status.failedOn] };
  }

  // ---- the lifecycle ----
  async function lifecycle(): Promise<JobStatus> {
    let next: Start | 'quarantine' =
      status.state === 'Quarantined' ? 'quarantine' : { checkpointId: status.resumeFrom ?? null, exclude: [] };
    const carriedRun = status.runs.at(-1);
    let run: RunRecord | null =
      (status.state === 'Running' || status.state === 'Unknown') &&
      carriedRun &&
      carriedRun.endedAt === null &&
      carriedRun.process
        ? carriedRun
        : null;
    active = run;
    // Kills still owed from before a continue-as-new go on being settled.
    for (const f of status.fences ?? []) if (f.settled === null) startFence(f);
    for (;;) {
      if (TERMINAL_JOB_STATES.includes(status.state)) return status;
      if (run === null) {
        if (next === 'quarantine') {
          await condition(() => releaseAsk !== null);
          const ask = releaseAsk as unknown as { fromCheckpoint: boolean };
          status.restarts = 0;
          status.backoffStep = 0;
          next = { checkpointId: ask.fromCheckpoint ? status.lastGoodCheckpoint : null, exclude: [] };
          event('Released', `quarantine lifted: starting again from ${next.checkpointId ?? 'scratch'}`);
          enter('Pending', null);
          releaseAsk = null;
        }
        if (workflowInfo().continueAsNewSuggested && allHandlersFinished()) {
          status.resumeFrom = next.checkpointId;
          return continueAsNew<typeof job>({ spec, carried: status });
        }
        status.resumeFrom = null;
        if (next.checkpointId === null) {
          run = await startFresh();
        } else {
          const from = next.checkpointId;
          const r = await resume(next.exclude, from, next.avoid, next.prefer);
          if (typeof r === 'string') {
            if (status.state === 'Quarantined' || next.exclude.length > 0) {
              enter('Quarantined', `${status.reason ?? 'quarantined'}; restore from ${from} failed: ${r}`);
              next = 'quarantine';
              continue;
            }
            // The checkpoint cannot be restored (corrupt, gone): the next best is the last good one, then scratch.
            const fallback =
              status.lastGoodCheckpoint && status.lastGoodCheckpoint !== from ? status.lastGoodCheckpoint : null;
            event('RestoreFailed', `cannot resume from ${from}: ${r}; starting from ${fallback ?? 'scratch'}`);
            next = { checkpointId: fallback, exclude: [] };
            continue;
          }
          run = r;
        }
        if (run === null) return status;
        if (run.process === null) {
          // Resumed but gone at once: a failed run like any other.
          const gone = run;
          run = null;
          const after = await afterExit(gone, {
            exitCode: null,
            signal: null,
            reason: 'Error',
            message: gone.message ?? 'gone after the restore',
            endedAt: new Date().toISOString(),
          });
          if (after === null) return status;
          next = after;
          continue;
        }
      }
      const ended = await supervise(run);
      const r: RunRecord = run;
      run = null;
      switch (ended.kind) {
        case 'continue':
          return continueAsNew<typeof job>({ spec, carried: status });
        case 'timeout':
          await finish(
            r,
            {
              exitCode: null,
              signal: null,
              reason: 'TimedOut',
              message: `job ran past its timeout of ${spec.timeoutMs} ms`,
              endedAt: new Date().toISOString(),
            },
            STOP_GRACE_MS,
          );
          event('TimedOut', `run ${r.run} stopped: job ran past its timeout of ${spec.timeoutMs} ms`);
          enter('TimedOut', `job ran past its timeout of ${spec.timeoutMs} ms`);
          return status;
        case 'preempted':
          if (ended.to) {
            await finish(r, {
              exitCode: null,
              signal: null,
              reason: 'Migrated',
              message: `checkpointed as ${ended.checkpointId} to move to ${ended.to}`,
              endedAt: new Date().toISOString(),
            });
            event('Migrated', `run ${r.run} checkpointed as ${ended.checkpointId} and stopped; resumes on ${ended.to}`);
            enter('Migrating', `moving to ${ended.to}: resumes from ${ended.checkpointId}`);
            next = { checkpointId: ended.checkpointId, exclude: [], avoid: r.node, prefer: ended.to };
            break;
          }
          await finish(r, {
            exitCode: null,
            signal: null,
            reason: 'Preempted',
            message: `checkpointed as ${ended.checkpointId} for preemption`,
            endedAt: new Date().toISOString(),
          });
          event('Preempted', `run ${r.run} checkpointed as ${ended.checkpointId} and stopped; requeued`);
          enter('Preempted', `preempted: resumes from ${ended.checkpointId}`);
          next = { checkpointId: ended.checkpointId, exclude: [], avoid: r.node };
          break;
        case 'gone':
          await finish(r, {
            exitCode: null,
            signal: null,
            reason: 'Preempted',
            message: ended.why,
            endedAt: new Date().toISOString(),
          });
          event(
            'Requeued',
            `run ${r.run}: ${ended.why}; restarting from ${status.lastGoodCheckpoint ?? 'scratch'} (not counted as a restart)`,
          );
          enter('Pending', ended.why);
          next = { checkpointId: status.lastGoodCheckpoint, exclude: [] };
          break;
        case 'evicted': {
          // Not finish(): its node does not answer. The old process is fenced instead: killed when the node is back.
          Object.assign(r, { endedAt: new Date().toISOString(), reason: 'Evicted', message: ended.why });
          if (active === r) active = null;
          owe(r);
          const from = status.lastGoodCheckpoint;
          if (from === null && spec.restartPolicy === 'Never') {
            event('Evicted', `run ${r.run}: ${ended.why}; restart policy Never and no good checkpoint: not restarted`);
            enter('Failed', `evicted: ${ended.why}`);
            return status;
          }
          event(
            'Evicted',
            `run ${r.run}: ${ended.why}; restarting elsewhere from ${from ?? 'scratch'} (not counted as a restart); its old copy is killed on ${r.node} when it is back`,
          );
          enter('Pending', `evicted: ${ended.why}`);
          next = { checkpointId: from, exclude: [] };
          break;
        }
        case 'exit': {
          const after = await afterExit(r, ended.exit);
          if (after === null) return status;
          next = after;
          break;
        }
      }
    }
  }

  try {
    const out = await lifecycle();
    if (!settled) await settleAdmission('done');
    // Ended, but a kill owed to an evicted run's old copy is settled before the workflow closes.
    await condition(() => (status.fences ?? []).every((f) => f.settled !== null));
    // A job that ended in a failed state fails its workflow, so the UI counts it as failed (older histories completed).
    if (FAILED_JOB_STATES.includes(out.state) && patched(PATCH_FAILED_WORKFLOWS_FAIL)) {
      throw failedWith(
        `job ${jobId} ${out.state}: ${out.reason ?? 'no reason recorded'}`,
        ErrorType.JobFailed,
        out,
        out.events,
      );
    }
    return out;
  } catch (err) {
    if (!isCancellation(err)) throw err;
    // Cancelled: the run stopped and cleaned up like a timeout, the reservation given back, then the cancel ends the workflow.
    await CancellationScope.nonCancellable(async () => {
      const run = active as RunRecord | null;
      const keepFences = patched(PATCH_CANCEL_KEEPS_FENCES);
      if (run !== null && keepFences && status.state === 'Unknown' && run.process !== null) {
        // Its node does not answer: a stopRun would wait days on a dead agent, and a Gone node never answers. The
        // run is fenced like an evicted one: killed by identity when its node is Ready, or its node recorded lost.
        const why = `cancelled while node ${run.node} was unknown: its process is killed when the node is back`;
        Object.assign(run, { endedAt: new Date().toISOString(), reason: 'Stopped', message: why });
        active = null;
        owe(run);
        event('FenceOwed', `run ${run.run}: ${why}`);
      } else if (run !== null) {
        await finish(
          run,
          { exitCode: null, signal: null, reason: 'Stopped', message: 'Cancelled', endedAt: new Date().toISOString() },
          STOP_GRACE_MS,
        );
      }
      await releaseReservation();
      status.nextRetryAt = null;
      const owed = keepFences ? owedFences() : [];
      const owing = owed.map((f) => `run ${f.run} on ${f.node}`).join(', ');
      event(
        'Cancelled',
        owed.length === 0
          ? 'job cancelled: run stopped and cleaned up'
          : `job cancelled: kills still owed (${owing}) are settled before the job closes`,
      );
      enter('Failed', owed.length === 0 ? 'Cancelled' : `Cancelled; kills owed: ${owing}`);
      if (!settled) await settleAdmission('done');
      if (owed.length > 0) {
        // A cancel never abandons a copy that may still run: the fence loops (shielded) settle each one.
        await condition(() => owedFences().length === 0);
        event('FencesSettled', `every kill owed at the cancel is settled: ${owed.map((f) => f.detail).join('; ')}`);
        enter('Failed', 'Cancelled');
      }
    });
    throw err;
  }
}

/** A restore that failed because its checkpoint cannot be fetched yet (S3 away), as opposed to not at all. */
function cannotFetchYet(type: string | null, why: string): boolean {
  if (type === ErrorType.S3Unavailable) return true;
  if (type === ErrorType.RestoreFailed || type === ErrorType.CheckpointNotFound)
    return /\bS3\b|fetch|ECONNREFUSED|ETIMEDOUT|unreachable/i.test(why);
  return false;
}
