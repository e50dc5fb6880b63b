import { type Client, WorkflowNotFoundError } from '@temporalio/client';
import type { NodeRecord } from '../../common/node';
import { nodeWorkflowId } from '../../common/queues';
import type { NodeStanding } from '../../common/standing';
import { tallyZones } from '../../common/health';
import { registeredNodes, sharedListing, ZONE_TALLY_MAX_AGE_MS } from './registry';

/**
 * The registries the zone tallies count, each as its zone and readiness. A node whose agent Left (stopped on
 * purpose) is out of the cluster, not dark: counted as Unhealthy, a shared stack's stopped nodes made a zone
 * look disrupted and held every eviction (seen in a full e2e run).
 */
export function countedNodes(recs: readonly NodeRecord[]): { node: string; zone: string | null; ready: boolean }[] {
  return recs
    .filter((rec) => rec.state === 'Ready' || rec.state === 'Unhealthy')
    .map((rec) => ({ node: rec.node, zone: rec.inventory?.zone ?? null, ready: rec.state === 'Ready' }));
}

/** A node's standing from its registry (`node/<name>`), read by a job that lost sight of its run there. */
export function createStandingActivities(client: Client) {
  const registries = sharedListing(() => registeredNodes(client), ZONE_TALLY_MAX_AGE_MS);
  return {
    /**
     * The node's registry state (Gone when no registry runs for it, read afresh) and each zone's registered
     * and Ready nodes (from a listing shared for ZONE_TALLY_MAX_AGE_MS), so the job can ask for its eviction. A
     * query failure other than "not found" throws (retried): a registry that does not answer is unknown, not gone.
     */
    async nodeStanding(input: { node: string }): Promise<NodeStanding> {
      const zones = tallyZones(countedNodes(await registries()));
      const handle = client.workflow.getHandle(nodeWorkflowId(input.node));
      let running: boolean;
      try {
        running = (await handle.describe()).status.name === 'RUNNING';
      } catch (e) {
        if (!(e instanceof WorkflowNotFoundError)) throw e;
        running = false;
      }
      if (!running) return { node: input.node, state: 'Gone', since: null, zone: null, zones };
      const rec = await handle.query<NodeRecord>('status');
      // A registry from before liveness has no state: Ready while it reports, as placeable() reads it.
      return {
        node: input.node,
        state: rec.state ?? 'Ready',
        since: rec.since ?? null,
        zone: rec.inventory?.zone ?? null,
        zones,
      };
    },
  };
}
