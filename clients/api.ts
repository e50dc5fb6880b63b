import { Client, Connection, WorkflowNotFoundError } from '@temporalio/client';
import type { CheckpointRequest, CheckpointStatus, Tier } from '../common/checkpoint';
import type { KybernateConfig } from '../common/config';
import { assertPid, assertSafeId, InvalidInputError } from '../common/ids';
import { checkpointWorkflowId, CONTROL_QUEUE, nodeWorkflowId } from '../common/queues';
import { SA_CHECKPOINT, SA_JOB, SA_NODE, SA_PHASE, SA_TIER } from '../common/search-attributes';
import type { WorkloadInfo } from '../activities/node/process';
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
  }): Promise<{ workflowId: string; request: CheckpointRequest }> {
    const node = assertSafeId('node', input.node);
    const isPid = /^[0-9]+$/.test(input.target);
    const pid = isPid ? assertPid('pid', input.target) : undefined;
    const jobId = isPid ? `pid-${pid}` : assertSafeId('job', input.target);
    const checkpointId = assertSafeId('checkpointId', input.checkpointId ?? `${jobId}-${Date.now().toString(36)}`);
    await this.node(node);
    const request: CheckpointRequest = {
      checkpointId, jobId, node, pid, leaveRunning: input.leaveRunning ?? false, reason: input.reason ?? 'manual', uploadMaxAttempts: input.uploadMaxAttempts,
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
