import type { Client } from '@temporalio/client';
import type { NodeRecord } from '../../common/node';

/** Registry queries in flight at once while listing: hides the round trips without flooding the query handling. */
const REGISTRY_QUERY_CONCURRENCY = 16;

/**
 * How old a shared listing of the registries may be for the zone tallies (nodeStanding). A job whose node went
 * dark asks every 10 s; each asking for its own listing would be jobs × nodes queries (a dark zone of a
 * thousand jobs over a thousand nodes: 100 000 queries a second). Tallies a few seconds old move the eviction
 * rates a few seconds late, nothing more.
 */
export const ZONE_TALLY_MAX_AGE_MS = 5000;

/**
 * Every running node registry's record (`node/<name>`). One that does not answer its query (closing, or its
 * task stuck) is left out: callers use the list for placement and eviction budgets, where a node that cannot
 * say it is Ready counts as not Ready. `concurrency`: queries in flight at once (the bench compares 1).
 */
export async function registeredNodes(client: Client, concurrency = REGISTRY_QUERY_CONCURRENCY): Promise<NodeRecord[]> {
  const ids: string[] = [];
  for await (const wf of client.workflow.list({
    query: `WorkflowType = 'nodeRegistry' AND ExecutionStatus = 'Running'`,
  })) {
    ids.push(wf.workflowId);
  }
  const recs: (NodeRecord | null)[] = new Array<NodeRecord | null>(ids.length).fill(null);
  let next = 0;
  const lane = async (): Promise<void> => {
    for (let i = next++; i < ids.length; i = next++) {
      recs[i] = await client.workflow
        .getHandle(ids[i])
        .query<NodeRecord>('status')
        .catch(() => null);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, ids.length) }, lane));
  return recs.filter((r): r is NodeRecord => r !== null);
}

/**
 * One listing shared by its callers: those that call while it runs wait for it, those within maxAgeMs of its
 * end take its result; a failed listing is not kept (the next caller lists again).
 */
export function sharedListing<T>(list: () => Promise<T>, maxAgeMs: number, now = Date.now): () => Promise<T> {
  let running: Promise<T> | null = null;
  let done: { at: number; value: T } | null = null;
  return () => {
    if (done && now() - done.at <= maxAgeMs) return Promise.resolve(done.value);
    running ??= list()
      .then((value) => {
        done = { at: now(), value };
        return value;
      })
      .finally(() => {
        running = null;
      });
    return running;
  };
}
