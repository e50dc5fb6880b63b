import {
  allHandlersFinished,
  condition,
  continueAsNew,
  defineQuery,
  defineSignal,
  defineUpdate,
  log,
  setCurrentDetails,
  setHandler,
  sleep,
  workflowInfo,
} from '@temporalio/workflow';
import {
  advanceBreaker,
  applyHealthConfig,
  DEFAULT_HEALTH_CONFIG,
  type FailureKind,
  type HealthConfig,
  type HealthConfigPatch,
  type HealthReport,
  type HealthSnapshot,
  newBreaker,
  type NodeHealth,
  nodeScore,
  nodeState,
  recordFailure,
  recordZoneOutcome,
  type ZoneBreaker,
  zoneWaitMs,
} from '../common/health';
import {
  decideEviction,
  EMPTY_EVICTION_GATE,
  type EvictionAsk,
  type EvictionDecision,
  type EvictionGateState,
} from '../common/eviction-gate';
import { STATUS_QUERY } from '../common/outcome';
import type { Candidate, Reservation } from '../common/restore';

export const PLACEMENT_WORKFLOW_ID = 'placement';
export const reserveUpdate = defineUpdate<
  Reservation | null,
  [{ reservationId: string; bytes: number; candidates: Candidate[] }]
>('reserve');
export const releaseSignal = defineSignal<[{ reservationId: string }]>('release');
export const reservationsQuery = defineQuery<Reservation[]>('reservations');
/** The reservations held, under the name every workflow answers. */
export const placementStatusQuery = defineQuery<{ reservations: Reservation[] }>(STATUS_QUERY);

/**
 * What a placement on a node came to: ok (the restore ran), or a failure of some kind. `id` makes a report sent
 * twice (a retried activity) count once.
 */
export interface NodeOutcome {
  id: string;
  node: string;
  zone?: string | null;
  ok: boolean;
  kind?: FailureKind;
  detail: string;
}
export const nodeOutcomeSignal = defineSignal<[NodeOutcome]>('nodeOutcome');
/** Changes the health rules (half-life, thresholds, throttle) from now on; validated by the sender. */
export const configureHealthSignal = defineSignal<[HealthConfigPatch]>('configureHealth');
/** The raw health state; healthReport() (common/health.ts) turns it into scores at the reader's clock. */
export const healthQuery = defineQuery<HealthSnapshot>('health');

/**
 * May a job restart elsewhere the run it lost on an Unhealthy node? Answered at once from the eviction gate
 * (common/eviction-gate.ts): one rate per zone shared by every job, critical first; held asks say why and when
 * to ask again.
 */
export const evictionUpdate = defineUpdate<EvictionDecision, [EvictionAsk]>('eviction');

/** The durable health state carried across continue-as-new. */
export interface HealthState {
  config: HealthConfig;
  nodes: NodeHealth[];
  zones: ZoneBreaker[];
  decisions: HealthReport['decisions'];
  /** Ids of the newest outcome reports, so a report delivered twice counts once. */
  seen: string[];
  /** Evictions waiting and granted (absent in state carried before the gate). */
  gate?: EvictionGateState;
}

/** A reserve waits on the throttle of an Open zone at most this long in all, then answers "nothing now". */
const MAX_THROTTLE_WAIT_MS = 10_000;
const MAX_DECISIONS = 50;
const MAX_SEEN = 500;

/**
 * The single place VRAM is promised (`placement`), and the durable home of node health and zone breakers.
 * The choice of a node runs without awaiting anything, so two restores racing for the last free VRAM on a node
 * cannot both get it; only a throttled zone makes a reserve wait (a workflow timer), and it then chooses again
 * from scratch. Quarantined nodes are skipped; Open and HalfOpen zones take one placement per zoneThrottleMs
 * while Closed zones take them at full speed. Every skip is recorded with its reason (the `health` query).
 */
export async function placement(input: { reservations?: Reservation[]; health?: HealthState } = {}): Promise<void> {
  const held = new Map<string, Reservation>((input.reservations ?? []).map((r) => [r.reservationId, r]));
  const health: HealthState = input.health ?? {
    config: DEFAULT_HEALTH_CONFIG,
    nodes: [],
    zones: [],
    decisions: [],
    seen: [],
  };
  const nodes = new Map(health.nodes.map((n) => [n.node, n]));
  const zones = new Map(health.zones.map((z) => [z.zone, z]));
  const nodeOf = (node: string): NodeHealth => nodes.get(node) ?? { node, zone: null, failures: [] };
  const zoneOf = (zone: string, now: number): ZoneBreaker =>
    advanceBreaker(zones.get(zone) ?? newBreaker(zone), now, health.config);
  /** A node's zone: what its inventory said last (through a candidate), else what an outcome report said. */
  const learnZone = (node: string, zone: string | null | undefined): void => {
    if (!zone) return;
    const h = nodeOf(node);
    if (h.zone !== zone) nodes.set(node, { ...h, zone });
  };
  const decide = (reservationId: string, node: string, why: string): void => {
    health.decisions = [...health.decisions, { at: new Date().toISOString(), reservationId, node, why }].slice(
      -MAX_DECISIONS,
    );
    log.info('placement skipped a node', { reservationId, node, why });
  };

  /** The UI's current details: what is promised where, and which nodes and zones are held back. */
  const showHeld = (): void => {
    const byNode = new Map<string, number>();
    for (const r of held.values()) byNode.set(r.node, (byNode.get(r.node) ?? 0) + r.bytes);
    const now = Date.now();
    const quarantined = [...nodes.values()].filter((n) => nodeState(n, now, health.config) === 'Quarantined');
    const open = [...zones.keys()].map((z) => zoneOf(z, now)).filter((z) => z.state !== 'Closed');
    const parts = [
      held.size === 0
        ? 'no VRAM reserved'
        : `${held.size} reservation${held.size === 1 ? '' : 's'}: ${[...byNode].map(([n, b]) => `${n} ${(b / 2 ** 30).toFixed(1)} GiB`).join(', ')}`,
    ];
    if (quarantined.length > 0) parts.push(`quarantined: ${quarantined.map((n) => n.node).join(', ')}`);
    if (open.length > 0) parts.push(`zones throttled: ${open.map((z) => `${z.zone} (${z.state})`).join(', ')}`);
    setCurrentDetails(parts.join('; '));
  };
  showHeld();

  /** One synchronous choice: a reservation, or how long until a throttled zone could take one (null: never now). */
  const choose = (
    reservationId: string,
    bytes: number,
    candidates: Candidate[],
  ): { reservation: Reservation } | { waitMs: number | null } => {
    const now = Date.now();
    // Per GPU where the candidate lists its GPUs: a workload needs ONE GPU with room, never the sum of several.
    // A reservation without gpuIndex (made before per-GPU placement) counts against every GPU of its node.
    const reservedOn = (node: string, gpu?: number): number =>
      [...held.values()]
        .filter((r) => r.node === node && (gpu === undefined || r.gpuIndex === undefined || r.gpuIndex === gpu))
        .reduce((s, r) => s + r.bytes, 0);
    let waitMs: number | null = null;
    for (const c of candidates) {
      learnZone(c.node, c.zone);
      const gpu = c.gpus?.find((g) => g.freeVramBytes - reservedOn(c.node, g.index) >= bytes);
      const fits = gpu !== undefined || (!c.gpus && c.freeVramBytes - reservedOn(c.node) >= bytes);
      if (!fits) continue;
      const h = nodeOf(c.node);
      if (nodeState(h, now, health.config) === 'Quarantined') {
        decide(reservationId, c.node, `quarantined (score ${nodeScore(h, now, health.config).toFixed(2)})`);
        continue;
      }
      if (h.zone) {
        const wait = zoneWaitMs(zoneOf(h.zone, now), now, health.config);
        if (wait > 0) {
          decide(
            reservationId,
            c.node,
            `zone ${h.zone} throttled (breaker ${zoneOf(h.zone, now).state}): next placement in ${wait} ms`,
          );
          waitMs = waitMs === null ? wait : Math.min(waitMs, wait);
          continue;
        }
        zones.set(h.zone, { ...zoneOf(h.zone, now), lastPlacementAt: now });
      }
      return {
        reservation: {
          reservationId,
          node: c.node,
          bytes,
          ...(gpu ? { gpuIndex: gpu.index } : {}),
        },
      };
    }
    return { waitMs };
  };

  setHandler(reserveUpdate, async ({ reservationId, bytes, candidates }) => {
    for (let waited = 0; ;) {
      const existing = held.get(reservationId);
      if (existing) return existing; // a retried activity asks again
      const got = choose(reservationId, bytes, candidates);
      if ('reservation' in got) {
        held.set(reservationId, got.reservation);
        showHeld();
        return got.reservation;
      }
      // Nothing fits, or only throttled zones could take it: wait for the next slot, or answer "nothing now" (the
      // restore lists candidates again and retries, as when no VRAM is free).
      if (got.waitMs === null || waited + got.waitMs > MAX_THROTTLE_WAIT_MS) return null;
      await sleep(got.waitMs);
      waited += got.waitMs;
    }
  });
  // Synchronous: the decision and the state it leaves are one step, so two jobs asking at once are ordered.
  setHandler(evictionUpdate, (ask) => {
    const r = decideEviction(health.gate ?? EMPTY_EVICTION_GATE, ask, Date.now());
    health.gate = r.state;
    log.info('eviction asked', { job: ask.jobId, node: ask.node, granted: r.decision.granted, why: r.decision.why });
    return r.decision;
  });
  setHandler(releaseSignal, ({ reservationId }) => {
    held.delete(reservationId);
    showHeld();
  });
  setHandler(nodeOutcomeSignal, (o) => {
    if (health.seen.includes(o.id)) return;
    health.seen = [...health.seen, o.id].slice(-MAX_SEEN);
    const now = Date.now();
    learnZone(o.node, o.zone);
    if (!o.ok && o.kind) {
      nodes.set(o.node, recordFailure(nodeOf(o.node), { kind: o.kind, at: now, detail: o.detail }, health.config));
    }
    const zone = nodeOf(o.node).zone;
    if (zone) {
      const before = zoneOf(zone, now).state;
      const after = recordZoneOutcome(zoneOf(zone, now), { at: now, ok: o.ok }, health.config);
      zones.set(zone, after);
      if (after.state !== before) log.info('zone breaker changed', { zone, from: before, to: after.state });
    }
    const h = nodeOf(o.node);
    log.info('node outcome', {
      node: o.node,
      ok: o.ok,
      kind: o.kind,
      score: nodeScore(h, now, health.config),
      state: nodeState(h, now, health.config),
    });
    showHeld();
  });
  setHandler(configureHealthSignal, (patch) => {
    health.config = applyHealthConfig(health.config, patch);
    showHeld();
  });
  setHandler(reservationsQuery, () => [...held.values()]);
  setHandler(placementStatusQuery, () => ({ reservations: [...held.values()] }));
  setHandler(healthQuery, (): HealthSnapshot => ({
    at: new Date().toISOString(),
    config: health.config,
    nodes: [...nodes.values()],
    zones: [...zones.values()],
    decisions: health.decisions,
  }));
  await condition(() => workflowInfo().continueAsNewSuggested);
  // A reserve waiting on a throttled zone finishes first: its caller gets an answer, not a lost update.
  await condition(allHandlersFinished);
  await continueAsNew<typeof placement>({
    reservations: [...held.values()],
    health: { ...health, nodes: [...nodes.values()], zones: [...zones.values()] },
  });
}
