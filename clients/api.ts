import { Client, Connection, WorkflowExecutionAlreadyStartedError, WorkflowNotFoundError } from '@temporalio/client';
import type { CheckpointRequest, CheckpointStatus, Tier } from '../common/checkpoint';
import type { KybernateConfig } from '../common/config';
import { assertPid, assertSafeId, InvalidInputError } from '../common/ids';
import { checkpointWorkflowId, CONTROL_QUEUE, nodeWorkflowId, restoreWorkflowId } from '../common/queues';
import { parseReadiness, type Readiness } from '../common/readiness';
import type { RestoreRequest, RestoreStatus } from '../common/restore';
import { SA_CHECKPOINT, SA_JOB, SA_NODE, SA_PHASE, SA_TIER } from '../common/search-attributes';
import type { WorkloadInfo } from '../activities/node/process';
import type { MigrateRequest } from '../workflows/migrate';
import type { NodeRecord } from '../workflows/node';

export interface CheckpointListEntry {
  checkpointId: string;
  jobId: string;
  node: string;
  phase: string;
  tier: string;
  workflowStatus: string;
  startedAt: string;
}

/** Typed access to Kybernate's workflows; the CLI and tests are built on it. */
export class KybernateClient {
  private constructor(readonly client: Client, private readonly connection: Connection, readonly config: KybernateConfig) {}

  static async connect(config: KybernateConfig): Promise<KybernateClient> {
    const connection = await Connection.connect({ address: config.temporalAddress });
    return new KybernateClient(new Client({ connection, namespace: config.namespace }), connection, config);
  }

  async close(): Promise<void> {
    await this.connection.close();
  }

  uiLink(workflowId: string): string | null {
    return this.config.uiUrl ? `${this.config.uiUrl}/namespaces/${this.config.namespace}/workflows/${encodeURIComponent(workflowId)}` : null;
  }

  /** A node exists once its agent has reported to its registry workflow. */
  async node(node: string): Promise<NodeRecord> {
    assertSafeId('node', node);
    try {
      return await this.client.workflow.getHandle(nodeWorkflowId(node)).query<NodeRecord>('status');
    } catch (e) {
      if (e instanceof WorkflowNotFoundError) throw new InvalidInputError('node', `unknown node '${node}': no agent has registered it`);
      throw e;
    }
  }

  /** Validates everything that can be checked without touching the workload, then starts the workflow. */
  async startCheckpoint(input: {
    target: string; node: string; leaveRunning?: boolean; reason?: CheckpointRequest['reason']; checkpointId?: string; uploadMaxAttempts?: number;
    /** VRAM the job needs when restored (a CPU-only process needs none). */
    vramBytes?: number;
  }): Promise<{ workflowId: string; request: CheckpointRequest }> {
    const node = assertSafeId('node', input.node);
    const isPid = /^[0-9]+$/.test(input.target);
    const pid = isPid ? assertPid('pid', input.target) : undefined;
    const jobId = isPid ? `pid-${pid}` : assertSafeId('job', input.target);
    const checkpointId = assertSafeId('checkpointId', input.checkpointId ?? `${jobId}-${Date.now().toString(36)}`);
    await this.node(node);
    const request: CheckpointRequest = {
      checkpointId, jobId, node, pid, leaveRunning: input.leaveRunning ?? false, reason: input.reason ?? 'manual', uploadMaxAttempts: input.uploadMaxAttempts,
      vramBytes: input.vramBytes,
    };
    const workflowId = checkpointWorkflowId(checkpointId);
    await this.client.workflow.start('checkpoint', {
      workflowId, taskQueue: CONTROL_QUEUE, args: [request],
      typedSearchAttributes: [
        { key: SA_JOB, value: jobId }, { key: SA_NODE, value: node }, { key: SA_CHECKPOINT, value: checkpointId }, { key: SA_PHASE, value: 'Pending' },
      ],
      staticSummary: `checkpoint ${jobId} on ${node}`,
    });
    return { workflowId, request };
  }

  async runWorkload(input: { node: string; jobId: string; command: string[] }): Promise<WorkloadInfo> {
    const node = assertSafeId('node', input.node);
    const jobId = assertSafeId('job', input.jobId);
    if (input.command.length === 0) throw new InvalidInputError('command', 'is required');
    await this.node(node);
    return this.client.workflow.execute('runWorkload', {
      workflowId: `workload/${jobId}/${Date.now().toString(36)}`, taskQueue: CONTROL_QUEUE, args: [{ node, spec: { jobId, command: input.command } }],
    });
  }

  async checkpointResult(checkpointId: string): Promise<CheckpointStatus> {
    return this.client.workflow.getHandle(checkpointWorkflowId(assertSafeId('checkpoint', checkpointId))).result() as Promise<CheckpointStatus>;
  }

  async describeCheckpoint(checkpointId: string): Promise<CheckpointStatus> {
    const h = this.client.workflow.getHandle(checkpointWorkflowId(assertSafeId('checkpoint', checkpointId)));
    try {
      return await h.query<CheckpointStatus>('status');
    } catch (e) {
      if (e instanceof WorkflowNotFoundError) throw new InvalidInputError('checkpoint', `no checkpoint '${checkpointId}'`);
      throw e;
    }
  }

  /** Restores a checkpoint on a node chosen by free VRAM (or on the given node only). */
  async startRestore(input: { checkpointId: string; node?: string; vramBytes?: number; placementDeadline?: string; readiness?: Readiness }): Promise<{ workflowId: string }> {
    const checkpointId = assertSafeId('checkpoint', input.checkpointId);
    const readiness = input.readiness === undefined ? undefined : parseReadiness(input.readiness);
    if (input.node) await this.node(input.node);
    if (input.placementDeadline !== undefined && !/^\d+(ms|s|m|h)$/.test(input.placementDeadline)) {
      throw new InvalidInputError('placement-deadline', `expected e.g. 90s or 10m (got '${input.placementDeadline}')`);
    }
    await this.describeCheckpoint(checkpointId);
    let n = 1;
    for await (const _ of this.client.workflow.list({ query: `WorkflowType = 'restore' AND ${SA_CHECKPOINT.name} = '${checkpointId}'` })) n++;
    for (;;) {
      const workflowId = restoreWorkflowId(checkpointId, n);
      try {
        await this.client.workflow.start('restore', {
          workflowId, taskQueue: CONTROL_QUEUE,
          args: [{ checkpointId, node: input.node, vramBytes: input.vramBytes, placementDeadline: input.placementDeadline, ...(readiness ? { readiness } : {}) } satisfies RestoreRequest],
          typedSearchAttributes: [{ key: SA_CHECKPOINT, value: checkpointId }, { key: SA_PHASE, value: 'Placing' }],
          staticSummary: `restore ${checkpointId}`,
        });
        return { workflowId };
      } catch (e) {
        if (!(e instanceof WorkflowExecutionAlreadyStartedError)) throw e;
        n++; // visibility lags behind a restore started a moment ago
      }
    }
  }

  async restoreResult(workflowId: string): Promise<RestoreStatus> {
    return this.client.workflow.getHandle(workflowId).result() as Promise<RestoreStatus>;
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
  async startMigration(input: { jobId: string; from?: string; to: string; vramBytes?: number; placementDeadline?: string; readiness?: Readiness }): Promise<{ workflowId: string; checkpointId: string }> {
    const jobId = assertSafeId('job', input.jobId);
    const readiness = input.readiness === undefined ? undefined : parseReadiness(input.readiness);
    const from = input.from ? assertSafeId('from', input.from) : await this.jobNode(jobId);
    const to = assertSafeId('to', input.to);
    if (from === to) throw new InvalidInputError('to', `must differ from the node the job runs on (${from})`);
    await this.node(from);
    await this.node(to);
    const checkpointId = `${jobId}-mig-${Date.now().toString(36)}`;
    const workflowId = `migrate/${checkpointId}`;
    await this.client.workflow.start('migrate', {
      workflowId, taskQueue: CONTROL_QUEUE,
      args: [{ jobId, from, to, checkpointId, vramBytes: input.vramBytes, placementDeadline: input.placementDeadline, ...(readiness ? { readiness } : {}) } satisfies MigrateRequest],
      typedSearchAttributes: [{ key: SA_JOB, value: jobId }, { key: SA_NODE, value: from }],
      staticSummary: `migrate ${jobId} from ${from} to ${to}`,
    });
    return { workflowId, checkpointId };
  }

  async listCheckpoints(filter: { job?: string; tier?: Tier } = {}): Promise<CheckpointListEntry[]> {
    const q = [`WorkflowType = 'checkpoint'`];
    if (filter.job) q.push(`${SA_JOB.name} = '${assertSafeId('job', filter.job)}'`);
    if (filter.tier) {
      if (filter.tier !== 's3' && filter.tier !== 'nvme') throw new InvalidInputError('tier', `must be 's3' or 'nvme' (got '${String(filter.tier)}')`);
      q.push(`${SA_TIER.name} = '${filter.tier}'`);
    }
    const out: CheckpointListEntry[] = [];
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
      });
    }
    return out;
  }
}
