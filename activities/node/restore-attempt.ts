import * as fs from 'node:fs';
import * as path from 'node:path';
import { ApplicationFailure } from '@temporalio/activity';
import { ErrorType } from '../../common/errors';
import { assertSafeId } from '../../common/ids';
import type { ProcessIdentity } from '../../common/journal';
import type { RestoreInspection } from '../../common/restore';
import { type NodeContext, restoreLocation } from './context';
import { criuRestore, IMAGES, workloadFileIndex } from './criu';
import { cudaTreeState } from './cuda';
import { journaled, journalOutcome, readJournal } from './journal';
import { isSameProcess, processIdentity, procStatFields } from './process';
import { heartbeat } from './run-tool';

/** The journal step name of a CRIU restore (kind 'restore', one journal per attempt). */
export const CRIU_RESTORE_STEP = 'criuRestore';

/**
 * criu restore from this node's verified copy. With an attempt id it is journaled: 'started' names the
 * directory, 'done' the restored process by pid and start time, so that after a lost agent the workflow can
 * ask what became of it (inspectRestore) instead of guessing.
 */
export async function restoreProcess(
  ctx: NodeContext,
  input: { checkpointId: string; attemptId?: string },
): Promise<{ pid: number; startTime: number }> {
  const dir = restoreLocation(ctx, assertSafeId('checkpointId', input.checkpointId), input.attemptId);
  const run = async (): Promise<{ pid: number; startTime: number }> => {
    const { pid } = await criuRestore(ctx, { dir, files: workloadFileIndex(dir) });
    const id = processIdentity(pid);
    if (!id)
      throw ApplicationFailure.nonRetryable(
        `no such process: restored pid ${pid} exited at once`,
        ErrorType.NoSuchProcess,
      );
    ctx.logger.info(
      { node: ctx.node, checkpoint: input.checkpointId, attempt: input.attemptId, pid, startTime: id.startTime },
      'criu restore done',
    );
    return id;
  };
  if (input.attemptId === undefined) return run();
  return journaled(
    ctx,
    'restore',
    assertSafeId('attemptId', input.attemptId),
    CRIU_RESTORE_STEP,
    run,
    (r) => ({ pid: r.pid, startTime: r.startTime }),
    { checkpointId: input.checkpointId, dir },
  );
}

/** Host pids of CRIU processes restoring from this images directory (one may outlive the agent that started it). */
function criuRestoring(imagesDir: string): number[] {
  const out: number[] = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const argv = fs.readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0');
      if (argv.includes('restore') && argv.includes(imagesDir) && argv.some((a) => path.basename(a).startsWith('criu')))
        out.push(Number(e));
    } catch {
      /* exited meanwhile */
    }
  }
  return out;
}

let clockTicks: number | null = null;
/** Wall-clock time (ms) a process started, from its start time in clock ticks since boot. */
function startedAtMs(startTime: number): number {
  const btime = Number(/^btime (\d+)$/m.exec(fs.readFileSync('/proc/stat', 'utf8'))?.[1] ?? 0);
  // USER_HZ is 100 on every Linux ABI Node runs on; sysconf is not reachable from Node without a native module.
  clockTicks ??= 100;
  return btime * 1000 + (startTime / clockTicks) * 1000;
}

/**
 * What became of a restore attempt whose agent the workflow lost sight of. Waits (heartbeating) while the
 * journal says the step still runs in a live agent, or a CRIU restore of this checkpoint still runs, so the
 * answer is final: CRIU never ran, failed, or created a process, which then either runs (by identity) or not.
 * Without a 'done' record (the agent died mid-step, or CRIU was killed), CRIU's pid file names the process; it
 * counts only if it started after the step did, so a pid reused since is never taken for it.
 */
export async function inspectRestore(
  ctx: NodeContext,
  input: { checkpointId: string; attemptId: string; pid?: number; startTime?: number },
): Promise<RestoreInspection> {
  assertSafeId('attemptId', input.attemptId);
  let outcome = journalOutcome(ctx, 'restore', input.attemptId, CRIU_RESTORE_STEP);
  const dir =
    typeof outcome.data?.dir === 'string'
      ? outcome.data.dir
      : restoreLocation(ctx, assertSafeId('checkpointId', input.checkpointId), input.attemptId);
  for (;;) {
    outcome = journalOutcome(ctx, 'restore', input.attemptId, CRIU_RESTORE_STEP);
    if (outcome.state !== 'running' && criuRestoring(path.join(dir, IMAGES)).length === 0) break;
    heartbeat(outcome.state);
    await new Promise((r) => setTimeout(r, 250));
  }
  let proc: ProcessIdentity | null = null;
  if (input.pid !== undefined && input.startTime !== undefined) {
    proc = { pid: input.pid, startTime: input.startTime };
  } else if (
    outcome.state === 'done' &&
    typeof outcome.data?.pid === 'number' &&
    typeof outcome.data.startTime === 'number'
  ) {
    proc = { pid: outcome.data.pid, startTime: outcome.data.startTime };
  } else if (outcome.state === 'interrupted' || outcome.state === 'failed') {
    // Cut off (agent died) or killed (CriuInterrupted): CRIU may have resumed the process before it stopped.
    const started = [...readJournal(ctx, 'restore', input.attemptId)]
      .reverse()
      .find((e) => e.step === CRIU_RESTORE_STEP && e.state === 'started');
    const pidFile = path.join(dir, 'restored.pid');
    const pid = fs.existsSync(pidFile) ? Number(fs.readFileSync(pidFile, 'utf8').trim()) : NaN;
    const id = started && Number.isInteger(pid) && pid > 1 ? processIdentity(pid) : null;
    // Start times have a resolution of one tick (10 ms): a second of slack, never more.
    if (id && started && startedAtMs(id.startTime) >= Date.parse(started.at) - 1000) proc = id;
  }
  const running = proc !== null && isSameProcess(proc);
  let state: string | null = null;
  if (running && proc) {
    try {
      state = procStatFields(proc.pid)[0];
    } catch {
      state = null;
    }
  }
  const failure =
    outcome.state === 'failed'
      ? {
          type: String(outcome.data?.type ?? ErrorType.CriuRestoreFailed),
          message: String(outcome.data?.message ?? 'criu restore failed'),
        }
      : null;
  const found: RestoreInspection = {
    criu: outcome.state,
    failure,
    process: proc,
    running: running && state !== null,
    state,
    cuda: running && proc ? cudaTreeState(proc.pid) : 'none',
  };
  ctx.logger.warn(
    { node: ctx.node, checkpoint: input.checkpointId, attempt: input.attemptId, ...found },
    'restore attempt inspected after the agent was lost',
  );
  return found;
}
