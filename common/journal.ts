/**
 * The node's durable record of what each step really did, kept beside the data it describes. A heartbeat or
 * schedule-to-start timeout tells a workflow only that it lost sight of the agent; the journal is how it
 * finds out afterwards what happened (the step never ran, is still running, finished, or failed) instead
 * of guessing. Pure types: safe in workflow code.
 */

/** Which operation a journal belongs to: one journal per checkpoint id, one per restore attempt. */
export type JournalKind = 'checkpoint' | 'restore';

/**
 * A process named by pid and start time (clock ticks since boot, /proc/<pid>/stat field 22): a pid alone may
 * have been reused by another process after the original exited or the host rebooted.
 */
export interface ProcessIdentity {
  pid: number;
  startTime: number;
}

export interface JournalEntry {
  /** The activity that wrote it, e.g. 'criuDump', 'seal', 'cudaLock', 'criuRestore'. */
  step: string;
  /** 'started' before the side effect, then 'done' or 'failed' once it is over. */
  state: 'started' | 'done' | 'failed';
  /** Wall clock of the node, ISO 8601. */
  at: string;
  /** The agent process that wrote it: a 'started' whose writer is gone was cut off mid-step. */
  agentPid: number;
  /** Whatever the step needs to be judged or resumed afterwards (result, error type, new pid...). */
  data?: Record<string, unknown>;
}

/** The last word of the journal on one step. */
export interface StepOutcome {
  step: string;
  /**
   * never: no record at all; running: started by an agent that is still alive; interrupted: started by an
   * agent that is gone; done / failed: finished, with the step's result or error in `data`.
   */
  state: 'never' | 'running' | 'interrupted' | 'done' | 'failed';
  at: string | null;
  data?: Record<string, unknown>;
}

/** Reduces a journal to the outcome of one step (the last entry for it wins). */
export function stepOutcome(entries: JournalEntry[], step: string, agentAlive: (pid: number) => boolean): StepOutcome {
  const last = [...entries].reverse().find((e) => e.step === step);
  if (!last) return { step, state: 'never', at: null };
  if (last.state === 'started')
    return { step, state: agentAlive(last.agentPid) ? 'running' : 'interrupted', at: last.at, data: last.data };
  return { step, state: last.state, at: last.at, data: last.data };
}
