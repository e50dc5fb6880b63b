import { type Client, WorkflowNotFoundError } from '@temporalio/client';
import type { NodeRecord } from '../../common/node';
import { nodeWorkflowId } from '../../common/queues';
import type { NodeStanding } from '../../common/standing';
import { registeredNodes } from './registry';

/** A node's standing from its registry (`node/<name>`), read by a job that lost sight of its run there. */
export function createStandingActivities(client: Client) {
  return {
    /**
     * The node's registry state (Gone when no registry runs for it) and every registered node's readiness and
     * zone, so the job can ask evictionBudget. A query failure other than "not found" throws (retried): a
     * registry that does not answer is unknown, not gone.
     */
    async nodeStanding(input: { node: string }): Promise<NodeStanding> {
      // A node whose agent Left (stopped on purpose) is out of the cluster, not dark: counted as Unhealthy, a
      // shared stack's stopped nodes made a zone look disrupted and held every eviction (seen in a full e2e run).
      const nodes: NodeStanding['nodes'] = (await registeredNodes(client))
        .filter((rec) => rec.state === 'Ready' || rec.state === 'Unhealthy')
        .map((rec) => ({ node: rec.node, zone: rec.inventory?.zone ?? null, ready: rec.state === 'Ready' }));
      const handle = client.workflow.getHandle(nodeWorkflowId(input.node));
      let running: boolean;
      try {
        running = (await handle.describe()).status.name === 'RUNNING';
      } catch (e) {
        if (!(e instanceof WorkflowNotFoundError)) throw e;
        running = false;
      }
      if (!running) return { node: input.node, state: 'Gone', since: null, zone: null, nodes };
      const rec = await handle.query<NodeRecord>('status');
      // A registry from before liveness has no state: Ready while it reports, as placeable() reads it.
      return {
        node: input.node,
        state: rec.state ?? 'Ready',
        since: rec.since ?? null,
        zone: rec.inventory?.zone ?? null,
        nodes,
      };
    },
  };
}
