import {
  ServiceError,
  WorkflowFailedError,
  WorkflowNotFoundError,
  WorkflowUpdateFailedError,
} from '@temporalio/client';
import {
  ActivityFailure,
  ApplicationFailure,
  CancelledFailure,
  ChildWorkflowFailure,
  ServerFailure,
  TerminatedFailure,
  TimeoutFailure,
} from '@temporalio/common';
import { CommanderError } from 'commander';
import type { AdmissionRefusal } from '../common/admission';
import { InvalidInputError, printable } from '../common/ids';

/** Exit codes of the CLI (documented in README's CLI section). */
export const EXIT_OK = 0;
/** The operation ran and failed (a workflow failed, a checkpoint ended Failed, a component is down). */
export const EXIT_FAILURE = 1;
/** The command line was wrong (unknown option, missing argument, a value out of bounds): nothing was started. */
export const EXIT_USAGE = 2;

/**
 * The stable codes of every failure the client library and the CLI report (`--json` prints them as
 * {"error":{"code","message"}}); README's client section lists them. Never renamed: scripts branch on them.
 */
export type ErrorCode =
  /** A value was wrong (an id, a size, a duration, an unknown job or node): nothing was started. */
  | 'INVALID_INPUT'
  /** The command line itself was wrong (commander: unknown option, missing argument). */
  | 'USAGE'
  /** A component (Temporal, the control worker, S3) did not answer in time. */
  | 'UNAVAILABLE'
  /** A job of that name is open already. */
  | 'JOB_EXISTS'
  /** A preemption schedule of that name exists already. */
  | 'SCHEDULE_EXISTS'
  /** The workflow failed without a status to return (its cause chain is the message). */
  | 'WORKFLOW_FAILED'
  /** Temporal has no such workflow. */
  | 'NOT_FOUND'
  /** Temporal refused or failed the call (a gRPC error). */
  | 'TEMPORAL'
  /** Admission refused the request (backlog past its limit, or Degraded): nothing was started; retry later. */
  | 'ADMISSION_REFUSED'
  /** Anything else. */
  | 'INTERNAL';

/** A failure of the client library: one subclass per kind, each with its stable code. */
export abstract class KybernateError extends Error {
  abstract readonly code: ErrorCode;
}

/**
 * Admission refused the request: the message says why and when to retry; `refusal` has the same as fields
 * (reason 'backlog' or 'degraded', retryAfterS). Nothing was started.
 */
export class AdmissionRefusedError extends KybernateError {
  readonly code = 'ADMISSION_REFUSED' as const;
  constructor(
    message: string,
    readonly refusal: AdmissionRefusal,
  ) {
    super(message);
    this.name = 'AdmissionRefusedError';
  }
}

/** A component the command needs did not answer in time: says which, and where. */
export class UnavailableError extends KybernateError {
  readonly code = 'UNAVAILABLE' as const;
  constructor(
    readonly component: string,
    where: string,
    detail: string,
  ) {
    super(`${component} is not answering (${where}): ${detail}`);
    this.name = 'UnavailableError';
  }
}

/**
 * A workflow failed and carried no status (see resultOf). Still a WorkflowFailedError with the same cause and
 * retry state, so callers that branch on Temporal's class keep working; its message is the whole cause chain.
 */
export class WorkflowFailedWithoutStatusError extends WorkflowFailedError {
  readonly code = 'WORKFLOW_FAILED' as const;
  constructor(
    readonly workflowId: string,
    failed: WorkflowFailedError,
  ) {
    super(describeFailureChain(failed), failed.cause, failed.retryState);
    // Temporal's error classes make `name` read-only on their prototype: defined on the instance instead.
    Object.defineProperty(this, 'name', { value: 'WorkflowFailedWithoutStatusError' });
  }
}

/** One link of a Temporal failure chain, as an operator reads it. */
function link(e: Error): string {
  if (e instanceof ActivityFailure) return `activity ${e.activityType} failed`;
  if (e instanceof ChildWorkflowFailure) return `child workflow ${e.execution?.workflowId ?? e.workflowType} failed`;
  if (e instanceof ApplicationFailure) return `${e.type ?? 'Error'}: ${e.message}`;
  if (e instanceof TimeoutFailure) return `${e.timeoutType} timeout`;
  if (e instanceof TerminatedFailure)
    return `terminated${e.message && e.message !== 'Terminated' ? `: ${e.message}` : ''}`;
  if (e instanceof CancelledFailure)
    return `cancelled${e.message && e.message !== 'Cancelled' ? `: ${e.message}` : ''}`;
  if (e instanceof ServerFailure) return `Temporal server: ${e.message}`;
  return e.message;
}

/**
 * The whole cause chain of a failure on one line: `workflow failed: activity checkpointInfo failed:
 * CheckpointNotFound: checkpoint 'x' is Failed, not restorable`, never just "Workflow execution failed".
 */
export function describeFailureChain(e: unknown): string {
  const parts: string[] = [];
  let cur: unknown = e;
  for (let depth = 0; cur instanceof Error && depth < 10; depth++) {
    parts.push(
      cur instanceof WorkflowFailedError
        ? 'workflow failed'
        : cur instanceof WorkflowUpdateFailedError
          ? 'update failed'
          : link(cur),
    );
    cur = cur.cause;
  }
  if (parts.length === 0) parts.push(String(e));
  return parts.join(': ');
}

/** A gRPC error from Temporal, with its status name when it has one (UNAVAILABLE, DEADLINE_EXCEEDED...). */
function serviceDetail(e: ServiceError): string {
  const c = e.cause as { code?: number; details?: string; message?: string } | undefined;
  const names: Record<number, string> = { 4: 'DEADLINE_EXCEEDED', 9: 'FAILED_PRECONDITION', 14: 'UNAVAILABLE' };
  const code = c?.code !== undefined ? (names[c.code] ?? `gRPC status ${c.code}`) : null;
  return `${e.message}${code ? ` (${code}${c?.details ? `: ${c.details}` : ''})` : c?.message ? ` (${c.message})` : ''}`;
}

/** What the CLI prints after `error: ` (printable: control characters escaped), its stable code, and the exit code. */
export function describeError(e: unknown): { code: ErrorCode; message: string; exitCode: number } {
  if (e instanceof CommanderError)
    return {
      code: 'USAGE',
      message: e.message.replace(/^error: /, ''),
      exitCode: e.exitCode === 0 ? EXIT_OK : EXIT_USAGE,
    };
  if (e instanceof InvalidInputError) return { code: 'INVALID_INPUT', message: e.message, exitCode: EXIT_USAGE };
  if (e instanceof KybernateError) return { code: e.code, message: printable(e.message), exitCode: EXIT_FAILURE };
  if (
    e instanceof WorkflowFailedError ||
    e instanceof WorkflowUpdateFailedError ||
    e instanceof ChildWorkflowFailure ||
    e instanceof ActivityFailure
  ) {
    return { code: 'WORKFLOW_FAILED', message: printable(describeFailureChain(e)), exitCode: EXIT_FAILURE };
  }
  if (e instanceof WorkflowNotFoundError)
    return { code: 'NOT_FOUND', message: printable(e.message), exitCode: EXIT_FAILURE };
  if (e instanceof ServiceError)
    return { code: 'TEMPORAL', message: printable(`Temporal: ${serviceDetail(e)}`), exitCode: EXIT_FAILURE };
  return { code: 'INTERNAL', message: printable(e instanceof Error ? e.message : String(e)), exitCode: EXIT_FAILURE };
}

/**
 * Commander's error output with control characters escaped: its messages quote the offending argument. The
 * line break it puts before a "(Did you mean ...?)" suggestion and the final one are its own and are kept.
 */
export function printableCommanderOutput(text: string): string {
  const body = text.endsWith('\n') ? text.slice(0, -1) : text;
  return `${printable(body).replace(/\\n\(Did you mean /g, '\n(Did you mean ')}${body === text ? '' : '\n'}`;
}
