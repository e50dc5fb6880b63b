import { ActivityFailure, ApplicationFailure, TimeoutFailure } from '@temporalio/workflow';

/** A node activity that timed out (heartbeat, start-to-close): the agent died or hung mid-step. */
export function agentLost(err: unknown): boolean {
  return (
    err instanceof ActivityFailure &&
    err.cause instanceof TimeoutFailure &&
    err.cause.timeoutType !== 'SCHEDULE_TO_START'
  );
}

/** Nobody polled the node's queue in time: the step never started. */
export function agentUnreachable(err: unknown): boolean {
  return (
    err instanceof ActivityFailure &&
    err.cause instanceof TimeoutFailure &&
    err.cause.timeoutType === 'SCHEDULE_TO_START'
  );
}

export function failureType(err: unknown): string | null {
  const cause = err instanceof ActivityFailure ? err.cause : err;
  return cause instanceof ApplicationFailure ? (cause.type ?? null) : null;
}

export function describeFailure(err: unknown): string {
  if (err instanceof ActivityFailure) {
    const c = err.cause;
    if (c instanceof TimeoutFailure) return `${err.activityType}: ${c.timeoutType} timeout`;
    if (c instanceof ApplicationFailure) return `${err.activityType}: ${c.type ?? 'Error'}: ${c.message}`;
    return `${err.activityType}: ${c?.message ?? err.message}`;
  }
  return err instanceof Error ? err.message : String(err);
}
