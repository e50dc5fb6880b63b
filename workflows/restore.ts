import { ApplicationFailure, defineQuery, log, proxyActivities, setHandler, sleep, upsertSearchAttributes, workflowInfo } from '@temporalio/workflow';
import type { ControlActivities } from '../activities/control';
import type { NodeActivities } from '../activities/node';
import { durationMs } from '../common/bounds';
import { ErrorType } from '../common/errors';
import { inputProblem, RestoreRequestSchema } from '../common/inputs';
import { CONTROL_QUEUE, nodeQueue } from '../common/queues';
import type { RestorePhase, RestoreRequest, RestoreStatus } from '../common/restore';
import { SA_CHECKPOINT, SA_JOB, SA_NODE, SA_PHASE } from '../common/search-attributes';
import { agentLost, describeFailure, failureType } from './failures';

export const restoreStatusQuery = defineQuery<RestoreStatus>('status');

/** Failures that say "not on this node" rather than "not at all". */
const TRY_ELSEWHERE = new Set<string>([ErrorType.CudaOutOfMemory, ErrorType.CriuPidConflict, ErrorType.NoProgress, ErrorType.NoSuchProcess, ErrorType.S3Unavailable]);

class AttemptFailed extends Error {
  constructor(readonly phase: RestorePhase, override readonly cause: unknown, readonly pid: number | null) {
    super(describeFailure(cause));
  }
}

/**
 * Placing -> Fetching -> RestoringProcess -> RestoringVram -> Unlocking -> Verifying -> Running.
 * Running only after both CRIU and CUDA succeeded. A node that cannot hold the workload (VRAM, pid clash,
 * dead agent) is excluded and the restore placed again; a corrupt or incompatible checkpoint fails for good.
 */
export async function restore(req: RestoreRequest): Promise<RestoreStatus> {
  // A crafted request (VRAM no node can hold, a deadline of years) fails here, in one line naming the field.
  const invalid = inputProblem(RestoreRequestSchema, req);
  if (invalid) throw ApplicationFailure.nonRetryable(`invalid restore request: ${invalid}`, ErrorType.InvalidInput);
  const status: RestoreStatus = {
    checkpointId: req.checkpointId, jobId: null, phase: 'Placing', node: null, pid: null, vramBytes: 0, source: null,
    attempts: [], excluded: [...(req.exclude ?? [])], failureReason: null,
  };
  setHandler(restoreStatusQuery, () => status);
  const enter = (phase: RestorePhase): void => {
    status.phase = phase;
    upsertSearchAttributes([{ key: SA_PHASE, value: phase }, ...(status.node ? [{ key: SA_NODE, value: status.node }] : [])]);
  };
  const control = proxyActivities<ControlActivities>({ taskQueue: CONTROL_QUEUE, startToCloseTimeout: '30s', retry: { maximumInterval: '10s', maximumAttempts: 10 } });
  const fail = (reason: string, type: string): never => {
    status.failureReason = reason;
    enter('Failed');
    throw ApplicationFailure.nonRetryable(reason, type);
  };

  upsertSearchAttributes([{ key: SA_CHECKPOINT, value: req.checkpointId }, { key: SA_PHASE, value: 'Placing' }]);
  const info = await control.checkpointInfo.executeWithOptions({ summary: `look up checkpoint ${req.checkpointId}` }, [{ checkpointId: req.checkpointId }])
    .catch((err: unknown) => fail(describeFailure(err), failureType(err) ?? ErrorType.CheckpointNotFound));
  status.jobId = info.jobId;
  status.vramBytes = req.vramBytes ?? info.vramBytes;
  upsertSearchAttributes([{ key: SA_JOB, value: info.jobId }]);

  const deadlineMs = Date.now() + msOf(req.placementDeadline ?? '10m');
  let forceSource = false; // after a corrupt S3 copy: only the node holding the nvme copy will do
  for (let n = 1; ; n++) {
    enter('Placing');
    const prefer = [...(req.prefer ?? []), info.node];
    // A checkpoint still waiting for upload (tier nvme) exists only on its own node.
    const pinned = forceSource || info.tier === 'nvme';
    if (pinned && req.node && req.node !== info.node) {
      fail(`checkpoint ${req.checkpointId} is only on ${info.node} (tier nvme, pending upload); it cannot be restored on ${req.node} yet`, ErrorType.CheckpointNotOnNode);
    }
    const only = pinned ? info.node : req.node;
    const candidates = await control.placementCandidates.executeWithOptions({ summary: `nodes with ${status.vramBytes} bytes of VRAM free` },
      [{ bytes: status.vramBytes, exclude: status.excluded, prefer, only }]);
    const reservationId = `${workflowInfo().workflowId}/${n}`;
    const reservation = candidates.length === 0 ? null
      : await control.reserve.executeWithOptions({ summary: `reserve ${status.vramBytes} bytes of VRAM` }, [{ reservationId, bytes: status.vramBytes, candidates }]);
    if (!reservation) {
      if (Date.now() >= deadlineMs) {
        fail(`no node fits: ${status.vramBytes} bytes of VRAM needed${only ? ` on ${only}` : ''}; excluded: ${status.excluded.join(', ') || 'none'}; waited ${req.placementDeadline ?? '10m'}`,
          ErrorType.NoNodeFits);
      }
      await sleep('10s');
      n--;
      continue;
    }
    status.node = reservation.node;
    try {
      const pid = await attempt(req, status, reservation.node, enter);
      status.attempts.push({ node: reservation.node, outcome: 'running', phase: 'Running', reason: null, at: new Date().toISOString() });
      status.pid = pid;
      enter('Running');
      return status;
    } catch (e) {
      const failed = e instanceof AttemptFailed ? e : new AttemptFailed(status.phase, e, null);
      const type = failureType(failed.cause);
      status.attempts.push({ node: reservation.node, outcome: 'failed', phase: failed.phase, reason: failed.message, at: new Date().toISOString() });
      const node = proxyActivities<NodeActivities>({ taskQueue: nodeQueue(reservation.node), scheduleToCloseTimeout: '1h', startToCloseTimeout: '1m', retry: { maximumInterval: '30s' } });
      if (failed.pid !== null) {
        // Half-restored (CRIU done, CUDA not, or no progress): it must not run on.
        await node.killProcess.executeWithOptions({ summary: `kill half-restored pid ${failed.pid}` }, [{ pid: failed.pid, reason: failed.message }]);
      }
      if (type === ErrorType.ChecksumMismatch) {
        // Away from the checkpoint's own node the bad bytes came from S3; that node still holds the nvme copy
        // (its fetch verifies the local copy first and only then falls back to S3).
        if (!forceSource && info.node !== reservation.node && !req.node) {
          forceSource = true;
          continue;
        }
        fail(`checkpoint ${req.checkpointId} is corrupt: ${failed.message}`, ErrorType.ChecksumMismatch);
      }
      if (type === ErrorType.CriuRestoreFailed || type === ErrorType.MetadataInvalid || type === ErrorType.CheckpointNotFound) {
        const alertId = await control.raiseAlert.executeWithOptions({ summary: 'raise alert' }, [{
          kind: type, checkpointId: req.checkpointId, node: reservation.node, message: failed.message, raisedAt: new Date().toISOString(),
        }]);
        fail(`${failed.message} (alert ${alertId})`, type);
      }
      if (!(type && TRY_ELSEWHERE.has(type)) && !agentLost(failed.cause)) fail(failed.message, type ?? ErrorType.RestoreFailed);
      status.excluded.push(reservation.node);
      if (forceSource) fail(`the only node holding a verified copy (${info.node}) cannot take it: ${failed.message}`, type ?? ErrorType.RestoreFailed);
    } finally {
      await control.release.executeWithOptions({ summary: 'release VRAM reservation' }, [{ reservationId }]);
    }
  }
}

async function attempt(req: RestoreRequest, status: RestoreStatus, nodeName: string, enter: (p: RestorePhase) => void): Promise<number> {
  const node = proxyActivities<NodeActivities>({
    taskQueue: nodeQueue(nodeName), scheduleToStartTimeout: '1m', startToCloseTimeout: '1h', heartbeatTimeout: '15s', retry: { maximumAttempts: 1 },
  });
  const step = async <T>(phase: RestorePhase, pid: number | null, fn: () => Promise<T>): Promise<T> => {
    enter(phase);
    try {
      return await fn();
    } catch (err) {
      throw new AttemptFailed(phase, err, pid);
    }
  };
  const fetched = await step('Fetching', null, () =>
    node.fetch.executeWithOptions({ summary: `fetch and verify ${req.checkpointId} on ${nodeName}`, retry: { maximumAttempts: 3, nonRetryableErrorTypes: [ErrorType.ChecksumMismatch, ErrorType.CheckpointNotFound, ErrorType.MetadataInvalid] } },
      [{ checkpointId: req.checkpointId }]));
  status.source = fetched.source;
  try {
    const { pid } = await step('RestoringProcess', null, () =>
      node.criuRestore.executeWithOptions({ summary: `criu restore ${req.checkpointId} on ${nodeName}` }, [{ checkpointId: req.checkpointId }]));
    await step('RestoringVram', pid, async () => {
      await node.checkVram.executeWithOptions({ summary: `check ${status.vramBytes} bytes of VRAM free on ${nodeName}` }, [{ bytes: status.vramBytes }]);
      return node.cudaRestore.executeWithOptions({ summary: `CUDA restore pid ${pid}` }, [{ pid }]);
    });
    await step('Unlocking', pid, () => node.cudaUnlock.executeWithOptions({ summary: `CUDA unlock pid ${pid}` }, [{ pid }]));
    await step('Verifying', pid, async () => {
      await node.verifyProgress.executeWithOptions({ summary: `pid ${pid} alive and making progress` }, [{ pid, checkpointId: req.checkpointId }]);
      await node.adoptWorkload.executeWithOptions({ summary: `adopt job ${status.jobId} as pid ${pid}` }, [{ jobId: status.jobId ?? req.checkpointId, pid, vramBytes: status.vramBytes }]);
    });
    return pid;
  } finally {
    // Staged in memory for CRIU to read; once the process is back (or the attempt gave up) it is just memory held.
    if (fetched.staged) {
      const cleanup = proxyActivities<NodeActivities>({ taskQueue: nodeQueue(nodeName), scheduleToCloseTimeout: '10m', startToCloseTimeout: '1m', retry: { maximumInterval: '30s' } });
      await cleanup.releaseStaging.executeWithOptions({ summary: `free the memory ${req.checkpointId} was fetched into` }, [{ checkpointId: req.checkpointId }])
        .catch((err: unknown) => log.warn('staged copy not released', { checkpointId: req.checkpointId, node: nodeName, error: describeFailure(err) }));
    }
  }
}

function msOf(d: string): number {
  const ms = durationMs(d);
  if (ms === null) throw ApplicationFailure.nonRetryable(`placementDeadline: expected e.g. '90s' or '10m' (got '${d}')`, 'InvalidInput');
  return ms;
}
