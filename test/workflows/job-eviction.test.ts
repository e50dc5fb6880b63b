import type { WorkflowHandle } from '@temporalio/client';
import { FAST, harness, setUpJobTests, Sim, spec, status, types, until, wait } from './job-sim';

// Job tests on node loss, fences and the eviction gate (the Sim and its caveats: job.test.ts and job-sim.ts).
setUpJobTests('warmup-eviction');

const killedOn = (sim: Sim, node: string): string[] => sim.calls.filter((c) => c.startsWith(`stopRun ${node}`));

/** Cancels the job and skips time until the workflow is closed (true) or maxSteps steps passed (false). */
async function cancelAndStep(wf: WorkflowHandle, steps: number): Promise<boolean> {
  await wf.cancel();
  for (let i = 0; i < steps; i++) {
    if ((await wf.describe()).status.name !== 'RUNNING') return true;
    await harness().env.sleep(5_000);
  }
  return (await wf.describe()).status.name !== 'RUNNING';
}

describe('job workflow: a cancel keeps the kills it owes', () => {
  test('cancelled with an evicted copy still owed a kill: the job stays open until its node is Ready and the kill is done', async () => {
    const sim = new Sim({ 'node-a': 16, 'node-b': 8 });
    sim.script = [wait, wait];
    await sim.with(async () => {
      const wf = await sim.start(spec({ evictAfterMs: 5_000 }));
      const up = await until(wf, (x) => x.state === 'Running', 'Running', FAST);
      const old = up.runs[0].process?.pid ?? 0;
      sim.dead.add('node-a');
      sim.standing['node-a'] = 'Unhealthy';
      await until(wf, (x) => x.runs.length === 2 && x.state === 'Running', 'evicted and Running on node-b');
      expect(await cancelAndStep(wf, 6)).toBe(false);
      const s = await status(wf);
      // The run it could reach is stopped; the old copy is still owed, and the record says so.
      expect(killedOn(sim, 'node-b')).toEqual(['stopRun node-b 2 grace=30000']);
      expect(s.fences).toEqual([expect.objectContaining({ run: 1, node: 'node-a', settled: null })]);
      expect(s.reason).toBe('Cancelled; kills owed: run 1 on node-a');
      expect(s.events.find((e) => e.type === 'Cancelled')?.message).toMatch(/kills still owed \(run 1 on node-a\)/);
      expect(sim.stopped.has(old)).toBe(false);
      sim.dead.delete('node-a');
      sim.standing['node-a'] = 'Ready';
      await until(wf, (x) => x.fences?.[0]?.settled != null, 'the owed kill done');
      const closed = await wf.result().then(
        () => 'completed',
        (e: unknown) => (e as Error).name,
      );
      expect(closed).toBe('WorkflowFailedError'); // cancelled
      const end = await status(wf);
      expect(end.fences?.[0]).toEqual(expect.objectContaining({ settled: 'killed' }));
      expect(killedOn(sim, 'node-a')).toEqual(['stopRun node-a 1 grace=0']);
      expect(sim.stopped.has(old)).toBe(true);
      expect(types(end)).toEqual(expect.arrayContaining(['Fenced', 'FencesSettled']));
      expect(end.state).toBe('Failed');
      expect(end.reason).toBe('Cancelled');
    });
  }, 180_000);

  test('cancelled while its run is Unknown: the run is fenced, not waited on; its node gone: recorded lost, the job closes', async () => {
    const sim = new Sim({ 'node-a': 16, 'node-b': 8 });
    sim.script = [wait];
    await sim.with(async () => {
      const wf = await sim.start(spec({ evictAfterMs: 600_000 }));
      await until(wf, (x) => x.state === 'Running', 'Running', FAST);
      sim.dead.add('node-a');
      sim.standing['node-a'] = 'Unhealthy';
      await until(wf, (x) => x.state === 'Unknown', 'Unknown');
      expect(await cancelAndStep(wf, 4)).toBe(false);
      const s = await status(wf);
      expect(s.runs[0]).toEqual(expect.objectContaining({ reason: 'Stopped' }));
      expect(s.runs[0].message).toMatch(/cancelled while node node-a was unknown/);
      expect(s.fences).toEqual([expect.objectContaining({ run: 1, node: 'node-a', settled: null })]);
      expect(types(s)).toContain('FenceOwed');
      expect(killedOn(sim, 'node-a')).toEqual([]);
      sim.standing['node-a'] = 'Gone';
      expect(await cancelAndStep(wf, 40)).toBe(true);
      const end = await status(wf);
      expect(end.fences?.[0]).toEqual(expect.objectContaining({ settled: 'node lost' }));
      expect(types(end)).toEqual(expect.arrayContaining(['NodeLost', 'FencesSettled']));
      expect(sim.calls.filter((c) => c.startsWith('startRun'))).toHaveLength(1);
    });
  }, 180_000);
});

describe('job workflow: the eviction gate', () => {
  test('two nodes go dark: the gate restarts one node’s job, the other 10 s later (one rate for the zone, not one per job)', async () => {
    const sim = new Sim({ 'node-a': 16, 'node-b': 16, 'node-c': 16, 'node-d': 16 });
    sim.script = [wait];
    await sim.with(async () => {
      const j1 = await sim.start(spec({ evictAfterMs: 5_000 }));
      await until(j1, (x) => x.state === 'Running', 'j1 Running', FAST);
      sim.free['node-a'] = 0; // the next job goes to node-b
      const j2 = await sim.start(spec({ evictAfterMs: 5_000, tier: 'critical', priority: 0 }));
      const up2 = await until(j2, (x) => x.state === 'Running', 'j2 Running', FAST);
      expect(up2.runs[0].node).toBe('node-b');
      for (const n of ['node-a', 'node-b']) {
        sim.dead.add(n);
        sim.standing[n] = 'Unhealthy';
        sim.free[n] = 0; // placement takes only Ready nodes (the sim's candidates go by free VRAM alone)
      }
      const moved = (x: Awaited<ReturnType<typeof status>>): boolean => x.runs.length === 2 && x.state === 'Running';
      const s1 = await until(j1, moved, 'j1 evicted and Running');
      const s2 = await until(j2, moved, 'j2 evicted and Running');
      const evictedAt = (x: typeof s1): number => Date.parse(x.events.find((e) => e.type === 'Evicted')?.at ?? '');
      const [first, second] = evictedAt(s1) <= evictedAt(s2) ? [s1, s2] : [s2, s1];
      expect(evictedAt(second) - evictedAt(first)).toBeGreaterThanOrEqual(10_000);
      const held = second.events.find((e) => e.type === 'EvictionHeld');
      expect(held?.message).toMatch(/zone \(no zone\) evicts 6 nodes\/min \(normal\)/);
      expect(types(first)).not.toContain('EvictionHeld');
      for (const s of [s1, s2]) expect(['node-c', 'node-d']).toContain(s.runs[1].node);
      expect(sim.calls.filter((c) => c.endsWith('granted'))).toHaveLength(2);
    });
  }, 180_000);
});
