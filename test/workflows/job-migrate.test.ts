import { ApplicationFailure } from '@temporalio/activity';
import type { WorkflowHandle } from '@temporalio/client';
import { JOB_MIGRATE_UPDATE, type MigrateJobRequest, type PreemptResult } from '../../common/job';
import { FAST, finish, rejection, Sim, spec, status, types, until, setUpJobTests, wait } from './job-sim';

/**
 * The job workflow's migrate update (`kybernate migrate` of a job): the job moves its own run, so it is never
 * restarted beside the moved copy. Activities mocked; the checkpoint and restore child workflows are the real ones.
 */
setUpJobTests('warmup-migrate');

const migrate = (wf: WorkflowHandle, to: string): Promise<PreemptResult> =>
  wf.executeUpdate<PreemptResult, [MigrateJobRequest]>(JOB_MIGRATE_UPDATE, { args: [{ to }] });

describe('job workflow: migrate update', () => {
  test('checkpointed, stopped and resumed on the node asked for, not on another with as much room; one run at a time', async () => {
    const sim = new Sim({ 'node-a': 16, 'node-b': 16, 'node-c': 16 });
    sim.script = [wait, wait];
    await sim.with(async () => {
      const wf = await sim.start(spec());
      const first = await until(wf, (x) => x.state === 'Running', 'Running', FAST);
      expect(first.node).toBe('node-a');
      const r = await migrate(wf, 'node-c');
      expect(r.outcome).toBe('requeued');
      expect(r.checkpointId).toMatch(/-migrate-/);
      const s = await until(wf, (x) => x.runs.length === 2 && x.state === 'Running', 'resumed', FAST);
      expect(s.runs[0]).toMatchObject({ node: 'node-a', reason: 'Migrated' });
      expect(s.runs[0].endedAt).not.toBeNull();
      expect(s.runs[1]).toMatchObject({ node: 'node-c', fromCheckpoint: r.checkpointId, endedAt: null });
      expect(s.node).toBe('node-c');
      // Not a restart: the job did not fail.
      expect(s.restarts).toBe(0);
      expect(s.checkpoints.find((c) => c.checkpointId === r.checkpointId)?.reason).toBe('migration');
      // The dump stopped the process (not left running), and the old run was cleaned up before the resume.
      expect(sim.calls).toContain(`criuDump node-a ${r.checkpointId}`);
      expect(sim.calls).toContain('stopRun node-a 1 grace=0');
      // Never started again from scratch beside the moved copy: one startRun in all, the first.
      expect(sim.calls.filter((c) => c.startsWith('startRun'))).toHaveLength(1);
      expect(types(s)).toEqual(expect.arrayContaining(['Migrating', 'Migrated', 'Resumed']));
      await finish(wf);
    });
  });

  test('the node asked for has no room: resumed on another node, not on the one it left', async () => {
    const sim = new Sim({ 'node-a': 16, 'node-b': 2, 'node-c': 16 });
    sim.script = [wait, wait];
    await sim.with(async () => {
      const wf = await sim.start(spec());
      await until(wf, (x) => x.state === 'Running' && x.node === 'node-a', 'Running on node-a', FAST);
      const r = await migrate(wf, 'node-b');
      expect(r.outcome).toBe('requeued');
      const s = await until(wf, (x) => x.runs.length === 2 && x.state === 'Running', 'resumed', FAST);
      expect(s.runs[1].node).toBe('node-c');
      await finish(wf);
    });
  });

  test('no other node has room: after passing it over for a while, resumed on the node it left', async () => {
    const sim = new Sim({ 'node-a': 16, 'node-b': 2 });
    sim.script = [wait, wait];
    await sim.with(async () => {
      const wf = await sim.start(spec());
      await until(wf, (x) => x.state === 'Running', 'Running', FAST);
      const r = await migrate(wf, 'node-b');
      expect(r.outcome).toBe('requeued');
      const s = await until(wf, (x) => x.runs.length === 2 && x.state === 'Running', 'resumed', FAST);
      expect(s.runs[1]).toMatchObject({ node: 'node-a', fromCheckpoint: r.checkpointId });
      expect(
        s.events.some((e) => e.type === 'FailedScheduling' && e.message.includes('no node other than node-a')),
      ).toBe(true);
      await finish(wf);
    });
  });

  test('a checkpoint that fails cleanly: the job runs on where it was, nothing restored', async () => {
    const sim = new Sim({ 'node-a': 16, 'node-b': 16 });
    sim.script = [wait];
    sim.node['node-a'].criuDump = async () => {
      sim.calls.push('criuDump');
      throw ApplicationFailure.nonRetryable('criu dump failed: unsupported fd', 'CriuDumpFailed');
    };
    await sim.with(async () => {
      const wf = await sim.start(spec());
      await until(wf, (x) => x.state === 'Running', 'Running', FAST);
      const r = await migrate(wf, 'node-b');
      expect(r.outcome).toBe('still-running');
      const s = await status(wf);
      expect(s.state).toBe('Running');
      expect(s.runs).toHaveLength(1);
      expect(s.runs[0]).toMatchObject({ node: 'node-a', endedAt: null });
      expect(types(s)).toContain('MigrationFailed');
      expect(sim.calls.some((c) => c.startsWith('criuRestore'))).toBe(false);
      await finish(wf);
    });
  });

  test('refused before anything is touched: to its own node, a job pinned to its node, a bad name, a job that ended', async () => {
    const sim = new Sim({ 'node-a': 16, 'node-b': 16 });
    sim.script = [wait];
    await sim.with(async () => {
      const wf = await sim.start(spec());
      await until(wf, (x) => x.state === 'Running', 'Running', FAST);
      expect(await rejection(migrate(wf, 'node-a'))).toMatch(/to: job .* runs on node-a already/);
      expect(await rejection(migrate(wf, '../etc'))).toMatch(/to: "..\/etc" is not a node name/);
      const pinned = await sim.start(spec({ node: 'node-b' }));
      await until(pinned, (x) => x.state === 'Running', 'pinned Running', FAST);
      expect(await rejection(migrate(pinned, 'node-a'))).toMatch(/to: job .* runs only on node-b \(its spec's node\)/);
      const s = await status(wf);
      expect(s.runs).toHaveLength(1);
      expect(sim.calls.some((c) => c.startsWith('criuDump'))).toBe(false);
      await finish(pinned);
      await finish(wf);
      // A job that ended has nothing to move.
      await expect(migrate(wf, 'node-b')).rejects.toThrow();
    });
  });
});
