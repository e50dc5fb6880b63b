import {
  condition,
  continueAsNew,
  defineQuery,
  defineSignal,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { NodeInventory } from '../activities/node/inventory';
import type { NodeRecord } from '../common/node';
import { STATUS_QUERY } from '../common/outcome';
import { SA_NODE } from '../common/search-attributes';

export type { NodeRecord } from '../common/node';

export const reportSignal = defineSignal<[NodeInventory]>('report');
export const nodeStatusQuery = defineQuery<NodeRecord>(STATUS_QUERY);

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
