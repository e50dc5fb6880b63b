import type { WorkflowHandle } from '@temporalio/client';
import { defaultPayloadConverter } from '@temporalio/common';
import type { ActivityBytes } from '../common/checkpoint';

/**
 * The bytes a running node step reports (the upload and the fetch keep `{ bytes: { done, total } }` in their
 * heartbeat details), read from the workflow's pending activities: a status query answers only between
 * steps, and a step moving gigabytes is where a waiting operator wants to see bytes, rate and ETA.
 */
export async function pendingActivityBytes(handle: WorkflowHandle): Promise<ActivityBytes | null> {
  const d = await handle.describe();
  for (const a of d.raw.pendingActivities ?? []) {
    const payload = a.heartbeatDetails?.payloads?.[0];
    if (!payload) continue;
    let details: unknown;
    try {
      details = defaultPayloadConverter.fromPayload(payload);
    } catch {
      continue; // not ours to read (another encoding)
    }
    const b = (details as { bytes?: Partial<ActivityBytes> } | null)?.bytes;
    if (b && typeof b.done === 'number' && typeof b.total === 'number') return { done: b.done, total: b.total };
  }
  return null;
}

/** The status with the running step's bytes as its `progress`, unless the status reports progress itself. */
export function withLiveBytes<S>(status: S, live: ActivityBytes | null): S {
  if (!live || typeof status !== 'object' || status === null || 'progress' in status) return status;
  return { ...status, progress: { bytesDone: live.done, bytesTotal: live.total } };
}
