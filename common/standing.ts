/** What the job workflow learns about a node whose agent it lost sight of (control activity nodeStanding). */
import type { ZoneTally } from './health';
import type { NodeState } from './node';

export interface NodeStanding {
  node: string;
  /** Gone: no registry, or its workflow closed (the node was removed): nothing can run there any more. */
  state: NodeState | 'Gone';
  /** When it entered that state (registry workflow time); null when not known. */
  since: string | null;
  zone: string | null;
  /** Each zone's nodes with a running registry and a state, and how many are Ready (the zone rates). */
  zones?: ZoneTally[];
  /** What the answer carried before zones: every such node. Results recorded then have it, and no zones. */
  nodes?: { node: string; zone: string | null; ready: boolean }[];
}
