/**
 * The eviction gate: one durable place (the placement workflow) grants evictions of Unhealthy nodes' jobs, at a
 * rate per zone shared by every job, like Kubernetes' node lifecycle controller (--node-eviction-rate,
 * --secondary-node-eviction-rate, --unhealthy-zone-threshold). Grants are per node and per episode (the node's
 * Unhealthy `since`): once a node is granted, every job on it restarts elsewhere; the next node of that zone waits
 * for the zone's interval. Rates come from evictionRates (common/health.ts): normal, slow when a zone is partially
 * or (while others are up) fully dark, 0 in a small disrupted zone and everywhere when every zone is dark.
 * Pure: the placement workflow holds the state and calls decideEviction with its workflow clock.
 */
import {
  DEFAULT_EVICTION_CONFIG,
  type EvictionConfig,
  evictionRates,
  NO_ZONE,
  talliesOf,
  type ZoneTally,
} from './health';

export interface EvictionAsk {
  jobId: string;
  node: string;
  /** The node's zone (its registry's inventory); null: NO_ZONE. */
  zone: string | null;
  /** When the node entered its Unhealthy/Left state (registry time): one episode, one grant. */
  since: string | null;
  critical: boolean;
  /** 0 (most important) to 10. */
  priority: number;
  /** Each zone's registered and Ready nodes, as the asker's nodeStanding counted them (for the zone rates). */
  zones?: ZoneTally[];
  /** What asks carried before zones: every registered node. Kept so those asks, in histories, decide alike. */
  nodes?: { node: string; zone: string | null; ready: boolean }[];
}

interface Waiter {
  key: string;
  jobId: string;
  node: string;
  zone: string;
  critical: boolean;
  priority: number;
  askedAt: number;
  lastAskAt: number;
}

export interface EvictionGateState {
  waiting: Waiter[];
  /** Node episodes granted (newest last, bounded). */
  granted: { key: string; node: string; zone: string; at: number }[];
  /** The last grant per zone (workflow time, ms). */
  lastGrant: { zone: string; at: number }[];
}

export interface EvictionDecision {
  granted: boolean;
  /** Why it is held (or granted): shown on the job as EvictionHeld's reason. */
  why: string;
  /** When to ask again (held); 0 when granted. */
  retryAfterMs: number;
}

export const EMPTY_EVICTION_GATE: EvictionGateState = { waiting: [], granted: [], lastGrant: [] };
/** A waiter that has not asked again for this long is gone (its job was cancelled, or its node came back). */
export const EVICTION_WAITER_TTL_MS = 3 * 60_000;
/** How long a job held at a zero rate waits before asking again. */
export const EVICTION_ZERO_RATE_RETRY_MS = 60_000;
const MAX_GRANTED = 200;

export const evictionKey = (node: string, since: string | null): string => `${node}@${since ?? '?'}`;

/** Critical first, then lower priority number, then who asked first (then the node name: deterministic). */
const before = (a: Waiter, b: Waiter): number =>
  Number(b.critical) - Number(a.critical) ||
  a.priority - b.priority ||
  a.askedAt - b.askedAt ||
  a.key.localeCompare(b.key);

/**
 * One ask, answered at `now`: the ask joins the waiters (or refreshes its place), every zone whose interval has
 * passed grants its first waiting node, and the answer says whether the asker's node is granted, and if not why
 * and when to ask again. Deterministic in (state, ask, now, cfg).
 */
export function decideEviction(
  state: EvictionGateState,
  ask: EvictionAsk,
  now: number,
  cfg: EvictionConfig = DEFAULT_EVICTION_CONFIG,
): { state: EvictionGateState; decision: EvictionDecision } {
  const key = evictionKey(ask.node, ask.since);
  const zone = ask.zone ?? NO_ZONE;
  const granted = [...state.granted];
  const lastGrant = new Map(state.lastGrant.map((g) => [g.zone, g.at]));
  if (granted.some((g) => g.key === key))
    return { state, decision: { granted: true, why: `node ${ask.node} was granted its eviction`, retryAfterMs: 0 } };
  const waiting = state.waiting.filter((w) => w.lastAskAt >= now - EVICTION_WAITER_TTL_MS).map((w) => ({ ...w }));
  let me = waiting.find((w) => w.key === key && w.jobId === ask.jobId);
  if (me) Object.assign(me, { lastAskAt: now, critical: ask.critical, priority: ask.priority });
  else {
    me = {
      key,
      jobId: ask.jobId,
      node: ask.node,
      zone,
      critical: ask.critical,
      priority: ask.priority,
      askedAt: now,
      lastAskAt: now,
    };
    waiting.push(me);
  }
  const asker: Waiter = me;
  const rates = evictionRates(talliesOf(ask), cfg);
  const rateOf = (z: string): { perMinute: number; why: string } =>
    rates.zones.find((r) => r.zone === z) ?? { perMinute: cfg.normalPerMinute, why: 'normal' };
  for (const z of [...new Set(waiting.map((w) => w.zone))].sort()) {
    const { perMinute } = rateOf(z);
    if (perMinute <= 0) continue;
    const last = lastGrant.get(z);
    if (last !== undefined && now < last + 60_000 / perMinute) continue;
    const first = waiting.filter((w) => w.zone === z).sort(before)[0];
    granted.push({ key: first.key, node: first.node, zone: z, at: now });
    lastGrant.set(z, now);
  }
  const grantedKeys = new Set(granted.map((g) => g.key));
  const next: EvictionGateState = {
    waiting: waiting.filter((w) => !grantedKeys.has(w.key)),
    granted: granted.slice(-MAX_GRANTED),
    lastGrant: [...lastGrant].map(([z, at]) => ({ zone: z, at })),
  };
  if (grantedKeys.has(key))
    return {
      state: next,
      decision: { granted: true, why: `node ${ask.node} granted its eviction (zone ${zone})`, retryAfterMs: 0 },
    };
  const rate = rateOf(zone);
  if (rate.perMinute <= 0)
    return {
      state: next,
      decision: { granted: false, why: `zone ${zone}: ${rate.why}`, retryAfterMs: EVICTION_ZERO_RATE_RETRY_MS },
    };
  const ahead = new Set(
    next.waiting.filter((w) => w.zone === zone && w.key !== key && before(w, asker) < 0).map((w) => w.node),
  ).size;
  const interval = 60_000 / rate.perMinute;
  const due = (lastGrant.get(zone) ?? now) + interval - now;
  return {
    state: next,
    decision: {
      granted: false,
      why: `zone ${zone} evicts ${rate.perMinute} node${rate.perMinute === 1 ? '' : 's'}/min (${rate.why}): ${ahead} node${ahead === 1 ? '' : 's'} ahead, next grant in ${Math.ceil(due / 1000)} s`,
      retryAfterMs: Math.max(1000, Math.min(due + ahead * interval, EVICTION_ZERO_RATE_RETRY_MS)),
    },
  };
}
