import {
  advanceBreaker,
  applyHealthConfig,
  DEFAULT_EVICTION_CONFIG,
  DEFAULT_HEALTH_CONFIG as cfg,
  evictionRates,
  tallyZones,
  HealthConfigPatchSchema,
  newBreaker,
  nodeScore,
  nodeState,
  type NodeHealth,
  quarantineEndsAt,
  recordFailure,
  recordZoneOutcome,
  restoreFailureKind,
  type ZoneBreaker,
  zoneWaitMs,
} from '../../common/health';

const fresh = (): NodeHealth => ({ node: 'n', zone: 'z', failures: [] });

describe('node score', () => {
  test('a node without failures scores 1 and is Healthy', () => {
    expect(nodeScore(fresh(), 0, cfg)).toBe(1);
    expect(nodeState(fresh(), 0, cfg)).toBe('Healthy');
  });

  test('one failed step lowers the score without quarantine; four in a row quarantine', () => {
    let h = recordFailure(fresh(), { kind: 'failedStep', at: 0, detail: 'criu' }, cfg);
    expect(nodeScore(h, 0, cfg)).toBeCloseTo(0.75);
    expect(nodeState(h, 0, cfg)).toBe('Healthy');
    for (let i = 1; i < 4; i++) h = recordFailure(h, { kind: 'failedStep', at: i, detail: 'criu' }, cfg);
    expect(nodeScore(h, 4, cfg)).toBeLessThan(0.3);
    expect(nodeState(h, 4, cfg)).toBe('Quarantined');
  });

  test('a lie (failed verification) quarantines at once and decay alone ends it when quarantineEndsAt says', () => {
    const h = recordFailure(fresh(), { kind: 'failedVerification', at: 0, detail: 'NotRunning' }, cfg);
    expect(nodeScore(h, 0, cfg)).toBe(0);
    expect(nodeState(h, 0, cfg)).toBe('Quarantined');
    const until = quarantineEndsAt(h, 0, cfg);
    // 1 - 2^(-t/h) = 0.3 at t = h * log2(1/0.7) ~= 0.515 half-lives.
    expect(until).toBeGreaterThan(0.5 * cfg.halfLifeMs);
    expect(until).toBeLessThan(0.52 * cfg.halfLifeMs);
    expect(nodeState(h, (until as number) - 1000, cfg)).toBe('Quarantined');
    expect(nodeState(h, until as number, cfg)).toBe('Healthy');
    expect(quarantineEndsAt(h, until as number, cfg)).toBeNull();
    // One half-life later the score is one half; after many, it is back near 1.
    expect(nodeScore(h, cfg.halfLifeMs, cfg)).toBeCloseTo(0.5);
    expect(nodeScore(h, 20 * cfg.halfLifeMs, cfg)).toBeGreaterThan(0.999);
  });

  test('two lies keep it quarantined three times as long (1.5 half-lives)', () => {
    let h = recordFailure(fresh(), { kind: 'failedVerification', at: 0, detail: 'a' }, cfg);
    h = recordFailure(h, { kind: 'failedVerification', at: 0, detail: 'b' }, cfg);
    const until = quarantineEndsAt(h, 0, cfg) as number;
    expect(until / cfg.halfLifeMs).toBeCloseTo(Math.log2(2 / 0.7), 3);
  });

  test('the half-life is configurable, and failures that decayed to nothing are dropped', () => {
    const quick = applyHealthConfig(cfg, { halfLifeMs: 1000 });
    expect(quick.weights).toEqual(cfg.weights);
    let h = recordFailure(fresh(), { kind: 'failedVerification', at: 0, detail: 'old' }, quick);
    expect(nodeState(h, 600, quick)).toBe('Healthy');
    h = recordFailure(h, { kind: 'failedStep', at: 20_000, detail: 'new' }, quick);
    expect(h.failures.map((f) => f.detail)).toEqual(['new']);
  });

  test('a configuration patch is validated field by field', () => {
    expect(HealthConfigPatchSchema.safeParse({ halfLifeMs: 5000, weights: { failedStep: 0.5 } }).success).toBe(true);
    const bad = HealthConfigPatchSchema.safeParse({ halfLifeMs: -1 });
    expect(bad.success).toBe(false);
    expect(JSON.stringify(bad.error?.issues[0].path)).toContain('halfLifeMs');
    expect(HealthConfigPatchSchema.safeParse({ halfLife: 5 }).success).toBe(false);
  });

  test('restore failures are judged by type: a lie, a failed step, or nothing about the node', () => {
    expect(restoreFailureKind('NotRunning')).toBe('failedVerification');
    expect(restoreFailureKind('NotReady', 'Verifying')).toBe('unreachedTarget');
    expect(restoreFailureKind('CriuRestoreFailed')).toBe('failedStep');
    expect(restoreFailureKind('NoSuchProcess', 'Verifying')).toBe('failedVerification');
    expect(restoreFailureKind('NoSuchProcess', 'RestoringVram')).toBe('failedStep');
    expect(restoreFailureKind('ChecksumMismatch')).toBeNull();
    expect(restoreFailureKind('AgentLost')).toBeNull();
    expect(restoreFailureKind(undefined)).toBeNull();
  });
});

describe('zone circuit breaker', () => {
  const outcomes = (b: ZoneBreaker, at: number, oks: boolean[]): ZoneBreaker =>
    oks.reduce((x, ok, i) => recordZoneOutcome(x, { at: at + i, ok }, cfg), b);

  test('stays Closed under the minimum sample count, however bad the rate', () => {
    const b = outcomes(newBreaker('z'), 0, [false, false, false, false]);
    expect(b.state).toBe('Closed');
    expect(zoneWaitMs({ ...b, lastPlacementAt: 3 }, 4, cfg)).toBe(0);
  });

  test('opens past a 0.3 failure rate, throttles to one placement per second, half-opens after the cool-down', () => {
    // 2 failures of 5 = 0.4 > 0.3.
    let b = outcomes(newBreaker('z'), 0, [true, true, true, false, false]);
    expect(b.state).toBe('Open');
    expect(b.openedAt).toBe(4);
    expect(zoneWaitMs(b, 10, cfg)).toBe(0); // nothing placed since it opened
    b = { ...b, lastPlacementAt: 10 };
    expect(zoneWaitMs(b, 10, cfg)).toBe(1000);
    expect(zoneWaitMs(b, 510, cfg)).toBe(500);
    expect(zoneWaitMs(b, 1010, cfg)).toBe(0);
    expect(advanceBreaker(b, 4 + cfg.zoneCoolDownMs - 1, cfg).state).toBe('Open');
    const half = advanceBreaker(b, 4 + cfg.zoneCoolDownMs, cfg);
    expect(half.state).toBe('HalfOpen');
    // Half-open still throttles: its placements are the probes.
    expect(zoneWaitMs({ ...half, lastPlacementAt: 4 + cfg.zoneCoolDownMs }, 4 + cfg.zoneCoolDownMs, cfg)).toBe(1000);
  });

  test('a failed probe opens it again; successful probes that bring the rate down close it', () => {
    let b = outcomes(newBreaker('z'), 0, [true, true, true, false, false]);
    const t = 4 + cfg.zoneCoolDownMs;
    const reopened = recordZoneOutcome(b, { at: t, ok: false }, cfg);
    expect(reopened.state).toBe('Open');
    expect(reopened.openedAt).toBe(t);
    // 2 failures of 7 = 0.29 <= 0.3: closed.
    b = recordZoneOutcome(b, { at: t, ok: true }, cfg);
    expect(b.state).toBe('HalfOpen');
    b = recordZoneOutcome(b, { at: t + 1, ok: true }, cfg);
    expect(b.state).toBe('Closed');
    expect(zoneWaitMs({ ...b, lastPlacementAt: t + 1 }, t + 1, cfg)).toBe(0);
  });

  test('failures age out of the sliding window', () => {
    const b = outcomes(newBreaker('z'), 0, [false, false, false, false, false]);
    expect(b.state).toBe('Open');
    const later = advanceBreaker(b, cfg.zoneWindowMs + 10, cfg);
    expect(later.samples).toHaveLength(0);
    expect(later.state).toBe('Closed');
  });
});

describe('evictions when zones go dark', () => {
  const zone = (z: string, ready: number, unhealthy: number) => [
    ...Array.from({ length: ready }, (_, i) => ({ node: `${z}-r${i}`, zone: z, ready: true })),
    ...Array.from({ length: unhealthy }, (_, i) => ({ node: `${z}-u${i}`, zone: z, ready: false })),
  ];
  const rate = (r: ReturnType<typeof evictionRates>, z: string) => r.zones.find((x) => x.zone === z);

  test('nodes are tallied per zone: registered and Ready, a node without a zone under NO_ZONE', () => {
    expect(tallyZones([...zone('b', 2, 1), ...zone('a', 0, 3), { zone: null, ready: true }])).toEqual([
      { zone: null, nodes: 1, ready: 1 },
      { zone: 'a', nodes: 3, ready: 0 },
      { zone: 'b', nodes: 3, ready: 2 },
    ]);
  });

  test('a healthy zone evicts at the normal rate', () => {
    const r = evictionRates(tallyZones([...zone('a', 9, 1), ...zone('b', 10, 0)]));
    expect(r.allZonesDark).toBe(false);
    expect(rate(r, 'a')).toMatchObject({ condition: 'Normal', perMinute: DEFAULT_EVICTION_CONFIG.normalPerMinute });
  });

  test('a fully dark zone evicts slowly while another zone is up', () => {
    const r = evictionRates(tallyZones([...zone('a', 0, 4), ...zone('b', 3, 0)]));
    expect(rate(r, 'a')).toMatchObject({
      condition: 'FullDisruption',
      perMinute: DEFAULT_EVICTION_CONFIG.slowPerMinute,
    });
    expect(rate(r, 'b')).toMatchObject({ condition: 'Normal', perMinute: DEFAULT_EVICTION_CONFIG.normalPerMinute });
  });

  test('every zone dark: no evictions anywhere', () => {
    const r = evictionRates(tallyZones([...zone('a', 0, 4), ...zone('b', 0, 2), { zone: null, ready: false }]));
    expect(r.allZonesDark).toBe(true);
    expect(r.zones.map((z) => z.perMinute)).toEqual([0, 0, 0]);
    expect(r.zones.map((z) => z.zone)).toContain('(no zone)');
  });

  test('partial disruption: a small zone stops, a large one evicts slowly; two unhealthy nodes are not enough', () => {
    const small = evictionRates(tallyZones([...zone('a', 2, 3), ...zone('b', 3, 0)]));
    expect(rate(small, 'a')).toMatchObject({ condition: 'PartialDisruption', perMinute: 0 });
    const large = evictionRates(tallyZones([...zone('a', 20, 40), ...zone('b', 3, 0)]));
    expect(rate(large, 'a')).toMatchObject({ condition: 'PartialDisruption', perMinute: 1 });
    const two = evictionRates(tallyZones([...zone('a', 1, 2), ...zone('b', 3, 0)]));
    expect(rate(two, 'a')).toMatchObject({ condition: 'Normal' });
  });
});
