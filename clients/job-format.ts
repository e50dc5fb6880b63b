import { printable } from '../common/ids';
import type { JobSpec, JobStatus, RunRecord } from '../common/job';
import { formatBytes } from './bytes';
import type { JobListEntry } from './jobs';

/**
 * A duration as `kubectl get` shows an age: 45s, 3m, 2h, 4d, 2y (the largest unit, rounded down). Negative
 * durations (clock skew) show 0s.
 */
export function formatAge(ms: number): string {
  const s = Math.floor(Math.max(0, ms) / 1000);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h}h`;
  const d = Math.floor(h / 24);
  if (d < 365) return `${d}d`;
  return `${Math.floor(d / 365)}y`;
}

/** A spec's duration as written: 2h, 90s, 1500ms. */
export function formatMs(ms: number): string {
  for (const [unit, n] of [
    ['d', 86_400_000],
    ['h', 3_600_000],
    ['m', 60_000],
    ['s', 1000],
  ] as const) {
    if (ms >= n && ms % n === 0) return `${ms / n}${unit}`;
  }
  return `${ms}ms`;
}

/** Columns padded to their widest cell, three spaces apart, like kubectl. Every cell is made printable. */
export function table(header: string[], rows: string[][]): string {
  const cells = [header, ...rows].map((r) => r.map((c) => printable(c)));
  const widths = header.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  return cells.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join('   ')).join('\n');
}

/** `kybernate jobs`: NAME STATUS RESTARTS NODE AGE NEXT-RETRY. */
export function jobsTable(entries: JobListEntry[], now: number): string {
  const rows = entries.map((e) => {
    const s = e.status;
    if (!s)
      return [
        e.jobId,
        `${e.phase ?? 'Unknown'}?`,
        '-',
        '-',
        formatAge(now - e.startedAt.getTime()),
        `(${e.workflowStatus}: ${e.problem ?? 'no status'})`,
      ];
    const next = s.nextRetryAt ? formatAge(Date.parse(s.nextRetryAt) - now) : '-';
    return [
      s.jobId,
      s.state,
      String(s.restarts),
      s.node ?? '<none>',
      formatAge(now - Date.parse(s.createdAt)),
      s.nextRetryAt ? `in ${next}` : '-',
    ];
  });
  return table(['NAME', 'STATUS', 'RESTARTS', 'NODE', 'AGE', 'NEXT-RETRY'], rows);
}

/** The spec on one line: what was asked of the job. */
export function specSummary(spec: JobSpec): string {
  const parts: string[] = [];
  parts.push(spec.node ? `node ${spec.node}` : 'placed by VRAM');
  parts.push(`vram ${formatBytes(spec.vramBytes)}`);
  if (spec.limits.cpu !== undefined) parts.push(`cpu ${spec.limits.cpu}`);
  if (spec.limits.memoryBytes !== undefined) parts.push(`memory ${formatBytes(spec.limits.memoryBytes)}`);
  if (spec.limits.pids !== undefined) parts.push(`pids ${spec.limits.pids}`);
  if (spec.timeoutMs !== undefined) parts.push(`timeout ${formatMs(spec.timeoutMs)}`);
  parts.push(
    `priority ${spec.priority}`,
    `tier ${spec.tier}`,
    `restart ${spec.restartPolicy} (at most ${spec.maxRestarts})`,
  );
  parts.push(
    `backoff ${formatMs(spec.backoff.initialMs)} doubling to ${formatMs(spec.backoff.capMs)}, reset after ${formatMs(spec.backoff.resetAfterMs)}`,
  );
  if (spec.checkpointEveryMs !== undefined)
    parts.push(
      `checkpoint every ${formatMs(spec.checkpointEveryMs)}${spec.keep !== undefined ? ` keeping ${spec.keep}` : ''}`,
    );
  if (spec.user) parts.push(`user ${spec.user.uid}${spec.user.gid !== undefined ? `:${spec.user.gid}` : ''}`);
  return parts.join(', ');
}

const exitOf = (r: RunRecord): string => (r.signal ? r.signal : r.exitCode !== null ? String(r.exitCode) : '-');
const when = (iso: string | null, now: number): string =>
  iso ? `${iso} (${formatAge(now - Date.parse(iso))} ago)` : '-';

/** `kybernate describe job <job>`: spec, state and reason, every run, every event, its checkpoints. */
export function describeJob(s: JobStatus, now: number): string {
  const field = (k: string, v: string): string => `${`${k}:`.padEnd(22)}${printable(v)}`;
  const out = [
    field('Name', s.jobId),
    field('State', s.state),
    field('Reason', s.reason ?? '-'),
    field('Node', s.node ?? '<none>'),
    field('Created', when(s.createdAt, now)),
    field('Restarts', `${s.restarts} of at most ${s.spec.maxRestarts}`),
    field('Next retry', s.nextRetryAt ? `${s.nextRetryAt} (in ${formatAge(Date.parse(s.nextRetryAt) - now)})` : '-'),
    field('Command', JSON.stringify(s.spec.command)),
    field('Spec', specSummary(s.spec)),
    field('Last good checkpoint', s.lastGoodCheckpoint ?? '-'),
    field('Failed on', s.failedOn.length ? s.failedOn.join(', ') : '-'),
    field('Diagnostics', s.diagnostics ?? '-'),
    '',
    'Runs:',
    s.runs.length === 0
      ? '  (none yet)'
      : indent(
          table(
            ['#', 'NODE', 'STARTED', 'ENDED', 'EXIT', 'REASON', 'FROM-CHECKPOINT', 'MESSAGE'],
            s.runs.map((r) => [
              String(r.run),
              r.node,
              r.startedAt,
              r.endedAt ?? '-',
              exitOf(r),
              r.reason ?? (r.endedAt ? '-' : 'Running'),
              r.fromCheckpoint ?? '-',
              r.message ?? '',
            ]),
          ),
        ),
    '',
    'Events:',
    s.events.length === 0
      ? '  (none)'
      : indent(
          table(
            ['AT', 'TYPE', 'MESSAGE'],
            s.events.map((e) => [e.at, e.type, e.message]),
          ),
        ),
    '',
    'Checkpoints:',
    s.checkpoints.length === 0
      ? '  (none)'
      : indent(
          table(
            ['ID', 'TAKEN', 'REASON', 'PHASE', 'HEALTHY', 'DELETED'],
            s.checkpoints.map((c) => [
              c.checkpointId,
              c.takenAt,
              c.reason,
              c.phase,
              c.healthy ? 'yes' : 'no',
              c.deleted ? 'yes' : 'no',
            ]),
          ),
        ),
  ];
  return out.join('\n');
}

const indent = (text: string): string =>
  text
    .split('\n')
    .map((l) => `  ${l}`)
    .join('\n');
