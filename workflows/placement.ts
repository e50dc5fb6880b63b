import {
  condition,
  continueAsNew,
  defineQuery,
  defineSignal,
  defineUpdate,
  setCurrentDetails,
  setHandler,
  workflowInfo,
} from '@temporalio/workflow';
import { STATUS_QUERY } from '../common/outcome';
import type { Candidate, Reservation } from '../common/restore';

export const PLACEMENT_WORKFLOW_ID = 'placement';
export const reserveUpdate = defineUpdate<
  Reservation | null,
  [{ reservationId: string; bytes: number; candidates: Candidate[] }]
>('reserve');
export const releaseSignal = defineSignal<[{ reservationId: string }]>('release');
export const reservationsQuery = defineQuery<Reservation[]>('reservations');
/** The reservations held, under the name every workflow answers. */
export const placementStatusQuery = defineQuery<{ reservations: Reservation[] }>(STATUS_QUERY);

/**
 * The single place VRAM is promised (`placement`). Update handlers run one at a time, so two restores
 * racing for the last free VRAM on a node cannot both get it.
 */
export async function placement(input: { reservations?: Reservation[] } = {}): Promise<void> {
  const held = new Map<string, Reservation>((input.reservations ?? []).map((r) => [r.reservationId, r]));
  /** The UI's current details: what is promised where. */
  const showHeld = (): void => {
    const byNode = new Map<string, number>();
    for (const r of held.values()) byNode.set(r.node, (byNode.get(r.node) ?? 0) + r.bytes);
    setCurrentDetails(
      held.size === 0
        ? 'no VRAM reserved'
        : `${held.size} reservation${held.size === 1 ? '' : 's'}: ${[...byNode].map(([n, b]) => `${n} ${(b / 2 ** 30).toFixed(1)} GiB`).join(', ')}`,
    );
  };
  showHeld();
  setHandler(reserveUpdate, ({ reservationId, bytes, candidates }) => {
    const existing = held.get(reservationId);
    if (existing) return existing; // a retried activity asks again
    // Per GPU where the candidate lists its GPUs: a workload needs ONE GPU with room, never the sum of several.
    // A reservation without gpuIndex (made before per-GPU placement) counts against every GPU of its node.
    const reservedOn = (node: string, gpu?: number): number =>
      [...held.values()]
        .filter((r) => r.node === node && (gpu === undefined || r.gpuIndex === undefined || r.gpuIndex === gpu))
        .reduce((s, r) => s + r.bytes, 0);
    let pick: { node: string; gpuIndex?: number } | undefined;
    for (const c of candidates) {
      const gpu = c.gpus?.find((g) => g.freeVramBytes - reservedOn(c.node, g.index) >= bytes);
      if (gpu) pick = { node: c.node, gpuIndex: gpu.index };
      else if (!c.gpus && c.freeVramBytes - reservedOn(c.node) >= bytes) pick = { node: c.node };
      if (pick) break;
    }
    if (!pick) return null;
    const r: Reservation = {
      reservationId,
      node: pick.node,
      bytes,
      ...(pick.gpuIndex !== undefined ? { gpuIndex: pick.gpuIndex } : {}),
    };
    held.set(reservationId, r);
    showHeld();
    return r;
  });
  setHandler(releaseSignal, ({ reservationId }) => {
    held.delete(reservationId);
    showHeld();
  });
  setHandler(reservationsQuery, () => [...held.values()]);
  setHandler(placementStatusQuery, () => ({ reservations: [...held.values()] }));
  await condition(() => workflowInfo().continueAsNewSuggested);
  await continueAsNew<typeof placement>({ reservations: [...held.values()] });
}
