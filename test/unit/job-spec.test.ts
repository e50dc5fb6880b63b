import { applyJobs, parseJobsFile, sameSpec } from '../../clients/apply';
import { describeJob, formatAge, formatMs, jobsTable } from '../../clients/job-format';
import { formatLogLine, type LogSink, type LogSource, showLogs } from '../../clients/job-logs';
import { jobSpecFromFields, type JobFields } from '../../clients/job-flags';
import { parseCriLog } from '../../common/cri-log';
import { InvalidInputError } from '../../common/ids';
import {
  DEFAULT_BACKOFF,
  type JobSpec,
  type JobStatus,
  type ReadRunLogResult,
  type RunLogLine,
  type RunRecord,
} from '../../common/job';
import { parseJobSpec } from '../../common/job-spec';

const base: JobFields = { jobId: 'train', command: ['python3', 'train.py'] };
const flags = (more: Partial<JobFields>): JobSpec => jobSpecFromFields({ ...base, ...more });
const esc = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

describe('job spec from CLI flags', () => {
  test('defaults: no VRAM, no limits, priority 5, normal tier, Always, 10 restarts, CrashLoopBackOff 10s/5m/10m', () => {
    expect(flags({})).toEqual({
      jobId: 'train',
      command: ['python3', 'train.py'],
      vramBytes: 0,
      limits: {},
      priority: 5,
      tier: 'normal',
      restartPolicy: 'Always',
      maxRestarts: 10,
      backoff: DEFAULT_BACKOFF,
    });
  });

  test('every flag parsed to its unit', () => {
    const s = flags({
      node: 'node-a',
      vram: '8GiB',
      cpu: '500m',
      memory: '4GiB',
      pids: '512',
      timeout: '2h',
      priority: '7',
      tier: 'critical',
      restartPolicy: 'OnFailure',
      maxRestarts: '3',
      backoffInitial: '1s',
      backoffCap: '30s',
      backoffReset: '1m',
      checkpointEvery: '30m',
      keep: '3',
      user: '65534:65534',
      cwd: '/work',
      readiness: { tcpSocket: { port: 6379 } },
    });
    expect(s).toEqual({
      jobId: 'train',
      command: ['python3', 'train.py'],
      cwd: '/work',
      node: 'node-a',
      vramBytes: 8 * 1024 ** 3,
      limits: { cpu: 0.5, memoryBytes: 4 * 1024 ** 3, pids: 512 },
      timeoutMs: 7_200_000,
      priority: 7,
      tier: 'critical',
      restartPolicy: 'OnFailure',
      maxRestarts: 3,
      backoff: { initialMs: 1000, capMs: 30_000, resetAfterMs: 60_000 },
      checkpointEveryMs: 1_800_000,
      keep: 3,
      user: { uid: 65534, gid: 65534 },
      readiness: { tcpSocket: { port: 6379 } },
    });
    expect(flags({ cpu: '2' }).limits.cpu).toBe(2);
    expect(flags({ cpu: '0.25' }).limits.cpu).toBe(0.25);
    expect(flags({ maxRestarts: '0' }).maxRestarts).toBe(0);
    expect(flags({ priority: '10' }).priority).toBe(10);
  });

  test.each<[Partial<JobFields>, string, string]>([
    [{ memory: '1e30' }, 'memory', "expected a size .*got '1e30'"],
    [{ memory: '-1GiB' }, 'memory', 'expected a size'],
    [{ memory: '0' }, 'memory', 'must be more than 0 bytes'],
    [{ memory: '65TiB' }, 'memory', 'must be at most 70368744177664 bytes \\(64 TiB\\)'],
    [{ memory: 'lots' }, 'memory', 'expected a size'],
    [{ vram: '1000TiB' }, 'vram', 'must be at most 17592186044416 bytes'],
    [{ cpu: '0' }, 'cpu', 'above 0'],
    [{ cpu: '-2' }, 'cpu', 'expected a number of cores'],
    [{ cpu: '1025' }, 'cpu', 'at most 1024'],
    [{ cpu: '0.0001' }, 'cpu', 'thousandths of a core'],
    [{ cpu: 'two' }, 'cpu', 'expected a number of cores'],
    [{ pids: '0' }, 'pids', 'from 1 to 4194304'],
    [{ pids: '4194305' }, 'pids', 'from 1 to 4194304'],
    [{ pids: '1.5' }, 'pids', 'expected a whole number'],
    [{ pids: '1e3' }, 'pids', 'expected a whole number'],
    [{ timeout: '0' }, 'timeout', "expected a duration .*got '0'"],
    [{ timeout: '0s' }, 'timeout', "must be from 1s to 365d \\(got '0s'\\)"],
    [{ timeout: '999ms' }, 'timeout', 'must be from 1s'],
    [{ timeout: '366d' }, 'timeout', 'must be from 1s to 365d'],
    [{ timeout: '-5m' }, 'timeout', 'expected a duration'],
    [{ priority: '11' }, 'priority', 'from 0 to 10 \\(got 11\\)'],
    [{ priority: '-1' }, 'priority', 'from 0 to 10'],
    [{ priority: 'high' }, 'priority', 'expected a whole number'],
    [{ tier: 'gold' }, 'tier', 'must be one of critical, normal'],
    [{ restartPolicy: 'Sometimes' }, 'restart-policy', 'must be one of Always, OnFailure, Never'],
    [{ maxRestarts: '1001' }, 'max-restarts', 'from 0 to 1000'],
    [{ backoffInitial: '0s' }, 'backoff-initial', 'must be from 1s to 7d'],
    [{ backoffCap: '5s' }, 'backoff-cap', 'must not be below the initial backoff'],
    [{ backoffReset: 'soon' }, 'backoff-reset', 'expected a duration'],
    [{ checkpointEvery: '5s' }, 'checkpoint-every', 'must be from 10s'],
    [{ keep: '3' }, 'keep', 'needs checkpoint-every'],
    [{ keep: '0', checkpointEvery: '1m' }, 'keep', 'from 1 to 1000'],
    [{ jobId: 'a/b' }, 'job', 'path separator'],
    [{ jobId: 'a\x07b' }, 'job', "letters, digits.*got 'a\\\\x07b'"],
    [{ jobId: '' }, 'job', 'is required'],
    [{ jobId: '..' }, 'job', "'..'"],
    [{ command: [] }, 'command', 'is required'],
    [{ command: [''] }, 'command\\[0\\]', 'the program must not be empty'],
    [{ command: ['sh', 'a\u0000b'] }, 'command\\[1\\]', 'NUL'],
    [{ node: 'bad/node' }, 'node', 'path separator'],
    [{ user: '0' }, 'user', 'must not be 0'],
    [{ user: 'root' }, 'user', 'numeric uid'],
    [{ cwd: 'relative/dir' }, 'cwd', 'absolute path'],
  ])('%j is refused naming %s', (more, field, why) => {
    expect(() => flags(more)).toThrow(InvalidInputError);
    expect(() => flags(more)).toThrow(new RegExp(`^${field}: .*${why}`));
  });
});

describe('parseJobSpec: the whole spec again (a spec built without the client)', () => {
  const good = flags({ memory: '1GiB', checkpointEvery: '1m', keep: '2' });
  test('a valid spec comes back as it is', () => {
    expect(parseJobSpec(good)).toEqual(good);
  });
  test('evictAfterMs (the grace on an Unhealthy node) is taken as it is', () => {
    expect(parseJobSpec({ ...good, evictAfterMs: 20_000 })).toEqual({ ...good, evictAfterMs: 20_000 });
  });
  test.each<[(s: JobSpec) => unknown, string]>([
    [(s) => ({ ...s, limits: { memoryBytes: 1e30 } }), 'limits.memoryBytes: must be at most'],
    [(s) => ({ ...s, limits: { cpu: -1 } }), 'limits.cpu: must be a number of cores above 0'],
    [(s) => ({ ...s, priority: 11 }), 'priority: must be a whole number from 0 to 10'],
    [(s) => ({ ...s, timeoutMs: 0 }), 'timeoutMs: must be from 1s'],
    [(s) => ({ ...s, command: [] }), 'command: is required'],
    [(s) => ({ ...s, jobId: 'a/b' }), 'jobId: must not contain a path separator'],
    [(s) => ({ ...s, jobId: 'a\x07b' }), 'jobId: must be 1-128 characters'],
    [(s) => ({ ...s, keep: 3, checkpointEveryMs: undefined }), 'keep: needs checkpointEveryMs'],
    [(s) => ({ ...s, evictAfterMs: 500 }), 'evictAfterMs: must be from 1s to 7d'],
    [
      (s) => ({ ...s, backoff: { initialMs: 60_000, capMs: 10_000, resetAfterMs: 60_000 } }),
      'backoff.capMs: must not be below',
    ],
    [(s) => ({ ...s, tier: 'gold' }), 'tier: '],
    [(s) => ({ ...s, surprise: true }), 'spec: '],
    [() => 'not a spec', 'spec: '],
  ])('refused naming the field: %#', (mutate, message) => {
    expect(() => parseJobSpec(mutate(good))).toThrow(new RegExp(`^${esc(message)}`));
  });
});

describe('apply: a YAML list of jobs, each on its own', () => {
  const file = [
    'jobs:',
    '  - name: good-a',
    '    command: [python3, train.py]',
    '    node: node-a',
    '    vram: 8GiB',
    '    cpu: 2',
    '    memory: 4GiB',
    '    pids: 512',
    '    timeout: 2h',
    '    priority: 5',
    '    tier: critical',
    '    restartPolicy: OnFailure',
    '    maxRestarts: 3',
    '    checkpointEvery: 30m',
    '    keep: 3',
    '    env: { SEED: "1" }',
    '  - name: broken',
    '    command: [sleep, "10"]',
    '    memory: 1e30',
    '  - name: good-c',
    '    command: [sleep, "10"]',
    '    cwd: sub',
  ].join('\n');

  test('one broken entry of three fails alone, naming its field; the others parse', () => {
    const entries = parseJobsFile(file, '/srv/jobs/jobs.yaml');
    expect(entries.map((e) => e.name)).toEqual(['good-a', 'broken', 'good-c']);
    expect(entries[0].spec).toEqual({
      jobId: 'good-a',
      command: ['python3', 'train.py'],
      cwd: '/srv/jobs',
      node: 'node-a',
      vramBytes: 8 * 1024 ** 3,
      limits: { cpu: 2, memoryBytes: 4 * 1024 ** 3, pids: 512 },
      timeoutMs: 7_200_000,
      priority: 5,
      tier: 'critical',
      restartPolicy: 'OnFailure',
      maxRestarts: 3,
      backoff: DEFAULT_BACKOFF,
      checkpointEveryMs: 1_800_000,
      keep: 3,
      env: { SEED: '1' },
    });
    expect(entries[1].spec).toBeNull();
    expect(entries[1].error?.message).toMatch(/^jobs\[1\]\.memory: must be at most 70368744177664 bytes/);
    expect(entries[2].spec?.cwd).toBe('/srv/jobs/sub');
  });

  test('applying starts the good ones; the broken one and a refused start are failed, and do not stop the rest', async () => {
    const entries = parseJobsFile(file, '/srv/jobs/jobs.yaml');
    const started: string[] = [];
    const starter = {
      async start(spec: JobSpec) {
        if (spec.node === 'node-a')
          throw new InvalidInputError('node', "unknown node 'node-a': no agent has registered it");
        started.push(spec.jobId);
        return { workflowId: `job/${spec.jobId}` };
      },
    };
    const out = await applyJobs(
      starter,
      entries,
      () => null,
      (e) => (e as Error).message,
    );
    expect(started).toEqual(['good-c']);
    expect(out.map((o) => [o.name, o.result])).toEqual([
      ['good-a', 'failed'],
      ['broken', 'failed'],
      ['good-c', 'applied'],
    ]);
    expect(out[0].detail).toContain("node: unknown node 'node-a'");
    expect(out[1].detail).toMatch(/^jobs\[1\]\.memory: /);
  });

  test('an open job with the same spec is unchanged; with another spec it exists and is not applied', async () => {
    const entries = parseJobsFile(file, '/srv/jobs/jobs.yaml').filter((e) => e.spec);
    const running = new Map(
      entries.map((e) => [e.name, { ...e.spec!, maxRestarts: e.name === 'good-c' ? 99 : e.spec!.maxRestarts }]),
    );
    const exists = new Error('exists');
    const out = await applyJobs(
      { start: () => Promise.reject(exists) },
      entries,
      (err) => {
        expect(err).toBe(exists);
        return null;
      },
      String,
    );
    expect(out.every((o) => o.result === 'failed')).toBe(true);
    let current = '';
    const out2 = await applyJobs(
      {
        start: (spec) => {
          current = spec.jobId;
          return Promise.reject(exists);
        },
      },
      entries,
      () => ({ spec: running.get(current) ?? null, state: 'Running' }),
      String,
    );
    expect(out2.map((o) => o.result)).toEqual(['unchanged', 'failed']);
    expect(out2[1].detail).toMatch(/^exists \(cancel it first to change it/);
  });

  test('specs compare equal whatever the order of their fields', () => {
    const a = flags({ memory: '1GiB' });
    const { limits, ...rest } = a;
    const b = JSON.parse(JSON.stringify({ limits, ...rest })) as JobSpec;
    expect(Object.keys(b)[0]).toBe('limits');
    expect(sameSpec(a, b)).toBe(true);
    expect(sameSpec(a, { ...a, priority: 1 })).toBe(false);
  });

  test.each([
    ['jobs: [a, b', 'file: /x/j.yaml: not valid YAML'],
    ['jobs:\n  - name: a\n    name: b\n', 'file: /x/j.yaml: not valid YAML: Map keys must be unique'],
    ['- name: a', 'jobs: '],
    ['jobs: {name: a}', 'jobs: /x/j.yaml: must be a list'],
    ['jobz: []', 'jobz: /x/j.yaml: unknown key at the top'],
  ])('a file that is not a list of jobs is a usage error before anything: %j', (text, message) => {
    expect(() => parseJobsFile(text, '/x/j.yaml')).toThrow(InvalidInputError);
    expect(() => parseJobsFile(text, '/x/j.yaml')).toThrow(new RegExp(`^${esc(message)}`));
  });

  test('entry problems: unknown key, duplicate name, not a map, env not a string, command not a list', () => {
    const entries = parseJobsFile(
      [
        'jobs:',
        '  - { name: a, command: [x], memroy: 1GiB }',
        '  - { name: b, command: [x] }',
        '  - { name: b, command: [y] }',
        '  - just-a-string',
        '  - { name: e, command: [x], env: { N: 1 } }',
        '  - { name: f, command: "sleep 10" }',
        '  - { name: g, command: [x], priority: 11 }',
      ].join('\n'),
      '/x/j.yaml',
    );
    expect(entries.map((e) => e.error?.message ?? 'ok')).toEqual([
      expect.stringMatching(/^jobs\[0\]\.memroy: unknown key/),
      'ok',
      "jobs[2].name: 'b' is already the name of jobs[1]",
      expect.stringMatching(/^jobs\[3\]: must be a map/),
      expect.stringMatching(/^jobs\[4\]\.env\.N: must be a string/),
      expect.stringMatching(/^jobs\[5\]\.command: is required/),
      expect.stringMatching(/^jobs\[6\]\.priority: must be a whole number from 0 to 10 \(got 11\)/),
    ]);
  });
});

describe('what the CLI prints', () => {
  test.each([
    [0, '0s'],
    [45_000, '45s'],
    [59_999, '59s'],
    [60_000, '1m'],
    [3 * 60_000 + 59_000, '3m'],
    [3_600_000, '1h'],
    [2 * 3_600_000 + 59 * 60_000, '2h'],
    [86_400_000, '1d'],
    [4 * 86_400_000 + 23 * 3_600_000, '4d'],
    [400 * 86_400_000, '1y'],
    [-5000, '0s'],
  ])('age of %d ms is %s, like kubectl', (ms, text) => {
    expect(formatAge(ms)).toBe(text);
  });

  test('spec durations are shown as written', () => {
    expect([formatMs(7_200_000), formatMs(90_000), formatMs(1500), formatMs(600_000)]).toEqual([
      '2h',
      '90s',
      '1500ms',
      '10m',
    ]);
  });

  test('jobs table: NAME STATUS RESTARTS NODE AGE NEXT-RETRY, aligned; a job without a status says why', () => {
    const now = Date.parse('2026-01-01T12:00:00Z');
    const status = {
      jobId: 'train',
      state: 'CrashLoopBackOff',
      reason: 'exit 1',
      node: 'node-a',
      restarts: 3,
      createdAt: '2026-01-01T11:57:00Z',
      nextRetryAt: '2026-01-01T12:00:40Z',
      runs: [],
      events: [],
      checkpoints: [],
      lastGoodCheckpoint: null,
      failedOn: [],
      diagnostics: null,
      spec: flags({}),
    } satisfies JobStatus;
    const text = jobsTable(
      [
        {
          jobId: 'train',
          workflowStatus: 'RUNNING',
          startedAt: new Date(now - 180_000),
          status,
          phase: 'CrashLoopBackOff',
          problem: null,
        },
        {
          jobId: 'x\x1b',
          workflowStatus: 'RUNNING',
          startedAt: new Date(now - 45_000),
          status: null,
          phase: 'Pending',
          problem: 'control worker is not answering',
        },
      ],
      now,
    );
    const lines = text.split('\n');
    expect(lines[0]).toMatch(/^NAME\s+STATUS\s+RESTARTS\s+NODE\s+AGE\s+NEXT-RETRY$/);
    expect(lines[1]).toMatch(/^train\s+CrashLoopBackOff\s+3\s+node-a\s+3m\s+in 40s$/);
    expect(lines[2]).toMatch(/^x\\x1b\s+Pending\?\s+-\s+-\s+45s\s+\(RUNNING: control worker is not answering\)$/);
    expect(lines[0].indexOf('STATUS')).toBe(lines[1].indexOf('CrashLoopBackOff'));
  });
});

test('describe job: state and reason, the spec, every run with exit code or signal and its checkpoint, events, checkpoints', () => {
  const now = Date.parse('2026-01-01T12:00:00Z');
  const runBase = {
    process: null,
    exitFile: null,
    logObject: null,
    message: null,
    fromCheckpoint: null,
    logFile: null,
  };
  const text = describeJob(
    {
      jobId: 'train',
      state: 'Running',
      reason: 'resumed after preemption',
      node: 'node-b',
      restarts: 1,
      createdAt: '2026-01-01T10:00:00Z',
      nextRetryAt: null,
      runs: [
        {
          ...runBase,
          run: 1,
          node: 'node-a',
          startedAt: '2026-01-01T10:00:00Z',
          endedAt: '2026-01-01T10:05:00Z',
          exitCode: 1,
          signal: null,
          reason: 'Error',
          message: 'exit 1',
        },
        {
          ...runBase,
          run: 2,
          node: 'node-a',
          startedAt: '2026-01-01T10:05:10Z',
          endedAt: '2026-01-01T11:00:00Z',
          exitCode: null,
          signal: 'SIGKILL',
          reason: 'Preempted',
        },
        {
          ...runBase,
          run: 3,
          node: 'node-b',
          startedAt: '2026-01-01T11:00:30Z',
          endedAt: null,
          exitCode: null,
          signal: null,
          reason: null,
          fromCheckpoint: 'train-ck1',
        },
      ],
      events: [
        { at: '2026-01-01T11:00:00Z', type: 'Preempted', message: 'checkpoint train-ck1 \x1b[2J' },
        { at: '2026-01-01T11:00:30Z', type: 'Resumed', message: 'on node-b\x1b' },
      ],
      checkpoints: [
        {
          checkpointId: 'train-ck1',
          takenAt: '2026-01-01T11:00:00Z',
          reason: 'preemption',
          phase: 'Durable',
          healthy: true,
          deleted: false,
        },
      ],
      lastGoodCheckpoint: 'train-ck1',
      failedOn: [],
      diagnostics: null,
      spec: flags({ memory: '4GiB', timeout: '2h' }),
    },
    now,
  );
  expect(text).toMatch(/^State:\s+Running$/m);
  expect(text).toMatch(/^Reason:\s+resumed after preemption$/m);
  expect(text).toMatch(/^Created:\s+2026-01-01T10:00:00Z \(2h ago\)$/m);
  expect(text).toMatch(/^Restarts:\s+1 of at most 10$/m);
  expect(text).toMatch(
    /^Spec:\s+placed by VRAM, vram 0 B, memory 4\.0 GiB, timeout 2h, priority 5, tier normal, restart Always \(at most 10\)/m,
  );
  expect(text).toMatch(/^\s+1\s+node-a\s+2026-01-01T10:00:00Z\s+2026-01-01T10:05:00Z\s+1\s+Error\s+-\s+exit 1$/m);
  expect(text).toMatch(/^\s+2\s+node-a\s+\S+\s+\S+\s+SIGKILL\s+Preempted\s+-/m);
  expect(text).toMatch(/^\s+3\s+node-b\s+2026-01-01T11:00:30Z\s+-\s+-\s+Running\s+train-ck1/m);
  expect(text).toMatch(/^\s+2026-01-01T11:00:30Z\s+Resumed\s+on node-b\\x1b$/m);
  expect(text).toMatch(/^\s+train-ck1\s+2026-01-01T11:00:00Z\s+preemption\s+Durable\s+yes\s+no$/m);
  expect(text).not.toMatch(/\x1b/);
});

describe('CRI log lines', () => {
  const log = Buffer.from(
    [
      '2026-01-01T00:00:00.000000001Z stdout F tick 1',
      '2026-01-01T00:00:00.100000000Z stderr F oops: a b',
      '2026-01-01T00:00:00.200000000Z stdout P part',
      '2026-01-01T00:00:00.300000000Z stdout F ial',
      '2026-01-01T00:00:00.400000000Z stdout F half-writ',
    ].join('\n'),
  );

  test('whole lines only: a line without its newline is left for the next read, unless the log is final', () => {
    const r = parseCriLog(log);
    expect(r.lines.map((l) => [l.stream, l.partial, l.text])).toEqual([
      ['stdout', false, 'tick 1'],
      ['stderr', false, 'oops: a b'],
      ['stdout', true, 'part'],
      ['stdout', false, 'ial'],
    ]);
    expect(r.consumed).toBe(log.lastIndexOf('\n') + 1);
    expect(r.lines[0].time).toBe('2026-01-01T00:00:00.000000001Z');
    const final = parseCriLog(log, true);
    expect(final.lines).toHaveLength(5);
    expect(final.consumed).toBe(log.length);
  });

  test('reading on from the offset in pieces gives each line exactly once', () => {
    const whole = parseCriLog(log, true).lines;
    const got = [];
    let offset = 0;
    for (let end = 7; offset < log.length; end = Math.min(log.length, end + 7)) {
      const r = parseCriLog(log.subarray(offset, end), end === log.length);
      got.push(...r.lines);
      offset += r.consumed;
    }
    expect(got).toEqual(whole);
  });

  test('a line not in the CRI format is kept as stdout text', () => {
    expect(parseCriLog(Buffer.from('garbage line\n')).lines).toEqual([
      { time: '', stream: 'stdout', partial: false, text: 'garbage line' },
    ]);
  });

  test('printed: control characters escaped, tabs kept, a partial line continues, timestamps on request', () => {
    const l = { time: 'T', stream: 'stdout' as const, partial: false, text: 'a\tb\x1b[2J' };
    expect(formatLogLine(l, false, false)).toBe('a\tb\\x1b[2J\n');
    expect(formatLogLine(l, true, false)).toBe('T a\tb\\x1b[2J\n');
    expect(formatLogLine({ ...l, partial: true }, true, false)).toBe('T a\tb\\x1b[2J');
    expect(formatLogLine(l, true, true)).toBe('a\tb\\x1b[2J\n');
  });
});

describe('logs: following a job run after run, from node and from S3', () => {
  const cri = (n: number, stream: 'stdout' | 'stderr' = 'stdout'): string =>
    `2026-01-01T00:00:0${n}.000000000Z ${stream} F line ${n}\n`;
  const lines = (...ns: number[]): string => ns.map((n) => cri(n, n === 2 ? 'stderr' : 'stdout')).join('');
  const P1 = '/data/node-a/workloads/j/runs/1/log';
  const P3 = '/data/node-b/workloads/j/runs/3/log';

  const run = (n: number, node: string, logFile: string, more: Partial<RunRecord> = {}): RunRecord => ({
    run: n,
    node,
    startedAt: '2026-01-01T00:00:00Z',
    endedAt: null,
    exitCode: null,
    signal: null,
    reason: null,
    message: null,
    fromCheckpoint: null,
    process: null,
    logFile,
    exitFile: null,
    logObject: null,
    ...more,
  });
  const job = (state: JobStatus['state'], runs: RunRecord[]): JobStatus => ({
    jobId: 'j',
    state,
    reason: null,
    node: runs.at(-1)?.node ?? null,
    restarts: 0,
    createdAt: '2026-01-01T00:00:00Z',
    nextRetryAt: null,
    runs,
    events: [],
    checkpoints: [],
    lastGoodCheckpoint: null,
    failedOn: [],
    diagnostics: null,
    spec: flags({}),
  });

  /**
   * A job whose state moves on at each status call, with node files and S3 objects as they are at that moment.
   * Node reads answer whole lines from the offset, at most 50 bytes at a time (the client must read on); a node
   * listed in `down` never answers until its read is terminated.
   */
  function source(
    timeline: { status: JobStatus; files: Record<string, string>; objects: Record<string, string>; down?: string[] }[],
  ) {
    let t = -1;
    const at = () => timeline[Math.min(Math.max(t, 0), timeline.length - 1)];
    const reads: string[] = [];
    const terminated: string[] = [];
    const src: LogSource = {
      async status() {
        t++;
        return structuredClone(at().status);
      },
      async startNodeLogRead(node, input) {
        reads.push(`${node}@${input.offset}`);
        if (at().down?.includes(node)) {
          let fail: (e: Error) => void = () => undefined;
          const pending = new Promise<ReadRunLogResult>((_, reject) => (fail = reject));
          return {
            result: () => pending,
            terminate: async () => (terminated.push(`${node}@${input.offset}`), fail(new Error('terminated'))),
          };
        }
        const buf = Buffer.from(at().files[`${node}:${input.logFile}`] ?? '');
        const { lines: got, consumed } = parseCriLog(buf.subarray(input.offset, input.offset + 50));
        const answer = { lines: got, nextOffset: input.offset + consumed, size: buf.length };
        return { result: async () => answer, terminate: async () => undefined };
      },
      async readArchivedLog(key, offset) {
        return Buffer.from(at().objects[key] ?? '').subarray(offset);
      },
    };
    return { src, reads, terminated };
  }

  function sink() {
    const printed: string[] = [];
    const notes: string[] = [];
    return {
      printed,
      notes,
      out: {
        line: (l: RunLogLine) => void printed.push(`${l.stream}:${l.text}`),
        note: (n: string) => void notes.push(n),
      } satisfies LogSink,
    };
  }
  const expected = (...ns: number[]): string[] => ns.map((n) => `${n === 2 ? 'stderr' : 'stdout'}:line ${n}`);

  test('-f: a growing log, its archive, a resumed run writing on in the same file, then the end: each line once, in order', async () => {
    const ended = { endedAt: '2026-01-01T00:01:00Z', exitCode: 0, reason: 'Completed' as const };
    const { src, reads } = source([
      {
        status: job('Running', [run(1, 'node-a', P1)]),
        files: { [`node-a:${P1}`]: `${lines(1, 2)}2026-01-01T00:00:03Z stdout F li` },
        objects: {},
      },
      { status: job('Running', [run(1, 'node-a', P1)]), files: { [`node-a:${P1}`]: lines(1, 2, 3) }, objects: {} },
      {
        status: job('Running', [
          run(1, 'node-a', P1, { ...ended, reason: 'Preempted', logObject: 'logs/j/run-1.log' }),
          run(2, 'node-b', P1, { fromCheckpoint: 'ck1' }),
        ]),
        files: { [`node-b:${P1}`]: lines(1, 2, 3, 4, 5) },
        objects: { 'logs/j/run-1.log': lines(1, 2, 3, 4) },
      },
      {
        status: job('Running', [
          run(1, 'node-a', P1, { ...ended, reason: 'Preempted', logObject: 'logs/j/run-1.log' }),
          run(2, 'node-b', P1, {
            ...ended,
            reason: 'Error',
            exitCode: 1,
            fromCheckpoint: 'ck1',
            logObject: 'logs/j/run-2.log',
          }),
          run(3, 'node-b', P3),
        ]),
        files: { [`node-b:${P3}`]: lines(7) },
        objects: { 'logs/j/run-1.log': lines(1, 2, 3, 4), 'logs/j/run-2.log': lines(1, 2, 3, 4, 5, 6) },
      },
      {
        status: job('Succeeded', [
          run(1, 'node-a', P1, { ...ended, reason: 'Preempted', logObject: 'logs/j/run-1.log' }),
          run(2, 'node-b', P1, {
            ...ended,
            reason: 'Error',
            exitCode: 1,
            fromCheckpoint: 'ck1',
            logObject: 'logs/j/run-2.log',
          }),
          run(3, 'node-b', P3, { ...ended, logObject: 'logs/j/run-3.log' }),
        ]),
        files: {},
        objects: {
          'logs/j/run-1.log': lines(1, 2, 3, 4),
          'logs/j/run-2.log': lines(1, 2, 3, 4, 5, 6),
          'logs/j/run-3.log': lines(7, 8),
        },
      },
    ]);
    const { printed, notes, out } = sink();
    await showLogs(src, 'j', { follow: true }, out, 5);
    expect(printed).toEqual(expected(1, 2, 3, 4, 5, 6, 7, 8));
    expect(notes).toEqual([
      '--- run 2 on node-b (resumed from checkpoint ck1) ---',
      '--- run 3 on node-b ---',
      'job j is Succeeded',
    ]);
    // Read in 50-byte pieces from where the last read stopped; the half-written line was read whole later.
    expect(reads.slice(0, 3)).toEqual(['node-a@0', 'node-a@47', 'node-a@94']);
  });

  test('-f while the agent is away: the read waits; once the run is archived it goes on from S3 at the same offset', async () => {
    const { src, terminated } = source([
      { status: job('Running', [run(1, 'node-a', P1)]), files: { [`node-a:${P1}`]: lines(1) }, objects: {} },
      {
        status: job('Running', [run(1, 'node-a', P1)]),
        files: { [`node-a:${P1}`]: lines(1, 2) },
        objects: {},
        down: ['node-a'],
      },
      { status: job('Running', [run(1, 'node-a', P1)]), files: {}, objects: {}, down: ['node-a'] },
      {
        status: job('Failed', [
          run(1, 'node-a', P1, {
            endedAt: '2026-01-01T00:01:00Z',
            exitCode: 3,
            reason: 'Error',
            logObject: 'logs/j/run-1.log',
          }),
        ]),
        files: {},
        objects: { 'logs/j/run-1.log': lines(1, 2, 3) },
      },
    ]);
    const { printed, notes, out } = sink();
    await showLogs(src, 'j', { follow: true }, out, 5);
    expect(printed).toEqual(expected(1, 2, 3));
    expect(terminated).toEqual(['node-a@47']);
    expect(notes).toEqual(['job j is Failed']);
  });

  test('--previous prints the run before the current one and stops; without -f the current run as far as it goes', async () => {
    const timeline = [
      {
        status: job('Running', [
          run(1, 'node-a', P1, {
            endedAt: '2026-01-01T00:01:00Z',
            exitCode: 1,
            reason: 'Error',
            logObject: 'logs/j/run-1.log',
          }),
          run(2, 'node-b', P3),
        ]),
        files: { [`node-b:${P3}`]: lines(10, 11, 12) },
        objects: { 'logs/j/run-1.log': lines(1, 2, 3) },
      },
    ];
    const prev = sink();
    await showLogs(source(timeline).src, 'j', { previous: true }, prev.out, 5);
    expect(prev.printed).toEqual(expected(1, 2, 3));
    const cur = sink();
    await showLogs(source(timeline).src, 'j', {}, cur.out, 5);
    expect(cur.printed).toEqual(expected(10, 11, 12));
    const none = source([{ status: job('Running', [run(1, 'node-a', P1)]), files: {}, objects: {} }]);
    await expect(showLogs(none.src, 'j', { previous: true }, sink().out, 5)).rejects.toThrow(
      /^previous: job 'j' has no previous run/,
    );
  });
});
