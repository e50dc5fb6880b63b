import type { Client } from '@temporalio/client';
import type { NodeRecord } from '../../common/node';

/**
 * Every running node registry's record (`node/<name>`). One that does not answer its query (closing, or its
 * task stuck) is left out: callers use the list for placement and eviction budgets, where a node that cannot
 * say it is Ready counts as not Ready.
 */
export async function registeredNodes(client: Client): Promise<NodeRecord[]> {
  const out: NodeRecord[] = [];
  for await (const wf of client.workflow.list({
    query: `WorkflowType = 'nodeRegistry' AND ExecutionStatus = 'Running'`,
  })) {
    const rec = await client.workflow
      .getHandle(wf.workflowId)
      .query<NodeRecord>('status')
      .catch(() => null);
    if (rec) out.push(rec);
  }
  return out;
}
