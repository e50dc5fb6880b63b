/** What the job workflow learns about a node whose agent it lost sight of (control activity nodeStanding). */
import type { NodeState } from './node';

export interface NodeStanding {
  node: string;
  /** Gone: no registry, or its workflow closed (the node was removed): nothing can run there any more. */
  state: NodeState | 'Gone';
  /** When it entered that state (registry workflow time); null when not known. */
  since: string | null;
  zone: string | null;
  /** Every node with a running registry and a state, for the eviction budget (evictionBudget). */
  nodes: { node: string; zone: string | null; ready: boolean }[];
}
