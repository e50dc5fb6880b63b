import type { Client } from '@temporalio/client';
import type { NodeInventory } from '../activities/node/inventory';
import type { NodeHeartbeat } from '../common/node';
import { CONTROL_QUEUE, nodeWorkflowId } from '../common/queues';

/**
 * How an agent speaks to its node's registry workflow (`node/<name>`): each message starts the registry if it
 * is not running (a new node, or one whose workflow was lost), so an agent never needs a separate "register".
 */
const registry = (node: string, timeoutMs: number) => ({
  workflowId: nodeWorkflowId(node),
  taskQueue: CONTROL_QUEUE,
  args: [{ node, timeoutMs }] as [{ node: string; timeoutMs: number }],
});

/** A sign of life every few seconds: keeps the node Ready, and registers a new agent run. */
export async function registryHeartbeat(
  client: Client,
  node: string,
  beat: NodeHeartbeat & { timeoutMs: number },
): Promise<void> {
  await client.workflow.signalWithStart('nodeRegistry', {
    ...registry(node, beat.timeoutMs),
    signal: 'heartbeat',
    signalArgs: [beat],
  });
}

/** The node's inventory (GPUs, free VRAM, zone), on its own slower timer. */
export async function registryReport(
  client: Client,
  node: string,
  timeoutMs: number,
  inv: NodeInventory,
): Promise<void> {
  await client.workflow.signalWithStart('nodeRegistry', {
    ...registry(node, timeoutMs),
    signal: 'report',
    signalArgs: [inv],
  });
}
