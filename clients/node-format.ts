import type { NodeRecord } from '../common/node';
import { formatBytes } from './bytes';
import { formatAge, table } from './job-format';

/**
 * `kybernate nodes` as text: one row per node. STATE '-' is a registry from before liveness, Quarantined a Ready
 * node its health score keeps from placements; SCORE '-' when not known; FREE VRAM the largest free on one GPU
 * (what a placement can use), else the node's.
 */
export function nodesTable(records: NodeRecord[], nowMs: number): string {
  const rows = records.map((r) => {
    const inv = r.inventory;
    const gpus = inv?.gpus ?? [];
    const free = gpus.length > 0 ? Math.max(...gpus.map((g) => g.freeVramBytes)) : inv?.freeVramBytes;
    return [
      r.node,
      // Ready but Quarantined takes no placements either: the operator sees that first.
      r.quarantined && r.state === 'Ready' ? 'Quarantined' : (r.state ?? '-'),
      typeof r.score === 'number' ? r.score.toFixed(2) : '-',
      inv?.zone ?? '-',
      inv ? String(gpus.length) : '-',
      free === undefined ? '-' : `${formatBytes(free)}${inv?.vramSource === 'declared' ? ' (declared)' : ''}`,
      r.lastSeen ? `${formatAge(Math.max(0, nowMs - Date.parse(r.lastSeen)))} ago` : 'never',
    ];
  });
  return table(['NAME', 'STATE', 'SCORE', 'ZONE', 'GPUS', 'FREE VRAM', 'LAST SEEN'], rows);
}
