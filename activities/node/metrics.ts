import { ApplicationFailure, CancelledFailure, Context } from '@temporalio/activity';
import { type MetricMeter, noopMetricMeter } from '@temporalio/common';
import { Metric } from '../../common/metrics';

/** Which operation a node step belongs to: its duration and bytes go to that operation's metrics. */
export type MeasuredKind = 'checkpoint' | 'restore';

/** Bytes a step moved, and the extra (bounded) labels they are counted under. */
export interface MovedBytes {
  bytes: number;
  labels?: Record<string, string>;
}

/**
 * The activity's meter (the SDK's, served on the agent's Prometheus endpoint with the node as a global tag);
 * outside an activity (a unit test calling an activity function directly) a meter that records nothing.
 */
function meter(): MetricMeter {
  try {
    return Context.current().metricMeter;
  } catch {
    return noopMetricMeter;
  }
}

/** The stable type a failure is counted under: its ErrorType, else a bounded catch-all. */
export function failureLabel(err: unknown): string {
  if (err instanceof ApplicationFailure) return err.type ?? 'Error';
  if (err instanceof CancelledFailure) return 'Cancelled';
  return 'Error';
}

/**
 * Runs one node step of a checkpoint or restore and records how long it took (outcome ok or failed), the bytes
 * it moved, and a failure by its type. The step's result and error pass through untouched: a metric never
 * changes what a step does.
 */
export async function measured<T>(
  kind: MeasuredKind,
  phase: string,
  fn: () => Promise<T>,
  moved?: (r: T) => MovedBytes | MovedBytes[] | null,
): Promise<T> {
  const m = meter();
  const started = process.hrtime.bigint();
  const seconds = (): number => Number(process.hrtime.bigint() - started) / 1e9;
  const duration = m.createHistogram(
    kind === 'checkpoint' ? Metric.checkpointPhaseSeconds : Metric.restorePhaseSeconds,
    'float',
    's',
    `duration of one node step of a ${kind}, by phase and outcome`,
  );
  try {
    const r = await fn();
    duration.record(seconds(), { phase, outcome: 'ok' });
    const bytes = m.createCounter(
      kind === 'checkpoint' ? Metric.checkpointBytes : Metric.restoreBytes,
      'bytes',
      `bytes a ${kind} step wrote, sent or fetched, by phase`,
    );
    for (const b of [moved?.(r) ?? []].flat()) if (b.bytes > 0) bytes.add(Math.round(b.bytes), { phase, ...b.labels });
    return r;
  } catch (err) {
    duration.record(seconds(), { phase, outcome: 'failed' });
    m.createCounter(
      Metric.stepFailures,
      '1',
      'node steps of checkpoints and restores that failed, by phase and error type',
    ).add(1, { phase, type: failureLabel(err) });
    throw err;
  }
}

/** How long a --leave-running dump held the workload frozen, as CRIU measured it. */
export function recordFrozen(frozenMs: number): void {
  meter()
    .createHistogram(
      Metric.checkpointFrozenSeconds,
      'float',
      's',
      'how long a --leave-running dump held the workload frozen (CRIU)',
    )
    .record(frozenMs / 1000);
}
