import { execFile } from 'node:child_process';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { promisify } from 'node:util';
import { WorkflowFailedError, WorkflowNotFoundError } from '@temporalio/client';
import { ApplicationFailure, RetryState } from '@temporalio/common';
import { CommanderError } from 'commander';
import type { CheckpointStatus } from '../../common/checkpoint';
import { InvalidInputError } from '../../common/ids';
import {
  describeError,
  EXIT_FAILURE,
  EXIT_USAGE,
  UnavailableError,
  WorkflowFailedWithoutStatusError,
} from '../../clients/errors';
import { JobExistsError } from '../../clients/jobs';
import { applyJson, errorJson, jobsJson, jsonText } from '../../clients/json-output';
import { etaSeconds, phaseLine, ProgressDisplay, progressOf, rateOf } from '../../clients/progress';
import { isCheckpointStatus, isJobStatus, resultOf } from '../../clients/result';
import { withLiveBytes } from '../../clients/live-bytes';

const checkpointStatus = (phase: CheckpointStatus['phase'], bytesSent?: number): CheckpointStatus => ({
  checkpointId: 'c1',
  jobId: 'j1',
  node: 'n1',
  pid: 42,
  vramBytes: 0,
  phase,
  tier: phase === 'Durable' ? 's3' : null,
  failureReason: phase === 'Failed' ? 'Dumping: criu said no' : null,
  upload: bytesSent === undefined ? null : { bucket: 'b', prefix: 'p', bytesSent, partsSent: 1, partsResumed: 0 },
  metadataSha256: null,
  workloadLost: null,
  history: [],
});

const failed = (cause: Error): WorkflowFailedError =>
  new WorkflowFailedError('Workflow execution failed', cause, RetryState.NON_RETRYABLE_FAILURE);

describe('resultOf: the status from a completed workflow or from its failure', () => {
  test('a completed workflow: its result', async () => {
    const s = checkpointStatus('Durable', 10);
    await expect(resultOf({ workflowId: 'w', result: async () => s }, isCheckpointStatus)).resolves.toBe(s);
  });
  test("a workflow that failed with its status as the ApplicationFailure's first detail: that status", async () => {
    const s = checkpointStatus('Failed');
    const e = failed(
      ApplicationFailure.create({
        message: s.failureReason ?? '',
        type: 'CheckpointFailed',
        nonRetryable: true,
        details: [s, s.history],
      }),
    );
    await expect(resultOf({ workflowId: 'w', result: () => Promise.reject(e) }, isCheckpointStatus)).resolves.toEqual(
      s,
    );
  });
  test('a failure whose details are not that kind of status: WorkflowFailedWithoutStatusError naming the chain, still a WorkflowFailedError', async () => {
    const e = failed(
      ApplicationFailure.create({
        message: 'no such process: pid 7',
        type: 'NoSuchProcess',
        details: [checkpointStatus('Failed')],
      }),
    );
    const err = await resultOf({ workflowId: 'job/x', result: () => Promise.reject(e) }, isJobStatus).catch(
      (x: unknown) => x,
    );
    expect(err).toBeInstanceOf(WorkflowFailedWithoutStatusError);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    const w = err as WorkflowFailedWithoutStatusError;
    expect(w.code).toBe('WORKFLOW_FAILED');
    expect(w.workflowId).toBe('job/x');
    expect(w.message).toBe('workflow failed: NoSuchProcess: no such process: pid 7');
    expect(describeError(w)).toEqual({
      code: 'WORKFLOW_FAILED',
      message: 'workflow failed: NoSuchProcess: no such process: pid 7',
      exitCode: EXIT_FAILURE,
    });
  });
  test('other errors pass through as they are', async () => {
    const e = new WorkflowNotFoundError('gone', 'w', undefined);
    await expect(resultOf({ workflowId: 'w', result: () => Promise.reject(e) }, isCheckpointStatus)).rejects.toBe(e);
  });
});

describe('error codes and the --json error document', () => {
  test.each([
    [new InvalidInputError('node', 'bad'), 'INVALID_INPUT', EXIT_USAGE],
    [new CommanderError(1, 'commander.unknownOption', "error: unknown option '--x'"), 'USAGE', EXIT_USAGE],
    [new UnavailableError('Temporal', 'localhost:1', 'refused'), 'UNAVAILABLE', EXIT_FAILURE],
    [new JobExistsError('j', null, 'Running'), 'JOB_EXISTS', EXIT_FAILURE],
    [failed(ApplicationFailure.create({ message: 'x' })), 'WORKFLOW_FAILED', EXIT_FAILURE],
    [new WorkflowNotFoundError('no workflow', 'w', undefined), 'NOT_FOUND', EXIT_FAILURE],
    [new Error('boom'), 'INTERNAL', EXIT_FAILURE],
  ])('%p is %s, exit %i', (e, code, exitCode) => {
    const { doc, exitCode: exit } = errorJson(e);
    expect(exit).toBe(exitCode);
    expect(Object.keys(doc)).toEqual(['error']);
    expect(Object.keys(doc.error).sort()).toEqual(['code', 'message']);
    expect(doc.error.code).toBe(code);
    expect(JSON.parse(jsonText(doc))).toEqual(doc);
  });
});

describe('--json documents', () => {
  test('jobs: startedAt as an ISO time, every field kept', () => {
    const startedAt = new Date('2026-01-02T03:04:05.000Z');
    const doc = jobsJson([
      { jobId: 'j', workflowStatus: 'RUNNING', startedAt, status: null, phase: 'Pending', problem: 'worker away' },
    ]);
    expect(JSON.parse(jsonText(doc))).toEqual({
      jobs: [
        {
          jobId: 'j',
          workflowStatus: 'RUNNING',
          startedAt: '2026-01-02T03:04:05.000Z',
          status: null,
          phase: 'Pending',
          problem: 'worker away',
        },
      ],
    });
  });
  test('apply: the outcomes and their counts', () => {
    const doc = applyJson([
      { index: 0, name: 'a', result: 'applied', detail: 'started' },
      { index: 1, name: null, result: 'failed', detail: 'jobs[1].vram: bad' },
      { index: 2, name: 'c', result: 'unchanged', detail: 'same' },
      { index: 3, name: 'd', result: 'failed', detail: 'unknown node' },
    ]);
    expect({ applied: doc.applied, unchanged: doc.unchanged, failed: doc.failed }).toEqual({
      applied: 1,
      unchanged: 1,
      failed: 2,
    });
    expect(doc.results.map((r) => r.index)).toEqual([0, 1, 2, 3]);
  });
});

describe('progress', () => {
  test("progressOf reads the phase (or a job's state) and the bytes a status carries", () => {
    expect(progressOf(checkpointStatus('DumpingProcess'))).toEqual({
      phase: 'DumpingProcess',
      bytesDone: null,
      bytesTotal: null,
    });
    expect(progressOf(checkpointStatus('Durable', 2048))).toEqual({
      phase: 'Durable',
      bytesDone: 2048,
      bytesTotal: null,
    });
    expect(progressOf({ phase: 'Fetching', progress: { bytesDone: 10, bytesTotal: 100 } })).toEqual({
      phase: 'Fetching',
      bytesDone: 10,
      bytesTotal: 100,
    });
    expect(progressOf({ state: 'Running' })).toEqual({ phase: 'Running', bytesDone: null, bytesTotal: null });
    expect(progressOf({ nothing: 1 })).toBeNull();
    expect(progressOf(null)).toBeNull();
  });
  test('rate and ETA come from two samples and a known total', () => {
    expect(rateOf(null, 100, 1000)).toBeNull();
    expect(rateOf({ bytes: 0, at: 0 }, 1000, 2000)).toBe(500);
    expect(rateOf({ bytes: 500, at: 0 }, 100, 2000)).toBeNull();
    expect(etaSeconds({ phase: 'Uploading', bytesDone: 1000, bytesTotal: 6000 }, 500)).toBe(10);
    expect(etaSeconds({ phase: 'Uploading', bytesDone: 1000, bytesTotal: null }, 500)).toBeNull();
    expect(phaseLine('checkpoint c1', { phase: 'Durable', bytesDone: 1024, bytesTotal: null })).toBe(
      'checkpoint c1: Durable, 1.0 KiB',
    );
  });
  test('not a terminal: one plain line per phase change', () => {
    const stream = new PassThrough();
    const chunks: string[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c.toString()));
    const d = new ProgressDisplay('checkpoint c1', { tty: false, stream });
    for (const p of ['Pending', 'Pending', 'DumpingProcess', 'DumpingProcess', 'Uploading'] as const)
      d.update(checkpointStatus(p));
    d.update(checkpointStatus('Durable', 2048));
    d.stop();
    expect(chunks.join('')).toBe(
      'checkpoint c1: Pending\ncheckpoint c1: DumpingProcess\ncheckpoint c1: Uploading\ncheckpoint c1: Durable, 2.0 KiB\n',
    );
  });
});

describe('the CLI with --json (usage errors: no stack needed)', () => {
  const CLI = path.resolve(__dirname, '../../dist/clients/cli.js');
  const cli = async (args: string[]): Promise<{ code: number; stdout: string; stderr: string }> =>
    promisify(execFile)(process.execPath, [CLI, ...args], { timeout: 60_000 }).then(
      (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
      (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
    );
  test('a bad value and an unknown option: one error document on stderr, nothing on stdout, exit 2', async () => {
    const [bad, unknown] = await Promise.all([
      cli(['checkpoint', 'x', '--node', '../a', '--json']),
      cli(['restore', 'c', '--bogus', '--json']),
    ]);
    for (const r of [bad, unknown]) {
      expect(r.code).toBe(2);
      expect(r.stdout).toBe('');
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
    }
    expect(JSON.parse(bad.stderr)).toEqual({
      error: { code: 'INVALID_INPUT', message: "node: must not contain a path separator (got '../a')" },
    });
    expect(JSON.parse(unknown.stderr)).toEqual({ error: { code: 'USAGE', message: "unknown option '--bogus'" } });
  });
});

describe('live bytes of a running step', () => {
  test('shown as progress only when the status reports none itself', () => {
    const s = { phase: 'Uploading' };
    expect(withLiveBytes(s, { done: 5, total: 10 })).toEqual({
      phase: 'Uploading',
      progress: { bytesDone: 5, bytesTotal: 10 },
    });
    expect(progressOf(withLiveBytes(s, { done: 5, total: 10 }))).toMatchObject({ bytesDone: 5, bytesTotal: 10 });
    expect(withLiveBytes(s, null)).toBe(s);
    const own = { phase: 'Uploading', progress: { bytesDone: 1, bytesTotal: 2 } };
    expect(withLiveBytes(own, { done: 5, total: 10 })).toBe(own);
  });
});
