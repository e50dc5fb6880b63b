import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { GetObjectCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { CHUNK_PREFIX } from '../../activities/chunk-store';
import { FORMAT_V2, MetadataSchema } from '../../common/metadata';
import { WorkflowFailedError } from '@temporalio/client';
import { fetchCheckpoint } from '../../activities/node/fetch';
import { makeS3Client } from '../../activities/s3-client';
import type { CheckpointStatus } from '../../clients/../common/checkpoint';
import type { RestoreStatus } from '../../common/restore';
import { KybernateClient } from '../../clients/api';
import { InvalidInputError } from '../../common/ids';
import { checkpointWorkflowId } from '../../common/queues';
import { configFromStack, restartComponent } from '../../deploy/local/stack';
import { recordHistory } from '../support/histories';
import { Agent, alive, client, lastTick, localNodeContext, PATTERN, PYTHON, stack, until } from '../support/stack';
import { Toxiproxy } from '../support/toxiproxy';
import { pendingActivityBytes } from '../../clients/live-bytes';

let k: KybernateClient;
const agents: Agent[] = [];
const s3 = () => makeS3Client(configFromStack(stack()).s3);

beforeAll(async () => {
  k = await client();
});
afterAll(async () => {
  for (const a of agents) await a.stop();
  await k.close();
});

async function agent(node: string, extra: Partial<Agent['spec']> = {}): Promise<Agent> {
  const a = await Agent.start({ node, declaredVramBytes: 8 * 2 ** 30, ...extra });
  agents.push(a);
  return a;
}

async function workload(node: string, job: string, mib: number): Promise<{ pid: number; logFile: string }> {
  const info = await k.runWorkload({ node, jobId: job, command: [PYTHON, PATTERN, String(mib), job] });
  await until(`${job} ticking`, () => lastTick(info.logFile) >= 2, 30000);
  return info;
}

async function s3Keys(prefix: string): Promise<string[]> {
  const c = s3();
  try {
    const r = await c.send(new ListObjectsV2Command({ Bucket: stack().s3.bucket, Prefix: prefix }));
    return (r.Contents ?? []).map((o) => o.Key!);
  } finally {
    c.destroy();
  }
}

const status = (id: string): Promise<CheckpointStatus> => k.describeCheckpoint(id);

/** Every file in S3 is downloaded again and checked against metadata.json by the restore path's own code. */
async function verifyInS3(checkpointId: string): Promise<void> {
  const dir = fs.mkdtempSync(path.join(stack().home, 'verify-'));
  const r = await fetchCheckpoint(localNodeContext('verifier', dir), { checkpointId });
  expect(r.source).toBe('s3');
  expect(r.metadata.files.length).toBeGreaterThan(3);
  fs.rmSync(dir, { recursive: true, force: true });
}

describe('checkpoint, end to end on the real stack', () => {
  test('a running process is dumped (staged in memory), sealed, uploaded and copied to disk: Durable on s3, every object verifies', async () => {
    const a = await agent('e2e-a');
    const w = await workload('e2e-a', 'happy', 128);
    const { request } = await k.startCheckpoint({ target: 'happy', node: 'e2e-a', checkpointId: 'happy-1' });
    const s = await k.checkpointResult(request.checkpointId);
    expect(s.phase).toBe('Durable');
    expect(s.tier).toBe('s3');
    expect(s.history.find((h) => h.phase === 'DumpingVram')?.outcome).toBe('skipped');
    expect(s.history.find((h) => h.phase === 'DumpingProcess')?.detail).toContain('staged in memory');
    expect(s.history.some((h) => h.detail.startsWith('copied to disk:'))).toBe(true);
    // The memory is freed; the node keeps a complete copy on disk.
    expect(fs.existsSync(path.join(a.stagingDir!, 'happy-1'))).toBe(false);
    expect(fs.existsSync(path.join(a.dataDir, 'checkpoints', 'happy-1', 'metadata.json'))).toBe(true);
    expect(alive(w.pid)).toBe(false); // stopped by the dump (not --leave-running)
    const keys = await s3Keys('checkpoints/happy-1/');
    expect(keys).toContain('checkpoints/happy-1/metadata.json');
    await verifyInS3('happy-1');
    // The CLI lists and describes it.
    const env = { ...process.env, KYBERNATE_HOME: stack().home };
    const cli = path.resolve(__dirname, '../../dist/clients/cli.js');
    await until('visibility', async () => (await k.listCheckpoints({ job: 'happy', tier: 's3' })).length === 1, 20000);
    expect(execFileSync(process.execPath, [cli, 'checkpoints', '--job', 'happy'], { env, encoding: 'utf8' })).toMatch(
      /happy-1 .*Durable .*tier s3/,
    );
    expect(
      JSON.parse(execFileSync(process.execPath, [cli, 'describe', 'happy-1'], { env, encoding: 'utf8' })).phase,
    ).toBe('Durable');
    await recordHistory('checkpoint-durable', k.client.workflow.getHandle(checkpointWorkflowId('happy-1')));
  });

  test('left running, staged in memory: Durable on s3 first, then the copy to disk (not beside the upload), then the memory freed', async () => {
    const a = await agent('e2e-lr');
    const w = await workload('e2e-lr', 'lr', 128);
    const { request } = await k.startCheckpoint({
      target: 'lr',
      node: 'e2e-lr',
      checkpointId: 'lr-1',
      leaveRunning: true,
    });
    const s = await k.checkpointResult(request.checkpointId);
    await recordHistory('checkpoint-left-running', k.client.workflow.getHandle(checkpointWorkflowId('lr-1')));
    expect(s.phase).toBe('Durable');
    expect(s.tier).toBe('s3');
    expect(s.history.find((h) => h.phase === 'DumpingProcess')?.detail).toContain('staged in memory');
    // The workload has its own memory: the staged dump is not its only copy, so the copy to disk waited for S3.
    // The workflow's own history says when each activity was scheduled and completed.
    const events = (await k.client.workflow.getHandle(checkpointWorkflowId('lr-1')).fetchHistory()).events ?? [];
    const types = new Map<string, string>();
    let uploaded = -1;
    let copyScheduled = -1;
    events.forEach((e, i) => {
      const scheduled = e.activityTaskScheduledEventAttributes?.activityType?.name;
      if (scheduled) types.set(String(e.eventId), scheduled);
      if (scheduled === 'persist' && copyScheduled < 0) copyScheduled = i;
      const completed = e.activityTaskCompletedEventAttributes;
      if (completed && types.get(String(completed.scheduledEventId)) === 'upload') uploaded = i;
    });
    expect(uploaded).toBeGreaterThan(0);
    expect(copyScheduled).toBeGreaterThan(uploaded);
    const copied = s.history.filter((h) => h.detail.startsWith('copied to disk:'));
    expect(copied).toHaveLength(1);
    expect(copied[0].detail).not.toContain('metadata.json to follow'); // committed by that one copy
    expect(fs.existsSync(path.join(a.stagingDir!, 'lr-1'))).toBe(false);
    expect(fs.existsSync(path.join(a.dataDir, 'checkpoints', 'lr-1', 'metadata.json'))).toBe(true);
    expect(alive(w.pid)).toBe(true);
    const before = lastTick(w.logFile);
    await until('still ticking', () => lastTick(w.logFile) >= before + 2, 20000);
    await verifyInS3('lr-1');
  });

  test('invalid input is rejected, naming the field, before any work starts', async () => {
    await expect(k.startCheckpoint({ target: 'happy', node: 'no-such-node' })).rejects.toThrow(
      /node: unknown node 'no-such-node'/,
    );
    await expect(k.startCheckpoint({ target: '../etc', node: 'e2e-a' })).rejects.toThrow(InvalidInputError);
    await expect(k.startCheckpoint({ target: 'job', node: 'a/b' })).rejects.toThrow(
      /node: must not contain a path separator/,
    );
    await expect(k.startCheckpoint({ target: 'job', node: 'e2e-a', checkpointId: 'x y' })).rejects.toThrow(
      /checkpointId:/,
    );
    // A pid that does not exist on the node: the workflow fails in Pending, before any lock or dump.
    const { request } = await k.startCheckpoint({ target: '3999999', node: 'e2e-a', checkpointId: 'nopid-1' });
    const err = await k.checkpointResult(request.checkpointId).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    expect(String((err as WorkflowFailedError).cause?.message)).toContain('no such process: pid 3999999');
    expect(fs.existsSync(path.join(stack().home, 'nodes', 'e2e-a', 'checkpoints', 'nopid-1'))).toBe(false);
    // The CLI exits 2 with the field named.
    let out = '';
    try {
      execFileSync(
        process.execPath,
        [path.resolve(__dirname, '../../dist/clients/cli.js'), 'checkpoint', 'job', '--node', 'bad/node'],
        {
          env: { ...process.env, KYBERNATE_HOME: stack().home },
          encoding: 'utf8',
          stdio: 'pipe',
        },
      );
    } catch (e) {
      out = String((e as { stderr: string }).stderr);
      expect((e as { status: number }).status).toBe(2);
    }
    expect(out).toContain('error: node: must not contain a path separator');
  });

  test('a) agent killed with -9 during the CRIU dump (left running): the workflow asks the returning agent; CRIU let the process go, so it runs on, nothing killed', async () => {
    const home = stack().home;
    const marker = path.join(home, 'criu-post-dump.marker');
    const script = path.join(home, 'criu-hold.sh');
    // A CRIU action script holds the dump open (process frozen, images written) long enough to kill the agent.
    fs.writeFileSync(
      script,
      `#!/bin/sh\nif [ "$CRTOOLS_SCRIPT_ACTION" = post-dump ]; then touch ${marker}; sleep 25; fi\nexit 0\n`,
      { mode: 0o755 },
    );
    const a = await agent('e2e-crash', { env: { KYBERNATE_CRIU_ACTION_SCRIPT: script } });
    const w = await workload('e2e-crash', 'crash', 64);
    const { request } = await k.startCheckpoint({
      target: 'crash',
      node: 'e2e-crash',
      checkpointId: 'crash-1',
      leaveRunning: true,
      reason: 'preemption',
    });
    await until('CRIU inside the dump', () => fs.existsSync(marker), 30000);
    expect((await status('crash-1')).phase).toBe('DumpingProcess');
    a.kill9();
    // The heartbeat timeout is not taken as a verdict: the workflow waits for the agent to answer.
    await until(
      'asking the node',
      async () => (await status('crash-1')).history.some((h) => h.detail.includes('asking e2e-crash')),
      40000,
      500,
    );
    expect((await status('crash-1')).phase).toBe('DumpingProcess');
    expect(alive(w.pid)).toBe(true);
    await a.restart();
    // The orphaned CRIU still traces the process until its post-dump hold ends; then it lets it run on.
    const s = await k.checkpointResult(request.checkpointId);
    expect(s.phase).toBe('Failed');
    expect(s.failureReason).toMatch(/DumpingProcess: criuDump: HEARTBEAT timeout/);
    expect(s.history.map((h) => h.detail)).toContain('partial checkpoint directory deleted');
    expect(s.history.some((h) => h.detail.includes('killed'))).toBe(false);
    expect(alive(w.pid)).toBe(true);
    const before = lastTick(w.logFile);
    await until('still ticking', () => lastTick(w.logFile) >= before + 3, 20000);
    expect(fs.existsSync(path.join(a.dataDir, 'checkpoints', 'crash-1'))).toBe(false);
    expect(fs.existsSync(path.join(a.stagingDir!, 'crash-1'))).toBe(false);
    expect(await s3Keys('checkpoints/crash-1/')).toEqual([]);
    await recordHistory('checkpoint-agent-killed', k.client.workflow.getHandle(checkpointWorkflowId('crash-1')));
  }, 180000);

  test('a) agent killed with -9 while CRIU holds a stopping dump: CRIU finishes and stops the workload, the returning agent finishes the dump, Durable, every object verifies', async () => {
    const home = stack().home;
    const marker = path.join(home, 'criu-post-dump-stop.marker');
    const script = path.join(home, 'criu-hold-stop.sh');
    fs.writeFileSync(
      script,
      `#!/bin/sh\nif [ "$CRTOOLS_SCRIPT_ACTION" = post-dump ]; then touch ${marker}; sleep 15; fi\nexit 0\n`,
      { mode: 0o755 },
    );
    const a = await agent('e2e-crash-stop', { env: { KYBERNATE_CRIU_ACTION_SCRIPT: script } });
    const w = await workload('e2e-crash-stop', 'crashstop', 64);
    const { request } = await k.startCheckpoint({
      target: 'crashstop',
      node: 'e2e-crash-stop',
      checkpointId: 'crashstop-1',
    });
    await until('CRIU inside the dump', () => fs.existsSync(marker), 30000);
    a.kill9();
    await until(
      'asking the node',
      async () => (await status('crashstop-1')).history.some((h) => h.detail.includes('asking e2e-crash-stop')),
      40000,
      500,
    );
    await a.restart();
    const s = await k.checkpointResult(request.checkpointId);
    expect(s.phase).toBe('Durable');
    expect(s.history.find((h) => h.phase === 'DumpingProcess' && h.outcome === 'ok')?.detail).toMatch(
      /CRIU finished the images while the agent was lost; output files copied now/,
    );
    expect(alive(w.pid)).toBe(false); // stopped by the dump it asked for, and held in the checkpoint
    expect(s.history.some((h) => h.detail.includes('killed'))).toBe(false);
    await verifyInS3('crashstop-1');
    // And it is the workload: restored (here, by the same agent), it ticks on from where it was dumped.
    const dumpedTick = lastTick(w.logFile);
    const r = await k.startRestore({ checkpointId: 'crashstop-1', node: 'e2e-crash-stop' });
    const rs = await k.restoreResult(r.workflowId);
    expect(rs.phase).toBe('Running');
    await until('ticking after the restore', () => lastTick(w.logFile) > dumpedTick + 2, 30000);
    process.kill(rs.pid!, 'SIGUSR1');
    await until('memory pattern verified', () => fs.readFileSync(w.logFile, 'utf8').includes('pattern_ok=True'), 20000);
    expect(fs.readFileSync(w.logFile, 'utf8')).not.toContain('pattern_ok=False');
    process.kill(rs.pid!, 'SIGKILL');
  }, 300000);

  test('a) agent killed with -9 during Sealing: sealed again once the agent is back, Durable, the workload never killed', async () => {
    const a = await agent('e2e-seal');
    // A large file the workload holds open for writing travels with the checkpoint, so hashing it keeps Sealing
    // open long enough to kill the agent in it.
    const big = path.join(stack().home, 'seal-big.bin');
    fs.writeFileSync(big, '');
    fs.truncateSync(big, 1536 << 20);
    const info = await k.runWorkload({
      node: 'e2e-seal',
      jobId: 'seal',
      command: ['/bin/sh', '-c', `exec 3>>${big}; exec ${PYTHON} ${PATTERN} 256 seal`],
    });
    await until('seal ticking', () => lastTick(info.logFile) >= 2, 60000);
    const { request } = await k.startCheckpoint({
      target: 'seal',
      node: 'e2e-seal',
      checkpointId: 'seal-1',
      leaveRunning: true,
    });
    // The moment: the agent's own journal says the seal has started (it hashes for seconds from there).
    const journal = path.join(a.dataDir, 'journal', 'checkpoint', 'seal-1.jsonl');
    await until(
      'seal started on the node',
      () => fs.existsSync(journal) && fs.readFileSync(journal, 'utf8').includes('"step":"seal","state":"started"'),
      120000,
      20,
    );
    expect((await status('seal-1')).phase).toBe('Sealing');
    a.kill9();
    await until(
      'asking the node',
      async () => (await status('seal-1')).history.some((h) => h.detail.includes('asking e2e-seal')),
      40000,
      500,
    );
    expect(alive(info.pid)).toBe(true);
    await a.restart();
    const s = await k.checkpointResult(request.checkpointId);
    expect(s.phase).toBe('Durable');
    expect(s.tier).toBe('s3');
    expect(s.history.map((h) => `${h.phase}:${h.outcome}`)).toEqual(
      expect.arrayContaining(['Sealing:failed', 'Sealing:skipped', 'Sealing:ok']),
    );
    expect(s.history.find((h) => h.phase === 'Sealing' && h.outcome === 'skipped')?.detail).toBe(
      'seal was cut off on e2e-seal: running it again',
    );
    expect(s.history.some((h) => h.detail.includes('killed'))).toBe(false);
    expect(alive(info.pid)).toBe(true);
    await verifyInS3('seal-1');
    fs.rmSync(big, { force: true });
  }, 300000);

  describe('Temporal SIGKILLed and down 15 s, then restarted with its own database: the workload and the checkpoint survive', () => {
    /** A journal line on the node marks the moment: the step has started there. */
    const started = (a: Agent, id: string, step: string) => (): boolean => {
      const f = path.join(a.dataDir, 'journal', 'checkpoint', `${id}.jsonl`);
      return fs.existsSync(f) && fs.readFileSync(f, 'utf8').includes(`"step":"${step}","state":"started"`);
    };

    async function outage(
      node: string,
      id: string,
      step: string,
      opts: { holdCriu?: boolean; bigFileMiB?: number },
    ): Promise<CheckpointStatus> {
      const home = stack().home;
      const env: Record<string, string> = {};
      if (opts.holdCriu) {
        // CRIU holds the dump open long enough for Temporal to go down in the middle of it.
        const script = path.join(home, `criu-hold-${node}.sh`);
        fs.writeFileSync(
          script,
          '#!/bin/sh\nif [ "$CRTOOLS_SCRIPT_ACTION" = post-dump ]; then sleep 10; fi\nexit 0\n',
          { mode: 0o755 },
        );
        env.KYBERNATE_CRIU_ACTION_SCRIPT = script;
      }
      const a = await agent(node, { env });
      let command = [PYTHON, PATTERN, '64', node];
      if (opts.bigFileMiB) {
        // A large output file travels with the checkpoint: Sealing and Uploading last long enough to hit.
        const big = path.join(home, `${node}-big.bin`);
        fs.writeFileSync(big, '');
        fs.truncateSync(big, opts.bigFileMiB << 20);
        command = ['/bin/sh', '-c', `exec 3>>${big}; exec ${PYTHON} ${PATTERN} 64 ${node}`];
      }
      const info = await k.runWorkload({ node, jobId: node, command });
      await until(`${node} ticking`, () => lastTick(info.logFile) >= 2, 60000);
      const { request } = await k.startCheckpoint({ target: node, node, checkpointId: id, leaveRunning: true });
      await until(`${step} started on the node`, started(a, id, step), 120000, 20);
      await restartComponent(home, 'temporal', { downMs: 15000 });
      const s = await k.checkpointResult(request.checkpointId);
      expect(s.phase).toBe('Durable');
      expect(s.tier).toBe('s3');
      expect(s.history.some((h) => h.detail.includes('killed'))).toBe(false);
      expect(alive(info.pid)).toBe(true); // left running, never killed
      expect(s.frozenMs).toBeGreaterThan(0); // CRIU's measure of the pause, read from its stats-dump
      const before = lastTick(info.logFile);
      await until('still ticking', () => lastTick(info.logFile) >= before + 3, 20000);
      await verifyInS3(id);
      return s;
    }

    test('during DumpingProcess', async () => {
      await outage('e2e-tdump', 'tdump-1', 'criuDump', { holdCriu: true });
    }, 300000);

    test('during Sealing', async () => {
      await outage('e2e-tseal', 'tseal-1', 'seal', { bigFileMiB: 1536 });
    }, 300000);

    test('during Uploading', async () => {
      await outage('e2e-tup', 'tup-1', 'upload', { bigFileMiB: 1024 });
    }, 300000);
  });

  test('b) disk full during the dump: Failed with NoSpace, the workload runs on untouched', async () => {
    const dataDir = path.join(stack().home, 'nodes', 'e2e-full');
    const ckDir = path.join(dataDir, 'checkpoints');
    fs.mkdirSync(ckDir, { recursive: true });
    // A real ENOSPC: checkpoints go to a 16 MiB tmpfs, the workload's log stays on the normal disk; nothing
    // is staged in memory, so the dump itself hits the full disk.
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', ckDir]);
    try {
      await agent('e2e-full', { dataDir, stagingDir: null });
      const w = await workload('e2e-full', 'full', 96);
      const { request } = await k.startCheckpoint({ target: 'full', node: 'e2e-full', checkpointId: 'full-1' });
      const s = await k.checkpointResult(request.checkpointId);
      expect(s.phase).toBe('Failed');
      expect(s.failureReason).toMatch(/DumpingProcess: criuDump: NoSpace/);
      expect(alive(w.pid)).toBe(true);
      const before = lastTick(w.logFile);
      process.kill(w.pid, 'SIGUSR1');
      await until('still ticking', () => lastTick(w.logFile) >= before + 3, 20000);
      expect(fs.readFileSync(w.logFile, 'utf8')).toContain('pattern_ok=True');
      expect(fs.readdirSync(ckDir)).toEqual([]);
      await recordHistory('checkpoint-enospc', k.client.workflow.getHandle(checkpointWorkflowId('full-1')));
    } finally {
      for (const a of agents.filter((x) => x.spec.node === 'e2e-full')) await a.stop();
      execFileSync('umount', ['-l', ckDir]);
    }
  }, 120000);

  test('b) staged in memory, disk full for the copy to disk: Durable on s3 all the same, no partial copy left, memory freed', async () => {
    const dataDir = path.join(stack().home, 'nodes', 'e2e-full2');
    const ckDir = path.join(dataDir, 'checkpoints');
    fs.mkdirSync(ckDir, { recursive: true });
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', ckDir]);
    try {
      const a = await agent('e2e-full2', { dataDir });
      await workload('e2e-full2', 'full2', 96);
      const { request } = await k.startCheckpoint({ target: 'full2', node: 'e2e-full2', checkpointId: 'full2-1' });
      const s = await k.checkpointResult(request.checkpointId);
      expect(s.phase).toBe('Durable');
      expect(s.tier).toBe('s3');
      expect(s.history.find((h) => h.detail.startsWith('copy to disk:'))?.detail).toMatch(/NoSpace/);
      expect(fs.readdirSync(ckDir)).toEqual([]);
      expect(fs.existsSync(path.join(a.stagingDir!, 'full2-1'))).toBe(false);
      await verifyInS3('full2-1');
      await recordHistory('checkpoint-staged-disk-full', k.client.workflow.getHandle(checkpointWorkflowId('full2-1')));
    } finally {
      for (const a of agents.filter((x) => x.spec.node === 'e2e-full2')) await a.stop();
      execFileSync('umount', ['-l', ckDir]);
    }
  }, 120000);

  test('c) S3 cut by toxiproxy: PendingUpload on nvme, then Durable on s3 by the promotion loop once S3 is back', async () => {
    const tox = new Toxiproxy(stack().toxiproxy!.api);
    const listen = await tox.create('s3-cut', new URL(stack().s3.endpoint).host);
    const a = await agent('e2e-cut', { env: { KYBERNATE_S3_ENDPOINT: `http://${listen}` } });
    await workload('e2e-cut', 'cut', 64);
    await tox.setEnabled('s3-cut', false);
    const { request } = await k.startCheckpoint({
      target: 'cut',
      node: 'e2e-cut',
      checkpointId: 'cut-1',
      uploadMaxAttempts: 2,
    });
    await until('PendingUpload', async () => (await status('cut-1')).phase === 'PendingUpload', 60000, 500);
    expect((await status('cut-1')).tier).toBe('nvme');
    expect((await status('cut-1')).history.some((h) => h.detail.startsWith('synced to disk (tier nvme)'))).toBe(true);
    await until(
      'listed on tier nvme',
      async () => (await k.listCheckpoints({ tier: 'nvme', job: 'cut' })).length === 1,
      20000,
    );
    expect(await s3Keys('checkpoints/cut-1/metadata.json')).toEqual([]);
    await tox.setEnabled('s3-cut', true); // nobody acts after this
    const s = await k.checkpointResult(request.checkpointId);
    expect(s.phase).toBe('Durable');
    expect(s.tier).toBe('s3');
    expect(s.history.some((h) => h.detail.includes('promotion loop'))).toBe(true);
    // Sealed in full for the disk tier the way the upload stores it: the promotion sent content-addressed chunks
    // (format v2), so a checkpoint kept through an outage dedups like any other.
    const c = s3();
    try {
      const raw = await (
        await c.send(new GetObjectCommand({ Bucket: stack().s3.bucket, Key: 'checkpoints/cut-1/metadata.json' }))
      ).Body!.transformToString();
      const md = MetadataSchema.parse(JSON.parse(raw));
      expect(md.format).toBe(FORMAT_V2);
      const pages = md.files.filter((f) => f.chunks);
      expect(pages.length).toBeGreaterThan(0);
      expect(pages.reduce((n, f) => n + f.size, 0)).toBeGreaterThan(32 * 2 ** 20);
      // The bytes S3 holds are those sealed on the node.
      expect(raw).toBe(fs.readFileSync(path.join(a.dataDir, 'checkpoints', 'cut-1', 'metadata.json'), 'utf8'));
    } finally {
      c.destroy();
    }
    await verifyInS3('cut-1');
    await recordHistory('checkpoint-s3-outage', k.client.workflow.getHandle(checkpointWorkflowId('cut-1')));
    await tox.remove('s3-cut');
  }, 180000);

  test('c) S3 cut while a restore fetches: the restore waits the outage out and is Running once S3 is back', async () => {
    const tox = new Toxiproxy(stack().toxiproxy!.api);
    const listen = await tox.create('s3-restore-cut', new URL(stack().s3.endpoint).host);
    await agent('e2e-near');
    await agent('e2e-far', { env: { KYBERNATE_S3_ENDPOINT: `http://${listen}` } });
    await workload('e2e-near', 'far', 64);
    const { request } = await k.startCheckpoint({ target: 'far', node: 'e2e-near', checkpointId: 'far-1' });
    expect((await k.checkpointResult(request.checkpointId)).phase).toBe('Durable');
    await tox.setEnabled('s3-restore-cut', false);
    // Pinned to the node that reaches S3 only through the cut proxy: it holds no copy, so it must fetch.
    const { workflowId } = await k.startRestore({ checkpointId: 'far-1', node: 'e2e-far', placementDeadline: '5m' });
    const h = k.client.workflow.getHandle(workflowId);
    await until(
      'a fetch failed with S3 away, and the node was not given up',
      async () => {
        const r = await h.query<RestoreStatus>('status');
        return r.attempts.some((a) => a.phase === 'Fetching' && a.outcome === 'failed') && r.excluded.length === 0;
      },
      90000,
      500,
    );
    await tox.setEnabled('s3-restore-cut', true); // nobody acts after this
    const r = await k.restoreResult(workflowId);
    try {
      expect({ phase: r.phase, node: r.node, source: r.source }).toEqual({
        phase: 'Running',
        node: 'e2e-far',
        source: 's3',
      });
      const failed = r.attempts.filter((a) => a.outcome === 'failed');
      expect(failed.length).toBeGreaterThan(0);
      expect(failed.every((a) => a.node === 'e2e-far' && a.phase === 'Fetching' && /S3/.test(a.reason ?? ''))).toBe(
        true,
      );
      expect(fs.existsSync(`/proc/${r.pid}`)).toBe(true);
    } finally {
      if (r.pid) process.kill(r.pid, 'SIGKILL');
    }
    await recordHistory('restore-s3-outage', h);
    await tox.remove('s3-restore-cut');
  }, 180000);

  test('d) an upload interrupted by an agent crash resumes where it stopped', async () => {
    const tox = new Toxiproxy(stack().toxiproxy!.api);
    const listen = await tox.create('s3-slow', new URL(stack().s3.endpoint).host);
    await tox.bandwidth('s3-slow', 16384);
    const a = await agent('e2e-resume', { env: { KYBERNATE_S3_ENDPOINT: `http://${listen}` } });
    await workload('e2e-resume', 'resume', 256);
    const { request } = await k.startCheckpoint({ target: 'resume', node: 'e2e-resume', checkpointId: 'resume-1' });
    const c = s3();
    // The workload's memory goes as content-addressed chunks (format v2): those this upload stored so far are the
    // chunks in the bucket that were not there before it (this suite runs one checkpoint at a time).
    const chunkKeys = async (): Promise<Set<string>> => {
      const out = new Set<string>();
      for (let token: string | undefined; ;) {
        const r = await c.send(
          new ListObjectsV2Command({ Bucket: stack().s3.bucket, Prefix: CHUNK_PREFIX, ContinuationToken: token }),
        );
        for (const o of r.Contents ?? []) out.add(o.Key!.slice(CHUNK_PREFIX.length));
        if (!r.IsTruncated) return out;
        token = r.NextContinuationToken;
      }
    };
    const before = await chunkKeys();
    const stored = async (): Promise<string[]> => [...(await chunkKeys())].filter((x) => !before.has(x));
    const partsDone = async (): Promise<number> => (await stored()).length;
    const done = await until('some parts uploaded', async () => (await partsDone()) || null, 120000, 100);
    // What `kybernate checkpoint` shows while it waits: the upload's bytes so far, from its heartbeat details.
    const live = await until(
      'the upload reports its bytes',
      async () => {
        const b = await pendingActivityBytes(k.client.workflow.getHandle(checkpointWorkflowId('resume-1')));
        return b && b.done > 0 ? b : null;
      },
      60000,
      200,
    );
    expect(live.done).toBeLessThan(live.total);
    expect(live.total).toBeGreaterThanOrEqual(256 * 2 ** 20);
    a.kill9();
    const atKill = await stored();
    await tox.removeToxic('s3-slow', 'slow-upload');
    await a.restart();
    const s = await k.checkpointResult(request.checkpointId);
    expect(s.phase).toBe('Durable');
    expect(done).toBeGreaterThan(0);
    // Every chunk stored before the crash is one the retry found in S3 and did not send again.
    const md = MetadataSchema.parse(
      JSON.parse(
        await (
          await c.send(new GetObjectCommand({ Bucket: stack().s3.bucket, Key: 'checkpoints/resume-1/metadata.json' }))
        ).Body!.transformToString(),
      ),
    );
    c.destroy();
    const named = new Set(md.files.flatMap((f) => (f.chunks ?? []).map((x) => x.sha256)));
    const kept = atKill.filter((x) => named.has(x));
    expect(kept.length).toBeGreaterThanOrEqual(done);
    expect(s.upload!.partsResumed).toBeGreaterThanOrEqual(kept.length);
    expect(
      s.history.some((h) => h.phase === 'Uploading' && h.detail.includes(`${s.upload!.partsResumed} resumed`)),
    ).toBe(true);
    await verifyInS3('resume-1');
    await recordHistory('checkpoint-upload-resumed', k.client.workflow.getHandle(checkpointWorkflowId('resume-1')));
    await tox.remove('s3-slow');
  }, 240000);
});
