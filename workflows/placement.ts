import { condition, continueAsNew, defineQuery, defineSignal, defineUpdate, setHandler, workflowInfo } from '@temporalio/workflow';
import type { Candidate, Reservation } from '../common/restore';

export const PLACEMENT_WORKFLOW_ID = 'placement';
export const reserveUpdate = defineUpdate<Reservation | null, [{ reservationId: string; bytes: number; candidates: Candidate[] }]>('reserve');
export const releaseSignal = defineSignal<[{ reservationId: string }]>('release');
export const reservationsQuery = defineQuery<Reservation[]>('reservations');

/**
 * The single place VRAM is promised (`placement`). Update handlers run one at a time, so two restores
 * racing for the last free VRAM on a node cannot both get it.
 */
export async function placement(input: { reservations?: Reservation[] } = {}): Promise<void> {
  const held = new Map<string, Reservation>((input.reservations ?? []).map((r) => [r.reservationId, r]));
  setHandler(reserveUpdate, ({ reservationId, bytes, candidates }) => {
    const existing = held.get(reservationId);
    if (existing) return existing; // a retried activity asks again
    const reservedOn = (node: string): number => [...held.values()].filter((r) => r.node === node).reduce((s, r) => s + r.bytes, 0);
    const pick = candidates.find((c) => c.freeVramBytes - reservedOn(c.node) >= bytes);
    if (!pick) return null;
    const r: Reservation = { reservationId, node: pick.node, bytes };
    held.set(reservationId, r);
    return r;
  });
  setHandler(releaseSignal, ({ reservationId }) => void held.delete(reservationId));
  setHandler(reservationsQuery, () => [...held.values()]);
  await condition(() => workflowInfo().continueAsNewSuggested);
  await continueAsNew<typeof placement>({ reservations: [...held.values()] });
}
