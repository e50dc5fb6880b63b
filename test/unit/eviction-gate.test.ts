import {
  decideEviction,
  EMPTY_EVICTION_GATE,
  type EvictionAsk,
  type EvictionGateState,
} from '../../common/eviction-gate';
import { tallyZones } from '../../common/health';

/** A zone of `n` nodes z-0..z-(n-1) of which the first `dark` are not Ready. */
const zone = (z: string, n: number, dark: number): NonNullable<EvictionAsk['nodes']> =>
  Array.from({ length: n }, (_, i) => ({ node: `${z}-${i}`, zone: z, ready: i >= dark }));

const ask = (over: Partial<EvictionAsk>): EvictionAsk => ({
  jobId: 'j',
  node: 'a-0',
  zone: 'a',
  since: 't0',
  critical: false,
  priority: 5,
  zones: tallyZones([...zone('a', 10, 2), ...zone('b', 10, 0)]),
  ...over,
});

describe('eviction gate', () => {
  test('normal zone: one node granted per 10 s, shared by every job; the node granted takes all its jobs', () => {
    let s: EvictionGateState = EMPTY_EVICTION_GATE;
    let r = decideEviction(s, ask({ jobId: 'j1', node: 'a-0' }), 0);
    expect(r.decision.granted).toBe(true);
    s = r.state;
    r = decideEviction(s, ask({ jobId: 'j2', node: 'a-1' }), 1000);
    expect(r.decision).toEqual(expect.objectContaining({ granted: false, retryAfterMs: 9000 }));
    expect(r.decision.why).toMatch(/zone a evicts 6 nodes\/min \(normal\): 0 nodes ahead, next grant in 9 s/);
    s = r.state;
    // Another job on the node already granted goes at once.
    expect(decideEviction(s, ask({ jobId: 'j3', node: 'a-0' }), 2000).decision.granted).toBe(true);
    r = decideEviction(s, ask({ jobId: 'j2', node: 'a-1' }), 10_000);
    expect(r.decision.granted).toBe(true);
  });

  test('zones are rated apart: a grant in zone a does not hold zone b', () => {
    const s = decideEviction(EMPTY_EVICTION_GATE, ask({ node: 'a-0' }), 0).state;
    const zones = tallyZones([...zone('a', 10, 2), ...zone('b', 10, 1)]);
    expect(decideEviction(s, ask({ jobId: 'k', node: 'b-0', zone: 'b', zones }), 1).decision.granted).toBe(true);
  });

  test('critical first: a critical job that asked later is granted before a normal one that waits', () => {
    let s = decideEviction(EMPTY_EVICTION_GATE, ask({ jobId: 'first', node: 'a-0' }), 0).state;
    s = decideEviction(s, ask({ jobId: 'normal', node: 'a-1', priority: 0 }), 1000).state;
    const crit = decideEviction(s, ask({ jobId: 'crit', node: 'a-2', critical: true, priority: 3 }), 2000);
    expect(crit.decision.granted).toBe(false);
    // The next slot (10 s): whoever asks, the critical job's node is the one granted.
    const normal = decideEviction(crit.state, ask({ jobId: 'normal', node: 'a-1', priority: 0 }), 10_000);
    expect(normal.decision.granted).toBe(false);
    // That slot went to the critical job's node: the normal one is first for the next, 10 s on.
    expect(normal.state.granted.map((g) => g.node)).toEqual(['a-0', 'a-2']);
    expect(normal.decision.why).toMatch(/0 nodes ahead, next grant in 10 s/);
    expect(
      decideEviction(normal.state, ask({ jobId: 'crit', node: 'a-2', critical: true }), 10_001).decision.granted,
    ).toBe(true);
  });

  test('priority 0 before priority 5 among normal jobs', () => {
    let s = decideEviction(EMPTY_EVICTION_GATE, ask({ jobId: 'x', node: 'a-0' }), 0).state;
    s = decideEviction(s, ask({ jobId: 'p5', node: 'a-1', priority: 5 }), 1).state;
    s = decideEviction(s, ask({ jobId: 'p0', node: 'a-2', priority: 0 }), 2).state;
    const r = decideEviction(s, ask({ jobId: 'p5', node: 'a-1', priority: 5 }), 10_000);
    expect(r.decision.granted).toBe(false);
    expect(decideEviction(r.state, ask({ jobId: 'p0', node: 'a-2', priority: 0 }), 10_001).decision.granted).toBe(true);
  });

  test('partially disrupted large zone (>= 55% not Ready): the slow rate, one node a minute', () => {
    const zones = tallyZones(zone('a', 60, 40));
    const s = decideEviction(EMPTY_EVICTION_GATE, ask({ node: 'a-0', zones }), 0).state;
    const r = decideEviction(s, ask({ jobId: 'k', node: 'a-1', zones }), 10_000);
    expect(r.decision.granted).toBe(false);
    expect(r.decision.why).toMatch(/evicts 1 node\/min \(40 of 60 nodes Unhealthy: evicting slowly\)/);
    expect(decideEviction(r.state, ask({ jobId: 'k', node: 'a-1', zones }), 60_000).decision.granted).toBe(true);
  });

  test('every zone dark: nothing granted, ever, and the reason says why', () => {
    const zones = tallyZones([...zone('a', 3, 3), ...zone('b', 2, 2)]);
    let s: EvictionGateState = EMPTY_EVICTION_GATE;
    for (const t of [0, 60_000, 3_600_000]) {
      const r = decideEviction(s, ask({ node: 'a-0', zones }), t);
      expect(r.decision).toEqual(expect.objectContaining({ granted: false, retryAfterMs: 60_000 }));
      expect(r.decision.why).toMatch(/every zone is dark/);
      s = r.state;
    }
    expect(s.granted).toEqual([]);
  });

  test('an ask from before zone tallies (every node listed) decides as its tally does', () => {
    const nodes = zone('a', 60, 40);
    const legacy: EvictionAsk = { ...ask({ node: 'a-0' }), zones: undefined, nodes };
    const byNodes = decideEviction(EMPTY_EVICTION_GATE, legacy, 0);
    expect(byNodes).toEqual(decideEviction(EMPTY_EVICTION_GATE, ask({ node: 'a-0', zones: tallyZones(nodes) }), 0));
    const held = decideEviction(byNodes.state, { ...legacy, jobId: 'k', node: 'a-1' }, 10_000);
    expect(held.decision.why).toMatch(/40 of 60 nodes Unhealthy: evicting slowly/);
  });

  test('a new Unhealthy episode of a node is a new ask; a waiter that stopped asking leaves the queue', () => {
    let s = decideEviction(EMPTY_EVICTION_GATE, ask({ node: 'a-0', since: 't0' }), 0).state;
    expect(decideEviction(s, ask({ node: 'a-0', since: 't1' }), 1000).decision.granted).toBe(false);
    s = decideEviction(s, ask({ jobId: 'gone', node: 'a-1', critical: true }), 1000).state;
    // 'gone' never asks again: past its TTL it no longer takes the slot.
    const r = decideEviction(s, ask({ jobId: 'k', node: 'a-2' }), 4 * 60_000);
    expect(r.decision.granted).toBe(true);
  });
});
