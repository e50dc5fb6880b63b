import { WithStartWorkflowOperation } from '@temporalio/client';
import type { Workflow } from '@temporalio/common';
import { CONTROL_QUEUE } from '../../common/queues';
import { PLACEMENT_WORKFLOW_ID } from '../../workflows/placement';

/**
 * The placement singleton, started if it does not run, for an update-with-start (reserve, eviction). A new
 * operation per call: the SDK uses each one once.
 */
export const placementWithStart = (): WithStartWorkflowOperation<Workflow> =>
  new WithStartWorkflowOperation('placement', {
    workflowId: PLACEMENT_WORKFLOW_ID,
    taskQueue: CONTROL_QUEUE,
    args: [{}],
    workflowIdConflictPolicy: 'USE_EXISTING',
    staticSummary: 'VRAM placement: every reservation of GPU memory, one at a time',
  });
