import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';

export interface StartRetry {
  /** First wait after a failure. */
  initialMs: number;
  /** The waits double up to this. */
  capMs: number;
  /** How a wait is spent; tests pass their own. */
  wait?: (ms: number) => Promise<unknown>;
  /** [0, 1): spreads the waits of many processes that failed together (a storm of agents, one Temporal outage). */
  random?: () => number;
}

/**
 * Agents and the control worker: from 1 s, doubling to 10 s, spread over the upper half of each wait. The cap
 * bounds how long a process waits after Temporal is back; a try is one connection (the registration signal comes
 * only once connected), cheap for Temporal even from a thousand agents every 5-10 s.
 */
export const START_RETRY: StartRetry = { initialMs: 1000, capMs: 10000 };

/** The wait after the n-th failure in a row (n from 0): between half and all of min(cap, initial * 2^n). */
export function startRetryDelayMs(n: number, r: StartRetry, random: number): number {
  const full = Math.min(r.capMs, r.initialMs * 2 ** Math.min(n, 30));
  return Math.round(full / 2 + (full / 2) * random);
}

/**
 * A start-up step that needs Temporal (connect, the first registration), tried until it succeeds. A process
 * started while Temporal is away (an outage, a node booting before the control plane) waits for it instead of
 * exiting: an outage costs time, and the process is there, without a supervisor's restart, once Temporal answers.
 * Each failure is logged with what failed and when the next try is; SIGTERM still stops the process (no handler
 * is installed before the start completes).
 */
export async function untilStarted<T>(
  what: string,
  step: () => Promise<T>,
  logger: Logger,
  retry: StartRetry = START_RETRY,
): Promise<T> {
  const wait = retry.wait ?? sleep;
  const random = retry.random ?? Math.random;
  for (let failures = 0; ; failures++) {
    try {
      const value = await step();
      if (failures > 0) logger.info({ step: what, failures }, `${what}: done after ${failures} failed tries`);
      return value;
    } catch (e) {
      const retryInMs = startRetryDelayMs(failures, retry, random());
      logger.warn({ step: what, err: (e as Error).message, failures: failures + 1, retryInMs }, `${what} failed`);
      await wait(retryInMs);
    }
  }
}
