/** A node's registry entry (`node/<name>`), shared by its workflow, the control activities and clients. */
import type { NodeInventory } from '../activities/node/inventory';

export interface NodeRecord {
  node: string;
  inventory: NodeInventory | null;
  /** Workflow time of the agent's last report. */
  lastSeen: string | null;
  agentRuns: number;
}
