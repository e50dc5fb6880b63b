import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import pino from 'pino';
import { ApplicationFailure, CancelledFailure } from '@temporalio/activity';
import type { NodeContext } from '../../activities/node/context';
import { appendJournal } from '../../activities/node/journal';
import { failureLabel, measured } from '../../activities/node/metrics';
import { pendingUploadCount } from '../../activities/node/pending';
import { metricsAddress } from '../../workers/metrics';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'kyb-metrics-'));
const ctx = {
  node: 'n1',
  dataDir: path.join(root, 'data'),
  stagingDir: null,
  logger: pino({ level: 'silent' }),
} as unknown as NodeContext;

afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

describe('metricsAddress: where a worker serves /metrics', () => {
  test('KYBERNATE_METRICS_ADDRESS wins: host:port as given, off for none', async () => {
    expect(
      await metricsAddress('agent', async () => '127.0.0.1:1', { KYBERNATE_METRICS_ADDRESS: '10.0.0.7:9999' }),
    ).toBe('10.0.0.7:9999');
    expect(await metricsAddress('control', null, { KYBERNATE_METRICS_ADDRESS: '[::1]:9465' })).toBe('[::1]:9465');
    expect(await metricsAddress('agent', null, { KYBERNATE_METRICS_ADDRESS: 'off' })).toBeNull();
  });

  test.each(['9464', 'host:', 'host:0', 'host:70000', 'http://host:9464', 'a b:1'])(
    'refuses %p, naming the variable',
    async (bad) => {
      await expect(metricsAddress('agent', null, { KYBERNATE_METRICS_ADDRESS: bad })).rejects.toThrow(
        /^KYBERNATE_METRICS_ADDRESS: expected host:port/,
      );
    },
  );

  test('unset: the documented ports on all interfaces in production, a free loopback port in a local stack', async () => {
    expect(await metricsAddress('agent', null, {})).toBe('0.0.0.0:9464');
    expect(await metricsAddress('control', null, {})).toBe('0.0.0.0:9465');
    const local = await metricsAddress('agent', async () => '127.0.0.1:23456', {});
    expect(local).toBe('127.0.0.1:23456');
  });
});

describe('node step metrics', () => {
  test('a failure is counted under its ErrorType, a cancellation and anything else under bounded names', () => {
    expect(failureLabel(ApplicationFailure.nonRetryable('x', 'ChecksumMismatch'))).toBe('ChecksumMismatch');
    expect(failureLabel(new CancelledFailure('gone'))).toBe('Cancelled');
    expect(failureLabel(new Error('boom'))).toBe('Error');
  });

  test('measuring a step outside an activity changes neither its result nor its error', async () => {
    await expect(
      measured(
        'checkpoint',
        'Sealing',
        async () => ({ totalBytes: 5 }),
        (r) => ({ bytes: r.totalBytes }),
      ),
    ).resolves.toEqual({ totalBytes: 5 });
    const err = ApplicationFailure.nonRetryable('bad', 'NoSpace');
    await expect(
      measured('restore', 'Fetching', async () => {
        throw err;
      }),
    ).rejects.toBe(err);
  });
});

/** A committed checkpoint on the node's disk: images plus a metadata.json that names them. */
function committed(id: string): void {
  const dir = path.join(ctx.dataDir, 'checkpoints', id);
  fs.mkdirSync(path.join(dir, 'images'), { recursive: true });
  const b = Buffer.alloc(4096, 7);
  fs.writeFileSync(path.join(dir, 'images', 'pages-1.img'), b);
  fs.writeFileSync(
    path.join(dir, 'metadata.json'),
    JSON.stringify({
      format: 'kybernate.checkpoint/v1',
      checkpointId: id,
      jobId: 'j',
      node: 'n1',
      pid: 1234,
      createdAt: new Date().toISOString(),
      criuVersion: '4.1',
      cuda: { checkpointed: false, vramBytes: 0 },
      workloadFiles: [],
      files: [{ path: 'images/pages-1.img', size: b.length, sha256: createHash('sha256').update(b).digest('hex') }],
    }),
  );
}

describe('pendingUploadCount: checkpoints sealed here and not yet in S3', () => {
  test('counts a sealed checkpoint whose upload failed or never ran; not one uploaded, nor one fetched from elsewhere', () => {
    expect(pendingUploadCount(ctx)).toBe(0);
    committed('sealed-upload-failed');
    appendJournal(ctx, 'checkpoint', 'sealed-upload-failed', { step: 'seal', state: 'done' });
    appendJournal(ctx, 'checkpoint', 'sealed-upload-failed', {
      step: 'upload',
      state: 'failed',
      data: { type: 'S3Unavailable' },
    });
    committed('sealed-only');
    appendJournal(ctx, 'checkpoint', 'sealed-only', { step: 'seal', state: 'done' });
    committed('uploaded');
    appendJournal(ctx, 'checkpoint', 'uploaded', { step: 'seal', state: 'done' });
    appendJournal(ctx, 'checkpoint', 'uploaded', { step: 'upload', state: 'done' });
    committed('fetched-from-s3'); // sealed on another node: no seal in this node's journal
    expect(pendingUploadCount(ctx)).toBe(2);
  });
});
