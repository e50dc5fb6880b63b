import {
  ApplicationFailure,
  CancelledFailure,
  defineQuery,
  log,
  patched,
  proxyActivities,
  setCurrentDetails,
  setHandler,
  sleep,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { ControlActivities } from '../activities/control';
import type { NodeActivities } from '../activities/node';
import { durationMs } from '../common/bounds';
import { openJobRefusal } from '../common/job';
import { ErrorType } from '../common/errors';
import { inputProblem, RestoreRequestSchema } from '../common/inputs';
import { restoreFailureKind } from '../common/health';
import { failedWith, STATUS_QUERY } from '../common/outcome';
import { InvalidInputError } from '../common/ids';
import { CONTROL_QUEUE, nodeQueue } from '../common/queues';
import { parseReadiness, type Readiness } from '../common/readiness';
import { type RestorePhase, type RestoreRequest, type RestoreStatus, restoreAttemptId } from '../common/restore';
import { SA_CHECKPOINT, SA_JOB, SA_NODE, SA_PHASE } from '../common/search-attributes';
import { agentLost, agentUnreachable, describeFailure, failureType } from './failures';
import { askJobOpen } from './job-open';
import { countRestore } from './metrics';
import { settleAdmission } from './admission-settle';

export const restoreStatusQuery = defineQuery<RestoreStatus>(STATUS_QUERY);

/**
 * patched() ids: each guards a change in the commands a restore issues, so that restores started before it
 * replay on this code. Verifying calls verifyRunning instead of verifyProgress; a lost agent mid-restore is
 * asked what happened (inspectRestore) before anything else; a failed release of the VRAM reservation is
 * retried for long and then recorded, never failing the restore.
 */
export const PATCH_VERIFY_RUNNING = 'restore-verify-running';
export const PATCH_INSPECT_AFTER_AGENT_LOST = 'restore-inspect-after-agent-lost';
export const PATCH_RELEASE_NEVER_FAILS = 'restore-release-never-fails';
/**
 * Before placing: ask every node whether it can restore this checkpoint (GPU model, driver, CRIU, CPU flags)
 * and fail at once when none can, or when the VRAM is more than any single GPU has (a multi-GPU job).
 */
export const PATCH_COMPATIBILITY_GATE = 'restore-compatibility-gate';
/**
 * Each attempt's outcome on its node (ran, or failed in a way that is the node's doing) is reported to the
 * placement workflow: the node's health score and its zone's circuit breaker (common/health.ts).
 */
export const PATCH_REPORT_HEALTH = 'restore-report-node-health';
/**
 * The memory a checkpoint was staged into is released as soon as CRIU restored the process (CRIU has read
 * every image by then; the CUDA steps and the checks after them read none), beside those steps instead of
 * after them: the release is off the path to Running.
 */
export const PATCH_RELEASE_STAGING_AFTER_CRIU = 'restore-release-staging-after-criu';
/**
 * Each attempt fetches into, and releases, a copy in memory of its own (named by its attemptId): two restores of
 * one checkpoint on one node (replicas on one multi-GPU node) shared one, and the first release freed the files
 * the other's CRIU was about to read. Histories from before fetched into the shared copy and release that one.
 */
export const PATCH_RESTORE_COPY_PER_ATTEMPT = 'restore-copy-per-attempt';
/**
 * A restore started outside any job or migration (no parent workflow) of a checkpoint whose job's workflow still
 * runs is refused before placing: the job would run twice. The client refuses it too, but only this check covers
 * a restore workflow started directly, or a job opened again between the client's check and the start.
 */
export const PATCH_REFUSE_OPEN_JOB = 'restore-refuse-open-job';
/**
 * S3 out of reach (a fetch failing with S3Unavailable) is no fault of the node that tried: the node is passed
 * over for other candidates as before, but once none is left it is tried again after the wait instead of staying
 * excluded, and a restore that reaches its placement deadline this way fails with S3Unavailable naming the
 * outage, not with NoNodeFits. Histories from before kept such nodes excluded.
 */
export const PATCH_S3_OUTAGE_WAITS = 'restore-s3-outage-waits';

/** Failures that say "not on this node" rather than "not at all". */
const TRY_ELSEWHERE = new Set<string>([
  ErrorType.AgentLost,
  ErrorType.CudaOutOfMemory,
  ErrorType.CriuPidConflict,
  ErrorType.NoProgress,
  ErrorType.NotRunning,
  ErrorType.NotReady,
  ErrorType.NoSuchProcess,
  ErrorType.S3Unavailable,
]);

/** How often one attempt carries on after losing its agent before it gives the node up (killing its copy). */
const MAX_RECOVERIES = 3;

/** The restored process; startTime is absent in results recorded before criuRestore reported it. */
interface Restored {
  pid: number;
  startTime?: number;
}

class AttemptFailed extends Error {
  constructor(
    readonly phase: RestorePhase,
    override readonly cause: unknown,
    readonly proc: Restored | null,
  ) {
    super(describeFailure(cause));
  }
}

/**
 * Node work that must happen whatever the agent does (inspect after a loss, kill a copy): it waits for the
 * agent to come back, for days if need be, retrying with a capped backoff.
 */
const patientNode = (nodeName: string) =>
  proxyActivities<NodeActivities>({
    taskQueue: nodeQueue(nodeName),
    scheduleToCloseTimeout: '7d',
    startToCloseTimeout: '10m',
    heartbeatTimeout: '30s',
    retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '1m' },
  });

/**
 * Placing -> Fetching -> RestoringProcess -> RestoringVram -> Unlocking -> Verifying -> Running.
 * Running only after CRIU and CUDA succeeded and the process runs (and passes its readiness probe, if one is
 * declared). A node that cannot hold the workload (VRAM, pid clash, not ready, an agent lost before CRIU made
 * anything) is excluded and the restore placed again; a corrupt or incompatible checkpoint fails for good.
 * An agent lost from RestoringProcess on is first asked what CRIU really did: the restore carries on from there,
 * or kills that copy by identity, before it places anywhere else.
 * Every restore that ends is counted by outcome (kybernate_restores_total), whichever way it ends.
 */
export async function restore(req: RestoreRequest): Promise<RestoreStatus> {
  try {
    const status = await placeAndRestore(req);
    countRestore('Running', null);
    await settleAdmission('done');
    return status;
  } catch (err) {
    countRestore('Failed', err instanceof CancelledFailure ? 'Cancelled' : (failureType(err) ?? 'Error'));
    await settleAdmission('done');
    throw err;
  }
}

async function placeAndRestore(req: RestoreRequest): Promise<RestoreStatus> {
  // A crafted request (VRAM no node can hold, a deadline of years) fails here, in one line naming the field.
  const invalid = inputProblem(RestoreRequestSchema, req);
  if (invalid) throw ApplicationFailure.nonRetryable(`invalid restore request: ${invalid}`, ErrorType.InvalidInput);
  const status: RestoreStatus = {
    checkpointId: req.checkpointId,
    jobId: null,
    phase: 'Placing',
    node: null,
    pid: null,
    vramBytes: 0,
    source: null,
    attempts: [],
    excluded: [...(req.exclude ?? [])],
    failureReason: null,
  };
  setHandler(restoreStatusQuery, () => status);
  const enter = (phase: RestorePhase, note?: string): void => {
    status.phase = phase;
    upsertSearchAttributes([
      { key: SA_PHASE, value: phase },
      ...(status.node ? [{ key: SA_NODE, value: status.node }] : []),
    ]);
    showDetails(status, note);
  };
  const control = proxyActivities<ControlActivities>({
    taskQueue: CONTROL_QUEUE,
    startToCloseTimeout: '30s',
    retry: { maximumInterval: '10s', maximumAttempts: 10 },
  });
  const releaser = proxyActivities<ControlActivities>({
    taskQueue: CONTROL_QUEUE,
    startToCloseTimeout: '30s',
    scheduleToCloseTimeout: '7d',
    retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '5m' },
  });
  const healthReports = proxyActivities<ControlActivities>({
    taskQueue: CONTROL_QUEUE,
    startToCloseTimeout: '10s',
    retry: { initialInterval: '1s', maximumAttempts: 3 },
  });
  /** Never fails the restore: a report lost to an outage costs a node's score some accuracy, nothing more. */
  const reportHealth = async (
    node: string,
    zone: string | undefined,
    attemptId: string,
    failure: unknown,
    phase?: RestorePhase,
  ): Promise<void> => {
    if (!patched(PATCH_REPORT_HEALTH)) return;
    const kind = failure === null ? null : restoreFailureKind(failureType(failure), phase);
    if (failure !== null && kind === null) return; // not the node's doing (corrupt checkpoint, S3, a lost agent)
    await healthReports.reportNodeOutcome
      .executeWithOptions({ summary: `report ${failure === null ? 'success' : kind} on ${node}` }, [
        {
          id: attemptId,
          node,
          ...(zone ? { zone } : {}),
          ok: failure === null,
          ...(kind ? { kind } : {}),
          detail:
            failure === null ? `restored ${req.checkpointId}` : `${req.checkpointId}: ${describeFailure(failure)}`,
        },
      ])
      .catch((err: unknown) =>
        log.warn('node outcome not reported', { checkpointId: req.checkpointId, node, error: describeFailure(err) }),
      );
  };
  // The failure keeps the type callers branch on (NoNodeFits, ChecksumMismatch...) and carries the status.
  const fail = (reason: string, type: string): never => {
    status.failureReason = reason;
    enter('Failed', reason);
    throw failedWith(reason, type, status, status.attempts);
  };

  let readiness: Readiness | undefined;
  if (req.readiness !== undefined) {
    try {
      readiness = parseReadiness(req.readiness);
    } catch (e) {
      fail(e instanceof InvalidInputError ? e.message : String(e), ErrorType.InvalidInput);
    }
  }

  upsertSearchAttributes([
    { key: SA_CHECKPOINT, value: req.checkpointId },
    { key: SA_PHASE, value: 'Placing' },
  ]);
  const info = await control.checkpointInfo
    .executeWithOptions({ summary: `look up checkpoint ${req.checkpointId}` }, [{ checkpointId: req.checkpointId }])
    .catch((err: unknown) => fail(describeFailure(err), failureType(err) ?? ErrorType.CheckpointNotFound));
  status.jobId = info.jobId;
  status.vramBytes = req.vramBytes ?? info.vramBytes;
  if (info.compat?.heldVram && info.compat.gpuUuid) status.sourceGpuUuid = info.compat.gpuUuid;
  upsertSearchAttributes([{ key: SA_JOB, value: info.jobId }]);

  // A job's own restores (resume, migration) are child workflows; one with no parent is someone else's.
  if (workflowInfo().parent === undefined && patched(PATCH_REFUSE_OPEN_JOB)) {
    const job = await askJobOpen(info.jobId, `is job ${info.jobId} still open`);
    if ('unanswered' in job)
      fail(
        `could not tell whether job ${info.jobId} is still open, so nothing was restored: ${job.unanswered}`,
        job.type ?? ErrorType.RestoreFailed,
      );
    else if (job.open) fail(openJobRefusal(req.checkpointId, info.jobId, job.state ?? 'unknown'), ErrorType.JobOpen);
  }

  const gate = patched(PATCH_COMPATIBILITY_GATE);
  if (gate) {
    // Before any bytes move: a checkpoint no node can restore fails now, with each node's reason, instead of
    // burning a restore attempt per node and then waiting out the placement deadline.
    // A gate that cannot answer (its activity failing for good) leaves placement as it was: placementCandidates
    // still filters by the same rules, only without the early, itemised failure.
    const survey = await control.placementSurvey
      .executeWithOptions({ summary: `which nodes can restore ${req.checkpointId}` }, [
        { ...(info.compat ? { compat: info.compat } : {}) },
      ])
      .catch((err: unknown) => {
        log.warn('compatibility gate unanswered; placing without it', {
          checkpointId: req.checkpointId,
          error: describeFailure(err),
        });
        return { nodes: [], largestGpuBytes: 0 };
      });
    if (survey.nodes.length > 0) status.compatibility = survey.nodes;
    if (survey.largestGpuBytes > 0 && status.vramBytes > survey.largestGpuBytes) {
      fail(
        `${status.vramBytes} bytes of VRAM needed, more than any single GPU has (largest: ${survey.largestGpuBytes} bytes); multi-GPU jobs are out of scope`,
        ErrorType.MultiGpuUnsupported,
      );
    }
    const asked = survey.nodes.filter((x) => !req.node || x.node === req.node);
    if (asked.length > 0 && asked.every((x) => x.reason !== null)) {
      fail(
        `no compatible node for checkpoint ${req.checkpointId}: ${asked.map((x) => `${x.node}: ${x.reason}`).join('; ')}`,
        ErrorType.NoCompatibleNode,
      );
    }
  }

  const deadlineMs = Date.now() + msOf(req.placementDeadline ?? '10m');
  let forceSource = false; // after a corrupt S3 copy: only the node holding the nvme copy will do
  // Nodes passed over since the last wait because S3 was out of reach from them, with why: tried again after it.
  const s3Away = new Map<string, string>();
  for (let n = 1; ; n++) {
    enter('Placing');
    const prefer = [...(req.prefer ?? []), info.node];
    // A checkpoint still waiting for upload (tier nvme) exists only on its own node.
    const pinned = forceSource || info.tier === 'nvme';
    if (pinned && req.node && req.node !== info.node) {
      fail(
        `checkpoint ${req.checkpointId} is only on ${info.node} (tier nvme, pending upload); it cannot be restored on ${req.node} yet`,
        ErrorType.CheckpointNotOnNode,
      );
    }
    const only = pinned ? info.node : req.node;
    const candidates = await control.placementCandidates.executeWithOptions(
      { summary: `nodes with ${status.vramBytes} bytes of VRAM free` },
      [
        {
          bytes: status.vramBytes,
          exclude: status.excluded,
          prefer,
          only,
          ...(gate && info.compat ? { compat: info.compat } : {}),
        },
      ],
    );
    const reservationId = `${workflowInfo().workflowId}/${n}`;
    const reservation =
      candidates.length === 0
        ? null
        : await control.reserve.executeWithOptions({ summary: `reserve ${status.vramBytes} bytes of VRAM` }, [
            { reservationId, bytes: status.vramBytes, candidates },
          ]);
    if (!reservation) {
      if (Date.now() >= deadlineMs && s3Away.size > 0) {
        fail(
          `S3 out of reach: ${[...s3Away].map(([node, why]) => `from ${node}: ${why}`).join('; ')}; waited ${req.placementDeadline ?? '10m'}. The checkpoint is untouched: restore it again once S3 answers`,
          ErrorType.S3Unavailable,
        );
      }
      if (Date.now() >= deadlineMs) {
        fail(
          `no node fits: ${status.vramBytes} bytes of VRAM needed${only ? ` on ${only}` : ''}; excluded: ${status.excluded.join(', ') || 'none'}; waited ${req.placementDeadline ?? '10m'}`,
          ErrorType.NoNodeFits,
        );
      }
      // Current details only (no upsert): the commands stay as they were.
      showDetails(
        status,
        s3Away.size > 0
          ? `S3 out of reach from ${[...s3Away.keys()].join(', ')}; next try in 10 s`
          : `no node has ${gib(status.vramBytes)} of VRAM free${only ? ` on ${only}` : ''}; next try in 10 s`,
      );
      // The outage is not theirs: after the wait they are candidates again (S3 may be back by then). Forgotten
      // here, so that a deadline met later names S3 only if it failed them again, not a shortage of VRAM since.
      status.excluded = status.excluded.filter((x) => !s3Away.has(x));
      s3Away.clear();
      await sleep('10s', { summary: `wait for ${gib(status.vramBytes)} of VRAM to free up` });
      n--;
      continue;
    }
    status.node = reservation.node;
    delete status.gpu;
    if (reservation.gpuIndex !== undefined) {
      const note = candidates.find((c) => c.node === reservation.node)?.note ?? null;
      status.gpu = { index: reservation.gpuIndex, note };
    }
    const attemptId = restoreAttemptId(workflowInfo().workflowId, workflowInfo().runId, n);
    const zoneOfNode = candidates.find((c) => c.node === reservation.node)?.zone;
    try {
      const proc = await attempt(
        req,
        status,
        reservation.node,
        attemptId,
        readiness,
        enter,
        info.metadataSha256 ?? null,
      );
      status.attempts.push({
        node: reservation.node,
        outcome: 'running',
        phase: 'Running',
        reason: null,
        at: new Date().toISOString(),
      });
      status.pid = proc.pid;
      await reportHealth(reservation.node, zoneOfNode, attemptId, null);
      enter('Running');
      return status;
    } catch (e) {
      const failed = e instanceof AttemptFailed ? e : new AttemptFailed(status.phase, e, null);
      const type = failureType(failed.cause);
      status.attempts.push({
        node: reservation.node,
        outcome: 'failed',
        phase: failed.phase,
        reason: failed.message,
        at: new Date().toISOString(),
      });
      await reportHealth(reservation.node, zoneOfNode, attemptId, failed.cause, failed.phase);
      if (failed.proc !== null) {
        // Half-restored (CRIU done, CUDA not, not ready): it must not run on. By identity: the kill may wait
        // for the agent, and by then the pid may name another process.
        const { pid, startTime } = failed.proc;
        await patientNode(reservation.node).killProcess.executeWithOptions(
          { summary: `kill half-restored pid ${pid}` },
          [{ pid, reason: failed.message, ...(startTime !== undefined ? { startTime } : {}) }],
        );
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
      if (
        type === ErrorType.CriuRestoreFailed ||
        type === ErrorType.MetadataInvalid ||
        type === ErrorType.CheckpointNotFound
      ) {
        const alertId = await control.raiseAlert.executeWithOptions({ summary: 'raise alert' }, [
          {
            kind: type,
            checkpointId: req.checkpointId,
            node: reservation.node,
            message: failed.message,
            raisedAt: new Date().toISOString(),
          },
        ]);
        fail(`${failed.message} (alert ${alertId})`, type);
      }
      if (!(type && TRY_ELSEWHERE.has(type)) && !agentLost(failed.cause))
        fail(failed.message, type ?? ErrorType.RestoreFailed);
      status.excluded.push(reservation.node);
      if (type === ErrorType.S3Unavailable && patched(PATCH_S3_OUTAGE_WAITS))
        s3Away.set(reservation.node, failed.message);
      else s3Away.delete(reservation.node);
      if (forceSource)
        fail(
          `the only node holding a verified copy (${info.node}) cannot take it: ${failed.message}`,
          type ?? ErrorType.RestoreFailed,
        );
    } finally {
      if (patched(PATCH_RELEASE_NEVER_FAILS)) {
        // After Running the restore has done its job: a reservation that cannot be released now is retried for
        // long, and recorded if even that fails, but never turns a running workload into a failed restore
        // (a migration would then restore it a second time).
        await releaser.release
          .executeWithOptions({ summary: 'release VRAM reservation' }, [{ reservationId }])
          .catch((err: unknown) => {
            const why = `reservation ${reservationId} not released: ${describeFailure(err)}`;
            (status.releaseFailures ??= []).push(why);
            log.warn(why, { checkpointId: req.checkpointId, node: reservation.node });
          });
      } else {
        await control.release.executeWithOptions({ summary: 'release VRAM reservation' }, [{ reservationId }]);
      }
    }
  }
}

type Stage = 'RestoringProcess' | 'RestoringVram' | 'Unlocking' | 'Verifying';
const PIPELINE: readonly Stage[] = ['RestoringProcess', 'RestoringVram', 'Unlocking', 'Verifying'];

/**
 * Where to carry on with a process CRIU restored while the agent was out of sight, from its CUDA state; null:
 * a state nothing can carry on from (the copy is killed). Without a CUDA context the lost step is run again
 * (its CUDA calls are skipped then).
 */
function resumeAt(cuda: string, lost: Stage): Stage | null {
  switch (cuda) {
    case 'checkpointed':
      return 'RestoringVram';
    case 'locked':
      return 'Unlocking';
    case 'running':
      return 'Verifying';
    case 'none':
      return lost === 'RestoringProcess' ? 'RestoringVram' : lost;
    default:
      return null;
  }
}

async function attempt(
  req: RestoreRequest,
  status: RestoreStatus,
  nodeName: string,
  attemptId: string,
  readiness: Readiness | undefined,
  enter: (p: RestorePhase) => void,
  metadataSha256: string | null,
): Promise<Restored> {
  const node = proxyActivities<NodeActivities>({
    taskQueue: nodeQueue(nodeName),
    scheduleToStartTimeout: '1m',
    startToCloseTimeout: '1h',
    heartbeatTimeout: '15s',
    retry: { maximumAttempts: 1 },
  });
  const step = async <T>(phase: RestorePhase, proc: Restored | null, fn: () => Promise<T>): Promise<T> => {
    enter(phase);
    try {
      return await fn();
    } catch (err) {
      throw new AttemptFailed(phase, err, proc);
    }
  };
  const own = patched(PATCH_RESTORE_COPY_PER_ATTEMPT) ? { attemptId } : {};
  const fetched = await step('Fetching', null, () =>
    node.fetch.executeWithOptions(
      {
        summary: `fetch and verify ${req.checkpointId} on ${nodeName}`,
        retry: {
          maximumAttempts: 3,
          nonRetryableErrorTypes: [ErrorType.ChecksumMismatch, ErrorType.CheckpointNotFound, ErrorType.MetadataInvalid],
        },
      },
      [{ checkpointId: req.checkpointId, metadataSha256, ...own }],
    ),
  );
  status.source = fetched.source;
  if (fetched.bytesFromNode) status.bytesFromNode = fetched.bytesFromNode;
  else delete status.bytesFromNode; // an earlier attempt's, on another node
  // Staged in memory for CRIU to read; once the process is back (or the attempt gave up) it is just memory held.
  const cleanup = proxyActivities<NodeActivities>({
    taskQueue: nodeQueue(nodeName),
    scheduleToCloseTimeout: '10m',
    startToCloseTimeout: '1m',
    retry: { maximumInterval: '30s' },
  });
  const release = (): Promise<void> =>
    cleanup.releaseStaging
      .executeWithOptions({ summary: `free the memory ${req.checkpointId} was fetched into` }, [
        { checkpointId: req.checkpointId, copy: 'restore', ...own },
      ])
      .then(
        () => undefined,
        (err: unknown) =>
          log.warn('staged copy not released', {
            checkpointId: req.checkpointId,
            node: nodeName,
            error: describeFailure(err),
          }),
      );
  let releasing: Promise<void> | null = null;
  try {
    const cur: { proc: Restored | null } = { proc: null };
    const run = async (stage: Stage): Promise<void> => {
      const proc = cur.proc;
      if (stage === 'RestoringProcess') {
        cur.proc = await step(stage, null, () =>
          node.criuRestore.executeWithOptions({ summary: `criu restore ${req.checkpointId} on ${nodeName}` }, [
            { checkpointId: req.checkpointId, attemptId },
          ]),
        );
        if (fetched.staged && releasing === null && patched(PATCH_RELEASE_STAGING_AFTER_CRIU)) releasing = release();
        return;
      }
      if (!proc)
        throw new AttemptFailed(
          stage,
          ApplicationFailure.nonRetryable(`${stage} without a restored process`, ErrorType.RestoreFailed),
          null,
        );
      const { pid } = proc;
      if (stage === 'RestoringVram') {
        await step(stage, proc, async () => {
          const gpuIndex = status.gpu?.index;
          await node.checkVram.executeWithOptions(
            {
              summary: `check ${status.vramBytes} bytes of VRAM free on ${nodeName}${gpuIndex !== undefined ? ` GPU ${gpuIndex}` : ''}`,
            },
            [{ bytes: status.vramBytes, ...(gpuIndex !== undefined ? { gpuIndex } : {}) }],
          );
          // On the reserved GPU: the node passes the old -> new GPU UUID pair where its driver (580+) can remap.
          const onGpu =
            gpuIndex !== undefined && status.sourceGpuUuid ? { sourceGpuUuid: status.sourceGpuUuid, gpuIndex } : {};
          return node.cudaRestore.executeWithOptions(
            { summary: `CUDA restore pid ${pid}${gpuIndex !== undefined ? ` onto GPU ${gpuIndex}` : ''}` },
            [{ pid, ...onGpu }],
          );
        });
      } else if (stage === 'Unlocking') {
        await step(stage, proc, () =>
          node.cudaUnlock.executeWithOptions({ summary: `CUDA unlock pid ${pid}` }, [{ pid }]),
        );
      } else {
        await step(stage, proc, async () => {
          if (patched(PATCH_VERIFY_RUNNING)) {
            await node.verifyRunning.executeWithOptions(
              { summary: `pid ${pid} running${readiness ? ' and ready' : ''}` },
              [
                {
                  pid,
                  ...(proc.startTime !== undefined ? { startTime: proc.startTime } : {}),
                  ...(readiness ? { readiness } : {}),
                },
              ],
            );
          } else {
            await node.verifyProgress.executeWithOptions({ summary: `pid ${pid} alive and making progress` }, [
              { pid, checkpointId: req.checkpointId },
            ]);
          }
          await node.adoptWorkload.executeWithOptions({ summary: `adopt job ${status.jobId} as pid ${pid}` }, [
            { jobId: status.jobId ?? req.checkpointId, pid, vramBytes: status.vramBytes },
          ]);
        });
      }
    };
    let at = 0;
    for (let recoveries = 0; ;) {
      try {
        for (; at < PIPELINE.length; at++) await run(PIPELINE[at]);
        if (!cur.proc)
          throw new AttemptFailed(
            'Verifying',
            ApplicationFailure.nonRetryable('no restored process', ErrorType.RestoreFailed),
            null,
          );
        return cur.proc;
      } catch (e) {
        const unknown =
          e instanceof AttemptFailed &&
          (agentLost(e.cause) || agentUnreachable(e.cause) || failureType(e.cause) === ErrorType.CriuInterrupted);
        if (!(e instanceof AttemptFailed) || !unknown || !patched(PATCH_INSPECT_AFTER_AGENT_LOST)) throw e;
        // Lost sight of the agent mid-restore: CRIU may have finished (or may still finish) on this node. Find out
        // before anything else, however long the agent is away; never place a second copy while this is unknown.
        const lost = e.phase as Stage;
        const seen = await patientNode(nodeName)
          .inspectRestore.executeWithOptions(
            { summary: `what became of restore attempt ${attemptId} on ${nodeName}` },
            [
              {
                checkpointId: req.checkpointId,
                attemptId,
                ...(cur.proc?.startTime !== undefined ? { pid: cur.proc.pid, startTime: cur.proc.startTime } : {}),
              },
            ],
          )
          .catch((err: unknown) => {
            throw new AttemptFailed(
              lost,
              ApplicationFailure.nonRetryable(
                `the agent of ${nodeName} was lost during ${lost} and never said what became of the restore (${describeFailure(err)}); not placed elsewhere, a copy may run there`,
                ErrorType.RestoreOutcomeUnknown,
              ),
              null,
            );
          });
        if (!seen.running || !seen.process) {
          // Nothing of this attempt runs there: CRIU never ran, failed (its own error then decides), or its process is gone.
          const cause =
            seen.failure && seen.failure.type !== ErrorType.CriuInterrupted
              ? ApplicationFailure.nonRetryable(seen.failure.message, seen.failure.type)
              : ApplicationFailure.nonRetryable(
                  `${describeFailure(e.cause)}; ${nodeName} reports nothing of this attempt running (CRIU ${seen.criu})`,
                  ErrorType.AgentLost,
                );
          throw new AttemptFailed(lost, cause, null);
        }
        cur.proc = seen.process;
        const next = resumeAt(seen.cuda, lost);
        if (next === null || ++recoveries > MAX_RECOVERIES) {
          const why =
            next === null
              ? `CUDA state ${seen.cuda} after the agent was lost`
              : `agent lost ${recoveries} times during this attempt`;
          throw new AttemptFailed(
            lost,
            ApplicationFailure.nonRetryable(`pid ${seen.process.pid} on ${nodeName}: ${why}`, ErrorType.NotRunning),
            seen.process,
          );
        }
        (status.recoveries ??= []).push(
          `${nodeName}: agent lost during ${lost} (${describeFailure(e.cause)}); CRIU restored pid ${seen.process.pid}, CUDA ${seen.cuda}: carried on at ${next}`,
        );
        log.warn('restore carried on after the agent was lost', {
          checkpointId: req.checkpointId,
          node: nodeName,
          attemptId,
          pid: seen.process.pid,
          lost,
          next,
        });
        at = PIPELINE.indexOf(next);
      }
    }
  } finally {
    if (fetched.staged) await (releasing ?? release());
  }
}

/** The UI's current details: phase, node, attempts so far, and a note (why it waits, why it failed). */
function showDetails(s: RestoreStatus, note?: string): void {
  const parts = [`phase: ${s.phase}`];
  if (s.node) parts.push(`on ${s.node}${s.gpu ? ` GPU ${s.gpu.index}` : ''}`);
  if (s.pid !== null) parts.push(`pid ${s.pid}`);
  if (s.vramBytes > 0) parts.push(`${gib(s.vramBytes)} of VRAM`);
  if (s.attempts.length > 0)
    parts.push(`attempt ${s.attempts.length + (s.phase === 'Running' || s.phase === 'Failed' ? 0 : 1)}`);
  if (s.source && s.phase !== 'Placing' && s.phase !== 'Fetching') parts.push(`fetched from ${s.source}`);
  if (note) parts.push(note);
  setCurrentDetails(parts.join(', '));
}

/** Bytes for the UI, in the largest binary unit that keeps them >= 1 (a small checkpoint is not "0.0 GiB"). */
const gib = (bytes: number): string => {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (i < units.length - 1 && bytes >= 1024 ** (i + 1)) i++;
  return i === 0 ? `${bytes} B` : `${(bytes / 1024 ** i).toFixed(1)} ${units[i]}`;
};

function msOf(d: string): number {
  const ms = durationMs(d);
  if (ms === null)
    throw ApplicationFailure.nonRetryable(
      `placementDeadline: expected e.g. '90s' or '10m' (got '${d}')`,
      'InvalidInput',
    );
  return ms;
}
