import type { Client } from '@temporalio/client';
import type { NodeRecord } from '../common/node';

/**
 * The latest sign of life of a watched node. Its registry records registrations and reports only (a report goes
 * at least every few minutes); the agent's heartbeats of the `nodeWatch` activity reach the server, not the
 * workflow. The server keeps the last one on the pending activity: read there, a Ready node shows seconds, not
 * minutes. A failed look-up keeps the registry's time (it is what the registry knows, only older).
 */
export async function withWatchHeartbeat(client: Client, workflowId: string, rec: NodeRecord): Promise<NodeRecord> {
  if (rec.liveness !== 'watch') return rec;
  try {
    const d = await client.workflow.getHandle(workflowId).describe();
    const beats = (d.raw.pendingActivities ?? [])
      .filter((a) => a.activityType?.name === 'nodeWatch' && a.lastHeartbeatTime?.seconds != null)
      .map((a) => Number(a.lastHeartbeatTime!.seconds) * 1000 + Math.floor((a.lastHeartbeatTime!.nanos ?? 0) / 1e6));
    const latest = Math.max(rec.lastSeen ? Date.parse(rec.lastSeen) : 0, ...beats);
    return latest > 0 ? { ...rec, lastSeen: new Date(latest).toISOString() } : rec;
  } catch {
    return rec;
  }
}
