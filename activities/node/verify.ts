import { ApplicationFailure } from '@temporalio/activity';
import { ErrorType } from '../../common/errors';
import { InvalidInputError } from '../../common/ids';
import { describeReadiness, parseReadiness } from '../../common/readiness';
import type { NodeContext } from './context';
import { cudaTreeState } from './cuda';
import { isSameProcess, processAlive, procStatFields } from './process';
import { waitReady } from './readiness';
import { heartbeat } from './run-tool';

export interface VerifyRunningInput {
  pid: number;
  /** With it, only that very process counts (a pid reused since is "gone"). */
  startTime?: number;
  /** Validated again here: the workflow may have been started by hand. */
  readiness?: unknown;
  /** Without a probe, the process must stay running this long (catches a crash right after resuming). */
  settleMs?: number;
}

export interface VerifyRunningResult {
  state: string;
  cuda: string;
  probes: number;
  afterMs: number;
  detail: string;
}

/**
 * Why the process does not count as running, or null: it exists (by identity), its root is not stopped, traced
 * or a zombie, and its CUDA state is running (or it holds no CUDA context). Idle is fine: no CPU is needed.
 */
export function notRunning(pid: number, startTime?: number): ApplicationFailure | null {
  const exists = startTime !== undefined ? isSameProcess({ pid, startTime }) : processAlive(pid);
  if (!exists)
    return ApplicationFailure.nonRetryable(
      `no such process: pid ${pid} (restored process gone)`,
      ErrorType.NoSuchProcess,
    );
  let state: string;
  try {
    state = procStatFields(pid)[0];
  } catch {
    return ApplicationFailure.nonRetryable(
      `no such process: pid ${pid} (restored process gone)`,
      ErrorType.NoSuchProcess,
    );
  }
  if (state === 'T' || state === 't' || state === 'Z')
    return ApplicationFailure.nonRetryable(`pid ${pid} is not running: state ${state}`, ErrorType.NotRunning);
  const cuda = cudaTreeState(pid);
  if (cuda !== 'running' && cuda !== 'none')
    return ApplicationFailure.nonRetryable(`pid ${pid} is not running: CUDA state ${cuda}`, ErrorType.NotRunning);
  return null;
}

/** Running, and ready when a readiness probe is declared; heartbeats on a timer while it probes. */
export async function verifyRunning(ctx: NodeContext, input: VerifyRunningInput): Promise<VerifyRunningResult> {
  let readiness;
  try {
    readiness = input.readiness === undefined || input.readiness === null ? undefined : parseReadiness(input.readiness);
  } catch (e) {
    if (e instanceof InvalidInputError) throw ApplicationFailure.nonRetryable(e.message, ErrorType.InvalidInput);
    throw e;
  }
  const check = (): ApplicationFailure | null => notRunning(input.pid, input.startTime);
  const beat = setInterval(() => heartbeat(), 1000);
  const started = Date.now();
  try {
    let res = { probes: 0, afterMs: 0, detail: 'no readiness probe declared' };
    if (readiness) {
      res = await waitReady(readiness, { notRunning: check, env: { KYBERNATE_PID: String(input.pid) } });
      ctx.logger.info(
        { node: ctx.node, pid: input.pid, probe: describeReadiness(readiness), probes: res.probes },
        'restored workload ready',
      );
    } else {
      const first = check();
      if (first) throw first;
      await new Promise((r) => setTimeout(r, input.settleMs ?? 1000));
    }
    const last = check();
    if (last) throw last;
    return {
      state: procStatFields(input.pid)[0],
      cuda: cudaTreeState(input.pid),
      probes: res.probes,
      afterMs: Date.now() - started,
      detail: res.detail,
    };
  } finally {
    clearInterval(beat);
  }
}
