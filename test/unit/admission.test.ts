import { requestPriority } from '../../clients/admission';
import { DEFAULT_ADMISSION_CONFIG, overload, priorityProblem, refusal } from '../../common/admission';
import { InvalidInputError } from '../../common/ids';
import { admissionConfigFromEnv } from '../../workers/admission-config';

const cfg = { ...DEFAULT_ADMISSION_CONFIG, backlogLimit: 10, degradedBacklog: 20, degradedLatencyMs: 1000 };

describe('admission rules', () => {
  test('priority: 0..10, default 5, bad values refused naming the field', () => {
    expect(requestPriority(undefined)).toBe(5);
    expect(requestPriority(0)).toBe(0);
    expect(requestPriority(10)).toBe(10);
    expect(() => requestPriority(11)).toThrow(InvalidInputError);
    expect(() => requestPriority(2.5)).toThrow(
      /^priority: must be a whole number from 0 \(critical\) to 10 \(got 2.5\)/,
    );
    expect(priorityProblem(-1)).toMatch(/got -1/);
  });

  test('at the backlog limit only priority 10 is refused; Degraded refuses above 5; 0 never', () => {
    const normal = { mode: 'Normal' as const, why: null, config: cfg };
    expect(refusal({ ...normal, backlog: 9 }, 10)).toBeNull();
    expect(refusal({ ...normal, backlog: 10 }, 10)?.details).toMatchObject({ reason: 'backlog', retryAfterS: 60 });
    expect(refusal({ ...normal, backlog: 10 }, 9)).toBeNull();
    const degraded = { mode: 'Degraded' as const, why: 'backlog 21 > 20', config: cfg, backlog: 21 };
    expect(refusal(degraded, 6)?.message).toMatch(/Degraded \(backlog 21 > 20\).*retry in 40 s/);
    expect(refusal(degraded, 5)).toBeNull();
    expect(refusal({ ...degraded, backlog: 10_000 }, 0)).toBeNull();
  });

  test('Degraded is entered above the marks and left only below lower ones', () => {
    expect(overload(cfg, 20, 1000, 'enter')).toBeNull();
    expect(overload(cfg, 21, 1001, 'enter')).toBe('backlog 21 > 20, control-plane latency 1001 ms > 1000 ms');
    expect(overload(cfg, 16, 400, 'exit')).toBe('backlog 16 > 15');
    expect(overload(cfg, 15, 600, 'exit')).toBe('control-plane latency 600 ms > 500 ms');
    expect(overload(cfg, 15, 500, 'exit')).toBeNull();
  });

  test("the control worker's environment: set variables only, a bad one named", () => {
    expect(admissionConfigFromEnv({})).toEqual({});
    expect(
      admissionConfigFromEnv({ KYBERNATE_ADMISSION_BACKLOG_LIMIT: '50', KYBERNATE_ADMISSION_CALM_PROBES: '2' }),
    ).toEqual({ backlogLimit: 50, calmProbes: 2 });
    expect(() => admissionConfigFromEnv({ KYBERNATE_ADMISSION_BACKLOG_LIMIT: 'lots' })).toThrow(
      /^KYBERNATE_ADMISSION_BACKLOG_LIMIT: must be a whole number from 1 to 1000000 \(got 'lots'\)/,
    );
  });
});
