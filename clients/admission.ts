import {
  ServiceError,
  WithStartWorkflowOperation,
  WorkflowNotFoundError,
  WorkflowUpdateFailedError,
  WorkflowUpdateRPCTimeoutOrCancelledError,
} from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import {
  ADMISSION_REFUSED,
  ADMISSION_SUMMARY,
  ADMISSION_WORKFLOW_ID,
  type AdmissionConfig,
  admissionConfigProblem,
  type AdmissionKind,
  type AdmissionRefusal,
  type AdmissionStatus,
  DEFAULT_PRIORITY,
  priorityProblem,
} from '../common/admission';
import { InvalidInputError } from '../common/ids';
import { CONTROL_QUEUE } from '../common/queues';
// Started by reference (see api.ts): the function's name is the workflow type.
import { admission, admitUpdate, configureUpdate } from '../workflows/admission';
import type { KybernateClient } from './api';
import { AdmissionRefusedError, UnavailableError } from './errors';
import { QUERY_TIMEOUT_MS } from './timeouts';

/** A request's priority, checked before anything is touched: 0 (critical) to 10, default 5. */
export function requestPriority(p: number | undefined, field = 'priority'): number {
  if (p === undefined) return DEFAULT_PRIORITY;
  const problem = priorityProblem(p);
  if (problem) throw new InvalidInputError(field, problem);
  return p;
}

/** How admission answered: admitted, or (priority 0 only) let through unasked because admission did not answer. */
export interface Admission {
  admitted: boolean;
  backlog: number | null;
  mode: AdmissionStatus['mode'] | null;
  /** Set when priority-0 work went ahead without an answer (the control worker away): it is never refused. */
  unanswered: string | null;
}

const startAdmission = (): WithStartWorkflowOperation<typeof admission> =>
  new WithStartWorkflowOperation(admission, {
    workflowId: ADMISSION_WORKFLOW_ID,
    taskQueue: CONTROL_QUEUE,
    args: [{}],
    workflowIdConflictPolicy: 'USE_EXISTING',
    staticSummary: ADMISSION_SUMMARY,
  });

/** A refusal from the admit update, as its typed error; anything else unchanged. */
function refusedOrSelf(e: unknown): unknown {
  if (e instanceof WorkflowUpdateFailedError && e.cause instanceof ApplicationFailure) {
    if (e.cause.type === ADMISSION_REFUSED)
      return new AdmissionRefusedError(e.cause.message, e.cause.details?.[0] as AdmissionRefusal);
    if (e.cause.type === 'InvalidInput') return new InvalidInputError('admission', e.cause.message);
  }
  return e;
}

/**
 * Asks admission before a workflow is started (starting admission if it is not running). Refused: throws
 * AdmissionRefusedError (nothing started). Admission not answering within QUERY_TIMEOUT_MS (the control worker
 * away): UnavailableError, except for priority 0, which is never refused and goes ahead unrecorded (its
 * workflow runs once the worker is back anyway).
 */
export async function admit(
  k: KybernateClient,
  req: { workflowId: string; kind: AdmissionKind; priority: number },
): Promise<Admission> {
  try {
    const r = await k.client.withDeadline(Date.now() + QUERY_TIMEOUT_MS, () =>
      k.client.workflow.executeUpdateWithStart(admitUpdate, { args: [req], startWorkflowOperation: startAdmission() }),
    );
    return { admitted: true, backlog: r.backlog, mode: r.mode, unanswered: null };
  } catch (e) {
    const refused = refusedOrSelf(e);
    if (refused !== e) throw refused;
    if (!(e instanceof ServiceError || e instanceof WorkflowUpdateRPCTimeoutOrCancelledError)) throw e;
    const why = `admission did not answer within ${QUERY_TIMEOUT_MS / 1000}s (is 'kybernate worker' running?)`;
    if (req.priority === 0) return { admitted: false, backlog: null, mode: null, unanswered: why };
    throw new UnavailableError('control worker', `task queue ${CONTROL_QUEUE}`, why);
  }
}

/** Admission's state, or null when it has never run (nothing was ever asked). */
export async function admissionStatus(k: KybernateClient): Promise<AdmissionStatus | null> {
  try {
    return await k.queryStatus<AdmissionStatus>(ADMISSION_WORKFLOW_ID);
  } catch (e) {
    if (e instanceof WorkflowNotFoundError) return null;
    throw e;
  }
}

/** Changes admission's settings (each field checked first, by name); its status after. */
export async function configureAdmission(
  k: KybernateClient,
  patch: Partial<AdmissionConfig>,
): Promise<AdmissionStatus> {
  const bad = admissionConfigProblem(patch);
  if (bad) {
    const [field, ...rest] = bad.split(': ');
    throw new InvalidInputError(field, rest.join(': '));
  }
  try {
    return await k.client.withDeadline(Date.now() + QUERY_TIMEOUT_MS, () =>
      k.client.workflow.executeUpdateWithStart(configureUpdate, {
        args: [patch],
        startWorkflowOperation: startAdmission(),
      }),
    );
  } catch (e) {
    const refused = refusedOrSelf(e);
    if (refused !== e) throw refused;
    if (e instanceof ServiceError || e instanceof WorkflowUpdateRPCTimeoutOrCancelledError)
      throw new UnavailableError('control worker', `task queue ${CONTROL_QUEUE}`, 'admission did not answer');
    throw e;
  }
}

/** `kybernate status`'s admission line(s): mode and why, backlog against its limit, latency against its mark. */
export function formatAdmission(s: AdmissionStatus | null): string {
  if (!s) return 'admission: Normal (not started yet: nothing has asked it)';
  const c = s.config;
  return [
    `admission: ${s.mode}${s.why ? ` — ${s.why}` : ''} (since ${s.since})`,
    `  backlog ${s.backlog} of limit ${c.backlogLimit} (priority 10 refused at the limit; Degraded above ${c.degradedBacklog})`,
    `  latency ${s.latencyMs === null ? '-' : `${s.latencyMs} ms`} (Degraded above ${c.degradedLatencyMs} ms; last probe ${s.lastProbeAt ?? 'none yet'})`,
  ].join('\n');
}
