import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import pino from 'pino';
import { ApplicationFailure } from '@temporalio/activity';
import { createNodeActivities } from '../../activities/node';
import type { NodeContext } from '../../activities/node/context';
import { inspectCheckpoint } from '../../activities/node/inspect';
import { appendJournal, journaled, journalFile } from '../../activities/node/journal';
import { processIdentity, procStatFields } from '../../activities/node/process';
import type { DumpResult } from '../../common/checkpoint';
import { InvalidInputError } from '../../common/ids';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'kyb-inspect-'));
const ctx = {
  node: 'n1',
  dataDir: path.join(root, 'data'),
  stagingDir: path.join(root, 'shm'),
  criuBin: '/nonexistent/criu',
  logger: pino({ level: 'silent' }),
} as unknown as NodeContext;
const children: ChildProcess[] = [];

afterAll(() => {
  for (const c of children) c.kill('SIGKILL');
  fs.rmSync(root, { recursive: true, force: true });
});

function sleeper(): { child: ChildProcess; pid: number; startTime: number } {
  const child = spawn('sleep', ['60'], { stdio: 'ignore' });
  children.push(child);
  const id = processIdentity(child.pid!)!;
  return { child, pid: id.pid, startTime: id.startTime };
}

async function state(pid: number, want: (s: string) => boolean): Promise<void> {
  for (let i = 0; i < 100 && !want(procStatFields(pid)[0]); i++) await new Promise((r) => setTimeout(r, 20));
}

/** A dump's images as CRIU leaves them: inventory.img is the last file it writes. */
function images(dir: string, inventory: boolean): void {
  fs.mkdirSync(path.join(dir, 'images'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'images', 'pages-1.img'), Buffer.alloc(4096, 7));
  if (inventory) fs.writeFileSync(path.join(dir, 'images', 'inventory.img'), 'inv');
}

function metadata(dir: string, checkpointId: string, sizeLie = 0): void {
  const files = ['images/pages-1.img', 'images/inventory.img'].map((p) => {
    const b = fs.readFileSync(path.join(dir, p));
    return { path: p, size: b.length + sizeLie, sha256: createHash('sha256').update(b).digest('hex') };
  });
  fs.writeFileSync(
    path.join(dir, 'metadata.json'),
    JSON.stringify({
      format: 'kybernate.checkpoint/v1',
      checkpointId,
      jobId: 'j',
      node: 'n1',
      pid: 1234,
      createdAt: new Date().toISOString(),
      criuVersion: '4.1',
      cuda: { checkpointed: false, vramBytes: 0 },
      workloadFiles: [],
      files,
    }),
  );
}

const dump = (): Promise<DumpResult> =>
  Promise.resolve({ imageBytes: 4099, durationMs: 3, processStopped: true, staged: true });

describe('inspectCheckpoint, on real files and a real process', () => {
  test('a finished dump staged in memory, sealed, and its process stopped by SIGSTOP: complete, committed, valid, stopped, same identity', async () => {
    const p = sleeper();
    process.kill(p.pid, 'SIGSTOP');
    await state(p.pid, (s) => s === 'T');
    images(path.join(ctx.stagingDir!, 'c-ok'), true);
    await journaled(ctx, 'checkpoint', 'c-ok', 'criuDump', dump, (r) => ({ ...r }));
    metadata(path.join(ctx.stagingDir!, 'c-ok'), 'c-ok');
    const r = inspectCheckpoint(ctx, { checkpointId: 'c-ok', process: { pid: p.pid, startTime: p.startTime } });
    expect(r.steps.criuDump).toMatchObject({ state: 'done', data: { imageBytes: 4099, processStopped: true } });
    expect(r.steps.seal.state).toBe('never');
    expect(r.process).toMatchObject({
      state: 'stopped',
      sameIdentity: true,
      pidReused: false,
      procState: 'T',
      tracerPid: null,
      cuda: 'none',
    });
    expect(r.images).toEqual({ location: 'memory', inventory: true, complete: true });
    expect(r.metadata).toEqual({ committed: true, valid: true, error: null });
    process.kill(p.pid, 'SIGCONT');
    await state(p.pid, (s) => s !== 'T');
    expect(inspectCheckpoint(ctx, { checkpointId: 'c-ok', process: p }).process.state).toBe('running');
  });

  test('the same pid with another start time is not the process: gone, pid reused', () => {
    const p = sleeper();
    const r = inspectCheckpoint(ctx, { checkpointId: 'c-none', process: { pid: p.pid, startTime: p.startTime + 1 } });
    expect(r.process).toMatchObject({ state: 'gone', sameIdentity: false, pidReused: true });
    expect(r.images).toEqual({ location: null, inventory: false, complete: false });
    expect(r.metadata.committed).toBe(false);
    expect(Object.values(r.steps).every((s) => s.state === 'never')).toBe(true);
  });

  test('a process that exited is gone', async () => {
    const p = sleeper();
    const exited = new Promise((r) => p.child.once('exit', r));
    p.child.kill('SIGKILL');
    await exited;
    expect(inspectCheckpoint(ctx, { checkpointId: 'c-none', process: p }).process).toMatchObject({
      state: 'gone',
      pidReused: false,
    });
  });

  test('a dump cut off by a dead agent: interrupted, and its images incomplete even where inventory.img exists', () => {
    images(path.join(ctx.dataDir, 'checkpoints', 'c-cut'), true);
    fs.mkdirSync(path.dirname(journalFile(ctx, 'checkpoint', 'c-cut')), { recursive: true });
    fs.appendFileSync(
      journalFile(ctx, 'checkpoint', 'c-cut'),
      JSON.stringify({ step: 'criuDump', state: 'started', at: new Date().toISOString(), agentPid: 4194000 }) + '\n',
    );
    const r = inspectCheckpoint(ctx, { checkpointId: 'c-cut', process: { pid: process.pid } });
    expect(r.steps.criuDump.state).toBe('interrupted');
    expect(r.images).toEqual({ location: 'disk', inventory: true, complete: false });
  });

  test('a finished dump record but no inventory.img: incomplete; metadata.json whose sizes do not match: committed, not valid', async () => {
    const dir = path.join(ctx.dataDir, 'checkpoints', 'c-torn');
    images(dir, true);
    metadata(dir, 'c-torn', 1);
    fs.rmSync(path.join(dir, 'images', 'inventory.img'));
    await journaled(ctx, 'checkpoint', 'c-torn', 'criuDump', dump, (x) => ({ ...x }));
    const r = inspectCheckpoint(ctx, { checkpointId: 'c-torn', process: { pid: process.pid } });
    expect(r.images).toEqual({ location: 'disk', inventory: false, complete: false });
    expect(r.metadata).toMatchObject({ committed: true, valid: false });
    expect(r.metadata.error).toMatch(/pages-1.img: 4096 bytes, metadata.json says 4097/);
  });

  test('bad input names the field', () => {
    expect(() => inspectCheckpoint(ctx, { checkpointId: '../x', process: { pid: 10 } })).toThrow(InvalidInputError);
    expect(() => inspectCheckpoint(ctx, { checkpointId: '../x', process: { pid: 10 } })).toThrow(/checkpointId/);
    expect(() => inspectCheckpoint(ctx, { checkpointId: 'c1', process: { pid: -1 } })).toThrow(/process.pid/);
    expect(() => inspectCheckpoint(ctx, { checkpointId: 'c1', process: { pid: 10, startTime: 1.5 } })).toThrow(
      /process.startTime/,
    );
  });
});

describe('journaled checkpoint activities', () => {
  const acts = createNodeActivities(ctx);

  test('a dump the journal already knows of (cut off) is refused, and nothing is touched', async () => {
    const p = sleeper();
    const dir = path.join(ctx.dataDir, 'checkpoints', 'c-again');
    images(dir, false);
    appendJournal(ctx, 'checkpoint', 'c-again', { step: 'criuDump', state: 'started' });
    const err = await acts
      .criuDump({ checkpointId: 'c-again', pid: p.pid, leaveRunning: false })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApplicationFailure);
    expect((err as ApplicationFailure).type).toBe('StepAlreadyStarted');
    expect(fs.existsSync(path.join(dir, 'images', 'pages-1.img'))).toBe(true);
  });

  test('a dump that finished is reported again from the journal, not taken again', async () => {
    const p = sleeper();
    images(path.join(ctx.stagingDir!, 'c-done'), true);
    await journaled(ctx, 'checkpoint', 'c-done', 'criuDump', dump, (r) => ({ ...r }));
    await expect(acts.criuDump({ checkpointId: 'c-done', pid: p.pid, leaveRunning: false })).resolves.toEqual(
      await dump(),
    );
  });

  test('a dump cut off after CRIU finished (inventory.img there) and stopped the process: finishDump copies the recorded output files and records it done', async () => {
    const p = sleeper();
    const out = path.join(root, 'out.log');
    fs.writeFileSync(out, 'tick 1\ntick 2\n');
    const dir = path.join(ctx.dataDir, 'checkpoints', 'c-finish');
    images(dir, true);
    fs.mkdirSync(path.dirname(journalFile(ctx, 'checkpoint', 'c-finish')), { recursive: true });
    fs.appendFileSync(
      journalFile(ctx, 'checkpoint', 'c-finish'),
      JSON.stringify({
        step: 'criuDump',
        state: 'started',
        at: new Date().toISOString(),
        agentPid: 4194000,
        data: { pid: p.pid, files: [out] },
      }) + '\n',
    );
    // Still alive: not finished, whatever the images say.
    await expect(acts.finishDump({ checkpointId: 'c-finish', process: p })).rejects.toThrow(/process running/);
    const exited = new Promise((r) => p.child.once('exit', r));
    p.child.kill('SIGKILL');
    await exited;
    const r = await acts.finishDump({ checkpointId: 'c-finish', process: p });
    expect(r).toEqual({ imageBytes: 4099, durationMs: 0, processStopped: true, staged: false });
    expect(JSON.parse(fs.readFileSync(path.join(dir, 'workload-files', 'index.json'), 'utf8'))).toEqual([
      { path: out, artifact: 'workload-files/0-out.log' },
    ]);
    expect(fs.readFileSync(path.join(dir, 'workload-files', '0-out.log'), 'utf8')).toBe('tick 1\ntick 2\n');
    expect(inspectCheckpoint(ctx, { checkpointId: 'c-finish', process: p }).images.complete).toBe(true);
  });

  test('finishDump refuses images without inventory.img', async () => {
    const dir = path.join(ctx.dataDir, 'checkpoints', 'c-nofinish');
    images(dir, false);
    fs.mkdirSync(path.dirname(journalFile(ctx, 'checkpoint', 'c-nofinish')), { recursive: true });
    fs.appendFileSync(
      journalFile(ctx, 'checkpoint', 'c-nofinish'),
      JSON.stringify({
        step: 'criuDump',
        state: 'started',
        at: new Date().toISOString(),
        agentPid: 4194000,
        data: { pid: 4194001, files: [] },
      }) + '\n',
    );
    await expect(acts.finishDump({ checkpointId: 'c-nofinish', process: { pid: 4194001 } })).rejects.toThrow(
      /without inventory.img/,
    );
  });

  test('a restore in place the journal saw finish, whose process lives, is reported, not run again', async () => {
    const p = sleeper();
    appendJournal(ctx, 'checkpoint', 'c-rip', {
      step: 'criuRestoreInPlace',
      state: 'done',
      data: { pid: p.pid, startTime: p.startTime },
    });
    // criuBin does not exist: a second CRIU restore would fail, so success means it was not run.
    await expect(acts.criuRestore({ checkpointId: 'c-rip', inPlace: true })).resolves.toEqual({
      pid: p.pid,
      startTime: p.startTime,
    });
  });

  test('killProcess with a start time spares a process that took the pid', async () => {
    const p = sleeper();
    await expect(acts.killProcess({ pid: p.pid, reason: 'test', startTime: p.startTime + 1 })).resolves.toEqual({
      killed: false,
    });
    expect(processIdentity(p.pid)).not.toBeNull();
  });

  test('resolveTarget returns the process identity', async () => {
    const p = sleeper();
    await expect(acts.resolveTarget({ pid: p.pid, jobId: 'j' })).resolves.toEqual({
      pid: p.pid,
      startTime: p.startTime,
    });
  });
});
