import { ApplicationFailure } from '@temporalio/activity';
import { CONTROL_QUEUE } from '../../common/queues';
import {
  type JobStatus,
  jobWorkflowId,
  JOB_PREEMPT_UPDATE,
  JOB_RELEASE_UPDATE,
  JOB_REQUEUE_SIGNAL,
  type PreemptResult,
} from '../../common/job';
import {
  GiB,
  spec,
  Sim,
  rejection,
  status,
  until,
  delaysFromEvents,
  types,
  crash,
  wait,
  FAST,
  finish,
  harness,
  setUpJobTests,
} from './job-sim';
setUpJobTests('warmup');

describe('job workflow: runs and CrashLoopBackOff', () => {
  test('the whole backoff schedule: 10, 20, 40, 80, 160, 300, 300 s between starts, then escalation', async () => {
    const sim = new Sim({ 'node-a': 16 });
    sim.script = [crash];
    await sim.with(async () => {
      const wf = await sim.start(spec({ maxRestarts: 7 }));
      const s = await until(wf, (x) => x.state === 'Quarantined', 'Quarantined', 60_000);
      const schedule = [10, 20, 40, 80, 160, 300, 300];
      expect(delaysFromEvents(s)).toEqual(schedule);
      // The timer really waited that long: from each BackOff to the next run's placement, the delay and at most
      // the few control activities of placement (run in real time on the test server) more.
      const at = (type: string): number[] => s.events.filter((e) => e.type === type).map((e) => Date.parse(e.at));
      const backoffs = at('BackOff');
      const placed = at('Scheduled').slice(1);
      const gaps = backoffs.map((t, i) => placed[i] - t);
      gaps.forEach((g, i) => {
        expect(g).toBeGreaterThanOrEqual(schedule[i] * 1000);
        expect(g).toBeLessThan(schedule[i] * 1000 + 5000);
      });
      // And the starts, as the node saw them, are as far apart (plus the run's own brief life and cleanup).
      const starts = [...sim.startedAt.entries()].sort((a, b) => a[0] - b[0]).map(([, t]) => t);
      starts.slice(1).forEach((t, i) => expect(t - starts[i]).toBeGreaterThanOrEqual(schedule[i] * 1000));
      expect(s.restarts).toBe(7);
      expect(s.runs).toHaveLength(8);
      expect(s.runs.every((r) => r.reason === 'Error' && r.exitCode === 1 && r.logObject !== null)).toBe(true);
      expect(s.nextRetryAt).toBeNull();
      await finish(wf);
    });
  });

  test('CrashLoopBackOff shows the next retry time while it waits', async () => {
    const sim = new Sim({ 'node-a': 16 });
    sim.script = [crash];
    await sim.with(async () => {
      const wf = await sim.start(spec({ maxRestarts: 3 }));
      const s = await until(wf, (x) => x.state === 'CrashLoopBackOff', 'CrashLoopBackOff', 1000);
      expect(s.nextRetryAt).not.toBeNull();
      const lastEnd = Date.parse(s.runs[0].endedAt ?? '');
      expect(Date.parse(s.nextRetryAt ?? '') - lastEnd).toBeGreaterThanOrEqual(9_000);
      await finish(wf);
    });
  });

  test('the backoff resets after a run that stayed up resetAfterMs', async () => {
    const sim = new Sim({ 'node-a': 16 });
    sim.script = [crash, crash, { kind: 'exit', reason: 'Error', exitCode: 2, upMs: 700_000 }, crash];
    await sim.with(async () => {
      const wf = await sim.start(spec({ maxRestarts: 3 }));
      const s = await until(wf, (x) => x.state === 'Quarantined', 'Quarantined', 60_000);
      expect(delaysFromEvents(s)).toEqual([10, 20, 10]);
      await finish(wf);
    });
  });

  test.each([
    ['Never', [crash], 'Failed', 1],
    ['Never', [{ kind: 'exit', reason: 'OOMKilled', exitCode: null, signal: 'SIGKILL' }], 'OOMKilled', 1],
    ['OnFailure', [{ kind: 'exit', reason: 'Completed', exitCode: 0 }], 'Succeeded', 1],
    ['OnFailure', [crash, { kind: 'exit', reason: 'Completed', exitCode: 0 }], 'Succeeded', 2],
    ['Always', [{ kind: 'exit', reason: 'Completed', exitCode: 0 }], 'Succeeded', 3],
  ] as const)('restart policy %s, runs %j: %s after %d run(s)', async (policy, script, state, runs) => {
    const sim = new Sim({ 'node-a': 16 });
    sim.script = [...script];
    const s = await sim.runJob(spec({ restartPolicy: policy, maxRestarts: 2 }));
    expect(s.state).toBe(state);
    expect(s.runs).toHaveLength(runs);
    expect(s.restarts).toBe(runs - 1);
    // Every ended run was cleaned up through stopRun and its log stored.
    expect(sim.calls.filter((c) => c.startsWith('stopRun'))).toHaveLength(runs);
    expect(sim.calls.filter((c) => c.startsWith('archiveRunLog'))).toHaveLength(runs);
  });

  test('a command that cannot start: StartFailure, terminal, nothing awaited', async () => {
    const sim = new Sim({ 'node-a': 16 });
    sim.node['node-a'].startRun = async () => {
      sim.calls.push('startRun');
      throw ApplicationFailure.nonRetryable("command '/bin/nope' not found", 'StartFailure');
    };
    const s = await sim.runJob(spec({ command: ['/bin/nope'] }));
    expect(s.state).toBe('StartFailure');
    expect(s.reason).toContain("'/bin/nope' not found");
    expect(s.runs.map((r) => r.reason)).toEqual(['StartFailure']);
    expect(sim.calls.some((c) => c.startsWith('awaitRunExit'))).toBe(false);
  });

  test('a spec with a bad field fails at once, naming it, before anything is placed', async () => {
    const sim = new Sim({ 'node-a': 16 });
    const err = await sim.runJob(spec({ maxRestarts: -1 })).catch((e: unknown) => e as Error);
    expect(String((err as Error & { cause?: Error }).cause?.message)).toContain('maxRestarts');
    expect(sim.calls).toEqual([]);
  });

  test('nothing fits: FailedScheduling and a wait, never a failure; placed once a node has room', async () => {
    const sim = new Sim({ 'node-a': 2 });
    sim.script = [{ kind: 'exit', reason: 'Completed', exitCode: 0 }];
    await sim.with(async () => {
      const wf = await sim.start(spec({ vramBytes: 8 * GiB }));
      const s = await until(wf, (x) => types(x).includes('FailedScheduling'), 'FailedScheduling', 5000);
      expect(s.state).toBe('Pending');
      await harness().env.sleep(120_000);
      expect((await status(wf)).state).toBe('Pending');
      sim.free['node-a'] = 16;
      expect(((await wf.result()) as JobStatus).state).toBe('Succeeded');
    });
  });
});

describe('job workflow: agent lost, timeout, cancel', () => {
  test('an agent lost during a run: awaitRunExit times out, the node is asked, the run watched again; no restart', async () => {
    const sim = new Sim({ 'node-a': 16 });
    sim.script = [{ kind: 'lost', then: 'Completed', exitCode: 0 }];
    const s = await sim.runJob(spec());
    expect(s.state).toBe('Succeeded');
    expect(s.restarts).toBe(0);
    expect(s.runs).toHaveLength(1);
    expect(types(s)).toEqual(expect.arrayContaining(['AgentLost', 'Reattached']));
    expect(sim.calls.filter((c) => c.startsWith('awaitRunExit'))).toHaveLength(2);
    expect(sim.calls).toContain('inspectRun node-a 1000');
  }, 180_000);

  test('timeout: TimedOut, the run stopped through stopRun with a grace, its log archived, terminal', async () => {
    const sim = new Sim({ 'node-a': 16 });
    sim.script = [wait];
    const s = await sim.runJob(spec({ timeoutMs: 3000 }));
    expect(s.state).toBe('TimedOut');
    expect(s.runs[0].reason).toBe('TimedOut');
    expect(sim.calls).toContain('stopRun node-a 1 grace=30000');
    expect(sim.calls).toContain('archiveRunLog node-a 1');
  });

  test('cancel: the run stopped through stopRun, log archived, state Failed with reason Cancelled', async () => {
    const sim = new Sim({ 'node-a': 16 });
    sim.script = [wait];
    await sim.with(async () => {
      const wf = await sim.start(spec());
      await until(wf, (x) => x.state === 'Running', 'Running', FAST);
      const s = await finish(wf);
      expect(s.state).toBe('Failed');
      expect(s.reason).toBe('Cancelled');
      expect(sim.calls).toContain('stopRun node-a 1 grace=30000');
      expect(sim.calls).toContain('archiveRunLog node-a 1');
      expect(s.runs[0].reason).toBe('Stopped');
    });
  });
  test('a cancel while startRun runs: the start completes and the run it started is stopped, nothing left behind', async () => {
    const sim = new Sim({ 'node-a': 16 });
    sim.script = [wait];
    const inner = sim.node['node-a'].startRun;
    let entered = false;
    let release = (): void => undefined;
    const gate = new Promise<void>((res) => (release = res));
    sim.node['node-a'].startRun = async (i) => {
      entered = true;
      await gate; // the agent is still starting the command when the cancel arrives
      return inner!(i);
    };
    await sim.with(async () => {
      const wf = await sim.start(spec());
      while (!entered) await new Promise((r) => setTimeout(r, 50));
      await wf.cancel();
      release();
      await wf.result().catch(() => undefined);
      const s = await status(wf);
      expect(s.state).toBe('Failed');
      expect(s.reason).toBe('Cancelled');
      expect(s.runs).toHaveLength(1);
      expect(sim.calls).toContain('stopRun node-a 1 grace=30000');
      expect(sim.calls.indexOf('startRun node-a 1')).toBeLessThan(sim.calls.indexOf('stopRun node-a 1 grace=30000'));
    });
  });
});

describe('job workflow: node Unhealthy, eviction, fencing', () => {
  const killedOn = (sim: Sim, node: string): string[] => sim.calls.filter((c) => c.startsWith(`stopRun ${node}`));

  test('node Unhealthy: the job is Unknown; Ready again: watched again, no restart, nothing killed', async () => {
    const sim = new Sim({ 'node-a': 16, 'node-b': 16 });
    sim.script = [wait];
    await sim.with(async () => {
      const wf = await sim.start(spec({ evictAfterMs: 600_000 }));
      const up = await until(wf, (x) => x.state === 'Running', 'Running', FAST);
      sim.dead.add('node-a');
      sim.standing['node-a'] = 'Unhealthy';
      const u = await until(wf, (x) => x.state === 'Unknown', 'Unknown');
      expect(u.reason).toMatch(/node node-a is Unhealthy/);
      expect(types(u)).toEqual(expect.arrayContaining(['AgentLost', 'NodeUnhealthy']));
      sim.dead.delete('node-a');
      sim.standing['node-a'] = 'Ready';
      const back = await until(wf, (x) => x.state === 'Running', 'Running again');
      expect(types(back)).toContain('Reattached');
      expect(types(back)).not.toContain('Evicted');
      expect(back.runs).toHaveLength(1);
      expect(back.restarts).toBe(0);
      expect(sim.calls).toContain(`inspectRun node-a ${up.runs[0].process?.pid}`);
      expect(killedOn(sim, 'node-a')).toEqual([]);
      await finish(wf);
    });
  }, 180_000);

  test('Unhealthy past the grace: restarted on the other node from the last good checkpoint; the old run killed when its node is back', async () => {
    const sim = new Sim({ 'node-a': 16, 'node-b': 8 });
    sim.script = [wait, wait];
    await sim.with(async () => {
      const wf = await sim.start(spec({ checkpointEveryMs: 5000, evictAfterMs: 20_000 }));
      const good = await until(wf, (x) => x.lastGoodCheckpoint !== null, 'a good checkpoint', FAST);
      const old = good.runs[0].process?.pid ?? 0;
      sim.dead.add('node-a');
      sim.standing['node-a'] = 'Unhealthy';
      const s = await until(wf, (x) => x.runs.length === 2 && x.state === 'Running', 'evicted and Running');
      expect(s.runs[0].reason).toBe('Evicted');
      expect(s.runs[1].node).toBe('node-b');
      expect(s.runs[1].fromCheckpoint).toBe(s.lastGoodCheckpoint);
      expect(s.checkpoints.find((c) => c.checkpointId === s.runs[1].fromCheckpoint)?.healthy).toBe(true);
      expect(s.restarts).toBe(0);
      expect(types(s)).toEqual(expect.arrayContaining(['NodeUnhealthy', 'Evicted', 'Resumed']));
      expect(s.events.find((e) => e.type === 'Evicted')?.message).toMatch(/past the grace of 20 s/);
      // The restart did not wait for the old node: its kill is owed, not done.
      expect(s.fences).toEqual([expect.objectContaining({ run: 1, node: 'node-a', settled: null })]);
      expect(killedOn(sim, 'node-a')).toEqual([]);
      expect(sim.stopped.has(old)).toBe(false);
      sim.dead.delete('node-a');
      sim.standing['node-a'] = 'Ready';
      const fenced = await until(wf, (x) => x.fences?.[0]?.settled != null, 'the old copy killed');
      expect(fenced.fences?.[0].settled).toBe('killed');
      expect(killedOn(sim, 'node-a')).toEqual(['stopRun node-a 1 grace=0']);
      expect(sim.stopped.has(old)).toBe(true);
      expect(types(fenced)).toContain('Fenced');
      expect(fenced.state).toBe('Running');
      expect(fenced.runs).toHaveLength(2);
      await finish(wf);
    });
  }, 180_000);

  test('eviction budget 0 (every zone dark): the job stays Unknown past the grace, waiting, and says why', async () => {
    const sim = new Sim({ 'node-a': 16, 'node-b': 16 });
    sim.script = [wait];
    await sim.with(async () => {
      const wf = await sim.start(spec({ evictAfterMs: 5_000 }));
      await until(wf, (x) => x.state === 'Running', 'Running', FAST);
      sim.dead.add('node-a');
      sim.standing['node-a'] = 'Unhealthy';
      sim.standing['node-b'] = 'Unhealthy';
      const held = await until(wf, (x) => types(x).includes('EvictionHeld'), 'eviction held');
      expect(held.state).toBe('Unknown');
      expect(held.reason).toMatch(/eviction held: zone \(no zone\): every zone is dark/);
      // Well past the grace: still one run, nothing placed again.
      for (let i = 0; i < 12; i++) await harness().env.sleep(10_000);
      const later = await status(wf);
      expect(later.state).toBe('Unknown');
      expect(later.runs).toHaveLength(1);
      expect(types(later)).not.toContain('Evicted');
      expect(sim.calls.filter((c) => c.startsWith('startRun'))).toHaveLength(1);
      // Back, so the cancel's kill of the Unknown run is done and the job closes (job-cancel-keeps-fences).
      sim.dead.clear();
      sim.standing = {};
      await finish(wf);
    });
  }, 180_000);

  test('registry gone: evicted at once, restarted from scratch elsewhere; the owed kill settled as node lost', async () => {
    const sim = new Sim({ 'node-a': 16, 'node-b': 8 });
    sim.script = [wait, wait];
    await sim.with(async () => {
      const wf = await sim.start(spec({ evictAfterMs: 600_000 }));
      await until(wf, (x) => x.state === 'Running', 'Running', FAST);
      sim.dead.add('node-a');
      sim.standing['node-a'] = 'Gone';
      const s = await until(
        wf,
        (x) => x.runs.length === 2 && x.state === 'Running' && x.fences?.[0]?.settled != null,
        'restarted, and the fence settled',
      );
      expect(s.runs[1].node).toBe('node-b');
      expect(s.runs[1].fromCheckpoint).toBeNull();
      expect(s.restarts).toBe(0);
      expect(s.fences?.[0]).toEqual(expect.objectContaining({ node: 'node-a', settled: 'node lost' }));
      expect(types(s)).toEqual(expect.arrayContaining(['Evicted', 'NodeLost']));
      expect(killedOn(sim, 'node-a')).toEqual([]);
      await finish(wf);
    });
  }, 180_000);

  test('a bad evictAfterMs fails the job at once, naming the field', async () => {
    const sim = new Sim({ 'node-a': 16 });
    const err = await sim.runJob(spec({ evictAfterMs: -1 })).then(
      () => null,
      (e: unknown) => e as Error & { cause?: Error },
    );
    expect(err?.cause?.message).toMatch(/evictAfterMs: must be > 0/);
    expect(sim.calls).toEqual([]);
  });
});

describe('job workflow: continue-as-new', () => {
  test('a job carried over while Running re-awaits its process by identity: no new start, no restart counted', async () => {
    const sim = new Sim({ 'node-a': 16 });
    sim.script = [{ kind: 'exit', reason: 'Completed', exitCode: 0 }];
    const sp = spec();
    const run = {
      run: 1,
      node: 'node-a',
      startedAt: new Date().toISOString(),
      endedAt: null,
      exitCode: null,
      signal: null,
      reason: null,
      message: null,
      fromCheckpoint: null,
      process: { pid: 4321, startTime: 99 },
      logFile: '/data/node-a/workloads/x/runs/1/log',
      exitFile: '/data/node-a/workloads/x/runs/1/exit.json',
      logObject: null,
    };
    const carried: JobStatus = {
      jobId: sp.jobId,
      state: 'Running',
      reason: null,
      node: 'node-a',
      restarts: 2,
      createdAt: run.startedAt,
      nextRetryAt: null,
      runs: [run],
      events: [],
      checkpoints: [],
      lastGoodCheckpoint: null,
      failedOn: [],
      diagnostics: null,
      spec: sp,
      backoffStep: 2,
      resumeFrom: null,
    };
    const seen: unknown[] = [];
    const inner = sim.node['node-a'].awaitRunExit;
    sim.node['node-a'].awaitRunExit = async (i) => {
      seen.push(i.process);
      return inner!(i);
    };
    const s = await sim.with(
      async () =>
        (await harness().env.client.workflow.execute('job', {
          workflowId: jobWorkflowId(sp.jobId),
          taskQueue: CONTROL_QUEUE,
          args: [{ spec: sp, carried }],
        })) as JobStatus,
    );
    expect(s.state).toBe('Succeeded');
    expect(seen).toEqual([{ pid: 4321, startTime: 99 }]);
    expect(sim.calls.some((c) => c.startsWith('startRun'))).toBe(false);
    expect(s.runs).toHaveLength(1);
    expect(s.restarts).toBe(2);
  });

  test('a job carried over between runs starts the next one from where it was to resume', async () => {
    const sim = new Sim({ 'node-a': 16 });
    sim.script = [wait, wait];
    await sim.with(async () => {
      // A checkpoint to resume from: taken by a first job, then handed to a carried-over one.
      const first = await sim.start(spec({ checkpointEveryMs: 1500 }));
      const good = (await until(first, (x) => x.lastGoodCheckpoint !== null, 'a good checkpoint', FAST))
        .lastGoodCheckpoint as string;
      const prior = await finish(first);
      const sp = spec();
      const carried: JobStatus = {
        ...prior,
        jobId: sp.jobId,
        spec: sp,
        state: 'Pending',
        reason: null,
        resumeFrom: good,
        events: [],
      };
      const wf = await harness().env.client.workflow.start('job', {
        workflowId: jobWorkflowId(sp.jobId),
        taskQueue: CONTROL_QUEUE,
        args: [{ spec: sp, carried }],
      });
      const s = await until(wf, (x) => x.runs.length === 2 && x.state === 'Running', 'resumed', FAST);
      expect(s.runs[1].fromCheckpoint).toBe(good);
      expect(s.resumeFrom).toBeNull();
      await finish(wf);
    });
  });
});

describe('job workflow: escalation and release', () => {
  test('past maxRestarts: Quarantined at once, diagnostics, incident, alert, failed node recorded; no more restarts', async () => {
    const sim = new Sim({ 'node-a': 16 });
    sim.script = [crash];
    await sim.with(async () => {
      const wf = await sim.start(spec({ maxRestarts: 1 }));
      // Incident and alert go out beside the quarantine (never holding it back): wait for both.
      const s = await until(
        wf,
        (x) =>
          x.state === 'Quarantined' &&
          sim.calls.some((c) => c.startsWith('alert')) &&
          sim.calls.some((c) => c.startsWith('incident')),
        'Quarantined, incident and alert raised',
        10_000,
      );
      expect(s.reason).toContain('restart limit (1) reached');
      expect(s.failedOn).toEqual(['node-a']);
      expect(s.diagnostics).toMatch(/^diagnostics\//);
      expect(sim.calls).toEqual(
        expect.arrayContaining([
          'collectDiagnostics node-a runs=2',
          `incident job-quarantined ${s.jobId} node-a`,
          'alert job-quarantined node-a',
        ]),
      );
      await harness().env.sleep(3_600_000);
      expect((await status(wf)).runs).toHaveLength(2);
      await finish(wf);
    });
  });

  test('diagnostics and incident failures are recorded, not fatal: still Quarantined', async () => {
    const sim = new Sim({ 'node-a': 16 });
    sim.script = [crash];
    sim.node['node-a'].collectDiagnostics = async () => {
      throw ApplicationFailure.nonRetryable('disk full', 'NoSpace');
    };
    sim.control.raiseIncident = async () => {
      throw ApplicationFailure.nonRetryable('bad webhook', 'WebhookFailed');
    };
    await sim.with(async () => {
      const wf = await sim.start(spec({ maxRestarts: 0 }));
      const s = await until(
        wf,
        (x) =>
          x.state === 'Quarantined' &&
          types(x).includes('IncidentFailed') &&
          sim.calls.includes('alert job-quarantined node-a'),
        'Quarantined',
        10_000,
      );
      expect(types(s)).toEqual(expect.arrayContaining(['DiagnosticsFailed', 'IncidentFailed']));
      await finish(wf);
    });
  });

  test('release (from scratch): only when Quarantined; restarts reset, the job runs again', async () => {
    const sim = new Sim({ 'node-a': 16 });
    sim.script = [crash, crash, { kind: 'exit', reason: 'Completed', exitCode: 0 }];
    await sim.with(async () => {
      const wf = await sim.start(spec({ maxRestarts: 1 }));
      await until(wf, (x) => x.state === 'Quarantined', 'Quarantined', 10_000);
      expect(await rejection(wf.executeUpdate(JOB_RELEASE_UPDATE, { args: [{ fromCheckpoint: true }] }))).toMatch(
        /no good checkpoint/,
      );
      const after = await wf.executeUpdate<JobStatus, [{ fromCheckpoint?: boolean }]>(JOB_RELEASE_UPDATE, {
        args: [{}],
      });
      expect(after.restarts).toBe(0);
      const s = (await wf.result()) as JobStatus;
      expect(s.state).toBe('Succeeded');
      expect(s.runs).toHaveLength(3);
      expect(s.runs[2].fromCheckpoint).toBeNull();
      expect(types(s)).toContain('Released');
      await expect(wf.executeUpdate(JOB_RELEASE_UPDATE, { args: [{}] })).rejects.toThrow();
    });
  });

  test('release is refused while the job runs', async () => {
    const sim = new Sim({ 'node-a': 16 });
    sim.script = [wait];
    await sim.with(async () => {
      const wf = await sim.start(spec());
      await until(wf, (x) => x.state === 'Running', 'Running', FAST);
      expect(await rejection(wf.executeUpdate(JOB_RELEASE_UPDATE, { args: [{}] }))).toMatch(
        /only a Quarantined job can be released/,
      );
      await finish(wf);
    });
  });

  test('critical tier: restored from the last good checkpoint on another node, never the one it failed on', async () => {
    const sim = new Sim({ 'node-a': 16, 'node-b': 8 });
    sim.script = [wait, wait];
    await sim.with(async () => {
      // Periodic checkpoints grow the history every query replays: few of them, one good one is all it takes.
      const wf = await sim.start(spec({ tier: 'critical', maxRestarts: 0, checkpointEveryMs: 5000 }));
      const good = await until(wf, (x) => x.lastGoodCheckpoint !== null, 'a good checkpoint', FAST);
      const pid = good.runs[0].process?.pid ?? 0;
      sim.exitNow.set(pid, {
        exitCode: 3,
        signal: null,
        reason: 'Error',
        message: 'exit code 3',
        endedAt: new Date().toISOString(),
      });
      const s = await until(wf, (x) => x.runs.length === 2 && x.state === 'Running', 'restored and Running', FAST);
      expect(s.failedOn).toEqual(['node-a']);
      expect(s.runs[1].node).toBe('node-b');
      const from = s.runs[1].fromCheckpoint;
      expect(from).not.toBeNull();
      expect(s.checkpoints.find((c) => c.checkpointId === from)?.healthy).toBe(true);
      expect(sim.calls.some((c) => c.startsWith('fetch node-b'))).toBe(true);
      expect(sim.calls.some((c) => c.startsWith('fetch node-a'))).toBe(false);
      expect(sim.calls.some((c) => c.startsWith('attachRunLimits node-b'))).toBe(true);
      expect(s.runs[1].logFile).toBe(s.runs[0].logFile);
      expect(types(s)).toEqual(expect.arrayContaining(['Quarantined', 'Resumed']));
      await finish(wf);
    });
  });

  test('release from the last good checkpoint: the new run resumes from it', async () => {
    const sim = new Sim({ 'node-a': 16 });
    sim.script = [wait, wait];
    await sim.with(async () => {
      const wf = await sim.start(spec({ maxRestarts: 0, checkpointEveryMs: 1500 }));
      const good = await until(wf, (x) => x.lastGoodCheckpoint !== null, 'a good checkpoint', FAST);
      sim.exitNow.set(good.runs[0].process?.pid ?? 0, {
        exitCode: 1,
        signal: null,
        reason: 'Error',
        message: 'exit code 1',
        endedAt: new Date().toISOString(),
      });
      const q = await until(wf, (x) => x.state === 'Quarantined', 'Quarantined', FAST);
      expect(q.runs).toHaveLength(1); // normal tier: no restore of its own
      await wf.executeUpdate(JOB_RELEASE_UPDATE, { args: [{ fromCheckpoint: true }] });
      const s = await until(wf, (x) => x.runs.length === 2 && x.state === 'Running', 'resumed', FAST);
      expect(s.runs[1].fromCheckpoint).toBe(q.lastGoodCheckpoint);
      expect(s.restarts).toBe(0);
      await finish(wf);
    });
  });
});

describe('job workflow: preemption', () => {
  test('preempt: checkpointed, stopped, requeued and resumed from that checkpoint; the run history shows it', async () => {
    const sim = new Sim({ 'node-a': 16, 'node-b': 16 });
    sim.script = [wait, wait];
    await sim.with(async () => {
      const wf = await sim.start(spec());
      await until(wf, (x) => x.state === 'Running', 'Running', FAST);
      const r = await wf.executeUpdate<PreemptResult, []>(JOB_PREEMPT_UPDATE);
      expect(r.outcome).toBe('requeued');
      const s = await until(wf, (x) => x.runs.length === 2 && x.state === 'Running', 'resumed', FAST);
      expect(s.runs[0].reason).toBe('Preempted');
      expect(s.runs[1].fromCheckpoint).toBe(r.checkpointId);
      // Preempted to make room on node-a: resumed on the other node, which has room.
      expect(s.runs[0].node).toBe('node-a');
      expect(s.runs[1].node).toBe('node-b');
      expect(s.restarts).toBe(0);
      expect(s.checkpoints.find((c) => c.checkpointId === r.checkpointId)?.reason).toBe('preemption');
      expect(sim.calls).toContain(`criuDump node-a ${r.checkpointId}`);
      expect(sim.calls).toContain('stopRun node-a 1 grace=0');
      expect(types(s)).toEqual(expect.arrayContaining(['Preempting', 'Preempted', 'Resumed']));
      // Only a Running job can be preempted.
      await finish(wf);
      await expect(wf.executeUpdate(JOB_PREEMPT_UPDATE)).rejects.toThrow();
    });
  });

  test('preempted on the only node with room: after passing it over for a while, resumed there', async () => {
    const sim = new Sim({ 'node-a': 16 });
    sim.script = [wait, wait];
    await sim.with(async () => {
      const wf = await sim.start(spec());
      await until(wf, (x) => x.state === 'Running', 'Running', FAST);
      const r = await wf.executeUpdate<PreemptResult, []>(JOB_PREEMPT_UPDATE);
      expect(r.outcome).toBe('requeued');
      const s = await until(wf, (x) => x.runs.length === 2 && x.state === 'Running', 'resumed', FAST);
      expect(s.runs[1].node).toBe('node-a');
      expect(s.runs[1].fromCheckpoint).toBe(r.checkpointId);
      expect(
        s.events.some((e) => e.type === 'FailedScheduling' && e.message.includes('no node other than node-a')),
      ).toBe(true);
      await finish(wf);
    });
  });

  test('a preemption whose checkpoint fails cleanly: the job stays Running on its run', async () => {
    const sim = new Sim({ 'node-a': 16 });
    sim.script = [wait];
    sim.node['node-a'].criuDump = async () => {
      sim.calls.push('criuDump');
      throw ApplicationFailure.nonRetryable('criu dump failed: unsupported fd', 'CriuDumpFailed');
    };
    await sim.with(async () => {
      const wf = await sim.start(spec());
      await until(wf, (x) => x.state === 'Running', 'Running', FAST);
      const r = await wf.executeUpdate<PreemptResult, []>(JOB_PREEMPT_UPDATE);
      expect(r.outcome).toBe('still-running');
      const s = await status(wf);
      expect(s.state).toBe('Running');
      expect(s.runs).toHaveLength(1);
      expect(s.runs[0].endedAt).toBeNull();
      expect(types(s)).toContain('PreemptionFailed');
      await finish(wf);
    });
  });

  test('a preemption whose checkpoint fails and takes the process: restarted from the last good checkpoint, not counted', async () => {
    const sim = new Sim({ 'node-a': 16 });
    sim.script = [wait, wait];
    sim.node['node-a'].criuDump = async (i) => {
      sim.calls.push('criuDump');
      if (i.leaveRunning) return { imageBytes: 1000, durationMs: 5, processStopped: false };
      sim.stopped.add(i.pid); // CRIU killed it, then failed
      throw ApplicationFailure.nonRetryable('criu dump failed: killed', 'CriuDumpFailed');
    };
    await sim.with(async () => {
      const wf = await sim.start(spec({ checkpointEveryMs: 1500 }));
      await until(wf, (x) => x.lastGoodCheckpoint !== null, 'a good checkpoint', FAST);
      const r = await wf.executeUpdate<PreemptResult, []>(JOB_PREEMPT_UPDATE);
      expect(r.outcome).toBe('restarted-from-last-good');
      const s = await until(wf, (x) => x.runs.length === 2 && x.state === 'Running', 'restarted', FAST);
      expect(s.runs[1].fromCheckpoint).not.toBeNull();
      expect(s.runs[1].fromCheckpoint).toBe(s.lastGoodCheckpoint);
      expect(s.checkpoints.find((c) => c.checkpointId === s.runs[1].fromCheckpoint)?.reason).toBe('periodic');
      expect(s.runs[0].reason).toBe('Preempted');
      expect(s.restarts).toBe(0);
      await finish(wf);
    });
  });

  test('the requeue signal: recorded; a run that is gone is requeued from the last good checkpoint, not as a crash', async () => {
    const sim = new Sim({ 'node-a': 16 });
    sim.script = [wait, wait];
    await sim.with(async () => {
      const wf = await sim.start(spec());
      const running = await until(wf, (x) => x.state === 'Running', 'Running', FAST);
      await wf.signal(JOB_REQUEUE_SIGNAL, { reason: 'test: still there', checkpointId: 'ck-x' });
      const still = await until(
        wf,
        (x) => x.events.filter((e) => e.type === 'Requeue').length >= 2,
        'requeue seen',
        FAST,
      );
      expect(still.state).toBe('Running');
      expect(still.runs).toHaveLength(1);
      const pid = running.runs[0].process?.pid ?? 0;
      sim.unseen.add(pid);
      sim.stopped.add(pid);
      await wf.signal(JOB_REQUEUE_SIGNAL, { reason: 'checkpoint lost the workload', checkpointId: 'ck-y' });
      const s = await until(wf, (x) => x.runs.length === 2 && x.state === 'Running', 'requeued', FAST);
      expect(s.runs[0].reason).toBe('Preempted');
      expect(s.runs[1].fromCheckpoint).toBeNull(); // no good checkpoint: from scratch
      expect(s.restarts).toBe(0);
      await finish(wf);
    });
  });

  test('CheckpointPullBackOff: a checkpoint that cannot be fetched yet is retried with backoff, then resumed', async () => {
    const sim = new Sim({ 'node-a': 16 });
    sim.script = [wait, wait];
    // One restore's worth of look-ups fail (the restore retries its look-up 10 times): S3 away for a minute.
    let lookups = 0;
    let s3Down = false;
    sim.control.checkpointInfo = async ({ checkpointId }) => {
      if (s3Down && ++lookups <= 10)
        throw ApplicationFailure.retryable('S3 look-up of checkpoint: connect ECONNREFUSED', 'S3Unavailable');
      return { checkpointId, jobId: 'job', node: 'node-a', tier: 's3', vramBytes: 4 * GiB };
    };
    await sim.with(async () => {
      const wf = await sim.start(spec());
      await until(wf, (x) => x.state === 'Running', 'Running', FAST);
      s3Down = true;
      const r = await wf.executeUpdate<PreemptResult, []>(JOB_PREEMPT_UPDATE);
      expect(r.outcome).toBe('requeued');
      const pulling = await until(wf, (x) => x.state === 'CheckpointPullBackOff', 'CheckpointPullBackOff', 5000);
      expect(pulling.nextRetryAt).not.toBeNull();
      const s = await until(wf, (x) => x.runs.length === 2 && x.state === 'Running', 'resumed', 5000);
      expect(s.runs[1].fromCheckpoint).toBe(r.checkpointId);
      expect(s.events.some((e) => e.type === 'BackOff' && /pulling checkpoint/.test(e.message))).toBe(true);
      await finish(wf);
    });
  }, 300_000);
});

describe('job workflow: periodic checkpoints', () => {
  test('keep=2: the oldest beyond keep deleted from S3 and the node, never the last good one', async () => {
    const sim = new Sim({ 'node-a': 16 });
    sim.script = [wait, wait];
    await sim.with(async () => {
      const wf = await sim.start(spec({ checkpointEveryMs: 1500, keep: 2 }));
      // Run 1 is healthy: its first checkpoint becomes the last good one.
      const first = await until(wf, (x) => x.lastGoodCheckpoint !== null, 'a good checkpoint', FAST);
      sim.exitNow.set(first.runs[0].process?.pid ?? 0, {
        exitCode: 1,
        signal: null,
        reason: 'Error',
        message: 'exit code 1',
        endedAt: new Date().toISOString(),
      });
      // Run 2 comes after a failure: its checkpoints are not good ones, and retention must keep `good` anyway.
      const s = await until(
        wf,
        (x) => x.checkpoints.filter((c) => c.reason === 'periodic' && x.runs.length === 2 && c.run === 2).length >= 4,
        'four checkpoints of run 2',
        FAST,
      );
      const periodic = s.checkpoints.filter((c) => c.reason === 'periodic' && c.phase === 'Durable');
      const good = s.lastGoodCheckpoint as string;
      expect(periodic.find((c) => c.checkpointId === good)?.run).toBe(1);
      expect(periodic.find((c) => c.checkpointId === good)?.deleted).toBe(false);
      expect(periodic.filter((c) => c.run === 2).every((c) => !c.healthy)).toBe(true);
      const kept = periodic.filter((c) => !c.deleted).map((c) => c.checkpointId);
      const deleted = periodic.filter((c) => c.deleted).map((c) => c.checkpointId);
      // Two held: the last good one and the newest; everything between deleted, oldest first.
      expect(deleted.length).toBeGreaterThanOrEqual(2);
      expect(kept).toEqual([good, periodic[periodic.length - 1].checkpointId]);
      for (const id of deleted) {
        expect(sim.calls).toContain(`deleteCheckpoint ${id}`);
        expect(sim.calls).toContain(`deleteLocalCheckpoint node-a ${id}`);
        expect(sim.calls.indexOf(`deleteCheckpoint ${id}`)).toBeLessThan(
          sim.calls.indexOf(`deleteLocalCheckpoint node-a ${id}`),
        );
      }
      const ids = periodic.map((c) => c.checkpointId);
      expect(deleted).toEqual(ids.filter((id) => id !== good && id !== ids[ids.length - 1]));
      expect(ids.every((id) => /^job-\d+-p\d+-[0-9a-f]{8}$/.test(id))).toBe(true);
      await finish(wf);
    });
  });
});
