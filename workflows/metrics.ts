import { metricMeter } from '@temporalio/workflow';
import { Metric } from '../common/metrics';

/*
 * Counters emitted by workflows through the SDK's workflow meter: a sink call, not a command, so nothing is
 * added to a history, and it records nothing while a history is replayed (a worker that picks up a workflow
 * again does not count its past twice). Served on the control worker's endpoint.
 */

/** A checkpoint workflow reached an end state (Durable, Failed) or is left waiting for upload (PendingUpload). */
export function countCheckpoint(
  node: string,
  outcome: 'Durable' | 'PendingUpload' | 'Failed',
  tier: string | null,
): void {
  metricMeter
    .createCounter(Metric.checkpoints, '1', 'checkpoints reaching an end state, by node, outcome and tier')
    .add(1, { node, outcome, tier: tier ?? 'none' });
}

/** A restore workflow ended: Running, or Failed with its error type. */
export function countRestore(outcome: 'Running' | 'Failed', type: string | null): void {
  metricMeter
    .createCounter(Metric.restores, '1', 'restores by outcome, and failure type')
    .add(1, { outcome, type: type ?? 'none' });
}

/** A job's run is started again after it exited (CrashLoopBackOff ended), by how it ended. */
export function countJobRestart(reason: string): void {
  metricMeter
    .createCounter(Metric.jobRestarts, '1', 'job runs started again after their exit, by how the run ended')
    .add(1, { reason });
}
