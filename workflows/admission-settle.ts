import { CancellationScope, getExternalWorkflowHandle, patched, workflowInfo } from '@temporalio/workflow';
import { ADMISSION_WORKFLOW_ID } from '../common/admission';
import { settleSignal } from './admission';

/** Guards the settle signal in job and restore: histories recorded before it replay without it. */
export const PATCH_ADMISSION_SETTLE = 'admission-settle';

/**
 * Tells admission this workflow's request left the backlog. Awaited where the workflow then ends: Temporal drops
 * a signal whose sender has closed before it was delivered. Admission missing (never started, or work started
 * before it existed) changes nothing here; admission's reconciliation catches a signal that never arrived.
 */
export async function settleAdmission(outcome: 'placed' | 'done'): Promise<void> {
  if (!patched(PATCH_ADMISSION_SETTLE)) return;
  // Non-cancellable: a cancelled restore or job still leaves the backlog.
  await CancellationScope.nonCancellable(() =>
    getExternalWorkflowHandle(ADMISSION_WORKFLOW_ID).signal(settleSignal, {
      workflowId: workflowInfo().workflowId,
      outcome,
    }),
  ).catch(() => undefined);
}
