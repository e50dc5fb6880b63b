import {
  ApplicationFailure,
  condition,
  defineQuery,
  defineSignal,
  getExternalWorkflowHandle,
  log,
  patched,
  proxyActivities,
  setHandler,
  sleep,
  upsertSearchAttributes,
} from '@temporalio/workflow';
import type { NodeActivities } from '../activities/node';
import type {
  AttemptRecord, CheckpointInspection, CheckpointOutcome, CheckpointPhase, CheckpointRequest, CheckpointStatus, CheckpointStep, CudaStepResult, ProcessRef, Tier, UploadResult,
} from '../common/checkpoint';
import type { ControlActivities } from '../activities/control';
import { ErrorType } from '../common/errors';
import { CheckpointRequestSchema, inputProblem } from '../common/inputs';
import { CONTROL_QUEUE, nodeQueue, promotionWorkflowId } from '../common/queues';
import { SA_CHECKPOINT, SA_JOB, SA_NODE, SA_PHASE, SA_TIER } from '../common/search-attributes';
import { agentLost, agentUnreachable, describeFailure, failureType } from './failures';
import { countCheckpoint } from './metrics';

export const statusQuery = defineQuery<CheckpointStatus>('status');
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
  constructor(readonly phase: CheckpointPhase, override readonly cause: unknown, readonly verdict: Verdict | null = null, readonly found: CheckpointInspection | null = null) {
    super(describeFailure(cause));
  }
}

/**
 * Locking -> DumpingVram -> DumpingProcess -> Sealing -> Uploading -> Durable{s3} | PendingUpload{nvme} -> Durable{s3}.
 * Any step that fails cleanly is compensated so the workload runs on. A step that times out is "unknown":
 * the node is asked (inspectCheckpoint, waiting for its agent) and the workflow goes on from what really
 * happened; only a process frozen by a dump that was cut off with no complete image is killed, by identity.
 * A dump staged in memory is uploaded and copied to disk at the same time (Uploading{memory}); the copy is synced
 * and becomes tier nvme only if S3 is out of reach.
 */
export async function checkpoint(req: CheckpointRequest): Promise<CheckpointOutcome> {
  // A crafted request fails here, in one line naming the field, before any activity touches the workload.
  const invalid = inputProblem(CheckpointRequestSchema, req);
  if (invalid) throw ApplicationFailure.nonRetryable(`invalid checkpoint request: ${invalid}`, ErrorType.InvalidInput);
  const status: CheckpointStatus = {
    checkpointId: req.checkpointId, jobId: req.jobId, node: req.node, pid: req.pid ?? null, vramBytes: req.vramBytes ?? 0, phase: 'Pending', tier: null, failureReason: null, history: [], upload: null,
    metadataSha256: null, workloadLost: null,
  };
  setHandler(statusQuery, () => status);
  let promoted: UploadResult | null = null;
  setHandler(promotedSignal, (r) => void (promoted = r));
  let unpromotable: { reason: string; type: string | null } | null = null;
  setHandler(unpromotableSignal, (r) => void (unpromotable = r));

  const queue = nodeQueue(req.node);
  // One attempt each: a dump retried after a crash would act on a process in an unknown state.
  const step = proxyActivities<NodeActivities>({
    taskQueue: queue, scheduleToStartTimeout: '1m', startToCloseTimeout: '2h', heartbeatTimeout: '10s', retry: { maximumAttempts: 1 },
  });
  // Undo work: must happen, so it waits for the agent to come back (the task stays queued on node/<name>).
  const undo = proxyActivities<NodeActivities>({
    taskQueue: queue, scheduleToCloseTimeout: '7d', startToCloseTimeout: '2m', heartbeatTimeout: '30s',
    retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '1m' },
  });
  const uploader = proxyActivities<NodeActivities>({
    taskQueue: queue, startToCloseTimeout: '2h', heartbeatTimeout: '15s',
    retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '30s', maximumAttempts: req.uploadMaxAttempts ?? DEFAULT_UPLOAD_ATTEMPTS,
      nonRetryableErrorTypes: ['MetadataInvalid', 'CheckpointNotFound', ErrorType.ChecksumMismatch, ErrorType.S3Rejected, ErrorType.CheckpointExists] },
  });

  // The copy to disk: a disk that is full will not empty itself by retrying.
  const keeper = proxyActivities<NodeActivities>({
    taskQueue: queue, startToCloseTimeout: '2h', heartbeatTimeout: '15s',
    retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '30s', maximumAttempts: 5, nonRetryableErrorTypes: [ErrorType.NoSpace, ErrorType.CheckpointNotFound] },
  });
  const control = proxyActivities<ControlActivities>({ taskQueue: CONTROL_QUEUE, startToCloseTimeout: '30s', retry: { maximumInterval: '30s' } });
  // After a timeout: what really happened on the node. The question must be answered before anything is
  // compensated, so it waits for the agent however long it is away, and retries forever with a capped backoff.
  const ask = proxyActivities<NodeActivities>({
    taskQueue: queue, scheduleToCloseTimeout: '3650d', startToCloseTimeout: '1m',
    retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '1m' },
  });

  const record = (phase: CheckpointPhase, outcome: AttemptRecord['outcome'], detail: string): void => {
    status.history.push({ phase, outcome, detail, at: new Date().toISOString() });
  };
  const enter = (phase: CheckpointPhase, tier: Tier | null = status.tier): void => {
    status.phase = phase;
    status.tier = tier;
    upsertSearchAttributes([{ key: SA_PHASE, value: phase }, ...(tier ? [{ key: SA_TIER, value: tier }] : [])]);
    if (phase === 'Durable' || phase === 'PendingUpload' || phase === 'Failed') countCheckpoint(req.node, phase, tier);
  };
  upsertSearchAttributes([
    { key: SA_JOB, value: req.jobId }, { key: SA_NODE, value: req.node }, { key: SA_CHECKPOINT, value: req.checkpointId }, { key: SA_PHASE, value: 'Pending' },
  ]);

  /** Asks the node until the step is no longer in progress there (a CRIU still tracing the process counts as in progress). */
  const settle = async (name: CheckpointStep): Promise<CheckpointInspection> => {
    const since = Date.now();
    for (let wait = 5; ; wait = Math.min(wait * 2, 60)) {
      const seen = await ask.inspectCheckpoint.executeWithOptions(summary(`ask ${req.node} what became of ${name} of ${req.checkpointId}`),
        [{ checkpointId: req.checkpointId, process: identity }]);
      const o = seen.steps[name];
      const busy = o.state === 'running' || (name === 'criuDump' && o.state === 'interrupted' && seen.process.tracerPid !== null);
      if (!busy || Date.now() - since > RUNNING_STEP_PATIENCE_MS) return seen;
      await sleep(`${wait}s`);
    }
  };

  /**
   * One node step. A timeout (the agent, Temporal or the network away) is not taken as a failure: the node
   * is asked what happened and the workflow goes on from there: a step that finished there is used, one that
   * never ran or an idempotent one that was cut off is run again, a failure is compensated as usual, and an
   * interrupted dump is judged by what became of the process.
   */
  const run = async <T>(phase: CheckpointPhase, fn: () => Promise<T>, detail: (r: T) => string, name?: CheckpointStep): Promise<T> => {
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
        log.warn('checkpoint step out of sight; asking the node', { checkpointId: req.checkpointId, job: req.jobId, node: req.node, phase, step: name, cause: describeFailure(err) });
        const seen = await settle(name);
        const o = seen.steps[name];
        log.info('the node answered', { checkpointId: req.checkpointId, job: req.jobId, node: req.node, step: name, state: o.state, process: seen.process.state, imagesComplete: seen.images.complete });
        if (o.state === 'done' && (name !== 'criuDump' || seen.images.complete)) {
          const r = o.data as unknown as T;
          record(phase, 'ok', `${detail(r)} (finished on the node while out of sight)`);
          return r;
        }
        if (o.state === 'failed') {
          throw new StepFailed(phase, ApplicationFailure.nonRetryable(`${name}: ${String(o.data?.message)}`, String(o.data?.type ?? 'Error')), 'clean', seen);
        }
        const again = o.state === 'never' || (o.state === 'interrupted' && name === 'seal');
        if (again && rerun < MAX_RERUNS) {
          record(phase, 'skipped', `${name} ${o.state === 'never' ? 'never ran' : 'was cut off'} on ${req.node}: running it again`);
          continue;
        }
        if (name === 'criuDump' && o.state === 'interrupted' && seen.process.state === 'gone' && seen.images.inventory && Array.isArray(o.data?.files)) {
          // CRIU finished the images and stopped the process, but the agent was lost before it copied the output
          // files beside them: the process is gone, so they are as CRIU recorded them. Finish the dump instead
          // of losing the workload.
          const finished = await undo.finishDump.executeWithOptions(summary(`finish the dump of ${req.checkpointId}: copy the output files beside CRIU's images`),
            [{ checkpointId: req.checkpointId, process: identity }]).catch((e: unknown) => {
            record(phase, 'failed', `finishing the dump: ${describeFailure(e)}`);
            return null;
          });
          if (finished) {
            const r = finished as unknown as T;
            record(phase, 'ok', `${detail(r)} (CRIU finished the images while the agent was lost; output files copied now)`);
            return r;
          }
        }
        if (name === 'criuDump' && o.state !== 'never') {
          // Cut off mid-dump, no complete image: the process itself says what the dump left.
          const verdict: Verdict = seen.process.state === 'running' ? 'clean' : seen.process.state === 'stopped' ? 'unknown' : 'gone';
          throw new StepFailed(phase, err, verdict, seen);
        }
        throw new StepFailed(phase, err, 'clean', seen);
      }
    }
  };

  // Pending: resolve and check the target first, so a bad pid or job fails before anything is touched.
  const target = await step.resolveTarget.executeWithOptions(summary(`find ${req.pid ? `pid ${req.pid}` : `workload of job ${req.jobId}`} on ${req.node}`),
    [{ pid: req.pid, jobId: req.jobId, checkpointId: req.checkpointId }]).catch((err: unknown) => {
    status.failureReason = `Pending: ${describeFailure(err)}`;
    record('Pending', 'failed', status.failureReason);
    enter('Failed');
    throw ApplicationFailure.nonRetryable(status.failureReason, failureType(err) ?? 'InvalidInput');
  });
  const pid = target.pid;
  // Workflows resolved by an older agent have no start time: their kills go by pid alone.
  const identity: ProcessRef = target.startTime === undefined ? { pid } : { pid, startTime: target.startTime };
  status.pid = pid;
  let cudaLocked = false;
  let cudaCheckpointed = false;
  let dumped = false;
  let processStopped = false;
  let staged: boolean;
  try {
    // A lock or VRAM checkpoint cut off on the node is undone as if it had happened: the undo steps check the
    // driver state first and report a step already undone.
    const cutOff = (err: unknown, name: CheckpointStep): boolean => err instanceof StepFailed && err.found?.steps[name].state === 'interrupted';
    const lock = await run('Locking',
      () => step.cudaLock.executeWithOptions(summary(`CUDA lock pid ${pid} on ${req.node}`), [{ pid: pid, checkpointId: req.checkpointId }]), (r) => r.detail, 'cudaLock')
      .catch((err: unknown) => {
        cudaLocked = cutOff(err, 'cudaLock');
        throw err;
      });
    cudaLocked = lock.outcome === 'done';
    if (cudaLocked) {
      await run('DumpingVram', () => step.cudaCheckpoint.executeWithOptions(summary(`CUDA checkpoint (VRAM to host) pid ${pid}`), [{ pid: pid, checkpointId: req.checkpointId }]),
        (r) => r.detail, 'cudaCheckpoint').catch((err: unknown) => {
        cudaCheckpointed = cutOff(err, 'cudaCheckpoint');
        throw err;
      });
      cudaCheckpointed = true;
    } else {
      enter('DumpingVram');
      record('DumpingVram', 'skipped', lock.detail);
    }
    const dump = await run('DumpingProcess',
      () => step.criuDump.executeWithOptions(summary(`criu dump pid ${pid}${req.leaveRunning ? ' (leave running)' : ''}`),
        [{ checkpointId: req.checkpointId, pid: pid, leaveRunning: req.leaveRunning, hostVramBytes: cudaCheckpointed ? req.vramBytes ?? 0 : 0 }]),
      (r) => `${r.imageBytes} bytes in ${r.durationMs} ms${r.staged ? ' (staged in memory)' : ''}`, 'criuDump');
    dumped = true;
    processStopped = dump.processStopped;
    staged = dump.staged === true;
    const sealed = await run('Sealing',
      () => step.seal.executeWithOptions(summary(`sha256 + commit metadata.json for ${req.checkpointId}`),
        [{ checkpointId: req.checkpointId, jobId: req.jobId, pid: pid, cudaCheckpointed, vramBytes: req.vramBytes ?? 0 }]),
      (r) => `${r.files} files, ${r.totalBytes} bytes`, 'seal');
    status.metadataSha256 = sealed.metadataSha256;
    if (sealed.measuredVramBytes !== undefined) status.measuredVramBytes = sealed.measuredVramBytes;
    if (sealed.compat) status.compat = sealed.compat;
    if (cudaLocked && !processStopped) {
      // Left running: hand the VRAM back and let it go on.
      await undo.cudaRestore.executeWithOptions(summary(`CUDA restore pid ${pid} (leave running)`), [{ pid: pid, checkpointId: req.checkpointId }]);
      await undo.cudaUnlock.executeWithOptions(summary(`CUDA unlock pid ${pid}`), [{ pid: pid, checkpointId: req.checkpointId }]);
    }
  } catch (e) {
    const failed = e instanceof StepFailed ? e : new StepFailed(status.phase, e);
    const reason = `${failed.phase}: ${failed.message}`;
    status.failureReason = reason;
    record(failed.phase, 'failed', reason);
    if (failed.verdict === 'unknown' || failed.verdict === 'gone') {
      // Asked, and the answer leaves no clean way back: a dump cut off with no complete image.
      enter('Failed');
      const proc = failed.found?.process;
      if (failed.verdict === 'unknown') {
        // Frozen by a CRIU that is gone: it must not run on half-dumped. Killed by identity, never a reused pid.
        const k = await undo.killProcess.executeWithOptions(summary(`SIGKILL pid ${pid}: frozen by a dump cut off in ${failed.phase}`),
          [{ pid: pid, reason, startTime: identity.startTime }]);
        record(failed.phase, 'compensated', k.killed ? `workload pid ${pid} killed` : `workload pid ${pid} not killed: gone, or the pid names another process`);
      } else {
        record(failed.phase, 'failed', `workload pid ${pid} is gone${proc?.pidReused ? ' (its pid now names another process)' : ''} and no complete dump holds it`);
      }
      if (failed.verdict === 'gone' && failed.found?.images.inventory) {
        // CRIU finished its images (then stopped the process) but the dump was cut off before it was recorded
        // done: all that is left of the workload, so it is kept for an operator, not deleted.
        record(failed.phase, 'failed', `partial checkpoint kept (${failed.found.images.location}): CRIU's images are all that is left of the workload`);
      } else {
        await undo.deleteCheckpointDir.executeWithOptions(summary(`delete partial ${req.checkpointId}`), [{ checkpointId: req.checkpointId }]);
        record(failed.phase, 'compensated', 'partial checkpoint directory deleted');
      }
      if (req.reason === 'preemption') await requeue(req, reason, record);
      return status;
    }
    if (failed.verdict === null && (agentLost(failed.cause) || (agentUnreachable(failed.cause) && failed.phase !== 'Locking'))) {
      // Histories from before PATCH_RECOVER: a lost agent meant a workload of unknown state.
      enter('Failed');
      await undo.killProcess.executeWithOptions(summary(`SIGKILL pid ${pid}: agent lost during ${failed.phase}`), [{ pid: pid, reason, startTime: identity.startTime }]);
      record(failed.phase, 'compensated', `workload pid ${pid} killed`);
      await undo.deleteCheckpointDir.executeWithOptions(summary(`delete partial ${req.checkpointId}`), [{ checkpointId: req.checkpointId }]);
      record(failed.phase, 'compensated', 'partial checkpoint directory deleted');
      if (req.reason === 'preemption') await requeue(req, reason, record);
      return status;
    }
    if (agentUnreachable(failed.cause)) {
      enter('Failed');
      record(failed.phase, 'compensated', 'agent never picked up the first step; workload untouched');
      return status;
    }
    // Clean failure: undo in reverse so the workload runs on with its VRAM, as if never checkpointed. Each
    // undo runs even if the one before failed (its failure recorded), and acts on the process as it is now:
    // after a restore in place that is a new pid.
    const compensate = async (what: string, fn: () => Promise<[AttemptRecord['outcome'], string]>): Promise<boolean> => {
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
    const cudaUndo = (r: CudaStepResult, what: string): [AttemptRecord['outcome'], string] =>
      [r.outcome === 'done' ? 'compensated' : 'skipped', `${what}: ${r.detail}`];
    let current = pid;
    let onlyCopyNeeded = false;
    if (dumped && processStopped) {
      // CRIU already stopped the process; its images are complete, so bring it back from them on this node.
      const r = await undo.criuRestore.executeWithOptions(summary(`restore pid ${pid} in place`),
        [{ checkpointId: req.checkpointId, inPlace: true }]).catch((err: unknown) => ({ error: describeFailure(err) }));
      record(failed.phase, 'compensated', 'pid' in r ? `restored in place as pid ${r.pid}` : `restore in place failed: ${r.error}`);
      if ('pid' in r) current = r.pid;
      else onlyCopyNeeded = true;
    }
    if (cudaCheckpointed) {
      await compensate('CUDA restore', async () => cudaUndo(await undo.cudaRestore.executeWithOptions(summary(`CUDA restore pid ${current} (compensation)`),
        [{ pid: current, checkpointId: req.checkpointId }]), `CUDA restore of pid ${current}`));
    }
    if (cudaLocked) {
      await compensate('CUDA unlock', async () => cudaUndo(await undo.cudaUnlock.executeWithOptions(summary(`CUDA unlock pid ${current} (compensation)`),
        [{ pid: current, checkpointId: req.checkpointId }]), `CUDA unlock of pid ${current}`));
    }
    if (onlyCopyNeeded && patched(PATCH_COMPENSATE_APART)) {
      record(failed.phase, 'failed', `checkpoint directory kept: the workload is stopped and its dump is its only copy`);
    } else if (failureType(failed.cause) === ErrorType.CheckpointExists) {
      // The directory holds an earlier checkpoint under this id: it is that one's, never ours to delete.
      record(failed.phase, 'skipped', 'checkpoint directory left alone: it holds an existing checkpoint');
    } else {
      await compensate('delete partial', async () => {
        await undo.deleteCheckpointDir.executeWithOptions(summary(`delete partial ${req.checkpointId}`), [{ checkpointId: req.checkpointId }]);
        return ['compensated', 'partial checkpoint directory deleted'];
      });
    }
    enter('Failed');
    return status;
  }

  // Sealed: on disk, the checkpoint is valid on this node from here on, whatever S3 does. Staged in memory,
  // it becomes so once copied to disk, which runs beside the upload; until then memory is its only copy.
  const durable = (r: UploadResult): void => {
    status.upload = r;
    record('Uploading', 'ok', `${r.partsSent} parts sent, ${r.partsResumed} resumed`);
    enter('Durable', 's3');
  };
  enter('Uploading', staged ? 'memory' : 'nvme');
  // Settled at once: while the copy to disk is awaited, a failed upload must not count as unhandled.
  const uploading = uploader.upload.executeWithOptions(summary(`upload ${req.checkpointId} to S3 (artifacts, then metadata.json)`),
    [{ checkpointId: req.checkpointId, metadataSha256: status.metadataSha256 }])
    .then((r) => ({ result: r, error: null, type: null }), (err: unknown) => ({ result: null, error: describeFailure(err), type: failureType(err) }));
  /**
   * A copy that no longer matches its seal leaves the node's checkpoints: deleted while the workload runs on,
   * set aside for an operator (never restored from) when it is all that is left of a stopped workload.
   */
  const dropCorrupt = async (phase: CheckpointPhase, reason: string): Promise<void> => {
    if (processStopped) {
      const r = await undo.setAsideCorrupt.executeWithOptions(summary(`set corrupt ${req.checkpointId} aside`), [{ checkpointId: req.checkpointId, reason }]);
      record(phase, 'compensated', `corrupt checkpoint set aside for an operator${r.movedTo ? ` at ${r.movedTo}` : ''}`);
    } else {
      await undo.deleteCheckpointDir.executeWithOptions(summary(`delete corrupt ${req.checkpointId}`), [{ checkpointId: req.checkpointId }]);
      record(phase, 'compensated', 'corrupt checkpoint deleted from this node');
    }
  };
  /**
   * The upload found the local copy changed after sealing: it is no checkpoint, neither in S3 (metadata.json
   * was never sent) nor on this node. It is not sealed again: that would call bytes changed after the dump
   * good. A workload the dump stopped cannot be restored from these images (unverified bytes are never
   * restored), so it is recorded as lost, with why.
   */
  const corrupt = async (error: string): Promise<CheckpointStatus> => {
    status.failureReason = `Uploading: the local copy no longer matches its seal: ${error}`;
    record('Uploading', 'failed', status.failureReason);
    if (processStopped) {
      status.workloadLost = `pid ${pid} was stopped by the dump and its only images changed after sealing; nothing verified is left to restore it from`;
      record('Uploading', 'failed', `workload lost: ${status.workloadLost}`);
    }
    await dropCorrupt('Uploading', status.failureReason);
    enter('Failed');
    if (processStopped && req.reason === 'preemption') await requeue(req, status.failureReason, record);
    return status;
  };
  /**
   * S3 holds another checkpoint under this id (its history gone, so the id passed the client's checks):
   * nothing was overwritten. Our images are good but cannot be this id in S3: a workload the dump stopped
   * is restored in place from them, as after any clean failure, and they are kept if that fails.
   */
  const taken = async (error: string): Promise<CheckpointStatus> => {
    status.failureReason = `Uploading: ${error}`;
    record('Uploading', 'failed', status.failureReason);
    let keep = false;
    if (processStopped) {
      const r = await undo.criuRestore.executeWithOptions(summary(`restore pid ${pid} in place`), [{ checkpointId: req.checkpointId }])
        .catch((err: unknown) => ({ error: describeFailure(err) }));
      keep = !('pid' in r);
      record('Uploading', keep ? 'failed' : 'compensated', 'pid' in r ? `restored in place as pid ${r.pid}` : `restore in place failed: ${r.error}; images kept`);
    }
    if (!keep) {
      await undo.deleteCheckpointDir.executeWithOptions(summary(`delete ${req.checkpointId} (id taken in S3)`), [{ checkpointId: req.checkpointId }]);
      record('Uploading', 'compensated', 'local copy deleted');
    }
    enter('Failed');
    return status;
  };
  if (staged) {
    // The disk copy is a cache while S3 takes the checkpoint, so it is not synced (syncing competes with the
    // upload for the disk); it is synced only if it has to stand in for S3.
    const copying = keeper.persist.executeWithOptions(summary(`copy ${req.checkpointId} from memory to this node's disk`), [{ checkpointId: req.checkpointId, sync: false }])
      .then((r) => {
        record('Uploading', 'ok', `copied to disk: ${r.bytes} bytes in ${r.durationMs} ms`);
        return null;
      }, (err: unknown) => {
        record('Uploading', 'failed', `copy to disk: ${describeFailure(err)}`);
        return describeFailure(err);
      });
    const up = await uploading;
    if (up.type && CORRUPT.has(up.type)) {
      await copying; // a copy of the same bad bytes: it goes with the rest
      return corrupt(up.error!);
    }
    if (up.type === ErrorType.CheckpointExists) {
      await copying;
      return taken(up.error!);
    }
    if (up.result) {
      // Durable from here on; the workflow still waits for the cache copy so that it can free the memory.
      durable(up.result);
      await copying;
      await undo.releaseStaging.executeWithOptions(summary(`free the memory ${req.checkpointId} was staged in`), [{ checkpointId: req.checkpointId }]);
      return status;
    }
    let copyFailure = await copying;
    if (copyFailure === null) {
      copyFailure = await keeper.persist.executeWithOptions(summary(`sync ${req.checkpointId} to disk: S3 is out of reach`), [{ checkpointId: req.checkpointId, sync: true }])
        .then((r) => {
          enter('Uploading', 'nvme');
          record('Uploading', 'ok', `synced to disk (tier nvme) in ${r.durationMs} ms`);
          return null;
        }, (err: unknown) => {
          record('Uploading', 'failed', `sync to disk: ${describeFailure(err)}`);
          return describeFailure(err);
        });
    }
    record('Uploading', 'failed', up.error);
    if (copyFailure !== null) {
      // Neither S3 nor the disk took it: the memory copy is all there is. Bring the workload back from it
      // rather than lose both, then free the memory.
      status.failureReason = `Uploading: not durable anywhere: S3: ${up.error}; disk: ${copyFailure}`;
      if (processStopped) {
        const r = await undo.criuRestore.executeWithOptions(summary(`restore pid ${pid} in place from memory`),
          [{ checkpointId: req.checkpointId, inPlace: true }]).catch((err: unknown) => ({ error: describeFailure(err) }));
        record('Uploading', 'compensated', 'pid' in r ? `restored in place as pid ${r.pid}` : `restore in place failed: ${r.error}`);
        if (!('pid' in r) && patched(PATCH_COMPENSATE_APART)) {
          // The memory copy is the workload's only one: kept for an operator rather than deleted.
          record('Uploading', 'failed', 'checkpoint kept in memory: the workload is stopped and this is its only copy');
          enter('Failed');
          return status;
        }
      }
      await undo.deleteCheckpointDir.executeWithOptions(summary(`delete partial ${req.checkpointId}`), [{ checkpointId: req.checkpointId }]);
      record('Uploading', 'compensated', 'partial checkpoint deleted from memory and disk');
      enter('Failed');
      return status;
    }
    await undo.releaseStaging.executeWithOptions(summary(`free the memory ${req.checkpointId} was staged in`), [{ checkpointId: req.checkpointId }]);
  } else {
    const up = await uploading;
    if (up.result) {
      durable(up.result);
      return status;
    }
    if (up.type && CORRUPT.has(up.type)) return corrupt(up.error!);
    if (up.type === ErrorType.CheckpointExists) return taken(up.error!);
    record('Uploading', 'failed', up.error);
  }
  // S3 is out of reach, or refuses this key (S3Rejected: recorded above, fixed by an operator): durable on
  // local NVMe, and the node's promotion loop uploads it when S3 takes it again.
  enter('PendingUpload', 'nvme');
  await control.enqueuePromotion.executeWithOptions(summary(`queue ${req.checkpointId} for upload by ${promotionWorkflowId(req.node)}`),
    [{ node: req.node, checkpointId: req.checkpointId, metadataSha256: status.metadataSha256 }]);
  await condition(() => promoted !== null || unpromotable !== null);
  if (promoted === null && unpromotable !== null) {
    const u: { reason: string; type: string | null } = unpromotable;
    status.failureReason = `PendingUpload: ${u.reason}`;
    record('PendingUpload', 'failed', status.failureReason);
    if (u.type === ErrorType.CheckpointExists) {
      // Another checkpoint holds this id in S3: ours stays on this node's disk, intact, for an operator.
      enter('Failed');
      return status;
    }
    if (processStopped) {
      status.workloadLost = `pid ${pid} was stopped by the dump and the node's copy, its only one, no longer matches its seal`;
      record('PendingUpload', 'failed', `workload lost: ${status.workloadLost}`);
    }
    await dropCorrupt('PendingUpload', status.failureReason);
    enter('Failed');
    return status;
  }
  status.upload = promoted;
  record('Uploading', 'ok', `promoted to S3 by the node's promotion loop`);
  enter('Durable', 's3');
  log.info('checkpoint promoted', { checkpointId: req.checkpointId, node: req.node, job: req.jobId });
  return status;
}

/** Shown beside each activity in the Temporal UI. */
const summary = (text: string): { summary: string } => ({ summary: text });

async function requeue(req: CheckpointRequest, reason: string, record: (p: CheckpointPhase, o: AttemptRecord['outcome'], d: string) => void): Promise<void> {
  try {
    await getExternalWorkflowHandle(`job/${req.jobId}`).signal('requeue', { reason, checkpointId: req.checkpointId });
    record('Failed', 'compensated', `job ${req.jobId} requeued`);
  } catch (err) {
    record('Failed', 'failed', `requeue of job ${req.jobId} failed: ${describeFailure(err)}`);
  }
}
