import {
  ApplicationFailure,
  condition,
  defineQuery,
  defineSignal,
  getExternalWorkflowHandle,
  log,
  proxyActivities,
  setHandler,
  upsertSearchAttributes,
} from '@temporalio/workflow';
import type { NodeActivities } from '../activities/node';
import type { AttemptRecord, CheckpointOutcome, CheckpointPhase, CheckpointRequest, CheckpointStatus, Tier, UploadResult } from '../common/checkpoint';
import type { ControlActivities } from '../activities/control';
import { ErrorType } from '../common/errors';
import { CheckpointRequestSchema, inputProblem } from '../common/inputs';
import { CONTROL_QUEUE, nodeQueue, promotionWorkflowId } from '../common/queues';
import { SA_CHECKPOINT, SA_JOB, SA_NODE, SA_PHASE, SA_TIER } from '../common/search-attributes';
import { agentLost, agentUnreachable, describeFailure, failureType } from './failures';

export const statusQuery = defineQuery<CheckpointStatus>('status');
/** Sent by the node's promotion loop once a checkpoint left on tier nvme reaches S3. */
export const promotedSignal = defineSignal<[UploadResult]>('promoted');

export const DEFAULT_UPLOAD_ATTEMPTS = 8;

class StepFailed extends Error {
  constructor(readonly phase: CheckpointPhase, override readonly cause: unknown) {
    super(describeFailure(cause));
  }
}

/**
 * Locking -> DumpingVram -> DumpingProcess -> Sealing -> Uploading -> Durable{s3} | PendingUpload{nvme} -> Durable{s3}.
 * Any step that fails cleanly is compensated so the workload runs on; a step whose agent died leaves the
 * workload in an unknown state, so it is killed once the agent is back and the attempt fails.
 * A dump staged in memory is uploaded and copied to disk at the same time (Uploading{memory}); the copy is synced
 * and becomes tier nvme only if S3 is out of reach.
 */
export async function checkpoint(req: CheckpointRequest): Promise<CheckpointOutcome> {
  // A crafted request fails here, in one line naming the field, before any activity touches the workload.
  const invalid = inputProblem(CheckpointRequestSchema, req);
  if (invalid) throw ApplicationFailure.nonRetryable(`invalid checkpoint request: ${invalid}`, ErrorType.InvalidInput);
  const status: CheckpointStatus = {
    checkpointId: req.checkpointId, jobId: req.jobId, node: req.node, pid: req.pid ?? null, vramBytes: req.vramBytes ?? 0, phase: 'Pending', tier: null, failureReason: null, history: [], upload: null,
  };
  setHandler(statusQuery, () => status);
  let promoted: UploadResult | null = null;
  setHandler(promotedSignal, (r) => void (promoted = r));

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
      nonRetryableErrorTypes: ['MetadataInvalid', 'CheckpointNotFound'] },
  });

  // The copy to disk: a disk that is full will not empty itself by retrying.
  const keeper = proxyActivities<NodeActivities>({
    taskQueue: queue, startToCloseTimeout: '2h', heartbeatTimeout: '15s',
    retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '30s', maximumAttempts: 5, nonRetryableErrorTypes: [ErrorType.NoSpace, ErrorType.CheckpointNotFound] },
  });
  const control = proxyActivities<ControlActivities>({ taskQueue: CONTROL_QUEUE, startToCloseTimeout: '30s', retry: { maximumInterval: '30s' } });

  const record = (phase: CheckpointPhase, outcome: AttemptRecord['outcome'], detail: string): void => {
    status.history.push({ phase, outcome, detail, at: new Date().toISOString() });
  };
  const enter = (phase: CheckpointPhase, tier: Tier | null = status.tier): void => {
    status.phase = phase;
    status.tier = tier;
    upsertSearchAttributes([{ key: SA_PHASE, value: phase }, ...(tier ? [{ key: SA_TIER, value: tier }] : [])]);
  };
  upsertSearchAttributes([
    { key: SA_JOB, value: req.jobId }, { key: SA_NODE, value: req.node }, { key: SA_CHECKPOINT, value: req.checkpointId }, { key: SA_PHASE, value: 'Pending' },
  ]);

  const run = async <T>(phase: CheckpointPhase, fn: () => Promise<T>, detail: (r: T) => string): Promise<T> => {
    enter(phase);
    try {
      const r = await fn();
      record(phase, 'ok', detail(r));
      return r;
    } catch (err) {
      throw new StepFailed(phase, err);
    }
  };

  // Pending: resolve and check the target first, so a bad pid or job fails before anything is touched.
  const target = await step.resolveTarget.executeWithOptions(summary(`find ${req.pid ? `pid ${req.pid}` : `workload of job ${req.jobId}`} on ${req.node}`),
    [{ pid: req.pid, jobId: req.jobId }]).catch((err: unknown) => {
    status.failureReason = `Pending: ${describeFailure(err)}`;
    record('Pending', 'failed', status.failureReason);
    enter('Failed');
    throw ApplicationFailure.nonRetryable(status.failureReason, failureType(err) ?? 'InvalidInput');
  });
  const pid = target.pid;
  status.pid = pid;
  let cudaLocked = false;
  let cudaCheckpointed = false;
  let dumped = false;
  let processStopped = false;
  let staged = false;
  try {
    const lock = await run('Locking',
      () => step.cudaLock.executeWithOptions(summary(`CUDA lock pid ${pid} on ${req.node}`), [{ pid: pid }]), (r) => r.detail);
    cudaLocked = lock.outcome === 'done';
    if (cudaLocked) {
      await run('DumpingVram', () => step.cudaCheckpoint.executeWithOptions(summary(`CUDA checkpoint (VRAM to host) pid ${pid}`), [{ pid: pid }]),
        (r) => r.detail);
      cudaCheckpointed = true;
    } else {
      enter('DumpingVram');
      record('DumpingVram', 'skipped', lock.detail);
    }
    const dump = await run('DumpingProcess',
      () => step.criuDump.executeWithOptions(summary(`criu dump pid ${pid}${req.leaveRunning ? ' (leave running)' : ''}`),
        [{ checkpointId: req.checkpointId, pid: pid, leaveRunning: req.leaveRunning, hostVramBytes: cudaCheckpointed ? req.vramBytes ?? 0 : 0 }]),
      (r) => `${r.imageBytes} bytes in ${r.durationMs} ms${r.staged ? ' (staged in memory)' : ''}`);
    dumped = true;
    processStopped = dump.processStopped;
    staged = dump.staged === true;
    await run('Sealing',
      () => step.seal.executeWithOptions(summary(`sha256 + commit metadata.json for ${req.checkpointId}`),
        [{ checkpointId: req.checkpointId, jobId: req.jobId, pid: pid, cudaCheckpointed, vramBytes: req.vramBytes ?? 0 }]),
      (r) => `${r.files} files, ${r.totalBytes} bytes`);
    if (cudaLocked && !processStopped) {
      // Left running: hand the VRAM back and let it go on.
      await undo.cudaRestore.executeWithOptions(summary(`CUDA restore pid ${pid} (leave running)`), [{ pid: pid }]);
      await undo.cudaUnlock.executeWithOptions(summary(`CUDA unlock pid ${pid}`), [{ pid: pid }]);
    }
  } catch (e) {
    const failed = e instanceof StepFailed ? e : new StepFailed(status.phase, e);
    const reason = `${failed.phase}: ${failed.message}`;
    status.failureReason = reason;
    record(failed.phase, 'failed', reason);
    if (agentLost(failed.cause) || (agentUnreachable(failed.cause) && failed.phase !== 'Locking')) {
      // The workload may be frozen, half-dumped or CUDA-locked: its state is unknown, so it must not run on.
      enter('Failed');
      await undo.killProcess.executeWithOptions(summary(`SIGKILL pid ${pid}: agent lost during ${failed.phase}`), [{ pid: pid, reason }]);
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
    // Clean failure: undo in reverse so the workload runs on with its VRAM, as if never checkpointed.
    if (dumped && processStopped) {
      // CRIU already stopped the process; its images are complete, so bring it back from them on this node.
      const r = await undo.criuRestore.executeWithOptions(summary(`restore pid ${pid} in place`),
        [{ checkpointId: req.checkpointId }]).catch((err: unknown) => ({ error: describeFailure(err) }));
      record(failed.phase, 'compensated', 'pid' in r ? `restored in place as pid ${r.pid}` : `restore in place failed: ${r.error}`);
    }
    if (cudaCheckpointed) {
      await undo.cudaRestore.executeWithOptions(summary(`CUDA restore pid ${pid} (compensation)`), [{ pid: pid }]);
      record(failed.phase, 'compensated', 'CUDA state restored');
    }
    if (cudaLocked) {
      await undo.cudaUnlock.executeWithOptions(summary(`CUDA unlock pid ${pid} (compensation)`), [{ pid: pid }]);
      record(failed.phase, 'compensated', 'CUDA unlocked');
    }
    await undo.deleteCheckpointDir.executeWithOptions(summary(`delete partial ${req.checkpointId}`), [{ checkpointId: req.checkpointId }]);
    record(failed.phase, 'compensated', 'partial checkpoint directory deleted');
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
    [{ checkpointId: req.checkpointId }]).then((r) => ({ result: r, error: null }), (err: unknown) => ({ result: null, error: describeFailure(err) }));
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
          [{ checkpointId: req.checkpointId }]).catch((err: unknown) => ({ error: describeFailure(err) }));
        record('Uploading', 'compensated', 'pid' in r ? `restored in place as pid ${r.pid}` : `restore in place failed: ${r.error}`);
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
    record('Uploading', 'failed', up.error);
  }
  // S3 is out of reach: durable on local NVMe, and the node's promotion loop uploads it when S3 is back.
  enter('PendingUpload', 'nvme');
  await control.enqueuePromotion.executeWithOptions(summary(`queue ${req.checkpointId} for upload by ${promotionWorkflowId(req.node)}`),
    [{ node: req.node, checkpointId: req.checkpointId }]);
  await condition(() => promoted !== null);
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
