import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import pino from 'pino';
import type { NodeContext } from '../../activities/node/context';
import { appendJournal, journaled, journalFile, journalOutcome, readJournal } from '../../activities/node/journal';
import { isSameProcess, killProcess, processIdentity } from '../../activities/node/process';

describe('node journal', () => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kyb-journal-'));
  const ctx = { node: 'n1', dataDir, logger: pino({ level: 'silent' }) } as unknown as NodeContext;
  afterAll(() => fs.rmSync(dataDir, { recursive: true, force: true }));

  test('a step with no record is "never"; started then done is "done" with its data', async () => {
    expect(journalOutcome(ctx, 'checkpoint', 'c1', 'seal').state).toBe('never');
    const r = await journaled(
      ctx,
      'checkpoint',
      'c1',
      'seal',
      async () => ({ files: 3 }),
      (x) => ({ files: x.files }),
    );
    expect(r).toEqual({ files: 3 });
    const o = journalOutcome(ctx, 'checkpoint', 'c1', 'seal');
    expect(o.state).toBe('done');
    expect(o.data).toEqual({ files: 3 });
  });

  test('a failed step records its error type', async () => {
    const err = Object.assign(new Error('disk full'), { type: 'NoSpace' });
    await expect(journaled(ctx, 'checkpoint', 'c2', 'criuDump', () => Promise.reject(err))).rejects.toThrow(
      'disk full',
    );
    expect(journalOutcome(ctx, 'checkpoint', 'c2', 'criuDump')).toMatchObject({
      state: 'failed',
      data: { type: 'NoSpace', message: 'disk full' },
    });
  });

  test('a start by an agent that is gone reads "interrupted"; by this one, "running"', () => {
    appendJournal(ctx, 'restore', 'r1', { step: 'criuRestore', state: 'started' });
    expect(journalOutcome(ctx, 'restore', 'r1', 'criuRestore').state).toBe('running');
    // A writer pid that no longer exists: the agent died mid-step.
    const line = JSON.stringify({
      step: 'criuRestore',
      state: 'started',
      at: new Date().toISOString(),
      agentPid: 4194000,
    });
    fs.appendFileSync(journalFile(ctx, 'restore', 'r2'), line + '\n');
    expect(journalOutcome(ctx, 'restore', 'r2', 'criuRestore').state).toBe('interrupted');
  });

  test('a line torn by a crash is skipped, the entries before it kept', () => {
    appendJournal(ctx, 'checkpoint', 'c3', { step: 'seal', state: 'done' });
    fs.appendFileSync(journalFile(ctx, 'checkpoint', 'c3'), '{"step":"upl');
    expect(readJournal(ctx, 'checkpoint', 'c3').map((e) => e.state)).toEqual(['done']);
  });

  test('ids that would leave the journal directory are refused', () => {
    expect(() => appendJournal(ctx, 'checkpoint', '../../etc/x', { step: 'seal', state: 'done' })).toThrow(
      /checkpointId/,
    );
  });
});

describe('process identity', () => {
  test('pid + start time names one process; a kill with the wrong start time leaves it alone', async () => {
    const ctx = { node: 'n1', logger: pino({ level: 'silent' }) } as unknown as NodeContext;
    const child = spawn('sleep', ['30'], { stdio: 'ignore' });
    const pid = child.pid!;
    const id = processIdentity(pid)!;
    expect(id.pid).toBe(pid);
    expect(id.startTime).toBeGreaterThan(0);
    expect(isSameProcess(id)).toBe(true);
    expect(isSameProcess({ pid, startTime: id.startTime + 1 })).toBe(false);
    expect(await killProcess(ctx, pid, 'test', id.startTime + 1)).toEqual({ killed: false });
    expect(processIdentity(pid)).not.toBeNull();
    const exited = new Promise((r) => child.once('exit', r));
    expect(await killProcess(ctx, pid, 'test', id.startTime)).toEqual({ killed: true });
    await exited;
    expect(processIdentity(pid)).toBeNull();
  });
});
