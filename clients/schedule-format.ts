import { printable } from '../common/ids';
import type { SweepInput, SweepStatus } from '../common/sweep';
import type { PreemptionScheduleInfo } from './schedules';

function sweepWords(s: SweepInput | null): string {
  if (!s) return '-';
  return [
    s.belowPriority !== undefined ? `below priority ${s.belowPriority}` : 'any non-critical',
    s.zone ? `zone ${s.zone}` : null,
    `max ${s.max}`,
  ]
    .filter(Boolean)
    .join(', ');
}

/** `preempt schedule list`: NAME CRON SWEEP STATE NEXT RUN. */
export function schedulesTable(rows: PreemptionScheduleInfo[]): string {
  const lines = [['NAME', 'CRON', 'SWEEP', 'STATE', 'NEXT RUN']];
  for (const r of rows)
    lines.push(
      // Each cell made printable on its own: escaping the joined table would print its line breaks as '\n'.
      [r.name, r.cron ?? '-', sweepWords(r.sweep), r.paused ? 'Paused' : 'Active', r.nextRunAt[0] ?? '-'].map(
        printable,
      ),
    );
  const widths = lines[0].map((_, i) => Math.max(...lines.map((l) => l[i].length)));
  return lines
    .map((l) =>
      l
        .map((c, i) => c.padEnd(widths[i]))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

/** A sweep's record: what it chose, why, and what became of each victim. */
export function sweepText(s: SweepStatus): string {
  const out = [`  sweep ${s.phase} (started ${s.startedAt}): ${s.summary ?? 'under way'}`];
  for (const v of s.victims)
    out.push(
      `    ${v.job.jobId} on ${v.job.node}: ${v.outcome ?? 'preempting'}${v.checkpointId ? ` (checkpoint ${v.checkpointId})` : ''} — ${v.why}${v.message ? `; ${v.message}` : ''}`,
    );
  for (const k of s.skipped) out.push(`    left alone ${k.jobId}: ${k.message}`);
  return out.map(printable).join('\n');
}

/** `preempt schedule describe` (and create, pause, unpause). */
export function scheduleText(r: PreemptionScheduleInfo): string {
  const out = [
    `${r.name}: ${r.paused ? 'Paused' : 'Active'}${r.note ? ` (${r.note})` : ''}`,
    `  cron ${r.cron ?? '-'}; sweep ${sweepWords(r.sweep)}; overlap ${r.overlap ?? '-'}`,
    `  next run ${r.nextRunAt[0] ?? '-'}${r.actionsTaken !== undefined ? `; sweeps started ${r.actionsTaken}, skipped for overlap ${r.skippedOverlap ?? 0}` : ''}`,
  ];
  if (r.running?.length) out.push(`  running: ${r.running.join(', ')}`);
  for (const a of r.recent) out.push(`  started ${a.workflowId} at ${a.takenAt}`);
  return [...out.map(printable), ...(r.lastSweep ? [sweepText(r.lastSweep)] : [])].join('\n');
}
