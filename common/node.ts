/** A node's registry entry (`node/<name>`), shared by its workflow, the control activities and clients. */
import type { NodeInventory } from '../activities/node/inventory';

/**
 * Ready: its agent heartbeats; placements may go there. Unhealthy: no heartbeat for the timeout (the agent, its
 * machine or its network is gone, or just slow: unknown). Left: the agent said it stops (SIGTERM/SIGINT).
 * Only Ready nodes are offered for placement; a heartbeat makes any node Ready again.
 */
export type NodeState = 'Ready' | 'Unhealthy' | 'Left';

/** One change of state, as the registry saw it (workflow time). */
export interface NodeTransition {
  at: string;
  from: NodeState | null;
  to: NodeState;
  why: string;
}

/** What an agent sends every few seconds: who it is (one id per agent process) and how long to wait for the next. */
export interface NodeHeartbeat {
  /** Changes each time an agent process starts: a new value counts a new agent run. */
  agentRun: string;
  /** Missing heartbeats for this long make the node Unhealthy (default DEFAULT_NODE_TIMEOUT_MS). */
  timeoutMs?: number;
  /** How often the agent heartbeats (shown; the timeout is what counts). */
  heartbeatMs?: number;
  /**
   * 'watch': this signal registers the agent run, and its liveness from now on is the node's watch activity
   * (activity heartbeats, no signal each). Absent: an agent that heartbeats by signal every heartbeatMs.
   */
  liveness?: NodeLiveness;
}

/** How a node's agent shows it is alive: a heartbeat signal every few seconds, or heartbeats of a watch activity. */
export type NodeLiveness = 'signal' | 'watch';

/** The watch activity a registry runs on its node's queue (activities/node/watch.ts). */
export interface NodeWatchInput {
  node: string;
  /** The agent run it is for: another agent process refuses it (WatchOtherAgent). */
  agentRun: string;
  heartbeatMs: number;
  /** It completes after this long, and the registry schedules the next one: nothing on the server grows. */
  runMs: number;
}

export const DEFAULT_HEARTBEAT_MS = 5_000;
export const DEFAULT_NODE_TIMEOUT_MS = 15_000;
/** Bounds on a timeout an agent may ask for: below, a busy control plane flaps nodes; above, a dead one lingers. */
export const MIN_NODE_TIMEOUT_MS = 1_000;
export const MAX_NODE_TIMEOUT_MS = 10 * 60_000;
/** How many transitions a record keeps (the latest). */
export const NODE_TRANSITIONS_KEPT = 20;

export interface NodeRecord {
  node: string;
  inventory: NodeInventory | null;
  /**
   * Workflow time of the agent's last heartbeat signal or report. With a watch (liveness 'watch') the registry
   * does not see each activity heartbeat: its registration or last report (a report goes at least every few
   * minutes), and when the watch times out, the latest the last heartbeat can have been (one timeout before).
   */
  lastSeen: string | null;
  /** Agent processes seen (a new agentRun id, or a heartbeat after Unhealthy/Left). */
  agentRuns: number;
  /** Absent: a registry from before liveness (the agent only reports; stale after NODE_STALE_MS). */
  state?: NodeState;
  /** When the node entered its state (workflow time). */
  since?: string;
  /** The timeout in force (ms). */
  timeoutMs?: number;
  /** The agent's heartbeat interval, as it said (ms); null: it never heartbeat (an agent from before liveness). */
  heartbeatMs?: number | null;
  /** The agent process that heartbeats now. */
  agentRun?: string | null;
  /** How its agent shows it is alive; absent: 'signal' (an agent from before the watch). */
  liveness?: NodeLiveness;
  /** The latest transitions, oldest first (at most NODE_TRANSITIONS_KEPT). */
  transitions?: NodeTransition[];
  /** Health score in [0, 1] when the health tracking gives one; absent: not known ('-'). */
  score?: number | null;
  /** Quarantined by its health score (no placements until it decays back above the threshold); from the health view. */
  quarantined?: boolean;
}
