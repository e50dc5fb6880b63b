import {
  ActivityFailure,
  ApplicationFailure,
  CancellationScope,
  condition,
  continueAsNew,
  defineQuery,
  defineSignal,
  patched,
  proxyActivities,
  setHandler,
  TimeoutFailure,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { NodeInventory } from '../activities/node/inventory';
import type { WatchActivities } from '../activities/node/watch';
import { ErrorType } from '../common/errors';
import {
  DEFAULT_HEARTBEAT_MS,
  DEFAULT_NODE_TIMEOUT_MS,
  MAX_NODE_TIMEOUT_MS,
  MIN_NODE_TIMEOUT_MS,
  NODE_TRANSITIONS_KEPT,
  type NodeHeartbeat,
  type NodeRecord,
  type NodeState,
} from '../common/node';
import { STATUS_QUERY } from '../common/outcome';
import { nodeQueue } from '../common/queues';
import { SA_NODE } from '../common/search-attributes';

export type { NodeRecord, NodeState } from '../common/node';

export const reportSignal = defineSignal<[NodeInventory]>('report');
export const heartbeatSignal = defineSignal<[NodeHeartbeat]>('heartbeat');
/** The agent stops cleanly: no placements until it heartbeats again. agentRun: only the agent that runs now may. */
export const leaveSignal = defineSignal<[{ agentRun: string; why?: string }]>('leave');
export const nodeStatusQuery = defineQuery<NodeRecord>(STATUS_QUERY);

/** An agent from before liveness only reports (every 30 s): it is not declared Unhealthy sooner than this. */
const REPORT_ONLY_TIMEOUT_MS = 2 * 60_000;
/**
 * Signals one run takes before it continues as new (about 4 events each: ~80 min of 5 s heartbeats), so days of
 * heartbeats stay short histories; also on the server's suggestion or past NODE_HISTORY_LIMIT events.
 */
export const NODE_SIGNAL_LIMIT = 1_000;
export const NODE_HISTORY_LIMIT = 10_000;
/** How long one watch activity runs before the registry schedules the next (a handful of events per hour). */
export const WATCH_RUN_MS = 60 * 60_000;
/** Watches in a row that reached another agent process before the node is declared Unhealthy. */
const WATCH_OTHER_AGENT_LIMIT = 3;

export interface NodeRegistryInput {
  node: string;
  carried?: NodeRecord;
  /** The heartbeat timeout until an agent names its own (default 15 s). */
  timeoutMs?: number;
  /** Carried across continue-as-new: how long the node still had before being declared Unhealthy. */
  unhealthyInMs?: number;
  /** Signals before continue-as-new (tests lower it). */
  signalLimit?: number;
  /** How long each watch activity runs (tests lower it; default WATCH_RUN_MS). */
  watchRunMs?: number;
}

/**
 * One per node (`node/<name>`): the registry entry its agent registers and reports to; clients validate node
 * names here. A state machine Ready | Unhealthy | Left. An agent that registers with liveness 'watch' is kept
 * Ready by a watch activity on its node queue that it heartbeats (heartbeat timeout = the node timeout; no
 * workflow task per heartbeat); the watch of an older registration is ignored when it ends. An agent that
 * heartbeats by signal (from before the watch) is timed by workflow timers, as before.
 */
export async function nodeRegistry(input: NodeRegistryInput): Promise<void> {
  // Runs started before liveness (no marker in their history) keep their old commands, and move on to the
  // state machine at the first heartbeat from a new agent.
  if (!patched('node-liveness-states')) return reportOnlyRegistry(input);
  // Runs started before the watch keep their commands (liveness by heartbeat signals only); one that hears from
  // an agent asking for a watch continues as new (below), into runs that have this marker.
  const useWatch = patched('node-liveness-watch');

  const now = (): string => new Date(Date.now()).toISOString();
  const rec: NodeRecord = {
    node: input.node,
    inventory: null,
    lastSeen: null,
    agentRuns: 0,
    heartbeatMs: null,
    agentRun: null,
    transitions: [],
    ...input.carried,
  };
  rec.timeoutMs = clampTimeout(rec.timeoutMs ?? input.timeoutMs);
  const transitions = rec.transitions ?? [];
  rec.transitions = transitions;
  const moveTo = (to: NodeState, why: string): void => {
    if (rec.state === to) return;
    const at = now();
    transitions.push({ at, from: rec.state ?? null, to, why });
    if (transitions.length > NODE_TRANSITIONS_KEPT) transitions.splice(0, transitions.length - NODE_TRANSITIONS_KEPT);
    rec.state = to;
    rec.since = at;
  };
  // A carried record of a report-only run: its node is Ready while its last report is recent. A new registry
  // has no state until its first sign of life, in the same activation as its start (signalWithStart).
  if (rec.state === undefined && rec.lastSeen) moveTo('Ready', 'registered');
  const timeout = (): number =>
    rec.heartbeatMs ? (rec.timeoutMs ?? DEFAULT_NODE_TIMEOUT_MS) : Math.max(rec.timeoutMs ?? 0, REPORT_ONLY_TIMEOUT_MS);
  // Workflow time by which the next sign of life must come.
  let deadline = Date.now() + (input.unhealthyInMs ?? timeout());
  let signals = 0;
  // A registration asked for a (new) watch since the loop last looked.
  let watchAsked = useWatch && rec.liveness === 'watch' && rec.state === 'Ready';
  const alive = (why: string): void => {
    rec.lastSeen = now();
    deadline = Date.now() + timeout();
    if (rec.state !== 'Ready') {
      rec.agentRuns++;
      moveTo('Ready', why);
    }
  };

  upsertSearchAttributes([{ key: SA_NODE, value: input.node }]);
  setHandler(reportSignal, (inv) => {
    signals++;
    rec.inventory = inv;
    // With a watch, only the watch says the agent is alive (a report without one would make a Ready node nobody
    // watches); the report is still the latest word heard from it.
    if (useWatch && rec.liveness === 'watch') rec.lastSeen = now();
    else alive('inventory report');
  });
  setHandler(heartbeatSignal, (hb) => {
    signals++;
    if (hb.timeoutMs !== undefined) rec.timeoutMs = clampTimeout(hb.timeoutMs);
    rec.heartbeatMs = hb.heartbeatMs ?? DEFAULT_HEARTBEAT_MS;
    const newRun = rec.agentRun !== hb.agentRun;
    const wasReady = rec.state === 'Ready';
    rec.agentRun = hb.agentRun;
    // A new agent process while the node was still Ready (restarted within the timeout) is a new run too.
    if (newRun && wasReady) rec.agentRuns++;
    if (hb.liveness === 'watch') {
      // A registration: from now on the watch (a new one, for this agent run) says whether the node is alive.
      watchAsked = true;
      if (useWatch) rec.liveness = 'watch';
    } else if (useWatch && rec.liveness === 'watch') rec.liveness = 'signal'; // an older agent took the node over
    alive(rec.state === 'Left' ? 'agent back after leaving' : newRun ? 'agent registered' : 'heartbeat again');
  });
  setHandler(leaveSignal, (l) => {
    signals++;
    // An older agent process leaving after a new one took over says nothing about the new one.
    if (rec.agentRun && l.agentRun !== rec.agentRun) return;
    moveTo('Left', l.why ?? 'agent stopped');
  });
  setHandler(nodeStatusQuery, () => rec);

  const signalLimit = input.signalLimit ?? NODE_SIGNAL_LIMIT;
  const mustContinue = (): boolean =>
    // A run from before the watch cannot schedule one: the next run can.
    (!useWatch && watchAsked) ||
    signals >= signalLimit ||
    workflowInfo().continueAsNewSuggested ||
    workflowInfo().historyLength >= NODE_HISTORY_LIMIT;
  // The watch in force: its number (a settled watch with an older number is stale and ignored) and its scope.
  let watchSeq = 0;
  let watchScope: CancellationScope | null = null;
  let watchEnd = null as { seq: number; error: unknown } | null; // set by the watch's promise
  let otherAgent = 0;
  const watchTimeout = (): number => rec.timeoutMs ?? DEFAULT_NODE_TIMEOUT_MS;
  const startWatch = (): void => {
    watchScope?.cancel();
    const seq = ++watchSeq;
    const timeoutMs = watchTimeout();
    const acts = proxyActivities<WatchActivities>({
      taskQueue: nodeQueue(input.node),
      // The agent heartbeats every heartbeatMs: one timeout without any is the node's timeout, as with signals.
      heartbeatTimeout: timeoutMs,
      // An agent that never takes its watch (gone between registering and polling) is no more alive than one
      // that stops heartbeating.
      scheduleToStartTimeout: timeoutMs,
      startToCloseTimeout: (input.watchRunMs ?? WATCH_RUN_MS) + timeoutMs,
      retry: { maximumAttempts: 1 },
    });
    const scope = new CancellationScope();
    watchScope = scope;
    const watchInput = {
      node: input.node,
      agentRun: rec.agentRun ?? '',
      heartbeatMs: rec.heartbeatMs ?? DEFAULT_HEARTBEAT_MS,
      runMs: input.watchRunMs ?? WATCH_RUN_MS,
    };
    scope
      .run(() => acts.nodeWatch(watchInput))
      .then(
        () => (watchEnd = { seq, error: null }),
        (error: unknown) => (watchEnd = { seq, error }),
      );
  };
  const stopWatch = (): void => {
    watchScope?.cancel();
    watchScope = null;
    watchSeq++;
  };

  while (!mustContinue()) {
    if (useWatch && rec.liveness === 'watch') {
      if (watchAsked) {
        watchAsked = false;
        otherAgent = 0;
        if (rec.state === 'Ready') startWatch();
        continue;
      }
      if (watchEnd) {
        const end = watchEnd;
        watchEnd = null;
        if (end.seq !== watchSeq) continue; // a watch replaced since (a new agent run registered): says nothing
        watchScope = null;
        if (rec.state !== 'Ready') continue; // Left (the agent stopped its worker) or Unhealthy already
        if (end.error === null) {
          startWatch(); // its hour is over: the next one
          continue;
        }
        const cause = end.error instanceof ActivityFailure ? end.error.cause : end.error;
        if (
          cause instanceof ApplicationFailure &&
          cause.type === ErrorType.WatchOtherAgent &&
          otherAgent < WATCH_OTHER_AGENT_LIMIT
        ) {
          otherAgent++;
          startWatch(); // taken by another agent process than the registered one: for the registered one again
          continue;
        }
        if (cause instanceof TimeoutFailure && cause.timeoutType === 'HEARTBEAT') {
          // The server saw no heartbeat for one timeout: the last one was at the latest that long ago.
          rec.lastSeen = new Date(Date.now() - watchTimeout()).toISOString();
          moveTo('Unhealthy', `no heartbeat for ${watchTimeout()} ms`);
        } else moveTo('Unhealthy', `liveness watch ended: ${describeEnd(cause)}`);
        continue;
      }
      const state = rec.state;
      await condition(
        () => rec.state !== state || watchAsked || watchEnd !== null || rec.liveness !== 'watch' || mustContinue(),
      );
      continue;
    }
    if (watchScope) stopWatch(); // an agent that heartbeats by signal took over from one with a watch
    if (rec.state === 'Ready') {
      const left = deadline - Date.now();
      if (left <= 0) {
        moveTo('Unhealthy', `no heartbeat for ${timeout()} ms`);
        continue;
      }
      // One timer per timeout, not one per heartbeat: a heartbeat only moves the deadline later, checked when the
      // timer fires; a deadline moved earlier (an agent that starts heartbeating names a shorter timeout) re-arms it.
      const state = rec.state;
      const armedFor = deadline;
      await condition(() => rec.state !== state || deadline < armedFor || mustContinue(), left);
    } else {
      // Unhealthy, Left, or a new registry not heard from yet: until a sign of life.
      const state = rec.state;
      await condition(() => rec.state !== state || mustContinue());
    }
  }
  await continueAsNew<typeof nodeRegistry>({
    node: input.node,
    carried: rec,
    ...(rec.state === 'Ready' ? { unhealthyInMs: Math.max(1, deadline - Date.now()) } : {}),
    ...(rec.timeoutMs !== undefined ? { timeoutMs: rec.timeoutMs } : {}),
    ...(input.signalLimit !== undefined ? { signalLimit: input.signalLimit } : {}),
    ...(input.watchRunMs !== undefined ? { watchRunMs: input.watchRunMs } : {}),
  });
}

function describeEnd(cause: unknown): string {
  if (cause instanceof TimeoutFailure) return `${cause.timeoutType ?? 'unknown'} timeout`;
  if (cause instanceof Error) return cause.message;
  return String(cause);
}

function clampTimeout(ms: number | undefined): number {
  if (ms === undefined || !Number.isFinite(ms)) return DEFAULT_NODE_TIMEOUT_MS;
  return Math.min(MAX_NODE_TIMEOUT_MS, Math.max(MIN_NODE_TIMEOUT_MS, Math.round(ms)));
}

/**
 * The registry as it was before liveness, for runs whose history has no liveness marker: the same commands in
 * the same order. A heartbeat (a new agent) ends it: it continues as new, into the state machine.
 */
async function reportOnlyRegistry(input: NodeRegistryInput): Promise<void> {
  const rec: NodeRecord = input.carried ?? { node: input.node, inventory: null, lastSeen: null, agentRuns: 0 };
  upsertSearchAttributes([{ key: SA_NODE, value: input.node }]);
  let reports = 0;
  let heartbeat: NodeHeartbeat | null = null;
  setHandler(reportSignal, (inv) => {
    rec.inventory = inv;
    rec.lastSeen = new Date().toISOString();
    reports++;
  });
  setHandler(heartbeatSignal, (hb) => {
    // Carried into the next run (fields only: no command), so that run knows this agent and its timeout.
    heartbeat = hb;
    rec.lastSeen = new Date().toISOString();
    rec.agentRun = hb.agentRun;
    rec.heartbeatMs = hb.heartbeatMs ?? DEFAULT_HEARTBEAT_MS;
    if (hb.timeoutMs !== undefined) rec.timeoutMs = hb.timeoutMs;
  });
  setHandler(nodeStatusQuery, () => rec);
  const full = (): boolean => reports >= 200 || workflowInfo().continueAsNewSuggested;
  await condition(() => full() || heartbeat !== null);
  // A heartbeat the code before liveness already took (and ignored) must not end the run on replay.
  if (!full() && !patched('node-liveness-upgrade')) await condition(full);
  await continueAsNew<typeof nodeRegistry>({ node: input.node, carried: rec });
}
