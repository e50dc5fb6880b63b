import { ActivityFailure, ApplicationFailure, RetryState, TerminatedFailure, TimeoutFailure } from '@temporalio/common';
import { WorkflowFailedError } from '@temporalio/client';
import { CommanderError } from 'commander';
import { parseBytes } from '../../clients/bytes';
import { parseDuration, parseSeconds } from '../../clients/durations';
import {
  describeError,
  describeFailureChain,
  EXIT_FAILURE,
  EXIT_USAGE,
  printableCommanderOutput,
} from '../../clients/errors';
import { MAX_VRAM_BYTES } from '../../common/bounds';
import { assertPid, assertSafeId, InvalidInputError, printable, printableJson } from '../../common/ids';
import { CheckpointRequestSchema, inputProblem, MigrateInputSchema, RestoreRequestSchema } from '../../common/inputs';
import { MetadataSchema } from '../../common/metadata';
import { partSizeFor } from '../../activities/s3-client';

describe('identifiers', () => {
  test.each(['job-1', 'a', 'A.b_c-9', 'x'.repeat(128)])('accepts %s', (id) => {
    expect(assertSafeId('job', id)).toBe(id);
  });
  test.each([
    ['', 'is required'],
    ['a/b', 'path separator'],
    ['a\\b', 'path separator'],
    ['..', "'..'"],
    ['a..b', "'..'"],
    ['-lead', 'starting with a letter or digit'],
    ['sp ace', 'letters, digits'],
    ['x'.repeat(129), '1-128 characters'],
  ])('rejects %j naming the field', (id, why) => {
    expect(() => assertSafeId('job', id)).toThrow(InvalidInputError);
    expect(() => assertSafeId('job', id)).toThrow(new RegExp(`^job: .*${why.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
  });
  test('pids', () => {
    expect(assertPid('pid', '1234')).toBe(1234);
    expect(() => assertPid('pid', '0')).toThrow(/^pid: /);
    expect(() => assertPid('pid', '12a')).toThrow(/^pid: /);
    expect(() => assertPid('pid', 1.5)).toThrow(/^pid: /);
  });
});

describe('sizes', () => {
  test('parses units', () => {
    expect(parseBytes('v', '8GiB')).toBe(8 * 1024 ** 3);
    expect(parseBytes('v', '512 MiB')).toBe(512 * 1024 ** 2);
    expect(parseBytes('v', '1.5G')).toBe(1.5e9);
    expect(parseBytes('v', '1024')).toBe(1024);
    expect(() => parseBytes('declared-vram', '8 apples')).toThrow(/^declared-vram: /);
  });
  test('bounded: whole bytes from 0 to 16 TiB, no exponents', () => {
    expect(parseBytes('vram', '0')).toBe(0);
    expect(parseBytes('vram', '16TiB')).toBe(MAX_VRAM_BYTES);
    expect(MAX_VRAM_BYTES).toBe(16 * 1024 ** 4);
    expect(() => parseBytes('vram', '1e30')).toThrow(/^vram: expected a size .*got '1e30'/);
    expect(() => parseBytes('vram', '1000TiB')).toThrow(
      /^vram: must be at most 17592186044416 bytes \(16 TiB\) \(got '1000TiB'\)$/,
    );
    expect(() => parseBytes('vram', '17TiB')).toThrow(/^vram: must be at most/);
    expect(() => parseBytes('vram', '9'.repeat(40))).toThrow(/^vram: /);
    expect(() => parseBytes('vram', '1.5')).toThrow(/^vram: must be a whole number of bytes \(got '1.5'\)$/);
    expect(() => parseBytes('vram', '-1GiB')).toThrow(/^vram: expected a size/);
    expect(() => parseBytes('declared-vram', '')).toThrow(/^declared-vram: /);
  });
});

describe('durations', () => {
  test.each(['1s', '90s', '10m', '2h', '7d', '1000ms', '168h'])('accepts %s', (d) => {
    expect(parseDuration('placement-deadline', d)).toBe(d);
  });
  test.each([
    ['1e21h', 'expected a duration'],
    ['999ms', 'must be from 1s to 7d'],
    ['0s', 'must be from 1s to 7d'],
    ['8d', 'must be from 1s to 7d'],
    ['169h', 'must be from 1s to 7d'],
    ['99999999999999999999h', 'expected a duration'],
    ['10', 'expected a duration'],
    ['-5m', 'expected a duration'],
    ['5 m', 'expected a duration'],
  ])('rejects %s naming the field', (d, why) => {
    expect(() => parseDuration('placement-deadline', d)).toThrow(new RegExp(`^placement-deadline: ${why}`));
  });
  test('seconds: a whole number or a duration, from 1s to 7d, in ms', () => {
    expect(parseSeconds('report-interval', '30')).toBe(30000);
    expect(parseSeconds('report-interval', '5m')).toBe(300000);
    expect(parseSeconds('report-interval', '3600')).toBe(3600000);
    expect(() => parseSeconds('report-interval', '0')).toThrow(/^report-interval: must be from 1s to 7d/);
    expect(() => parseSeconds('report-interval', '1e21')).toThrow(/^report-interval: expected a whole number/);
    expect(() => parseSeconds('report-interval', '0.5')).toThrow(/^report-interval: expected/);
    expect(() => parseSeconds('report-interval', '604801')).toThrow(/^report-interval: must be from 1s to 7d/);
  });
});

describe('escaping what is echoed', () => {
  test('control characters are written as escapes; printable text is untouched', () => {
    expect(printable('job-1 /tmp/a b ünï')).toBe('job-1 /tmp/a b ünï');
    expect(printable('a\x1b[31mred\nnext\r\t\x00\x7f\x9b')).toBe('a\\x1b[31mred\\nnext\\r\\t\\x00\\x7f\\x9b');
    expect(printable('x\u202ey\u2028z')).toBe('x\\u202ey\\u2028z');
    // Nothing below 0x20 (or DEL/C1) survives.
    const all = Array.from({ length: 0xa0 }, (_, i) => String.fromCharCode(i)).join('');
    expect(printable(all)).not.toMatch(/[\u0000-\u001f\u007f-\u009f]/);
  });
  test('InvalidInputError escapes the value it echoes, in field and message', () => {
    expect(() => assertSafeId('job', 'evil\x1b[31m\nerror: forged')).toThrow(
      "job: must be 1-128 characters of letters, digits, '.', '_' or '-', starting with a letter or digit (got 'evil\\x1b[31m\\nerror: forged')",
    );
    expect(new InvalidInputError('a\nb', 'c\rd').message).toBe('a\\nb: c\\rd');
  });
  test('JSON stays valid JSON and carries no raw C1 or bidi control', () => {
    const json = printableJson(JSON.stringify({ s: 'a\x1b\x9b\u202e\n' }, null, 2));
    expect(json).not.toMatch(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202e]/);
    expect(JSON.parse(json)).toEqual({ s: 'a\x1b\x9b\u202e\n' });
  });
  test("commander's output: the echoed argument escaped, its own line breaks kept", () => {
    expect(printableCommanderOutput("error: unknown option '--x\x1b[2J\ny'\n")).toBe(
      "error: unknown option '--x\\x1b[2J\\ny'\n",
    );
    expect(printableCommanderOutput("error: unknown option '--nod'\n(Did you mean --node?)\n")).toBe(
      "error: unknown option '--nod'\n(Did you mean --node?)\n",
    );
  });
});

describe('workflow input schemas', () => {
  const ck = { checkpointId: 'c1', jobId: 'j1', node: 'n1', leaveRunning: false, reason: 'manual' };
  test('accept what the client sends', () => {
    expect(
      inputProblem(CheckpointRequestSchema, { ...ck, vramBytes: 8 * 1024 ** 3, pid: 1234, uploadMaxAttempts: 2 }),
    ).toBeNull();
    expect(
      inputProblem(RestoreRequestSchema, {
        checkpointId: 'c1',
        prefer: ['n2'],
        exclude: ['n1'],
        placementDeadline: '2m',
      }),
    ).toBeNull();
    expect(inputProblem(MigrateInputSchema, { jobId: 'j', from: 'a', to: 'b', checkpointId: 'j-mig-1' })).toBeNull();
  });
  test.each([
    [CheckpointRequestSchema, { ...ck, vramBytes: 1e30 }, /^vramBytes: must be at most 17592186044416 bytes/],
    [CheckpointRequestSchema, { ...ck, vramBytes: 1.5 }, /^vramBytes: must be a whole number/],
    [CheckpointRequestSchema, { ...ck, node: '../x' }, /^node: must be 1-128 characters/],
    [CheckpointRequestSchema, { ...ck, reason: 'whim' }, /^reason: /],
    [CheckpointRequestSchema, { ...ck, checkpointId: 'a\x1bb' }, /^checkpointId: .*$/],
    [
      RestoreRequestSchema,
      { checkpointId: 'c1', placementDeadline: '1e21h' },
      /^placementDeadline: expected a duration/,
    ],
    [
      RestoreRequestSchema,
      { checkpointId: 'c1', placementDeadline: '30d' },
      /^placementDeadline: must be from 1s to 7d/,
    ],
    [RestoreRequestSchema, { checkpointId: 'c1', vramBytes: 1000 * 1024 ** 4 }, /^vramBytes: must be at most/],
    [RestoreRequestSchema, { checkpointId: 'c1', exclude: ['ok', 'bad/one'] }, /^exclude\.1: /],
    [
      MigrateInputSchema,
      { jobId: 'j', from: 'a', to: 'b', checkpointId: 'c', vramBytes: -1 },
      /^vramBytes: must not be negative/,
    ],
  ])('rejects in one line naming the field (%#)', (schema, input, re) => {
    const p = inputProblem(schema, input);
    expect(p).toMatch(re);
    expect(p).not.toContain('\n');
  });
  test('several problems: the first, and a count', () => {
    expect(inputProblem(CheckpointRequestSchema, { ...ck, node: '', vramBytes: -1 })).toMatch(
      /^node: .*\(and 1 more problem\)$/,
    );
  });
});

describe('failures as the CLI prints them', () => {
  test("a failed workflow's whole cause chain, not 'Workflow execution failed'", () => {
    const app = ApplicationFailure.nonRetryable("checkpoint 'x' is Failed, not restorable", 'CheckpointNotFound');
    const act = new ActivityFailure(
      'Activity task failed',
      'checkpointInfo',
      '1',
      RetryState.NON_RETRYABLE_FAILURE,
      'w',
      app,
    );
    const wf = new WorkflowFailedError('Workflow execution failed', act, RetryState.NON_RETRYABLE_FAILURE);
    expect(describeFailureChain(wf)).toBe(
      "workflow failed: activity checkpointInfo failed: CheckpointNotFound: checkpoint 'x' is Failed, not restorable",
    );
    expect(describeError(wf)).toEqual({
      code: 'WORKFLOW_FAILED',
      message: describeFailureChain(wf),
      exitCode: EXIT_FAILURE,
    });
    const timeout = new WorkflowFailedError(
      'Workflow execution failed',
      new ActivityFailure(
        'x',
        'startWorkload',
        '1',
        RetryState.TIMEOUT,
        'w',
        new TimeoutFailure(undefined, undefined, 'SCHEDULE_TO_START'),
      ),
      RetryState.TIMEOUT,
    );
    expect(describeFailureChain(timeout)).toBe(
      'workflow failed: activity startWorkload failed: SCHEDULE_TO_START timeout',
    );
    expect(
      describeFailureChain(
        new WorkflowFailedError(
          'Workflow execution failed',
          new TerminatedFailure('operator: stuck'),
          RetryState.NON_RETRYABLE_FAILURE,
        ),
      ),
    ).toBe('workflow failed: terminated: operator: stuck');
  });
  test("exit codes: usage 2 (ours and commander's), runtime 1; messages escaped", () => {
    expect(describeError(new InvalidInputError('vram', 'bad')).exitCode).toBe(EXIT_USAGE);
    expect(
      describeError(new CommanderError(1, 'commander.unknownOption', "error: unknown option '--x'")).exitCode,
    ).toBe(EXIT_USAGE);
    expect(describeError(new CommanderError(0, 'commander.helpDisplayed', '(outputHelp)')).exitCode).toBe(0);
    expect(describeError(new Error('boom\x1b[2J')).message).toBe('boom\\x1b[2J');
    const app = ApplicationFailure.nonRetryable('no such file: /tmp/\x1b[31mx', 'StartFailure');
    expect(describeError(new WorkflowFailedError('f', app, RetryState.NON_RETRYABLE_FAILURE)).message).toBe(
      'workflow failed: StartFailure: no such file: /tmp/\\x1b[31mx',
    );
  });
});

describe('S3 part size', () => {
  test('stays at the preferred size while 10,000 parts suffice, grows past it', () => {
    expect(partSizeFor(1 << 30)).toBe(16 << 20);
    const eighty = 80e9;
    expect(partSizeFor(eighty, 8 << 20)).toBeGreaterThanOrEqual(8 << 20);
    expect(Math.ceil(eighty / partSizeFor(eighty, 5 << 20))).toBeLessThanOrEqual(10000);
    const huge = 5e12;
    expect(Math.ceil(huge / partSizeFor(huge))).toBeLessThanOrEqual(10000);
  });
});

describe('metadata.json schema', () => {
  const good = {
    format: 'kybernate.checkpoint/v1',
    checkpointId: 'c',
    jobId: 'j',
    node: 'n',
    pid: 1,
    createdAt: '2026-01-01T00:00:00Z',
    criuVersion: '4.1.1',
    cuda: { checkpointed: false, vramBytes: 0 },
    workloadFiles: [],
    files: [{ path: 'images/pages-1.img', size: 10, sha256: 'a'.repeat(64) }],
  };
  test('accepts a valid document', () => {
    expect(MetadataSchema.parse(good).files).toHaveLength(1);
  });
  test.each([
    ['absolute path', { path: '/etc/passwd', size: 1, sha256: 'a'.repeat(64) }],
    ['path escaping the checkpoint', { path: 'images/../../x', size: 1, sha256: 'a'.repeat(64) }],
    ['bad checksum', { path: 'x', size: 1, sha256: 'xyz' }],
    ['negative size', { path: 'x', size: -1, sha256: 'a'.repeat(64) }],
  ])('rejects a file entry with %s', (_why, entry) => {
    const r = MetadataSchema.safeParse({ ...good, files: [entry] });
    expect(r.success).toBe(false);
    expect(r.error?.issues[0].path[0]).toBe('files');
  });
});
