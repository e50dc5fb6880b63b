import { z } from 'zod';

/**
 * Node health and zone circuit breakers: pure rules (no clocks: every function takes `now` in ms), held durably
 * by the placement workflow (workflows/placement.ts) and unit-tested in test/unit/health.test.ts.
 *
 * A node's score is 1 minus the decayed weight of its recent failures; below `quarantineBelow` it is
 * Quarantined (no placements) and it comes back by decay alone: no operator and no success is needed, only time.
 * A zone's breaker watches the failure rate of placements into it over a sliding window: past `zoneOpenAbove`
 * (with at least `zoneMinSamples` samples) it opens, and placements into that zone are throttled to one per
 * `zoneThrottleMs` while other zones run at full speed; after `zoneCoolDownMs` it is HalfOpen (still throttled:
 * the placements are its probes); a failed probe opens it again, a window whose rate has fallen closes it.
 */

/** What a node did wrong. A lie (said Running, nothing runs) weighs most: the node's word cannot be trusted. */
export type FailureKind = 'failedStep' | 'failedVerification' | 'unreachedTarget';
export const FAILURE_KINDS: readonly FailureKind[] = ['failedStep', 'failedVerification', 'unreachedTarget'];

export interface HealthConfig {
  /** Time for a failure's weight to halve. */
  halfLifeMs: number;
  /** A score below this is Quarantined. */
  quarantineBelow: number;
  /** The weight of one failure of each kind at the moment it happens (the score is 1 minus their decayed sum). */
  weights: Record<FailureKind, number>;
  zoneWindowMs: number;
  zoneMinSamples: number;
  /** A zone's failure rate above this opens its breaker. */
  zoneOpenAbove: number;
  /** How long an Open breaker waits before it probes (HalfOpen). */
  zoneCoolDownMs: number;
  /** At most one placement into an Open or HalfOpen zone per this many ms. */
  zoneThrottleMs: number;
}

export const DEFAULT_HEALTH_CONFIG: HealthConfig = {
  halfLifeMs: 10 * 60_000,
  quarantineBelow: 0.3,
  // One lie quarantines a node for about half a half-life (1 - 2^-t >= 0.3 at t = 0.51 half-lives), two for 1.5;
  // four failed steps (CRIU, CUDA) in a row do too; one failed step alone does not.
  weights: { failedStep: 0.25, failedVerification: 1, unreachedTarget: 0.5 },
  zoneWindowMs: 5 * 60_000,
  zoneMinSamples: 5,
  zoneOpenAbove: 0.3,
  zoneCoolDownMs: 30_000,
  zoneThrottleMs: 1000,
};

const positiveMs = z
  .number()
  .int()
  .positive()
  .max(30 * 24 * 3600_000);
const fraction = z.number().min(0).max(1);
/** A partial configuration as an operator or a test sends it; validated before it reaches the workflow. */
export const HealthConfigPatchSchema = z
  .object({
    halfLifeMs: positiveMs,
    quarantineBelow: fraction,
    weights: z
      .object({
        failedStep: z.number().min(0).max(10),
        failedVerification: z.number().min(0).max(10),
        unreachedTarget: z.number().min(0).max(10),
      })
      .partial()
      .strict(),
    zoneWindowMs: positiveMs,
    zoneMinSamples: z.number().int().min(1).max(100_000),
    zoneOpenAbove: fraction,
    zoneCoolDownMs: positiveMs,
    zoneThrottleMs: positiveMs,
  })
  .partial()
  .strict();
export type HealthConfigPatch = z.infer<typeof HealthConfigPatchSchema>;

export function applyHealthConfig(base: HealthConfig, patch: HealthConfigPatch): HealthConfig {
  return { ...base, ...patch, weights: { ...base.weights, ...(patch.weights ?? {}) } };
}

export interface NodeFailure {
  kind: FailureKind;
  /** ms since the epoch (workflow time). */
  at: number;
  detail: string;
}

export interface NodeHealth {
  node: string;
  zone: string | null;
  /** Newest last; pruned once a failure's weight has decayed to nothing. */
  failures: NodeFailure[];
}

export type NodeHealthState = 'Healthy' | 'Quarantined';

/** A failure's weight left after `age` ms. */
const decayed = (weight: number, ageMs: number, cfg: HealthConfig): number =>
  weight * Math.pow(0.5, Math.max(0, ageMs) / cfg.halfLifeMs);

/** The decayed sum of a node's failures at `now`. */
export function penalty(h: NodeHealth, now: number, cfg: HealthConfig): number {
  return h.failures.reduce((s, f) => s + decayed(cfg.weights[f.kind], now - f.at, cfg), 0);
}

/** In [0, 1]: 1 is a node with no recent failure. */
export function nodeScore(h: NodeHealth, now: number, cfg: HealthConfig): number {
  return Math.min(1, Math.max(0, 1 - penalty(h, now, cfg)));
}

export function nodeState(h: NodeHealth, now: number, cfg: HealthConfig): NodeHealthState {
  return nodeScore(h, now, cfg) < cfg.quarantineBelow ? 'Quarantined' : 'Healthy';
}

/**
 * When a Quarantined node's score reaches the threshold by decay alone (null when it is not quarantined). Every
 * weight decays by the same factor, so the penalty P(now) falls as P * 2^(-d / halfLife): it reaches
 * 1 - threshold after d = halfLife * log2(P / (1 - threshold)).
 */
export function quarantineEndsAt(h: NodeHealth, now: number, cfg: HealthConfig): number | null {
  if (nodeState(h, now, cfg) !== 'Quarantined') return null;
  const p = penalty(h, now, cfg);
  const target = 1 - cfg.quarantineBelow;
  if (target <= 0) return null; // a threshold of 1 is never reached by decay
  return now + Math.ceil(cfg.halfLifeMs * Math.log2(p / target));
}

/** Most failures kept per node: enough to quarantine it many times over, bounded for the workflow's state. */
const MAX_FAILURES = 50;

/** The node with one more failure; failures decayed below a thousandth of their weight are dropped. */
export function recordFailure(h: NodeHealth, f: NodeFailure, cfg: HealthConfig): NodeHealth {
  const kept = h.failures.filter((x) => decayed(cfg.weights[x.kind], f.at - x.at, cfg) >= cfg.weights[x.kind] / 1000);
  return { ...h, failures: [...kept, f].slice(-MAX_FAILURES) };
}

// ---- zones -------------------------------------------------------------------------------------------------

export type BreakerState = 'Closed' | 'Open' | 'HalfOpen';

export interface ZoneSample {
  at: number;
  ok: boolean;
}

export interface ZoneBreaker {
  zone: string;
  state: BreakerState;
  /** Outcomes inside the window, oldest first. */
  samples: ZoneSample[];
  /** When it last opened (null: never, or closed since). */
  openedAt: number | null;
  /** The last placement into this zone: the throttle counts from it. */
  lastPlacementAt: number | null;
}

export const newBreaker = (zone: string): ZoneBreaker => ({
  zone,
  state: 'Closed',
  samples: [],
  openedAt: null,
  lastPlacementAt: null,
});

/** Most samples kept per zone: the rate over the newest ones is the rate that matters. */
const MAX_SAMPLES = 1000;

export function windowCounts(
  b: ZoneBreaker,
  now: number,
  cfg: HealthConfig,
): { ok: number; failed: number; rate: number } {
  const inWindow = b.samples.filter((s) => now - s.at <= cfg.zoneWindowMs);
  const failed = inWindow.filter((s) => !s.ok).length;
  return { ok: inWindow.length - failed, failed, rate: inWindow.length === 0 ? 0 : failed / inWindow.length };
}

const tripped = (b: ZoneBreaker, now: number, cfg: HealthConfig): boolean => {
  const w = windowCounts(b, now, cfg);
  return w.ok + w.failed >= cfg.zoneMinSamples && w.rate > cfg.zoneOpenAbove;
};

/** The breaker as it stands at `now`: old samples out of the window, Closed -> Open, Open -> HalfOpen, HalfOpen -> Closed. */
export function advanceBreaker(b: ZoneBreaker, now: number, cfg: HealthConfig): ZoneBreaker {
  const samples = b.samples.filter((s) => now - s.at <= cfg.zoneWindowMs).slice(-MAX_SAMPLES);
  const cur: ZoneBreaker = { ...b, samples };
  switch (cur.state) {
    case 'Closed':
      return tripped(cur, now, cfg) ? { ...cur, state: 'Open', openedAt: now } : cur;
    case 'Open':
      if (cur.openedAt !== null && now - cur.openedAt < cfg.zoneCoolDownMs) return cur;
      return advanceBreaker({ ...cur, state: 'HalfOpen' }, now, cfg);
    case 'HalfOpen':
      // Probes that succeeded (or failures that aged out) brought the rate down: full speed again.
      return tripped(cur, now, cfg) ? cur : { ...cur, state: 'Closed', openedAt: null };
  }
}

/** One outcome of a placement into the zone. A failed probe (HalfOpen) opens the breaker again at once. */
export function recordZoneOutcome(b: ZoneBreaker, s: ZoneSample, cfg: HealthConfig): ZoneBreaker {
  const before = advanceBreaker(b, s.at, cfg);
  const withSample: ZoneBreaker = { ...before, samples: [...before.samples, s] };
  if (before.state === 'HalfOpen' && !s.ok) return { ...withSample, state: 'Open', openedAt: s.at };
  return advanceBreaker(withSample, s.at, cfg);
}

/** How long a placement into this zone must wait at `now` (0: go). Closed zones never wait. */
export function zoneWaitMs(b: ZoneBreaker, now: number, cfg: HealthConfig): number {
  const cur = advanceBreaker(b, now, cfg);
  if (cur.state === 'Closed' || cur.lastPlacementAt === null) return 0;
  return Math.max(0, cur.lastPlacementAt + cfg.zoneThrottleMs - now);
}

// ---- restore outcomes -------------------------------------------------------------------------------------

/**
 * What a failed restore attempt says about its node, from the failure's type (common/errors.ts): null when it
 * says nothing (the checkpoint was corrupt or missing, S3 was away, the agent was lost: liveness judges that).
 */
export function restoreFailureKind(type: string | null | undefined, phase?: string): FailureKind | null {
  // Gone by the time it is verified: the node reported a restore that does not run.
  if (type === 'NoSuchProcess' && phase === 'Verifying') return 'failedVerification';
  switch (type) {
    case 'NotRunning':
    case 'NoProgress':
      // The node said CRIU and CUDA succeeded, and what it restored does not run.
      return 'failedVerification';
    case 'NotReady':
      // It runs, but its readiness target was not reached after failureThreshold probes in a row: the target
      // state not reached after N reconciles. Weaker evidence against the node than a lie (the workload may be slow).
      return 'unreachedTarget';
    case 'CriuRestoreFailed':
    case 'CudaError':
    case 'CudaTimeout':
    case 'CudaUnavailable':
    case 'CudaOutOfMemory':
    case 'RestoreFailed':
    case 'NoSuchProcess':
      return 'failedStep';
    default:
      return null;
  }
}

// ---- whole zones dark -------------------------------------------------------------------------------------

export type ZoneCondition = 'Normal' | 'PartialDisruption' | 'FullDisruption';

export interface EvictionConfig {
  /** Evictions (restarts elsewhere of an Unhealthy node's jobs) per minute in a Normal zone. */
  normalPerMinute: number;
  /** Per minute in a disrupted zone large enough to be trusted, and in a fully dark zone while others are up. */
  slowPerMinute: number;
  /** A zone with at least this fraction of its nodes Unhealthy (and more than two of them) is PartialDisruption. */
  unhealthyZoneThreshold: number;
  /** A PartialDisruption zone with at most this many nodes stops evicting (too small to tell a partition apart). */
  largeZoneNodes: number;
}

export const DEFAULT_EVICTION_CONFIG: EvictionConfig = {
  normalPerMinute: 6,
  slowPerMinute: 1,
  unhealthyZoneThreshold: 0.55,
  largeZoneNodes: 50,
};

export interface ZoneEviction {
  zone: string;
  condition: ZoneCondition;
  nodes: number;
  unhealthy: number;
  perMinute: number;
  why: string;
}

/** The zone name of nodes that report none. */
export const NO_ZONE = '(no zone)';

/**
 * One zone's registered nodes and how many of them are Ready: all the zone rates need. Jobs carry tallies, not
 * node lists, into their histories and eviction asks, so an ask stays a few zones long at thousands of nodes.
 */
export interface ZoneTally {
  zone: string | null;
  nodes: number;
  ready: number;
}

/** Counts nodes per zone (a null zone is NO_ZONE), zones in name order. */
export function tallyZones(nodes: readonly { zone: string | null; ready: boolean }[]): ZoneTally[] {
  const byZone = new Map<string, ZoneTally>();
  for (const n of nodes) {
    const key = n.zone ?? NO_ZONE;
    const t = byZone.get(key) ?? { zone: n.zone, nodes: 0, ready: 0 };
    t.nodes++;
    if (n.ready) t.ready++;
    byZone.set(key, t);
  }
  return [...byZone].sort(([a], [b]) => a.localeCompare(b)).map(([, t]) => t);
}

/**
 * The tallies an answer, ask or input carries (nodeStanding, the eviction ask, evictionBudget), counted from
 * its node list when it was recorded before they carried tallies.
 */
export function talliesOf(x: {
  zones?: ZoneTally[];
  nodes?: readonly { zone: string | null; ready: boolean }[];
}): ZoneTally[] {
  return x.zones ?? tallyZones(x.nodes ?? []);
}

/**
 * How many evictions per minute each zone allows, the rule of Kubernetes' node lifecycle controller made
 * stricter for fully dark zones. A control plane that lost its own network sees every node go Unhealthy at once;
 * moving every job then would restart work that still runs behind the partition (two copies) and stampede the
 * nodes left. So:
 * - every zone FullDisruption (no Ready node anywhere): 0 everywhere; the fault is most likely ours.
 * - a zone FullDisruption while another zone has Ready nodes: slowPerMinute (Kubernetes evicts at the normal rate
 *   here; a whole zone going dark at once is as likely a partition as an outage, so we move its jobs slowly).
 * - PartialDisruption (>= unhealthyZoneThreshold of its nodes and more than 2 Unhealthy): slowPerMinute when the
 *   zone has more than largeZoneNodes nodes, else 0.
 * - Normal: normalPerMinute.
 */
export function evictionRates(
  tallies: readonly ZoneTally[],
  cfg: EvictionConfig = DEFAULT_EVICTION_CONFIG,
): { allZonesDark: boolean; zones: ZoneEviction[] } {
  const byZone = new Map<string, { nodes: number; unhealthy: number }>();
  for (const t of tallies) {
    const z = byZone.get(t.zone ?? NO_ZONE) ?? { nodes: 0, unhealthy: 0 };
    z.nodes += t.nodes;
    z.unhealthy += t.nodes - t.ready;
    byZone.set(t.zone ?? NO_ZONE, z);
  }
  const condition = (z: { nodes: number; unhealthy: number }): ZoneCondition =>
    z.unhealthy === z.nodes
      ? 'FullDisruption'
      : z.unhealthy > 2 && z.unhealthy / z.nodes >= cfg.unhealthyZoneThreshold
        ? 'PartialDisruption'
        : 'Normal';
  const zones = [...byZone].sort(([a], [b]) => a.localeCompare(b));
  const allZonesDark = zones.length > 0 && zones.every(([, z]) => condition(z) === 'FullDisruption');
  return {
    allZonesDark,
    zones: zones.map(([zone, z]) => {
      const c = condition(z);
      const [perMinute, why] = allZonesDark
        ? [0, 'every zone is dark: the control plane most likely lost its network; no evictions']
        : c === 'FullDisruption'
          ? [cfg.slowPerMinute, 'the whole zone is dark while others are up: evicting slowly']
          : c === 'PartialDisruption'
            ? z.nodes > cfg.largeZoneNodes
              ? [cfg.slowPerMinute, `${z.unhealthy} of ${z.nodes} nodes Unhealthy: evicting slowly`]
              : [0, `${z.unhealthy} of ${z.nodes} nodes Unhealthy in a small zone: no evictions`]
            : [cfg.normalPerMinute, 'normal'];
      return { zone, condition: c, nodes: z.nodes, unhealthy: z.unhealthy, perMinute, why };
    }),
  };
}

// ---- the placement workflow's health report (its `health` query) ----------------------------------------

/**
 * What the placement workflow holds (its `health` query answers it raw, with the workflow time of its last
 * task): a query cannot move the workflow's clock, so scores are computed by the reader at its own `now`.
 */
export interface HealthSnapshot {
  at: string;
  config: HealthConfig;
  nodes: NodeHealth[];
  zones: ZoneBreaker[];
  decisions: { at: string; reservationId: string; node: string; why: string }[];
}

/** Scores, states and windows as they stand at `now` (ms). */
export function healthReport(s: HealthSnapshot, now: number): HealthReport {
  const iso = (t: number | null): string | null => (t === null ? null : new Date(t).toISOString());
  const cfg = s.config;
  return {
    at: new Date(now).toISOString(),
    config: cfg,
    nodes: [...s.nodes]
      .sort((a, b) => a.node.localeCompare(b.node))
      .map((h) => ({
        node: h.node,
        zone: h.zone,
        score: nodeScore(h, now, cfg),
        state: nodeState(h, now, cfg),
        quarantinedUntil: iso(quarantineEndsAt(h, now, cfg)),
        recentFailures: h.failures.map((f) => ({ kind: f.kind, at: new Date(f.at).toISOString(), detail: f.detail })),
      })),
    zones: [...s.zones]
      .sort((a, b) => a.zone.localeCompare(b.zone))
      .map((z) => {
        const b = advanceBreaker(z, now, cfg);
        return { zone: b.zone, state: b.state, window: windowCounts(b, now, cfg), openedAt: iso(b.openedAt) };
      }),
    decisions: s.decisions,
  };
}

export interface HealthReport {
  /** Workflow time the report was made at (ISO). */
  at: string;
  config: HealthConfig;
  nodes: {
    node: string;
    zone: string | null;
    score: number;
    state: NodeHealthState;
    /** When decay alone ends its quarantine (ISO); null when not quarantined. */
    quarantinedUntil: string | null;
    recentFailures: { kind: FailureKind; at: string; detail: string }[];
  }[];
  zones: {
    zone: string;
    state: BreakerState;
    window: { ok: number; failed: number; rate: number };
    openedAt: string | null;
  }[];
  /** The newest placement decisions that skipped or delayed a node, and why. */
  decisions: { at: string; reservationId: string; node: string; why: string }[];
}
