import type { Client } from '@temporalio/client';
import { promotionWorkflowId } from '../../common/queues';
import { CONTROL_QUEUE } from '../../common/queues';

/** Activities that run on the control queue: anything that needs a Temporal client. */
export function createControlActivities(client: Client) {
  return {
    /** Adds a checkpoint to its node's promotion loop, starting the loop if none runs. */
    async enqueuePromotion(input: { node: string; checkpointId: string }): Promise<void> {
      await client.workflow.signalWithStart('promotion', {
        workflowId: promotionWorkflowId(input.node),
        taskQueue: CONTROL_QUEUE,
        args: [{ node: input.node }],
        signal: 'enqueue',
        signalArgs: [{ checkpointId: input.checkpointId }],
      });
    },
  };
}

export type ControlActivities = ReturnType<typeof createControlActivities>;
