import * as path from 'node:path';
import { Connection } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { CONTROL_QUEUE, nodeQueue } from '../../common/queues';
import { REPO_ROOT, stagingRootFor } from './paths';
import { freePort } from './ports';
import { type ProcessRecord, registerProcess, type StackState, startProcess, waitFor } from './stack';

const CLI = path.join(REPO_ROOT, 'dist', 'clients', 'cli.js');

/**
 * Someone polls the queue; with fromPid, that very process (a worker's default identity is <pid>@<host>):
 * the server remembers a dead poller for a while, so a restarted worker must be told from its predecessor.
 */
export async function hasPoller(
  address: string,
  namespace: string,
  taskQueue: string,
  kind: 'workflow' | 'activity',
  fromPid?: number,
): Promise<boolean> {
  const conn = await Connection.connect({ address, connectTimeout: 2000 });
  try {
    const r = await conn.workflowService.describeTaskQueue({
      namespace,
      taskQueue: { name: taskQueue, kind: temporal.api.enums.v1.TaskQueueKind.TASK_QUEUE_KIND_NORMAL },
      taskQueueType:
        kind === 'workflow'
          ? temporal.api.enums.v1.TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW
          : temporal.api.enums.v1.TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
    });
    const pollers = r.pollers ?? [];
    return fromPid === undefined
      ? pollers.length > 0
      : pollers.some((p) => (p.identity ?? '').startsWith(`${fromPid}@`));
  } finally {
    await conn.close();
  }
}

export interface AgentSpec {
  node: string;
  declaredVramBytes?: number;
  zone?: string;
  dataDir?: string;
  reportIntervalSeconds?: number;
  /** null: never stage in memory; default: a directory under the stack's staging root. */
  stagingDir?: string | null;
  /** Extra environment, e.g. KYBERNATE_S3_ENDPOINT pointing through toxiproxy. */
  env?: Record<string, string>;
}

/** Starts an agent process (`kybernate agent`) with its log beside the stack's, and waits for it to poll. */
export async function startAgent(state: StackState, spec: AgentSpec): Promise<ProcessRecord> {
  const args = [
    process.execPath,
    CLI,
    'agent',
    '--node',
    spec.node,
    '--data-dir',
    spec.dataDir ?? path.join(state.home, 'nodes', spec.node),
  ];
  if (spec.declaredVramBytes !== undefined) args.push('--declared-vram', String(spec.declaredVramBytes));
  if (spec.zone) args.push('--zone', spec.zone);
  args.push(
    '--staging-dir',
    spec.stagingDir === null ? 'none' : (spec.stagingDir ?? path.join(stagingRootFor(state.home), spec.node)),
  );
  if (spec.reportIntervalSeconds) args.push('--report-interval', String(spec.reportIntervalSeconds));
  // A port of its own for its metrics, kept in its environment so that a restart serves them on the same one.
  const env = { KYBERNATE_HOME: state.home, KYBERNATE_METRICS_ADDRESS: `127.0.0.1:${await freePort()}`, ...spec.env };
  const rec = startProcess(`agent:${spec.node}`, args, path.join(state.home, 'logs', `agent-${spec.node}.log`), env);
  registerProcess(rec, state.home);
  await waitForWorker(state, rec);
  return rec;
}

export async function startControlWorker(state: StackState, env: Record<string, string> = {}): Promise<ProcessRecord> {
  const rec = startProcess(
    'control-worker',
    [process.execPath, CLI, 'worker'],
    path.join(state.home, 'logs', 'control-worker.log'),
    { ...env, KYBERNATE_HOME: state.home, KYBERNATE_METRICS_ADDRESS: `127.0.0.1:${await freePort()}` },
  );
  registerProcess(rec, state.home);
  await waitForWorker(state, rec);
  return rec;
}

/** Until the worker (control-worker) or agent (agent:<node>) of this record polls its queue itself. */
export async function waitForWorker(state: StackState, rec: ProcessRecord): Promise<void> {
  const { address, namespace } = state.temporal;
  if (rec.component === 'control-worker') {
    await waitFor(
      'control-worker',
      rec,
      () => hasPoller(address, namespace, CONTROL_QUEUE, 'workflow', rec.pid),
      90000,
    );
  } else if (rec.component.startsWith('agent:')) {
    await waitFor(
      rec.component,
      rec,
      () => hasPoller(address, namespace, nodeQueue(rec.component.slice('agent:'.length)), 'activity', rec.pid),
      60000,
    );
  } else {
    throw new Error(`'${rec.component}' is not a worker or an agent`);
  }
}
