import { CancellationScope, getExternalWorkflowHandle, patched, workflowInfo } from '@temporalio/workflow';
import { ADMISSION_WORKFLOW_ID } from '../common/admission';
import { settleSignal } from './admission';

/** Guards the settle signal in job and restore: histories recorded before it replay without it. */
export const PATCH_ADMISSION_SETTLE = 'admission-settle';

/**
 * Tells admission this workflow's request left the backlog. Not awaited: the signal is a command sent with this
 * workflow task, and admission missing (never started, or work started before it existed) changes nothing here;
 * admission's reconciliation catches a signal that never arrived.
 */
export function settleAdmission(outcome: 'placed' | 'done'): void {
  if (!patched(PATCH_ADMISSION_SETTLE)) return;
  // Non-cancellable: a cancelled restore or job still leaves the backlog.
  void CancellationScope.nonCancellable(() =>
    getExternalWorkflowHandle(ADMISSION_WORKFLOW_ID).signal(settleSignal, {
      workflowId: workflowInfo().workflowId,
      outcome,
    }),
  ).catch(() => undefined);
}
