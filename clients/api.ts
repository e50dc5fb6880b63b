import { withWatchHeartbeat } from './node-seen';
import * as path from 'node:path';
import {
  Client,
  Connection,
  QueryNotRegisteredError,
  ServiceError,
  WorkflowExecutionAlreadyStartedError,
  WorkflowNotFoundError,
} from '@temporalio/client';
import type { CheckpointRequest, CheckpointStatus, Tier } from '../common/checkpoint';
import { type KybernateConfig, temporalConnectionOptions } from '../common/config';
import { bytesProblem } from '../common/bounds';
import { assertPid, assertSafeId, InvalidInputError } from '../common/ids';
import { checkpointWorkflowId, CONTROL_QUEUE, nodeWorkflowId, restoreWorkflowId } from '../common/queues';
import { parseReadiness, type Readiness } from '../common/readiness';
import type { RestoreRequest, RestoreStatus } from '../common/restore';
import { SA_CHECKPOINT, SA_JOB, SA_NODE, SA_PHASE, SA_TIER } from '../common/search-attributes';
import type { WorkloadInfo, WorkloadSpec } from '../activities/node/process';
import { openJobRefusal, type JobSpec, type JobStatus, type PreemptResult, TERMINAL_JOB_STATES } from '../common/job';
import type { NodeRecord } from '../common/node';
import type { HealthConfigPatch, HealthReport } from '../common/health';
import { configureHealth, readHealth } from './health';
import type { AdmissionConfig, AdmissionStatus } from '../common/admission';
// Workflows are started by reference (their function's name is the workflow type, and the argument and result
// types follow from it). Loading these modules outside a workflow is safe: at load they only define queries,
// signals and activity proxies, which act only when called inside a workflow.
import { checkpoint as checkpointWorkflow } from '../workflows/checkpoint';
import { migrate as migrateWorkflow, type MigrateRequest, type MigrateStatus } from '../workflows/migrate';
import { restore as restoreWorkflow } from '../workflows/restore';
import { chunkGc as chunkGcWorkflow } from '../workflows/chunk-gc';
import { CHUNK_GC_WORKFLOW_ID, type ChunkGcInput, type ChunkGcResult } from '../common/chunk-gc';
import { runWorkload as runWorkloadWorkflow, stopWorkload as stopWorkloadWorkflow } from '../workflows/workload';
import { listS3CheckpointIds, readS3Checkpoint, type S3Checkpoint } from '../activities/catalogue';
import { jobWorkflowOpen } from '../activities/control/job-open';
import { admissionStatus, admit, configureAdmission, requestPriority } from './admission';
import { parseDuration } from './durations';
import { UnavailableError } from './errors';
import { pendingActivityBytes, withLiveBytes } from './live-bytes';
import { type LogOptions, type LogSink, showLogs } from './job-logs';
import { JobExistsError, JobsApi, type JobListEntry } from './jobs';
import { SchedulesApi } from './schedules';
import { ChunkGcScheduleApi } from './chunk-gc-schedule';
import { type CheckpointRecord, checkpointFromRecord, RECORD_TIMEOUT_MS } from './record';
import { isCheckpointStatus, isMigrateStatus, isRestoreStatus, resultOf } from './result';
import { CONNECT_TIMEOUT_MS, QUERY_TIMEOUT_MS, WATCH_INTERVAL_MS } from './timeouts';

export { CONNECT_TIMEOUT_MS, QUERY_TIMEOUT_MS, WATCH_INTERVAL_MS } from './timeouts';

/** A byte count given to the API (not parsed from text): whole, from 0 to the VRAM bound. */
function assertBytes(field: string, n: number | undefined): number | undefined {
  const problem = n === undefined ? null : bytesProblem(n);
  if (problem) throw new InvalidInputError(field, problem);
  return n;
}

export interface CheckpointListEntry {
  checkpointId: string;
  jobId: string;
  node: string;
  phase: string;
  tier: string;
  workflowStatus: string;
  startedAt: string;
  /** Known from its workflow, or only from metadata.json in S3 (its workflow history is gone). */
  source: 'temporal' | 's3';
}

/** Called with each status a waiting call reads (progress display); never called after the call returns. */
export type OnStatus<S> = (status: S) => void;

/** Typed access to Kybernate's workflows; the CLI and tests are built on it. */
export class KybernateClient {
  /** The job workflows (`job/<jobId>`): start, status, list, preempt, release, cancel, logs. */
  readonly jobs: JobsApi;
  /** Preemption schedules (`preempt/<name>`, Temporal Schedules starting preemptionSweep workflows). */
  readonly schedules: SchedulesApi;
  /** The chunk-gc schedule (a Temporal Schedule starting scheduledChunkGc workflows). */
  readonly chunkGcSchedule: ChunkGcScheduleApi;

  private constructor(
    readonly client: Client,
    private readonly connection: Connection,
    readonly config: KybernateConfig,
  ) {
    this.jobs = new JobsApi(this);
    this.schedules = new SchedulesApi(this);
    this.chunkGcSchedule = new ChunkGcScheduleApi(this);
  }

  static async connect(config: KybernateConfig): Promise<KybernateClient> {
    let connection: Connection;
    try {
      connection = await Connection.connect({
        ...temporalConnectionOptions(config),
        connectTimeout: CONNECT_TIMEOUT_MS,
      });
    } catch (e) {
      throw new UnavailableError('Temporal', config.temporalAddress, (e as Error).message);
    }
    return new KybernateClient(new Client({ connection, namespace: config.namespace }), connection, config);
  }

  async close(): Promise<void> {
    await this.connection.close();
  }

  uiLink(workflowId: string): string | null {
    return this.config.uiUrl
      ? `${this.config.uiUrl}/namespaces/${this.config.namespace}/workflows/${encodeURIComponent(workflowId)}`
      : null;
  }

  /**
   * Each node's health score and state (Healthy | Quarantined) and each zone's breaker (Closed | Open |
   * HalfOpen), as the placement workflow holds them, at this machine's clock; null before anything was placed.
   */
  async health(): Promise<HealthReport | null> {
    return readHealth(this.client);
  }

  /** Changes the health rules (half-life, quarantine threshold, zone breaker); validated field by field. */
  async configureHealth(patch: HealthConfigPatch): Promise<void> {
    return configureHealth(this.client, patch);
  }

  /** Admission's state (Normal or Degraded, backlog, limit, latency, why); null when it has never run. */
  async admissionStatus(): Promise<AdmissionStatus | null> {
    return admissionStatus(this);
  }

  /** Changes admission's settings (e.g. the backlog limit); its status after. */
  async configureAdmission(patch: Partial<AdmissionConfig>): Promise<AdmissionStatus> {
    return configureAdmission(this, patch);
  }

  /**
   * A checkpoint of a job whose job workflow is still open (running it, or about to run it again) would, restored
   * by hand, run that job twice: refused (JobExistsError), naming what moves or stops the job instead. The job's
   * own restores (resume after preemption, migration) are its child workflows and never come through here; a
   * checkpoint of a bare workload, or of a job that ended, may be restored.
   */
  private async refuseWhileJobOpen(jobId: string, checkpointId: string): Promise<void> {
    if (!(await this.withinTemporal(() => jobWorkflowOpen(this.client, jobId)))) return;
    const existing = await this.jobs.status(jobId).catch(() => null);
    const state = existing?.state ?? 'unknown: it did not answer';
    throw new JobExistsError(jobId, existing, state, openJobRefusal(checkpointId, jobId, state));
  }

  /** A node exists once its agent has reported to its registry workflow. */
  async node(node: string): Promise<NodeRecord> {
    assertSafeId('node', node);
    try {
      const rec = await this.queryStatus<NodeRecord>(nodeWorkflowId(node));
      return await withWatchHeartbeat(this.client, nodeWorkflowId(node), rec);
    } catch (e) {
      if (e instanceof WorkflowNotFoundError)
        throw new InvalidInputError('node', `unknown node '${node}': no agent has registered it`);
      throw e;
    }
  }

  /**
   * Every registered node (a running registry workflow `node/<name>`), by name, or only the named ones in that
   * order (an unknown one is an error): state, inventory, last seen, health score. Like `node`, an unanswered
   * query (the control worker down) is an error; a registry that closed between the listing and its query is
   * left out.
   */
  async nodes(only: string[] = []): Promise<NodeRecord[]> {
    const records: NodeRecord[] = [];
    if (only.length > 0) records.push(...(await Promise.all(only.map((n) => this.node(n)))));
    else
      for await (const wf of this.client.workflow.list({
        query: `WorkflowType = 'nodeRegistry' AND ExecutionStatus = 'Running'`,
      })) {
        try {
          const rec = await this.queryStatus<NodeRecord>(wf.workflowId);
          records.push(await withWatchHeartbeat(this.client, wf.workflowId, rec));
        } catch (e) {
          if (!(e instanceof WorkflowNotFoundError)) throw e;
        }
      }
    // Liveness from each node's registry, score and quarantine from the placement workflow's health view.
    const health = await this.health();
    const byNode = new Map((health?.nodes ?? []).map((h) => [h.node, h]));
    const out = records.map((rec, i) => {
      const node = only[i] ?? rec.node;
      const h = byNode.get(node);
      // A node the placement workflow never heard of has had no failures: a full score.
      return { ...rec, node, score: h?.score ?? 1, quarantined: h?.state === 'Quarantined' };
    });
    return only.length > 0 ? out : out.sort((a, b) => a.node.localeCompare(b.node));
  }

  /** Validates everything that can be checked without touching the workload, then starts the workflow. */
  async startCheckpoint(input: {
    target: string;
    node: string;
    leaveRunning?: boolean;
    reason?: CheckpointRequest['reason'];
    checkpointId?: string;
    uploadMaxAttempts?: number;
    /** VRAM the job needs when restored (a CPU-only process needs none). */
    vramBytes?: number;
    /** 0 (critical, never refused) to 10; default 5. Admission may refuse it (AdmissionRefusedError). */
    priority?: number;
  }): Promise<{ workflowId: string; request: CheckpointRequest }> {
    const node = assertSafeId('node', input.node);
    const isPid = /^[0-9]+$/.test(input.target);
    const pid = isPid ? assertPid('pid', input.target) : undefined;
    const jobId = isPid ? `pid-${pid}` : assertSafeId('job', input.target);
    const checkpointId = assertSafeId('checkpointId', input.checkpointId ?? `${jobId}-${Date.now().toString(36)}`);
    assertBytes('vramBytes', input.vramBytes);
    const priority = requestPriority(input.priority);
    if (
      input.uploadMaxAttempts !== undefined &&
      !(Number.isInteger(input.uploadMaxAttempts) && input.uploadMaxAttempts >= 1 && input.uploadMaxAttempts <= 1000)
    ) {
      throw new InvalidInputError(
        'uploadMaxAttempts',
        `must be a whole number from 1 to 1000 (got ${input.uploadMaxAttempts})`,
      );
    }
    await this.node(node);
    const request: CheckpointRequest = {
      checkpointId,
      jobId,
      node,
      pid,
      leaveRunning: input.leaveRunning ?? false,
      reason: input.reason ?? 'manual',
      uploadMaxAttempts: input.uploadMaxAttempts,
      vramBytes: input.vramBytes,
    };
    const workflowId = checkpointWorkflowId(checkpointId);
    // Ids are never reused: S3 remembers checkpoints whose workflow history has expired, and the workflow id
    // is refused while Temporal still has one, open or closed.
    // Best effort: S3 out of reach must not stop a checkpoint (it then goes to tier nvme); the upload itself
    // refuses to overwrite another checkpoint's metadata.json, and the node one it holds.
    if (await readS3Checkpoint(this.config.s3, checkpointId).catch(() => null)) {
      throw new InvalidInputError(
        'checkpointId',
        `checkpoint '${checkpointId}' exists in S3; checkpoint ids are never reused`,
      );
    }
    await admit(this, { workflowId, kind: 'checkpoint', priority });
    await this.client.workflow
      .start(checkpointWorkflow, {
        workflowId,
        taskQueue: CONTROL_QUEUE,
        args: [request],
        workflowIdReusePolicy: 'REJECT_DUPLICATE',
        typedSearchAttributes: [
          { key: SA_JOB, value: jobId },
          { key: SA_NODE, value: node },
          { key: SA_CHECKPOINT, value: checkpointId },
          { key: SA_PHASE, value: 'Pending' },
        ],
        staticSummary: `Checkpoint ${jobId} on ${node}`,
        staticDetails: `checkpoint ${checkpointId} of job ${jobId} on node ${node}: ${request.reason}${request.leaveRunning ? ', left running' : ', the workload stops once dumped'}`,
      })
      .catch((e: unknown) => {
        if (e instanceof WorkflowExecutionAlreadyStartedError) {
          throw new InvalidInputError(
            'checkpointId',
            `checkpoint '${checkpointId}' exists (workflow ${workflowId}); checkpoint ids are never reused`,
          );
        }
        throw e;
      });
    return { workflowId, request };
  }

  /**
   * Starts a workload on a node. cwd (absolute) is where it runs and what a relative command resolves against,
   * as in a shell; user runs it as that numeric uid (and gid) instead of the agent's user.
   */
  async runWorkload(input: {
    node: string;
    jobId: string;
    command: string[];
    cwd?: string;
    user?: { uid: number; gid?: number };
    env?: Record<string, string>;
  }): Promise<WorkloadInfo> {
    const node = assertSafeId('node', input.node);
    const jobId = assertSafeId('job', input.jobId);
    if (input.command.length === 0) throw new InvalidInputError('command', 'is required');
    if (input.cwd !== undefined && !path.isAbsolute(input.cwd))
      throw new InvalidInputError('cwd', `must be an absolute path (got '${input.cwd}')`);
    await this.node(node);
    const spec: WorkloadSpec = { jobId, command: input.command };
    if (input.cwd !== undefined) spec.cwd = input.cwd;
    if (input.user !== undefined) spec.user = input.user;
    if (input.env !== undefined) spec.env = input.env;
    return this.client.workflow.execute(runWorkloadWorkflow, {
      workflowId: `workload/${jobId}/${Date.now().toString(36)}`,
      taskQueue: CONTROL_QUEUE,
      args: [{ node, spec }],
      staticSummary: `Start ${jobId} on ${node}`,
    });
  }

  /** Stops a job on a node: SIGTERM, then SIGKILL after graceMs (default 30 s). */
  async stopWorkload(input: {
    node: string;
    jobId: string;
    graceMs?: number;
    reason?: string;
  }): Promise<{ stopped: boolean; signal: 'SIGTERM' | 'SIGKILL' | null; afterMs: number }> {
    const node = assertSafeId('node', input.node);
    const jobId = assertSafeId('job', input.jobId);
    if (
      input.graceMs !== undefined &&
      (!Number.isInteger(input.graceMs) || input.graceMs < 0 || input.graceMs > 3600000)
    ) {
      throw new InvalidInputError(
        'graceMs',
        `must be a whole number of milliseconds from 0 to 3600000 (got ${input.graceMs})`,
      );
    }
    await this.node(node);
    return this.client.workflow.execute(stopWorkloadWorkflow, {
      workflowId: `stop/${jobId}/${Date.now().toString(36)}`,
      taskQueue: CONTROL_QUEUE,
      args: [{ node, jobId, graceMs: input.graceMs, reason: input.reason }],
      staticSummary: `Stop ${jobId} on ${node}`,
    });
  }

  /** A checkpoint's final status (Durable, or Failed with its reason), waiting for it; onStatus sees it on the way. */
  async checkpointResult(checkpointId: string, onStatus?: OnStatus<CheckpointStatus>): Promise<CheckpointStatus> {
    return this.watch(checkpointWorkflowId(assertSafeId('checkpoint', checkpointId)), isCheckpointStatus, onStatus);
  }

  /**
   * Waits for a workflow's final status (see resultOf), asking its `status` query every WATCH_INTERVAL_MS
   * meanwhile for onStatus. A query that goes unanswered (the worker away) is skipped: the wait goes on.
   */
  async watch<S>(
    workflowId: string,
    is: (x: unknown) => x is S,
    onStatus?: OnStatus<S>,
    intervalMs = WATCH_INTERVAL_MS,
  ): Promise<S> {
    const handle = this.client.workflow.getHandle(workflowId);
    let done = false;
    const result = resultOf(handle, is).finally(() => {
      done = true;
    });
    if (onStatus) {
      void (async () => {
        while (!done) {
          const s = await this.client
            .withDeadline(Date.now() + QUERY_TIMEOUT_MS, () => handle.query<unknown>('status'))
            .catch(() => null);
          const live = is(s)
            ? await this.client
                .withDeadline(Date.now() + QUERY_TIMEOUT_MS, () => pendingActivityBytes(handle))
                .catch(() => null)
            : null;
          if (!done && is(s)) onStatus(withLiveBytes(s, live));
          await new Promise((r) => setTimeout(r, intervalMs).unref());
        }
      })();
    }
    return result;
  }

  /**
   * The checkpoint workflow's live status; when the control worker does not answer, what Temporal's record
   * and S3 hold (see checkpointFromRecord), marked answeredBy 'temporal-record'.
   */
  async describeCheckpoint(checkpointId: string): Promise<CheckpointStatus | CheckpointRecord> {
    const workflowId = checkpointWorkflowId(assertSafeId('checkpoint', checkpointId));
    try {
      return await this.queryStatus<CheckpointStatus>(workflowId);
    } catch (e) {
      if (e instanceof WorkflowNotFoundError) {
        // Temporal no longer has its history (retention): S3's metadata.json is the catalogue.
        const found = await readS3Checkpoint(this.config.s3, checkpointId);
        if (!found) throw new InvalidInputError('checkpoint', `no checkpoint '${checkpointId}'`);
        return statusFromS3(found);
      }
      if (e instanceof UnavailableError && e.component === 'control worker')
        return this.withinTemporal(() => checkpointFromRecord(this.client, this.config.s3, checkpointId, e.message));
      if (e instanceof QueryNotRegisteredError) {
        // Failed before it set up its status (an invalid request): its record says why.
        return this.withinTemporal(() =>
          checkpointFromRecord(this.client, this.config.s3, checkpointId, 'the workflow has no status to report'),
        );
      }
      throw e;
    }
  }

  /** A workflow's `status` query, bounded: a workflow whose worker is down would leave the call blocked. */
  async queryStatus<T>(workflowId: string): Promise<T> {
    try {
      return await this.client.withDeadline(Date.now() + QUERY_TIMEOUT_MS, () =>
        this.client.workflow.getHandle(workflowId).query<T>('status'),
      );
    } catch (e) {
      if (!(e instanceof ServiceError)) throw e;
      // Temporal answers record look-ups itself: if it does, the query went unanswered for want of a worker.
      await this.withinTemporal(() => this.client.workflow.getHandle(workflowId).describe());
      throw new UnavailableError(
        'control worker',
        `task queue ${CONTROL_QUEUE}`,
        `no answer to a query of ${workflowId} within ${QUERY_TIMEOUT_MS / 1000}s (is 'kybernate worker' running?)`,
      );
    }
  }

  /** A look-up in Temporal's own record (describe, history, visibility), bounded; a frontend that does not answer is named. */
  async withinTemporal<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await this.client.withDeadline(Date.now() + RECORD_TIMEOUT_MS * 3, fn);
    } catch (e) {
      if (e instanceof ServiceError) throw new UnavailableError('Temporal', this.config.temporalAddress, e.message);
      throw e;
    }
  }

  /** Restores a checkpoint on a node chosen by free VRAM (or on the given node only). */
  async startRestore(input: {
    checkpointId: string;
    node?: string;
    vramBytes?: number;
    placementDeadline?: string;
    readiness?: Readiness;
    /** 0 (critical, never refused) to 10; default 5. Admission may refuse it (AdmissionRefusedError). */
    priority?: number;
  }): Promise<{ workflowId: string }> {
    const checkpointId = assertSafeId('checkpoint', input.checkpointId);
    const priority = requestPriority(input.priority);
    if (input.node) assertSafeId('node', input.node);
    if (input.placementDeadline !== undefined) parseDuration('placement-deadline', input.placementDeadline);
    assertBytes('vramBytes', input.vramBytes);
    const readiness = input.readiness === undefined ? undefined : parseReadiness(input.readiness);
    if (input.node) await this.node(input.node);
    const ck = await this.describeCheckpoint(checkpointId);
    if (ck.jobId) await this.refuseWhileJobOpen(ck.jobId, checkpointId);
    let n = 1;
    for await (const _ of this.client.workflow.list({
      query: `WorkflowType = 'restore' AND ${SA_CHECKPOINT.name} = '${checkpointId}'`,
    }))
      n++;
    for (;;) {
      const workflowId = restoreWorkflowId(checkpointId, n);
      await admit(this, { workflowId, kind: 'restore', priority });
      try {
        await this.client.workflow.start(restoreWorkflow, {
          workflowId,
          taskQueue: CONTROL_QUEUE,
          args: [
            {
              checkpointId,
              node: input.node,
              vramBytes: input.vramBytes,
              placementDeadline: input.placementDeadline,
              ...(readiness ? { readiness } : {}),
            } satisfies RestoreRequest,
          ],
          typedSearchAttributes: [
            { key: SA_CHECKPOINT, value: checkpointId },
            { key: SA_PHASE, value: 'Placing' },
          ],
          staticSummary: `Restore ${checkpointId} on ${input.node ?? 'a node with room'}`,
        });
        return { workflowId };
      } catch (e) {
        if (!(e instanceof WorkflowExecutionAlreadyStartedError)) throw e;
        n++; // visibility lags behind a restore started a moment ago
      }
    }
  }

  /** A restore's final status (Running, or Failed with its reason), waiting for it. */
  async restoreResult(workflowId: string, onStatus?: OnStatus<RestoreStatus>): Promise<RestoreStatus> {
    return this.watch(workflowId, isRestoreStatus, onStatus);
  }

  /** A migration's final status (Migrated, or why not), waiting for it. */
  async migrationResult(workflowId: string, onStatus?: OnStatus<MigrateStatus>): Promise<MigrateStatus> {
    return this.watch(workflowId, isMigrateStatus, onStatus);
  }

  /** Checkpoints a workload and waits for the outcome (startCheckpoint, then checkpointResult). */
  async checkpoint(
    input: Parameters<KybernateClient['startCheckpoint']>[0],
    onStatus?: OnStatus<CheckpointStatus>,
  ): Promise<CheckpointStatus> {
    const { request } = await this.startCheckpoint(input);
    return this.checkpointResult(request.checkpointId, onStatus);
  }

  /** Restores a checkpoint and waits until it runs or the restore failed (startRestore, then restoreResult). */
  async restore(
    input: Parameters<KybernateClient['startRestore']>[0],
    onStatus?: OnStatus<RestoreStatus>,
  ): Promise<RestoreStatus> {
    const { workflowId } = await this.startRestore(input);
    return this.restoreResult(workflowId, onStatus);
  }

  /**
   * Moves a workload to another node and waits for the outcome: a job run by a job workflow through that workflow
   * (migrateJob), a bare workload by a migrate workflow (startMigration, then migrationResult).
   */
  async migrate(
    input: Parameters<KybernateClient['startMigration']>[0],
    onStatus?: OnStatus<MigrateStatus>,
  ): Promise<MigrateStatus> {
    if (await this.jobs.isOpen(assertSafeId('job', input.jobId))) {
      if (input.readiness !== undefined)
        throw new InvalidInputError('readiness', `job ${input.jobId} is resumed ready by its spec's readiness`);
      return this.migrateJob({ jobId: input.jobId, from: input.from, to: input.to, wait: true }, onStatus);
    }
    const { workflowId } = await this.startMigration(input);
    return this.migrationResult(workflowId, onStatus);
  }

  /**
   * Moves a job run by a job workflow to another node through that workflow's migrate update: its run is
   * checkpointed and stopped, then resumed from that checkpoint on `to`, or on another node when `to` has no
   * room (the node it left last). A move from outside the job would leave the job to start its run again beside
   * the moved copy. The answer is a migration's status, as for a bare workload: Migrated, RestoredOnSource
   * (only the node it left had room), or Failed (the checkpoint failed: the job runs on, or restarted; or the
   * resumed run failed). With wait false it answers once the run is checkpointed and stopped (phase Restoring).
   */
  async migrateJob(
    input: { jobId: string; from?: string; to: string; wait?: boolean },
    onStatus?: OnStatus<MigrateStatus>,
  ): Promise<MigrateStatus> {
    const jobId = assertSafeId('job', input.jobId);
    const to = assertSafeId('to', input.to);
    const before = await this.jobs.status(jobId);
    const from = before.node ?? '';
    if (input.from !== undefined && assertSafeId('from', input.from) !== from)
      throw new InvalidInputError('from', `job ${jobId} runs on ${from || 'no node'}, not on ${input.from}`);
    if (to === from) throw new InvalidInputError('to', `must differ from the node the job runs on (${from})`);
    await this.node(to);
    const lastRun = before.runs.at(-1)?.run ?? 0;
    const r = await this.jobs.migrate(jobId, to);
    const status: MigrateStatus = {
      jobId,
      from,
      to,
      phase: 'Restoring',
      checkpointId: r.checkpointId,
      checkpoint: null,
      restores: [],
      failureReason: null,
    };
    if (r.outcome !== 'requeued') return { ...status, phase: 'Failed', failureReason: r.message };
    if (input.wait === false) return status;
    for (;;) {
      const s = await this.jobs.status(jobId);
      const run = s.runs.at(-1);
      if (s.state === 'Running' && run && run.run > lastRun)
        return run.node === from
          ? {
              ...status,
              phase: 'RestoredOnSource',
              failureReason: `no node other than ${from} had room: resumed there`,
            }
          : { ...status, phase: 'Migrated' };
      if (TERMINAL_JOB_STATES.includes(s.state) || s.state === 'Quarantined' || s.state === 'CrashLoopBackOff')
        return {
          ...status,
          phase: 'Failed',
          failureReason: `job ${jobId} is ${s.state}: ${s.reason ?? 'no reason recorded'}`,
        };
      onStatus?.(status);
      await new Promise((res) => setTimeout(res, WATCH_INTERVAL_MS));
    }
  }

  /** Starts a job (see JobsApi.start). */
  async run(spec: JobSpec): Promise<{ workflowId: string; spec: JobSpec }> {
    return this.jobs.start(spec);
  }

  /**
   * One collection of the chunks no checkpoint names (workflow chunk-gc), waited for. Two never overlap: with one
   * running already, this waits for that one and returns its result (its own input: see result.dryRun).
   */
  async collectChunks(input: ChunkGcInput): Promise<ChunkGcResult> {
    const h = await this.client.workflow.start(chunkGcWorkflow, {
      taskQueue: CONTROL_QUEUE,
      workflowId: CHUNK_GC_WORKFLOW_ID,
      args: [input],
      workflowIdConflictPolicy: 'USE_EXISTING',
      workflowIdReusePolicy: 'ALLOW_DUPLICATE',
    });
    return h.result();
  }

  /** Checkpoints a running job for preemption and requeues it. */
  async preempt(jobId: string): Promise<PreemptResult> {
    return this.jobs.preempt(jobId);
  }

  /** Lifts a job's quarantine; its status after. */
  async release(jobId: string, opts: { fromCheckpoint?: boolean } = {}): Promise<JobStatus> {
    return this.jobs.release(jobId, opts);
  }

  /** Cancels a job; with wait (the default) until it closed, else returns once asked. True if it closed. */
  async cancel(jobId: string, opts: { wait?: boolean; waitMs?: number } = {}): Promise<boolean> {
    if (opts.wait === false) {
      await this.jobs.requestCancel(jobId);
      return false;
    }
    return this.jobs.cancel(jobId, opts.waitMs);
  }

  /** Every job with its status (or why it has none). */
  async list(): Promise<JobListEntry[]> {
    return this.jobs.list();
  }

  /** A checkpoint's status: live, or from Temporal's record or S3 (see describeCheckpoint). */
  async describe(checkpointId: string): Promise<CheckpointStatus | CheckpointRecord> {
    return this.describeCheckpoint(checkpointId);
  }

  /** A job's status (spec, state, runs, events, checkpoints). */
  async describeJob(jobId: string): Promise<JobStatus> {
    return this.jobs.status(jobId);
  }

  /** A job's output, written to sink (see showLogs). */
  async logs(jobId: string, opts: LogOptions, sink: LogSink): Promise<void> {
    return showLogs(this.jobs, assertSafeId('job', jobId), opts, sink);
  }

  /** The bytes of a checkpoint in S3 (its files, as metadata.json lists them); null when it is not there (yet). */
  async checkpointSize(checkpointId: string): Promise<number | null> {
    const found = await readS3Checkpoint(this.config.s3, assertSafeId('checkpoint', checkpointId)).catch(() => null);
    return found ? found.metadata.files.reduce((n, f) => n + f.size, 0) : null;
  }

  /** The node a job runs on: the newest completed workflow that placed it there (start or restore). */
  async jobNode(jobId: string): Promise<string> {
    assertSafeId('job', jobId);
    let newest: { node: string; at: number } | null = null;
    const q = `${SA_JOB.name} = '${jobId}' AND (WorkflowType = 'runWorkload' OR WorkflowType = 'restore') AND ExecutionStatus = 'Completed'`;
    for await (const wf of this.client.workflow.list({ query: q })) {
      const node = wf.typedSearchAttributes.get(SA_NODE);
      const at = (wf.closeTime ?? wf.startTime).getTime();
      if (node && (!newest || at > newest.at)) newest = { node, at };
    }
    if (!newest) throw new InvalidInputError('job', `no node is known to run job '${jobId}'; pass --from`);
    return newest.node;
  }

  /** Checkpoints a job on the node it runs on and restores it on another, as one workflow. */
  async startMigration(input: {
    jobId: string;
    from?: string;
    to: string;
    vramBytes?: number;
    placementDeadline?: string;
    readiness?: Readiness;
    /** 0 (critical, never refused) to 10; default 5. Admission may refuse it (AdmissionRefusedError). */
    priority?: number;
  }): Promise<{ workflowId: string; checkpointId: string }> {
    const jobId = assertSafeId('job', input.jobId);
    const priority = requestPriority(input.priority);
    const readiness = input.readiness === undefined ? undefined : parseReadiness(input.readiness);
    if (await this.jobs.isOpen(jobId)) {
      // The migrate workflow would refuse it (JobOpen): only the job's own workflow moves its process.
      const existing = await this.jobs.status(jobId).catch(() => null);
      throw new JobExistsError(
        jobId,
        existing,
        existing?.state ?? 'unknown: it did not answer',
        `job ${jobId} is run by a job workflow: it moves through that workflow (migrateJob, or migrate, which routes there)`,
      );
    }
    const from = input.from ? assertSafeId('from', input.from) : await this.jobNode(jobId);
    const to = assertSafeId('to', input.to);
    if (from === to) throw new InvalidInputError('to', `must differ from the node the job runs on (${from})`);
    if (input.placementDeadline !== undefined) parseDuration('placement-deadline', input.placementDeadline);
    assertBytes('vramBytes', input.vramBytes);
    await this.node(from);
    await this.node(to);
    const checkpointId = assertSafeId('checkpointId', `${jobId}-mig-${Date.now().toString(36)}`);
    const workflowId = `migrate/${checkpointId}`;
    await admit(this, { workflowId, kind: 'migrate', priority });
    await this.client.workflow.start(migrateWorkflow, {
      workflowId,
      taskQueue: CONTROL_QUEUE,
      args: [
        {
          jobId,
          from,
          to,
          checkpointId,
          vramBytes: input.vramBytes,
          placementDeadline: input.placementDeadline,
          ...(readiness ? { readiness } : {}),
        } satisfies MigrateRequest,
      ],
      typedSearchAttributes: [
        { key: SA_JOB, value: jobId },
        { key: SA_NODE, value: from },
      ],
      staticSummary: `Migrate ${jobId} from ${from} to ${to}`,
    });
    return { workflowId, checkpointId };
  }

  private async hasWorkflow(workflowId: string): Promise<boolean> {
    try {
      await this.client.workflow.getHandle(workflowId).describe();
      return true;
    } catch (e) {
      if (e instanceof WorkflowNotFoundError) return false;
      throw e;
    }
  }

  async listCheckpoints(filter: { job?: string; tier?: Tier } = {}): Promise<CheckpointListEntry[]> {
    const q = [`WorkflowType = 'checkpoint'`];
    if (filter.job) q.push(`${SA_JOB.name} = '${assertSafeId('job', filter.job)}'`);
    if (filter.tier) {
      if (filter.tier !== 's3' && filter.tier !== 'nvme')
        throw new InvalidInputError('tier', `must be 's3' or 'nvme' (got '${String(filter.tier)}')`);
      q.push(`${SA_TIER.name} = '${filter.tier}'`);
    }
    const out: CheckpointListEntry[] = [];
    const seen = new Set<string>();
    for await (const wf of this.client.workflow.list({ query: q.join(' AND ') })) {
      const sa = wf.typedSearchAttributes;
      out.push({
        checkpointId: sa.get(SA_CHECKPOINT) ?? wf.workflowId.replace(/^checkpoint\//, ''),
        jobId: sa.get(SA_JOB) ?? '',
        node: sa.get(SA_NODE) ?? '',
        phase: sa.get(SA_PHASE) ?? '',
        tier: sa.get(SA_TIER) ?? '',
        workflowStatus: wf.status.name,
        startedAt: wf.startTime.toISOString(),
        source: 'temporal',
      });
      seen.add(out[out.length - 1].checkpointId);
    }
    // S3 is the catalogue's source of truth: checkpoints whose workflow history has expired are listed from
    // their metadata.json (Durable on s3 by definition: metadata.json is uploaded last).
    if (filter.tier === 'nvme') return out;
    for (const id of await listS3CheckpointIds(this.config.s3)) {
      if (seen.has(id) || (await this.hasWorkflow(checkpointWorkflowId(id)))) continue; // filtered out above, or visibility lagging
      const found = await readS3Checkpoint(this.config.s3, id);
      if (!found || (filter.job && found.metadata.jobId !== filter.job)) continue;
      out.push({
        checkpointId: id,
        jobId: found.metadata.jobId,
        node: found.metadata.node,
        phase: 'Durable',
        tier: 's3',
        workflowStatus: 'NO_HISTORY',
        startedAt: found.metadata.createdAt,
        source: 's3',
      });
    }
    return out;
  }
}

/** A checkpoint known only from S3: Durable there (metadata.json is committed last), its history gone. */
function statusFromS3(found: S3Checkpoint): CheckpointStatus {
  const md = found.metadata;
  return {
    checkpointId: md.checkpointId,
    jobId: md.jobId,
    node: md.node,
    pid: md.pid,
    vramBytes: md.cuda.vramBytes,
    phase: 'Durable',
    tier: 's3',
    failureReason: null,
    upload: null,
    metadataSha256: null,
    workloadLost: null,
    history: [
      {
        phase: 'Durable',
        outcome: 'ok',
        detail: "from metadata.json in S3: the checkpoint workflow's history is no longer in Temporal",
        at: md.createdAt,
      },
    ],
  };
}
