import { condition, continueAsNew, defineQuery, defineSignal, setHandler, upsertSearchAttributes, workflowInfo } from '@temporalio/workflow';
import type { NodeInventory } from '../activities/node/inventory';
import { SA_NODE } from '../common/search-attributes';

export interface NodeRecord {
  node: string;
  inventory: NodeInventory | null;
  /** Workflow time of the agent's last report. */
  lastSeen: string | null;
  agentRuns: number;
}

export const reportSignal = defineSignal<[NodeInventory]>('report');
export const nodeStatusQuery = defineQuery<NodeRecord>('status');

/** One per node (`node/<name>`): the registry entry its agent reports to; clients validate node names here. */
export async function nodeRegistry(input: { node: string; carried?: NodeRecord }): Promise<void> {
  const rec: NodeRecord = input.carried ?? { node: input.node, inventory: null, lastSeen: null, agentRuns: 0 };
  upsertSearchAttributes([{ key: SA_NODE, value: input.node }]);
  let reports = 0;
  setHandler(reportSignal, (inv) => {
    rec.inventory = inv;
    rec.lastSeen = new Date().toISOString();
    reports++;
  });
  setHandler(nodeStatusQuery, () => rec);
  await condition(() => reports >= 200 || workflowInfo().continueAsNewSuggested);
  await continueAsNew<typeof nodeRegistry>({ node: input.node, carried: rec });
}
