import {
  type ActivityInterfaceFor,
  ApplicationFailure,
  condition,
  defineQuery,
  defineSignal,
  getExternalWorkflowHandle,
  log,
  patched,
  proxyActivities,
  setCurrentDetails,
  setHandler,
  sleep,
  upsertSearchAttributes,
} from '@temporalio/workflow';
import type { NodeActivities } from '../activities/node';
import type {
  AttemptRecord,
  CheckpointInspection,
  CheckpointOutcome,
  CheckpointPhase,
  CheckpointRequest,
  CheckpointStatus,
  CheckpointStep,
  CudaStepResult,
  ProcessRef,
  Tier,
  UploadResult,
} from '../common/checkpoint';
import type { ControlActivities } from '../activities/control';
import { ErrorType } from '../common/errors';
import { CheckpointRequestSchema, inputProblem } from '../common/inputs';
import { failedWith, PATCH_FAILED_WORKFLOWS_FAIL, STATUS_QUERY } from '../common/outcome';
import { CONTROL_QUEUE, nodeQueue, promotionWorkflowId } from '../common/queues';
import { SA_CHECKPOINT, SA_JOB, SA_NODE, SA_PHASE, SA_TIER } from '../common/search-attributes';
import { agentLost, agentUnreachable, describeFailure, failureType } from './failures';
import { askJobOpen } from './job-open';
import { countCheckpoint } from './metrics';

export const statusQuery = defineQuery<CheckpointStatus>(STATUS_QUERY);
/** Sent by the node's promotion loop once a checkpoint left on tier nvme reaches S3. */
export const promotedSignal = defineSignal<[UploadResult]>('promoted');
/** Sent by the promotion loop when the nvme copy can never be uploaded: it no longer matches its seal, or S3 holds another checkpoint under its id. */
export const unpromotableSignal = defineSignal<[{ reason: string; type: string | null }]>('unpromotable');

/** Upload failures that mean the local copy itself is bad: no retry, no tier nvme, no re-seal. */
const CORRUPT: ReadonlySet<string> = new Set([ErrorType.ChecksumMismatch, ErrorType.MetadataInvalid]);

export const DEFAULT_UPLOAD_ATTEMPTS = 8;

/**
 * patched() ids. RECOVER: a timeout of a node step is answered by asking the node (inspectCheckpoint), not by
 * killing the workload. COMPENSATE_APART: a failed compensation no longer stops the ones after it, and a
 * complete dump whose in-place restore failed is kept (the workload's only copy) instead of deleted.
 */
export const PATCH_RECOVER = 'checkpoint-inspect-after-timeout';
export const PATCH_COMPENSATE_APART = 'checkpoint-compensations-apart';
/**
 * HASH_WHILE_STREAMING: the seal no longer reads the large files (pages images); the upload hashes them as it
 * sends them and commits metadata.json after S3 holds them. S3 out of reach: a full seal of the local copy,
 * then the synced copy (tier nvme); the disk copy beside a successful upload is finished once metadata.json exists.
 */
export const PATCH_HASH_WHILE_STREAMING = 'checkpoint-hash-while-streaming';
/**
 * COPY_AFTER_UPLOAD: a dump staged in memory of a workload left running is copied to disk after the upload, not
 * beside it (see uploadAndCopy).
 */
export const PATCH_COPY_AFTER_UPLOAD = 'checkpoint-copy-after-upload';
/**
 * REFUSE_STOPPING_OPEN_JOB: a checkpoint that would stop (not leave running) the process of a job whose job workflow
 * is open, asked for from outside that job (reason manual: the job's own stopping checkpoints are preemptions and
 * migrations), is refused before anything is touched (JobOpen). Stopped behind its back, the job would see its run
 * end, count it as a crash and start it again from its last good checkpoint, losing what this one holds. The CLI
 * leaves such a job running; this covers a checkpoint workflow started some other way.
 */
export const PATCH_REFUSE_STOPPING_OPEN_JOB = 'checkpoint-refuse-stopping-open-job';

/** A step the node keeps running after the workflow lost sight of it is waited for this long (its own start-to-close). */
const RUNNING_STEP_PATIENCE_MS = 2 * 60 * 60 * 1000;
/** A step cut off again and again (an agent that dies on it every time) is taken as failed after so many re-runs. */
const MAX_RERUNS = 5;

/**
 * How a failed step leaves the workload. clean: running, or restorable from its complete dump; unknown:
 * frozen by a CRIU that is gone with no complete image (the only case for a kill); gone: the process no
 * longer exists and no complete dump holds it.
 */
type Verdict = 'clean' | 'unknown' | 'gone';

class StepFailed extends Error {
  constructor(
    readonly phase: CheckpointPhase,
    override readonly cause: unknown,
    readonly verdict: Verdict | null = null,
    readonly found: CheckpointInspection | null = null,
  ) {
    super(describeFailure(cause));
  }
}

type Record = (phase: CheckpointPhase, outcome: AttemptRecord['outcome'], detail: string) => void;
type Enter = (phase: CheckpointPhase, tier?: Tier | null, note?: string) => void;
type Node = ActivityInterfaceFor<NodeActivities>;

/** What the parts of one checkpoint share: the request, its live status, the process, and the node's activities. */
interface Ctx {
  req: CheckpointRequest;
  status: CheckpointStatus;
  pid: number;
  identity: ProcessRef;
  /** Undo work, waiting for the agent however long it is away. */
  undo: Node;
  uploader: Node;
  keeper: Node;
  control: ActivityInterfaceFor<ControlActivities>;
  record: Record;
  enter: Enter;
  show: (note?: string) => void;
  /** Set by the promotion loop's signals while the checkpoint waits on tier nvme. */
  signals: { promoted: UploadResult | null; unpromotable: { reason: string; type: string | null } | null };
  /** For the UI's current details: the dump's size and speed, and when the upload began (workflow time). */
  progress: { imageBytes: number | null; dumpMs: number | null; uploadStartedAt: number | null };
  /** PATCH_HASH_WHILE_STREAMING: the seal left the large files to the upload; metadata.json comes with it. */
  streamed: boolean;
  /** The seal's input, for the full seal that stands in when S3 is out of reach. */
  sealInput: { checkpointId: string; jobId: string; pid: number; cudaCheckpointed: boolean; vramBytes: number };
}

/** How far the forward steps got: what a compensation has to undo. */
interface Progress {
  cudaLocked: boolean;
  cudaCheckpointed: boolean;
  dumped: boolean;
  processStopped: boolean;
  staged: boolean;
}

/**
 * Locking -> DumpingVram -> DumpingProcess -> Sealing -> Uploading -> Durable{s3} | PendingUpload{nvme} -> Durable{s3}.
 * Any step that fails cleanly is compensated so the workload runs on. A step that times out is "unknown":
 * the node is asked (inspectCheckpoint, waiting for its agent) and the workflow goes on from what really
 * happened; only a process frozen by a dump that was cut off with no complete image is killed, by identity.
 * A dump staged in memory is uploaded and copied to disk (Uploading{memory}), at the same time unless the workload
 * runs on (then the copy follows the upload); the copy is synced
 * and becomes tier nvme only if S3 is out of reach. A checkpoint that ends Failed fails its workflow, its status
 * in the failure's details (PATCH_FAILED_WORKFLOWS_FAIL).
 */
export async function checkpoint(req: CheckpointRequest): Promise<CheckpointOutcome> {
  // A crafted request fails here, in one line naming the field, before any activity touches the workload.
  const invalid = inputProblem(CheckpointRequestSchema, req);
  if (invalid) throw ApplicationFailure.nonRetryable(`invalid checkpoint request: ${invalid}`, ErrorType.InvalidInput);
  const status: CheckpointStatus = {
    checkpointId: req.checkpointId,
    jobId: req.jobId,
    node: req.node,
    pid: req.pid ?? null,
    vramBytes: req.vramBytes ?? 0,
    phase: 'Pending',
    tier: null,
    failureReason: null,
    history: [],
    upload: null,
    metadataSha256: null,
    workloadLost: null,
  };
  setHandler(statusQuery, () => status);
  const signals: Ctx['signals'] = { promoted: null, unpromotable: null };
  setHandler(promotedSignal, (r) => void (signals.promoted = r));
  setHandler(unpromotableSignal, (r) => void (signals.unpromotable = r));

  const queue = nodeQueue(req.node);
  // One attempt each: a dump retried after a crash would act on a process in an unknown state.
  const step = proxyActivities<NodeActivities>({
    taskQueue: queue,
    scheduleToStartTimeout: '1m',
    startToCloseTimeout: '2h',
    heartbeatTimeout: '10s',
    retry: { maximumAttempts: 1 },
  });
  // Undo work: must happen, so it waits for the agent to come back (the task stays queued on node/<name>).
  const undo = proxyActivities<NodeActivities>({
    taskQueue: queue,
    scheduleToCloseTimeout: '7d',
    startToCloseTimeout: '2m',
    heartbeatTimeout: '30s',
    retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '1m' },
  });
  const uploader = proxyActivities<NodeActivities>({
    taskQueue: queue,
    startToCloseTimeout: '2h',
    heartbeatTimeout: '15s',
    retry: {
      initialInterval: '1s',
      backoffCoefficient: 2,
      maximumInterval: '30s',
      maximumAttempts: req.uploadMaxAttempts ?? DEFAULT_UPLOAD_ATTEMPTS,
      nonRetryableErrorTypes: [
        'MetadataInvalid',
        'CheckpointNotFound',
        ErrorType.ChecksumMismatch,
        ErrorType.S3Rejected,
        ErrorType.CheckpointExists,
      ],
    },
  });

  // The copy to disk: a disk that is full will not empty itself by retrying.
  const keeper = proxyActivities<NodeActivities>({
    taskQueue: queue,
    startToCloseTimeout: '2h',
    heartbeatTimeout: '15s',
    retry: {
      initialInterval: '1s',
      backoffCoefficient: 2,
      maximumInterval: '30s',
      maximumAttempts: 5,
      nonRetryableErrorTypes: [ErrorType.NoSpace, ErrorType.CheckpointNotFound],
    },
  });
  const control = proxyActivities<ControlActivities>({
    taskQueue: CONTROL_QUEUE,
    startToCloseTimeout: '30s',
    retry: { maximumInterval: '30s' },
  });
  // After a timeout: what really happened on the node. The question must be answered before anything is
  // compensated, so it waits for the agent however long it is away, and retries forever with a capped backoff.
  const ask = proxyActivities<NodeActivities>({
    taskQueue: queue,
    scheduleToCloseTimeout: '3650d',
    startToCloseTimeout: '1m',
    retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '1m' },
  });

  const progress: Ctx['progress'] = { imageBytes: null, dumpMs: null, uploadStartedAt: null };
  const record: Record = (phase, outcome, detail) => {
    status.history.push({ phase, outcome, detail, at: new Date().toISOString() });
  };
  const enter: Enter = (phase, tier = status.tier, note) => {
    status.phase = phase;
    status.tier = tier;
    upsertSearchAttributes([{ key: SA_PHASE, value: phase }, ...(tier ? [{ key: SA_TIER, value: tier }] : [])]);
    if (phase === 'Durable' || phase === 'PendingUpload' || phase === 'Failed') countCheckpoint(req.node, phase, tier);
    setCurrentDetails(progressText(status, progress, note));
  };
  upsertSearchAttributes([
    { key: SA_JOB, value: req.jobId },
    { key: SA_NODE, value: req.node },
    { key: SA_CHECKPOINT, value: req.checkpointId },
    { key: SA_PHASE, value: 'Pending' },
  ]);
  /** Current details only: no search-attribute upsert, so the workflow's commands stay as they were. */
  const show = (note?: string): void => setCurrentDetails(progressText(status, progress, note));
  show();

  /** Asks the node until the step is no longer in progress there (a CRIU still tracing the process counts as in progress). */
  const settle = async (name: CheckpointStep): Promise<CheckpointInspection> => {
    const since = Date.now();
    for (let wait = 5; ; wait = Math.min(wait * 2, 60)) {
      const seen = await ask.inspectCheckpoint.executeWithOptions(
        summary(`ask ${req.node} what became of ${name} of ${req.checkpointId}`),
        [{ checkpointId: req.checkpointId, process: identity }],
      );
      const o = seen.steps[name];
      const busy =
        o.state === 'running' || (name === 'criuDump' && o.state === 'interrupted' && seen.process.tracerPid !== null);
      if (!busy || Date.now() - since > RUNNING_STEP_PATIENCE_MS) return seen;
      await sleep(`${wait}s`, summary(`${name} still runs on ${req.node}: ask again in ${wait} s`));
    }
  };

  /**
   * One node step. A timeout (the agent, Temporal or the network away) is not taken as a failure: the node
   * is asked what happened and the workflow goes on from there: a step that finished there is used, one that
   * never ran or an idempotent one that was cut off is run again, a failure is compensated as usual, and an
   * interrupted dump is judged by what became of the process.
   */
  const run = async <T>(
    phase: CheckpointPhase,
    fn: () => Promise<T>,
    detail: (r: T) => string,
    name?: CheckpointStep,
  ): Promise<T> => {
    enter(phase);
    for (let rerun = 0; ; rerun++) {
      try {
        const r = await fn();
        record(phase, 'ok', detail(r));
        return r;
      } catch (err) {
        const lostSight = agentLost(err) || (agentUnreachable(err) && phase !== 'Locking');
        if (name === undefined || !lostSight || !patched(PATCH_RECOVER)) throw new StepFailed(phase, err);
        record(phase, 'failed', `${describeFailure(err)}: asking ${req.node} what happened`);
        log.warn('checkpoint step out of sight; asking the node', {
          checkpointId: req.checkpointId,
          job: req.jobId,
          node: req.node,
          phase,
          step: name,
          cause: describeFailure(err),
        });
        show(`lost sight of the agent: asking ${req.node} what happened`);
        const seen = await settle(name);
        const o = seen.steps[name];
        log.info('the node answered', {
          checkpointId: req.checkpointId,
          job: req.jobId,
          node: req.node,
          step: name,
          state: o.state,
          process: seen.process.state,
          imagesComplete: seen.images.complete,
        });
        if (o.state === 'done' && (name !== 'criuDump' || seen.images.complete)) {
          const r = o.data as unknown as T;
          record(phase, 'ok', `${detail(r)} (finished on the node while out of sight)`);
          return r;
        }
        if (o.state === 'failed') {
          throw new StepFailed(
            phase,
            ApplicationFailure.nonRetryable(`${name}: ${String(o.data?.message)}`, String(o.data?.type ?? 'Error')),
            'clean',
            seen,
          );
        }
        const again = o.state === 'never' || (o.state === 'interrupted' && name === 'seal');
        if (again && rerun < MAX_RERUNS) {
          record(
            phase,
            'skipped',
            `${name} ${o.state === 'never' ? 'never ran' : 'was cut off'} on ${req.node}: running it again`,
          );
          continue;
        }
        if (
          name === 'criuDump' &&
          o.state === 'interrupted' &&
          seen.process.state === 'gone' &&
          seen.images.inventory &&
          Array.isArray(o.data?.files)
        ) {
          // CRIU finished the images and stopped the process, but the agent was lost before it copied the output
          // files beside them: the process is gone, so they are as CRIU recorded them. Finish the dump instead
          // of losing the workload.
          const finished = await undo.finishDump
            .executeWithOptions(
              summary(`finish the dump of ${req.checkpointId}: copy the output files beside CRIU's images`),
              [{ checkpointId: req.checkpointId, process: identity }],
            )
            .catch((e: unknown) => {
              record(phase, 'failed', `finishing the dump: ${describeFailure(e)}`);
              return null;
            });
          if (finished) {
            const r = finished as unknown as T;
            record(
              phase,
              'ok',
              `${detail(r)} (CRIU finished the images while the agent was lost; output files copied now)`,
            );
            return r;
          }
        }
        if (name === 'criuDump' && o.state !== 'never') {
          // Cut off mid-dump, no complete image: the process itself says what the dump left.
          const verdict: Verdict =
            seen.process.state === 'running' ? 'clean' : seen.process.state === 'stopped' ? 'unknown' : 'gone';
          throw new StepFailed(phase, err, verdict, seen);
        }
        throw new StepFailed(phase, err, 'clean', seen);
      }
    }
  };

  /** Failed in Pending, before anything was touched: the type and message say it all, so no status rides along. */
  const refuse = (why: string, type: string): never => {
    status.failureReason = `Pending: ${why}`;
    record('Pending', 'failed', status.failureReason);
    enter('Failed', status.tier, status.failureReason);
    throw ApplicationFailure.nonRetryable(status.failureReason, type);
  };
  if (!req.leaveRunning && req.reason === 'manual' && patched(PATCH_REFUSE_STOPPING_OPEN_JOB)) {
    const job = await askJobOpen(req.jobId, `is job ${req.jobId} run by a job workflow`);
    if ('unanswered' in job)
      refuse(
        `could not tell whether job ${req.jobId} is run by a job workflow, so nothing was touched: ${job.unanswered}`,
        job.type ?? ErrorType.CheckpointFailed,
      );
    else if (job.open)
      refuse(
        `job ${req.jobId} is run by its job workflow (state ${job.state ?? 'unknown'}): stopped from outside, it would ` +
          `start its run again; leave it running (--leave-running), or preempt, migrate or cancel the job`,
        ErrorType.JobOpen,
      );
  }

  // Pending: resolve and check the target first, so a bad pid or job fails before anything is touched.
  const target = await step.resolveTarget
    .executeWithOptions(summary(`find ${req.pid ? `pid ${req.pid}` : `workload of job ${req.jobId}`} on ${req.node}`), [
      { pid: req.pid, jobId: req.jobId, checkpointId: req.checkpointId },
    ])
    // The step's own type and message (the CLI prints them as an error, as it always has).
    .catch((err: unknown) => refuse(describeFailure(err), failureType(err) ?? 'InvalidInput'));
  const pid = target.pid;
  // Workflows resolved by an older agent have no start time: their kills go by pid alone.
  const identity: ProcessRef = target.startTime === undefined ? { pid } : { pid, startTime: target.startTime };
  status.pid = pid;
  const ctx: Ctx = {
    req,
    status,
    pid,
    identity,
    undo,
    uploader,
    keeper,
    control,
    record,
    enter,
    show,
    signals,
    progress,
    streamed: false,
    sealInput: { checkpointId: req.checkpointId, jobId: req.jobId, pid, cudaCheckpointed: false, vramBytes: 0 },
  };
  const done: Progress = {
    cudaLocked: false,
    cudaCheckpointed: false,
    dumped: false,
    processStopped: false,
    staged: false,
  };
  try {
    // A lock or VRAM checkpoint cut off on the node is undone as if it had happened: the undo steps check the
    // driver state first and report a step already undone.
    const cutOff = (err: unknown, name: CheckpointStep): boolean =>
      err instanceof StepFailed && err.found?.steps[name].state === 'interrupted';
    const lock = await run(
      'Locking',
      () =>
        step.cudaLock.executeWithOptions(summary(`CUDA lock pid ${pid} on ${req.node}`), [
          { pid: pid, checkpointId: req.checkpointId },
        ]),
      (r) => r.detail,
      'cudaLock',
    ).catch((err: unknown) => {
      done.cudaLocked = cutOff(err, 'cudaLock');
      throw err;
    });
    done.cudaLocked = lock.outcome === 'done';
    if (done.cudaLocked) {
      await run(
        'DumpingVram',
        () =>
          step.cudaCheckpoint.executeWithOptions(summary(`CUDA checkpoint (VRAM to host) pid ${pid}`), [
            { pid: pid, checkpointId: req.checkpointId },
          ]),
        (r) => r.detail,
        'cudaCheckpoint',
      ).catch((err: unknown) => {
        done.cudaCheckpointed = cutOff(err, 'cudaCheckpoint');
        throw err;
      });
      done.cudaCheckpointed = true;
    } else {
      enter('DumpingVram', status.tier, 'no CUDA context: nothing to copy out of VRAM');
      record('DumpingVram', 'skipped', lock.detail);
    }
    const dump = await run(
      'DumpingProcess',
      () =>
        step.criuDump.executeWithOptions(summary(`criu dump pid ${pid}${req.leaveRunning ? ' (leave running)' : ''}`), [
          {
            checkpointId: req.checkpointId,
            pid: pid,
            leaveRunning: req.leaveRunning,
            hostVramBytes: done.cudaCheckpointed ? (req.vramBytes ?? 0) : 0,
          },
        ]),
      (r) =>
        `${r.imageBytes} bytes in ${r.durationMs} ms${r.staged ? ' (staged in memory)' : ''}${req.leaveRunning && r.frozenMs !== undefined ? `; the workload stood frozen ${r.frozenMs} ms` : ''}`,
      'criuDump',
    );
    if (req.leaveRunning && dump.frozenMs !== undefined) status.frozenMs = dump.frozenMs;
    done.dumped = true;
    done.processStopped = dump.processStopped;
    done.staged = dump.staged === true;
    progress.imageBytes = dump.imageBytes;
    progress.dumpMs = dump.durationMs;
    ctx.streamed = patched(PATCH_HASH_WHILE_STREAMING);
    ctx.sealInput = {
      checkpointId: req.checkpointId,
      jobId: req.jobId,
      pid: pid,
      cudaCheckpointed: done.cudaCheckpointed,
      vramBytes: req.vramBytes ?? 0,
    };
    const sealed = await run(
      'Sealing',
      () =>
        ctx.streamed
          ? step.seal.executeWithOptions(
              summary(
                `sha256 of the small files + compat record for ${req.checkpointId} (large ones hashed by the upload)`,
              ),
              [{ ...ctx.sealInput, hash: 'small' }],
            )
          : step.seal.executeWithOptions(summary(`sha256 + commit metadata.json for ${req.checkpointId}`), [
              ctx.sealInput,
            ]),
      (r) =>
        `${r.files} files, ${r.totalBytes} bytes${r.streamed !== undefined ? ` (${r.streamed} hashed by the upload)` : ''}`,
      'seal',
    );
    status.metadataSha256 = sealed.metadataSha256;
    if (sealed.measuredVramBytes !== undefined) status.measuredVramBytes = sealed.measuredVramBytes;
    if (sealed.compat) status.compat = sealed.compat;
    if (done.cudaLocked && !done.processStopped) {
      // Left running: hand the VRAM back and let it go on.
      await undo.cudaRestore.executeWithOptions(summary(`CUDA restore pid ${pid} (leave running)`), [
        { pid: pid, checkpointId: req.checkpointId },
      ]);
      await undo.cudaUnlock.executeWithOptions(summary(`CUDA unlock pid ${pid}`), [
        { pid: pid, checkpointId: req.checkpointId },
      ]);
    }
  } catch (e) {
    return ended(await compensate(ctx, e instanceof StepFailed ? e : new StepFailed(status.phase, e), done));
  }
  // Sealed: on disk, the checkpoint is valid on this node from here on, whatever S3 does. Staged in memory,
  // it becomes so once copied to disk, beside the upload (after it, for a workload left running, whose own memory
  // still holds it); until then memory is its only copy.
  return ended(await uploadAndCopy(ctx, done));
}

/**
 * How the workflow ends: a checkpoint that ended Failed fails its workflow (so the UI counts it as failed), its
 * status and step history in the failure's details. Histories from before the patch returned it.
 */
function ended(status: CheckpointStatus): CheckpointStatus {
  if (status.phase === 'Failed' && patched(PATCH_FAILED_WORKFLOWS_FAIL)) {
    throw failedWith(status.failureReason ?? 'checkpoint failed', ErrorType.CheckpointFailed, status, status.history);
  }
  return status;
}

/**
 * A forward step failed: leave the workload as it was, or as safe as what the node reported allows. Ends Failed.
 * A dump cut off with no complete image: the frozen process is killed by identity (unknown) or recorded lost
 * (gone). A clean failure is undone in reverse so the workload runs on with its VRAM, as if never checkpointed.
 */
async function compensate(ctx: Ctx, failed: StepFailed, done: Progress): Promise<CheckpointStatus> {
  const { req, status, pid, identity, undo, record, enter } = ctx;
  const reason = `${failed.phase}: ${failed.message}`;
  status.failureReason = reason;
  record(failed.phase, 'failed', reason);
  if (failed.verdict === 'unknown' || failed.verdict === 'gone') {
    // Asked, and the answer leaves no clean way back: a dump cut off with no complete image.
    enter('Failed', status.tier, reason);
    const proc = failed.found?.process;
    if (failed.verdict === 'unknown') {
      // Frozen by a CRIU that is gone: it must not run on half-dumped. Killed by identity, never a reused pid.
      const k = await undo.killProcess.executeWithOptions(
        summary(`SIGKILL pid ${pid}: frozen by a dump cut off in ${failed.phase}`),
        [{ pid: pid, reason, startTime: identity.startTime }],
      );
      record(
        failed.phase,
        'compensated',
        k.killed
          ? `workload pid ${pid} killed`
          : `workload pid ${pid} not killed: gone, or the pid names another process`,
      );
    } else {
      record(
        failed.phase,
        'failed',
        `workload pid ${pid} is gone${proc?.pidReused ? ' (its pid now names another process)' : ''} and no complete dump holds it`,
      );
    }
    if (failed.verdict === 'gone' && failed.found?.images.inventory) {
      // CRIU finished its images (then stopped the process) but the dump was cut off before it was recorded
      // done: all that is left of the workload, so it is kept for an operator, not deleted.
      record(
        failed.phase,
        'failed',
        `partial checkpoint kept (${failed.found.images.location}): CRIU's images are all that is left of the workload`,
      );
    } else {
      await undo.deleteCheckpointDir.executeWithOptions(summary(`delete partial ${req.checkpointId}`), [
        { checkpointId: req.checkpointId },
      ]);
      record(failed.phase, 'compensated', 'partial checkpoint directory deleted');
    }
    if (req.reason === 'preemption') await requeue(req, reason, record);
    return status;
  }
  if (
    failed.verdict === null &&
    (agentLost(failed.cause) || (agentUnreachable(failed.cause) && failed.phase !== 'Locking'))
  ) {
    // Histories from before PATCH_RECOVER: a lost agent meant a workload of unknown state.
    enter('Failed', status.tier, reason);
    await undo.killProcess.executeWithOptions(summary(`SIGKILL pid ${pid}: agent lost during ${failed.phase}`), [
      { pid: pid, reason, startTime: identity.startTime },
    ]);
    record(failed.phase, 'compensated', `workload pid ${pid} killed`);
    await undo.deleteCheckpointDir.executeWithOptions(summary(`delete partial ${req.checkpointId}`), [
      { checkpointId: req.checkpointId },
    ]);
    record(failed.phase, 'compensated', 'partial checkpoint directory deleted');
    if (req.reason === 'preemption') await requeue(req, reason, record);
    return status;
  }
  if (agentUnreachable(failed.cause)) {
    enter('Failed', status.tier, reason);
    record(failed.phase, 'compensated', 'agent never picked up the first step; workload untouched');
    return status;
  }
  // Clean failure: undo in reverse so the workload runs on with its VRAM, as if never checkpointed. Each
  // undo runs even if the one before failed (its failure recorded), and acts on the process as it is now:
  // after a restore in place that is a new pid.
  ctx.show(`undoing: ${reason}`);
  const undoStep = async (what: string, fn: () => Promise<[AttemptRecord['outcome'], string]>): Promise<boolean> => {
    try {
      const [outcome, detail] = await fn();
      record(failed.phase, outcome, detail);
      return outcome !== 'failed';
    } catch (err) {
      if (!patched(PATCH_COMPENSATE_APART)) throw err;
      record(failed.phase, 'failed', `${what} failed: ${describeFailure(err)}`);
      return false;
    }
  };
  const cudaUndo = (r: CudaStepResult, what: string): [AttemptRecord['outcome'], string] => [
    r.outcome === 'done' ? 'compensated' : 'skipped',
    `${what}: ${r.detail}`,
  ];
  let current = pid;
  let onlyCopyNeeded = false;
  if (done.dumped && done.processStopped) {
    // CRIU already stopped the process; its images are complete, so bring it back from them on this node.
    const r = await undo.criuRestore
      .executeWithOptions(summary(`restore pid ${pid} in place`), [{ checkpointId: req.checkpointId, inPlace: true }])
      .catch((err: unknown) => ({ error: describeFailure(err) }));
    record(
      failed.phase,
      'compensated',
      'pid' in r ? `restored in place as pid ${r.pid}` : `restore in place failed: ${r.error}`,
    );
    if ('pid' in r) current = r.pid;
    else onlyCopyNeeded = true;
  }
  if (done.cudaCheckpointed) {
    await undoStep('CUDA restore', async () =>
      cudaUndo(
        await undo.cudaRestore.executeWithOptions(summary(`CUDA restore pid ${current} (compensation)`), [
          { pid: current, checkpointId: req.checkpointId },
        ]),
        `CUDA restore of pid ${current}`,
      ),
    );
  }
  if (done.cudaLocked) {
    await undoStep('CUDA unlock', async () =>
      cudaUndo(
        await undo.cudaUnlock.executeWithOptions(summary(`CUDA unlock pid ${current} (compensation)`), [
          { pid: current, checkpointId: req.checkpointId },
        ]),
        `CUDA unlock of pid ${current}`,
      ),
    );
  }
  if (onlyCopyNeeded && patched(PATCH_COMPENSATE_APART)) {
    record(failed.phase, 'failed', `checkpoint directory kept: the workload is stopped and its dump is its only copy`);
  } else if (failureType(failed.cause) === ErrorType.CheckpointExists) {
    // The directory holds an earlier checkpoint under this id: it is that one's, never ours to delete.
    record(failed.phase, 'skipped', 'checkpoint directory left alone: it holds an existing checkpoint');
  } else {
    await undoStep('delete partial', async () => {
      await undo.deleteCheckpointDir.executeWithOptions(summary(`delete partial ${req.checkpointId}`), [
        { checkpointId: req.checkpointId },
      ]);
      return ['compensated', 'partial checkpoint directory deleted'];
    });
  }
  enter('Failed', status.tier, reason);
  return status;
}

/**
 * Uploading: to S3, and (a dump staged in memory) copied to this node's disk, at the same time or, for a workload
 * left running, once S3 has it (PATCH_COPY_AFTER_UPLOAD). Durable{s3} once
 * S3 holds it; a copy that no longer matches its seal, or an id S3 already holds, ends Failed; S3 out of reach
 * leaves it on tier nvme (PendingUpload) for the node's promotion loop.
 */
async function uploadAndCopy(ctx: Ctx, done: Progress): Promise<CheckpointStatus> {
  const { req, status, pid, undo, uploader, keeper, record, enter } = ctx;
  ctx.progress.uploadStartedAt = Date.now();
  // A workload left running has its own memory, so its staged dump is not its only copy: the copy to disk waits
  // for the upload instead of competing with it for the disk and the CPU (Durable comes sooner; the memory is
  // held until both have run, one after the other). A stopped workload's dump is all there is of it: that copy
  // starts at once, beside the upload.
  const copyAfter = done.staged && req.leaveRunning === true && patched(PATCH_COPY_AFTER_UPLOAD);
  enter(
    'Uploading',
    done.staged ? 'memory' : 'nvme',
    done.staged ? `copying to ${req.node}'s disk ${copyAfter ? 'once S3 has it' : 'beside the upload'}` : undefined,
  );
  // Settled at once: while the copy to disk is awaited, a failed upload must not count as unhandled.
  const uploading = uploader.upload
    .executeWithOptions(summary(`upload ${req.checkpointId} to S3 (artifacts, then metadata.json)`), [
      { checkpointId: req.checkpointId, metadataSha256: status.metadataSha256 },
    ])
    .then(
      (r) => ({ result: r, error: null, type: null }),
      (err: unknown) => ({ result: null, error: describeFailure(err), type: failureType(err) }),
    );
  if (done.staged) {
    // The disk copy is a cache while S3 takes the checkpoint, so it is not synced (syncing competes with the
    // upload for the disk); it is synced only if it has to stand in for S3.
    let copyUnsealed = false;
    const copy = (): Promise<string | null> =>
      keeper.persist
        .executeWithOptions(summary(`copy ${req.checkpointId} from memory to this node's disk`), [
          { checkpointId: req.checkpointId, sync: false },
        ])
        .then(
          (r) => {
            // Streamed: the copy is committed (its metadata.json) only if the upload committed first.
            copyUnsealed = r.sealed === false;
            record(
              'Uploading',
              'ok',
              `copied to disk: ${r.bytes} bytes in ${r.durationMs} ms${copyUnsealed ? ' (metadata.json to follow)' : ''}`,
            );
            return null;
          },
          (err: unknown) => {
            record('Uploading', 'failed', `copy to disk: ${describeFailure(err)}`);
            return describeFailure(err);
          },
        );
    let beside: Promise<string | null> | null = copyAfter ? null : copy();
    const copied = (): Promise<string | null> => (beside ??= copy());
    const up = await uploading;
    if (up.type && CORRUPT.has(up.type)) {
      await beside; // a copy of the same bad bytes: it goes with the rest (none is made after the upload)
      return corrupt(ctx, done, up.error!);
    }
    if (up.type === ErrorType.CheckpointExists) {
      await beside;
      return taken(ctx, done, up.error!);
    }
    if (up.result) {
      // Durable from here on; the workflow still waits for the cache copy so that it can free the memory.
      if (ctx.streamed && up.result.metadataSha256) status.metadataSha256 = up.result.metadataSha256;
      durable(ctx, up.result);
      await copied();
      if (ctx.streamed && copyUnsealed) {
        // The upload committed metadata.json after the copy ended: the copy takes it now (files already there).
        await keeper.persist
          .executeWithOptions(summary(`finish the disk copy of ${req.checkpointId}: its metadata.json`), [
            { checkpointId: req.checkpointId, sync: false },
          ])
          .then(
            (r) => record('Uploading', 'ok', `disk copy committed in ${r.durationMs} ms`),
            (err: unknown) => record('Uploading', 'failed', `finishing the disk copy: ${describeFailure(err)}`),
          );
      }
      await undo.releaseStaging.executeWithOptions(summary(`free the memory ${req.checkpointId} was staged in`), [
        { checkpointId: req.checkpointId, copy: 'checkpoint' },
      ]);
      return status;
    }
    let copyFailure = await copied();
    if (copyFailure === null && ctx.streamed) {
      // The copy can stand in for S3 only with a metadata.json naming verified bytes: a full seal first.
      const f = await sealInFull(ctx);
      if (f?.type && CORRUPT.has(f.type)) {
        record('Uploading', 'failed', up.error);
        return corrupt(ctx, done, f.error);
      }
      if (f) copyFailure = `full seal: ${f.error}`;
    }
    if (copyFailure === null) {
      copyFailure = await keeper.persist
        .executeWithOptions(summary(`sync ${req.checkpointId} to disk: S3 is out of reach`), [
          { checkpointId: req.checkpointId, sync: true },
        ])
        .then(
          (r) => {
            enter('Uploading', 'nvme', 'S3 out of reach: synced to disk');
            record('Uploading', 'ok', `synced to disk (tier nvme) in ${r.durationMs} ms`);
            return null;
          },
          (err: unknown) => {
            record('Uploading', 'failed', `sync to disk: ${describeFailure(err)}`);
            return describeFailure(err);
          },
        );
    }
    record('Uploading', 'failed', up.error);
    if (copyFailure !== null) {
      // Neither S3 nor the disk took it: the memory copy is all there is. Bring the workload back from it
      // rather than lose both, then free the memory.
      status.failureReason = `Uploading: not durable anywhere: S3: ${up.error}; disk: ${copyFailure}`;
      if (done.processStopped) {
        const r = await undo.criuRestore
          .executeWithOptions(summary(`restore pid ${pid} in place from memory`), [
            { checkpointId: req.checkpointId, inPlace: true },
          ])
          .catch((err: unknown) => ({ error: describeFailure(err) }));
        record(
          'Uploading',
          'compensated',
          'pid' in r ? `restored in place as pid ${r.pid}` : `restore in place failed: ${r.error}`,
        );
        if (!('pid' in r) && patched(PATCH_COMPENSATE_APART)) {
          // The memory copy is the workload's only one: kept for an operator rather than deleted.
          record('Uploading', 'failed', 'checkpoint kept in memory: the workload is stopped and this is its only copy');
          enter('Failed', status.tier, status.failureReason);
          return status;
        }
      }
      await undo.deleteCheckpointDir.executeWithOptions(summary(`delete partial ${req.checkpointId}`), [
        { checkpointId: req.checkpointId },
      ]);
      record('Uploading', 'compensated', 'partial checkpoint deleted from memory and disk');
      enter('Failed', status.tier, status.failureReason);
      return status;
    }
    await undo.releaseStaging.executeWithOptions(summary(`free the memory ${req.checkpointId} was staged in`), [
      { checkpointId: req.checkpointId, copy: 'checkpoint' },
    ]);
  } else {
    const up = await uploading;
    if (up.result) {
      if (ctx.streamed && up.result.metadataSha256) status.metadataSha256 = up.result.metadataSha256;
      durable(ctx, up.result);
      return status;
    }
    if (up.type && CORRUPT.has(up.type)) return corrupt(ctx, done, up.error!);
    if (up.type === ErrorType.CheckpointExists) return taken(ctx, done, up.error!);
    record('Uploading', 'failed', up.error);
    if (ctx.streamed) {
      const f = await sealInFull(ctx);
      if (f?.type && CORRUPT.has(f.type)) return corrupt(ctx, done, f.error);
      if (f) {
        // No metadata.json: the images stay on the disk (the workload's copy if the dump stopped it) for an operator.
        status.failureReason = `Uploading: S3: ${up.error}; sealing the disk copy: ${f.error}`;
        record('Uploading', 'failed', 'checkpoint kept on disk unsealed for an operator');
        enter('Failed', status.tier, status.failureReason);
        return status;
      }
    }
  }
  return awaitPromotion(ctx, done);
}

/**
 * PATCH_HASH_WHILE_STREAMING, S3 out of reach: the local copy needs a metadata.json before it can stand in for
 * S3 (tier nvme), so every file is hashed now (off the happy path); a metadata.json the upload already committed
 * (S3 may hold it) is verified and kept. Null when sealed, else why not.
 */
async function sealInFull(ctx: Ctx): Promise<{ error: string; type: string | null } | null> {
  return ctx.keeper.seal
    .executeWithOptions(
      summary(`sha256 of every file + commit metadata.json for ${ctx.req.checkpointId}: S3 is out of reach`),
      [{ ...ctx.sealInput, hash: 'all', keepCommitted: true }],
    )
    .then(
      (r) => {
        ctx.status.metadataSha256 = r.metadataSha256;
        ctx.record('Sealing', 'ok', `sealed in full for the disk tier: ${r.files} files, ${r.totalBytes} bytes`);
        return null;
      },
      (err: unknown) => {
        ctx.record('Sealing', 'failed', `full seal for the disk tier: ${describeFailure(err)}`);
        return { error: describeFailure(err), type: failureType(err) };
      },
    );
}

/** S3 acknowledged the whole checkpoint: Durable{s3}. */
function durable(ctx: Ctx, r: UploadResult): void {
  ctx.status.upload = r;
  ctx.record('Uploading', 'ok', `${r.partsSent} parts sent, ${r.partsResumed} resumed`);
  ctx.enter('Durable', 's3');
}

/**
 * S3 is out of reach, or refuses this key (S3Rejected: recorded, fixed by an operator): durable on local NVMe,
 * and the node's promotion loop uploads it when S3 takes it again, then signals; or signals that it never can.
 */
async function awaitPromotion(ctx: Ctx, done: Progress): Promise<CheckpointStatus> {
  const { req, status, pid, control, record, enter, signals } = ctx;
  enter('PendingUpload', 'nvme', `kept on ${req.node}'s disk until S3 takes it`);
  await control.enqueuePromotion.executeWithOptions(
    summary(`queue ${req.checkpointId} for upload by ${promotionWorkflowId(req.node)}`),
    [{ node: req.node, checkpointId: req.checkpointId, metadataSha256: status.metadataSha256 }],
  );
  await condition(() => signals.promoted !== null || signals.unpromotable !== null);
  const promoted = signals.promoted;
  const u = signals.unpromotable;
  if (promoted === null && u !== null) {
    status.failureReason = `PendingUpload: ${u.reason}`;
    record('PendingUpload', 'failed', status.failureReason);
    if (u.type === ErrorType.CheckpointExists) {
      // Another checkpoint holds this id in S3: ours stays on this node's disk, intact, for an operator.
      enter('Failed', status.tier, status.failureReason);
      return status;
    }
    if (done.processStopped) {
      status.workloadLost = `pid ${pid} was stopped by the dump and the node's copy, its only one, no longer matches its seal`;
      record('PendingUpload', 'failed', `workload lost: ${status.workloadLost}`);
    }
    await dropCorrupt(ctx, done, 'PendingUpload', status.failureReason);
    enter('Failed', status.tier, status.failureReason);
    return status;
  }
  status.upload = promoted;
  record('Uploading', 'ok', `promoted to S3 by the node's promotion loop`);
  enter('Durable', 's3', "promoted by the node's promotion loop");
  log.info('checkpoint promoted', { checkpointId: req.checkpointId, node: req.node, job: req.jobId });
  return status;
}

/**
 * A copy that no longer matches its seal leaves the node's checkpoints: deleted while the workload runs on,
 * set aside for an operator (never restored from) when it is all that is left of a stopped workload.
 */
async function dropCorrupt(ctx: Ctx, done: Progress, phase: CheckpointPhase, reason: string): Promise<void> {
  const { req, undo, record } = ctx;
  if (done.processStopped) {
    const r = await undo.setAsideCorrupt.executeWithOptions(summary(`set corrupt ${req.checkpointId} aside`), [
      { checkpointId: req.checkpointId, reason },
    ]);
    record(phase, 'compensated', `corrupt checkpoint set aside for an operator${r.movedTo ? ` at ${r.movedTo}` : ''}`);
  } else {
    await undo.deleteCheckpointDir.executeWithOptions(summary(`delete corrupt ${req.checkpointId}`), [
      { checkpointId: req.checkpointId },
    ]);
    record(phase, 'compensated', 'corrupt checkpoint deleted from this node');
  }
}

/**
 * The upload found the local copy changed after sealing: it is no checkpoint, neither in S3 (metadata.json
 * was never sent) nor on this node. It is not sealed again: that would call bytes changed after the dump
 * good. A workload the dump stopped cannot be restored from these images (unverified bytes are never
 * restored), so it is recorded as lost, with why.
 */
async function corrupt(ctx: Ctx, done: Progress, error: string): Promise<CheckpointStatus> {
  const { req, status, pid, record, enter } = ctx;
  status.failureReason = `Uploading: the local copy no longer matches its seal: ${error}`;
  record('Uploading', 'failed', status.failureReason);
  if (done.processStopped) {
    status.workloadLost = `pid ${pid} was stopped by the dump and its only images changed after sealing; nothing verified is left to restore it from`;
    record('Uploading', 'failed', `workload lost: ${status.workloadLost}`);
  }
  await dropCorrupt(ctx, done, 'Uploading', status.failureReason);
  enter('Failed', status.tier, status.failureReason);
  if (done.processStopped && req.reason === 'preemption') await requeue(req, status.failureReason, record);
  return status;
}

/**
 * S3 holds another checkpoint under this id (its history gone, so the id passed the client's checks):
 * nothing was overwritten. Our images are good but cannot be this id in S3: a workload the dump stopped
 * is restored in place from them, as after any clean failure, and they are kept if that fails.
 */
async function taken(ctx: Ctx, done: Progress, error: string): Promise<CheckpointStatus> {
  const { req, status, pid, undo, record, enter } = ctx;
  status.failureReason = `Uploading: ${error}`;
  record('Uploading', 'failed', status.failureReason);
  let keep = false;
  if (done.processStopped) {
    const r = await undo.criuRestore
      .executeWithOptions(summary(`restore pid ${pid} in place`), [{ checkpointId: req.checkpointId }])
      .catch((err: unknown) => ({ error: describeFailure(err) }));
    keep = !('pid' in r);
    record(
      'Uploading',
      keep ? 'failed' : 'compensated',
      'pid' in r ? `restored in place as pid ${r.pid}` : `restore in place failed: ${r.error}; images kept`,
    );
  }
  if (!keep) {
    await undo.deleteCheckpointDir.executeWithOptions(summary(`delete ${req.checkpointId} (id taken in S3)`), [
      { checkpointId: req.checkpointId },
    ]);
    record('Uploading', 'compensated', 'local copy deleted');
  }
  enter('Failed', status.tier, status.failureReason);
  return status;
}

/** Shown beside each activity and timer in the Temporal UI. */
const summary = (text: string): { summary: string } => ({ summary: text });

/** The UI's current details, e.g. "phase: Uploading, 1.2 GiB from memory to S3, dumped at 350 MB/s". */
function progressText(s: CheckpointStatus, p: Ctx['progress'], note?: string): string {
  const parts = [`phase: ${s.phase}${s.tier ? ` (tier ${s.tier})` : ''}`];
  if (s.phase === 'Pending')
    parts.push(`finding ${s.pid !== null ? `pid ${s.pid}` : `the workload of job ${s.jobId}`} on ${s.node}`);
  else if (s.pid !== null && (s.phase === 'Locking' || s.phase === 'DumpingVram' || s.phase === 'DumpingProcess'))
    parts.push(`pid ${s.pid} on ${s.node}`);
  if (p.imageBytes !== null && s.phase !== 'Failed') {
    const rate = p.dumpMs ? `, dumped at ${mbps(p.imageBytes, p.dumpMs)}` : '';
    if (s.phase === 'Durable' && s.upload) {
      const ms = p.uploadStartedAt !== null ? Date.now() - p.uploadStartedAt : 0;
      parts.push(
        `${gib(s.upload.bytesSent)} sent to S3${ms > 0 ? ` at ${mbps(s.upload.bytesSent, ms)}` : ''}${s.upload.bytesReused ? `, ${gib(s.upload.bytesReused)} already in S3 (chunks not sent again)` : s.upload.partsResumed > 0 ? ` (${s.upload.partsResumed} parts resumed)` : ''}`,
      );
    } else {
      parts.push(
        `${gib(p.imageBytes)}${s.phase === 'Uploading' ? ` from ${s.tier === 'memory' ? 'memory' : 'disk'} to S3` : ''}${rate}`,
      );
    }
  }
  if (note) parts.push(note);
  return parts.join(', ');
}

/** Bytes for the UI, in the largest binary unit that keeps them >= 1 (a small checkpoint is not "0.0 GiB"). */
const gib = (bytes: number): string => {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (i < units.length - 1 && bytes >= 1024 ** (i + 1)) i++;
  return i === 0 ? `${bytes} B` : `${(bytes / 1024 ** i).toFixed(1)} ${units[i]}`;
};
const mbps = (bytes: number, ms: number): string => `${Math.round(bytes / 1e6 / (ms / 1000))} MB/s`;

async function requeue(
  req: CheckpointRequest,
  reason: string,
  record: (p: CheckpointPhase, o: AttemptRecord['outcome'], d: string) => void,
): Promise<void> {
  try {
    await getExternalWorkflowHandle(`job/${req.jobId}`).signal('requeue', { reason, checkpointId: req.checkpointId });
    record('Failed', 'compensated', `job ${req.jobId} requeued`);
  } catch (err) {
    record('Failed', 'failed', `requeue of job ${req.jobId} failed: ${describeFailure(err)}`);
  }
}
