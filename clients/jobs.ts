import { randomUUID } from 'node:crypto';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import {
  ServiceError,
  type WorkflowExecutionInfo,
  WorkflowExecutionAlreadyStartedError,
  type WorkflowHandle,
  WorkflowNotFoundError,
  WorkflowUpdateRPCTimeoutOrCancelledError,
  WorkflowUpdateStage,
} from '@temporalio/client';
import { makeS3Client } from '../activities/s3-client';
import { assertSafeId, InvalidInputError } from '../common/ids';
import {
  JOB_MIGRATE_UPDATE,
  JOB_PREEMPT_UPDATE,
  JOB_RELEASE_UPDATE,
  type JobSpec,
  type JobStatus,
  jobWorkflowId,
  type MigrateJobRequest,
  type PreemptResult,
  type ReadRunLogInput,
} from '../common/job';
import { parseJobSpec } from '../common/job-spec';
import { CONTROL_QUEUE } from '../common/queues';
import { SA_JOB, SA_NODE, SA_PHASE } from '../common/search-attributes';
// Started by reference (see api.ts): the function's name is the workflow type.
import { job } from '../workflows/job';
import { readJobLog } from '../workflows/job-log';
import { admit } from './admission';
import type { KybernateClient } from './api';
import { describeError, describeFailureChain, KybernateError, UnavailableError } from './errors';
import { isJobStatus, resultOf } from './result';
import { QUERY_TIMEOUT_MS } from './timeouts';

/** A job of that name is open already: a second one would run the same workload twice. */
export class JobExistsError extends KybernateError {
  readonly code = 'JOB_EXISTS' as const;
  constructor(
    readonly jobId: string,
    readonly existing: JobStatus | null,
    state: string,
    message = `job ${jobId} exists (state ${state})`,
  ) {
    super(message);
    this.name = 'JobExistsError';
  }
}

/** A job as `kybernate jobs` lists it: its status, or why there is none (the worker down, the workflow failed). */
export interface JobListEntry {
  jobId: string;
  workflowStatus: string;
  startedAt: Date;
  status: JobStatus | null;
  /** Its phase search attribute, for when the status cannot be had. */
  phase: string | null;
  problem: string | null;
}

/** How long a log read may wait without a --follow (an agent that is down makes `logs` fail, not hang). */
export const LOG_READ_TIMEOUT_MS = 60_000;

/** The job workflow (`job/<jobId>`) seen from a client: start, status, list, preempt, release, read its logs. */
export class JobsApi {
  constructor(private readonly k: KybernateClient) {}

  private handle(jobId: string): WorkflowHandle<typeof job> {
    return this.k.client.workflow.getHandle<typeof job>(jobWorkflowId(assertSafeId('job', jobId)));
  }

  /** The node exists (its registry workflow) and its agent has reported: a job pinned to it can run there. */
  async assertNodeReported(node: string): Promise<void> {
    const rec = await this.k.node(node);
    if (!rec.lastSeen) throw new InvalidInputError('node', `node '${node}' has never reported: no agent runs it`);
  }

  /**
   * Starts the job workflow. The spec is checked whole first (naming the field); a pinned node must be known.
   * A job of that name still open is refused (JobExistsError, with its status when it answers); one that ended
   * may be started again.
   */
  async start(input: JobSpec): Promise<{ workflowId: string; spec: JobSpec }> {
    const spec = parseJobSpec(input);
    if (spec.node) await this.assertNodeReported(spec.node);
    const workflowId = jobWorkflowId(spec.jobId);
    await admit(this.k, { workflowId, kind: 'job', priority: spec.priority });
    const summary = `job ${spec.jobId}: ${spec.command.join(' ')}`;
    try {
      await this.k.client.workflow.start(job, {
        workflowId,
        taskQueue: CONTROL_QUEUE,
        args: [{ spec }],
        workflowIdConflictPolicy: 'FAIL',
        typedSearchAttributes: [
          { key: SA_JOB, value: spec.jobId },
          { key: SA_PHASE, value: 'Pending' },
          ...(spec.node ? [{ key: SA_NODE, value: spec.node }] : []),
        ],
        staticSummary: summary.length > 200 ? `${summary.slice(0, 197)}...` : summary,
      });
    } catch (e) {
      if (!(e instanceof WorkflowExecutionAlreadyStartedError)) throw e;
      const existing = await this.status(spec.jobId).catch(() => null);
      throw new JobExistsError(spec.jobId, existing, existing?.state ?? 'unknown: it did not answer');
    }
    return { workflowId, spec };
  }

  /**
   * The job's status: a finished workflow's result from its history (no worker needed), else the `status`
   * query (bounded, see KybernateClient.queryStatus). A job that ended without a result says how it ended.
   */
  async status(jobId: string): Promise<JobStatus> {
    const h = this.handle(jobId);
    const d = await this.k
      .withinTemporal(() => h.describe())
      .catch((e: unknown) => {
        if (e instanceof WorkflowNotFoundError) throw new InvalidInputError('job', `no job '${jobId}'`);
        throw e;
      });
    if (d.status.name === 'COMPLETED') return this.k.withinTemporal(() => resultOf(h, isJobStatus));
    if (d.status.name === 'FAILED') {
      // A job that ended Failed, OOMKilled, StartFailure or TimedOut fails its workflow, its status in the failure.
      const s = await this.k.withinTemporal(() => resultOf(h, isJobStatus)).catch(() => null);
      if (s !== null) return s;
    }
    try {
      return await this.k.queryStatus<JobStatus>(h.workflowId);
    } catch (e) {
      if (d.status.name === 'RUNNING' || e instanceof UnavailableError) throw e;
      // Ended without a result and without a status to replay (it failed before it had one): say how it ended.
      const why = await this.k
        .withinTemporal(() => h.result())
        .then(
          () => 'no result',
          (err: unknown) => describeFailureChain(err),
        );
      throw new Error(`job '${jobId}' ended ${d.status.name} without a status: ${why}`, { cause: e });
    }
  }

  /** Every job Temporal's visibility store knows (the newest workflow of each id), with its status. */
  async list(): Promise<JobListEntry[]> {
    const newest = new Map<string, WorkflowExecutionInfo>();
    await this.k.withinTemporal(async () => {
      for await (const wf of this.k.client.workflow.list({ query: `WorkflowType = 'job'` })) {
        const prev = newest.get(wf.workflowId);
        if (!prev || wf.startTime > prev.startTime) newest.set(wf.workflowId, wf);
      }
    });
    const rows = [...newest.values()].sort((a, b) => a.workflowId.localeCompare(b.workflowId));
    // Asked together: with the worker down each query waits out its bound, and the list should not take N times that.
    return Promise.all(
      rows.map(async (wf): Promise<JobListEntry> => {
        const jobId = wf.typedSearchAttributes.get(SA_JOB) ?? wf.workflowId.replace(/^job\//, '');
        const base = {
          jobId,
          workflowStatus: wf.status.name,
          startedAt: wf.startTime,
          phase: wf.typedSearchAttributes.get(SA_PHASE) ?? null,
        };
        try {
          return { ...base, status: await this.status(jobId), problem: null };
        } catch (e) {
          return { ...base, status: null, problem: describeError(e).message };
        }
      }),
    );
  }

  /**
   * Sends an update and waits until the workflow accepted it (bounded: only a worker can accept), then for its
   * outcome. Past the bound the update's fate is unknown: the message says so rather than claim it failed.
   */
  private async update<R>(jobId: string, name: string, arg?: unknown): Promise<R> {
    const h = this.handle(jobId);
    await this.k
      .withinTemporal(() => h.describe())
      .catch((e: unknown) => {
        if (e instanceof WorkflowNotFoundError) throw new InvalidInputError('job', `no job '${jobId}'`);
        throw e;
      });
    let u;
    try {
      const options = { waitForStage: WorkflowUpdateStage.ACCEPTED, updateId: `${name}-${randomUUID()}` } as const;
      u = await this.k.client.withDeadline(Date.now() + QUERY_TIMEOUT_MS, () =>
        arg === undefined
          ? h.startUpdate<R, []>(name, options)
          : h.startUpdate<R, [unknown]>(name, { ...options, args: [arg] }),
      );
    } catch (e) {
      if (!(e instanceof ServiceError || e instanceof WorkflowUpdateRPCTimeoutOrCancelledError)) throw e;
      await this.k.withinTemporal(() => h.describe());
      throw new UnavailableError(
        'control worker',
        `task queue ${CONTROL_QUEUE}`,
        `job/${jobId} did not accept the ${name} update within ${QUERY_TIMEOUT_MS / 1000}s (is 'kybernate worker' running?); it may still be applied: see 'kybernate describe job ${jobId}'`,
      );
    }
    return u.result();
  }

  /** Checkpoints the running job for preemption and requeues it (the job workflow's `preempt` update). */
  async preempt(jobId: string): Promise<PreemptResult> {
    return this.update<PreemptResult>(jobId, JOB_PREEMPT_UPDATE);
  }

  /**
   * Moves the running job to another node, preferring `to` (the job workflow's `migrate` update): answers once its
   * checkpoint is taken and the run stopped ('requeued'), or why it was not moved.
   */
  async migrate(jobId: string, to: string): Promise<PreemptResult> {
    return this.update<PreemptResult>(jobId, JOB_MIGRATE_UPDATE, { to } satisfies MigrateJobRequest);
  }

  /** Lifts a quarantine: from scratch, or from the last good checkpoint. Returns the job's status after. */
  async release(jobId: string, opts: { fromCheckpoint?: boolean } = {}): Promise<JobStatus> {
    await this.update<unknown>(jobId, JOB_RELEASE_UPDATE, { fromCheckpoint: opts.fromCheckpoint ?? false });
    return this.status(jobId);
  }

  /** Whether `job/<jobId>` is open (a job workflow runs it). */
  async isOpen(jobId: string): Promise<boolean> {
    try {
      const d = await this.k.withinTemporal(() => this.handle(jobId).describe());
      return d.status.name === 'RUNNING';
    } catch (e) {
      if (e instanceof WorkflowNotFoundError) return false;
      throw e;
    }
  }

  /** Asks for the job's cancellation and returns (see cancel). */
  async requestCancel(jobId: string): Promise<void> {
    await this.handle(jobId).cancel();
  }

  /**
   * Cancels the job: its run is stopped (SIGTERM, SIGKILL after the grace) and cleaned up by the workflow, which
   * then ends cancelled with state Failed, reason Cancelled. Waits up to waitMs for it to close; false if it
   * had not by then (the cleanup goes on: an agent may be away).
   */
  async cancel(jobId: string, waitMs = 90_000): Promise<boolean> {
    const h = this.handle(jobId);
    await h.cancel();
    const closed = h.result().then(
      () => true,
      () => true,
    );
    return Promise.race([closed, new Promise<boolean>((r) => setTimeout(() => r(false), waitMs).unref())]);
  }

  /**
   * Starts one read of a run's log on its node (workflow `logs/<jobId>/<uuid>`); the caller awaits its result
   * or, when the run moved on meanwhile, terminates it. Without `follow` it may wait LOG_READ_TIMEOUT_MS.
   */
  async startNodeLogRead(
    node: string,
    input: ReadRunLogInput,
    follow: boolean,
  ): Promise<WorkflowHandle<typeof readJobLog>> {
    const jobId = assertSafeId('job', input.jobId);
    return this.k.client.workflow.start(readJobLog, {
      workflowId: `logs/${jobId}/${randomUUID()}`,
      taskQueue: CONTROL_QUEUE,
      args: [{ node: assertSafeId('node', node), ...input }],
      workflowExecutionTimeout: follow ? '2h' : LOG_READ_TIMEOUT_MS,
      staticSummary: `read the log of job ${jobId} on ${node}`,
    });
  }

  /** The bytes of a run's archived log (S3, CRI format: the node's file as is) from a byte offset. */
  async readArchivedLog(key: string, offset: number): Promise<Buffer> {
    const cfg = this.k.config.s3;
    const s3 = makeS3Client(cfg, { requestTimeoutMs: 60_000 });
    try {
      const r = await s3.send(
        new GetObjectCommand({ Bucket: cfg.bucket, Key: key, Range: offset > 0 ? `bytes=${offset}-` : undefined }),
      );
      return Buffer.from(await r.Body!.transformToByteArray());
    } catch (e) {
      // Asked from its end: nothing more to read.
      if ((e as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 416) return Buffer.alloc(0);
      throw e;
    } finally {
      s3.destroy();
    }
  }
}
