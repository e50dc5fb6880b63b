import { Runtime } from '@temporalio/worker';
import {
  DEFAULT_AGENT_METRICS_PORT,
  DEFAULT_CONTROL_METRICS_PORT,
  Metric,
  PHASE_SECONDS_BUCKETS,
} from '../common/metrics';

export type MetricsRole = 'agent' | 'control';

/**
 * Where this worker serves Prometheus metrics (/metrics), or null for nowhere. KYBERNATE_METRICS_ADDRESS
 * (host:port, or 'off') decides; without it, a process joining a local stack takes a free loopback port (a
 * dev machine runs several agents, and the stack records the port), and anything else listens on all
 * interfaces at the documented port: 9464 for an agent, 9465 for the control worker.
 */
export async function metricsAddress(
  role: MetricsRole,
  localAddress: (() => Promise<string>) | null,
  env: NodeJS.ProcessEnv = process.env,
): Promise<string | null> {
  const given = env.KYBERNATE_METRICS_ADDRESS?.trim();
  if (given !== undefined && given !== '') {
    if (given === 'off') return null;
    const m = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(given);
    if (!m || Number(m[2]) < 1 || Number(m[2]) > 65535) {
      throw new Error(
        `KYBERNATE_METRICS_ADDRESS: expected host:port (e.g. 0.0.0.0:${DEFAULT_AGENT_METRICS_PORT}) or 'off', got '${given}'`,
      );
    }
    return given;
  }
  if (localAddress) return localAddress();
  return `0.0.0.0:${role === 'agent' ? DEFAULT_AGENT_METRICS_PORT : DEFAULT_CONTROL_METRICS_PORT}`;
}

/**
 * Installs the SDK runtime with its Prometheus exporter, once per process and before any connection or worker
 * is made (the runtime is process-wide). The SDK's metrics (temporal_*) and ours (kybernate_*, through the
 * same meter: Context.metricMeter in activities, metricMeter in workflows, Runtime.instance().metricMeter
 * in the worker) are all served there. tags: on every metric (an agent's node).
 */
export function installMetrics(bindAddress: string, tags: Record<string, string> = {}): void {
  const ours = [Metric.checkpointPhaseSeconds, Metric.restorePhaseSeconds, Metric.checkpointFrozenSeconds];
  try {
    Runtime.install({
      telemetryOptions: {
        metrics: {
          globalTags: tags,
          prometheus: {
            bindAddress,
            // Prometheus conventions: counters end in _total (ours are named so already), durations in seconds.
            countersTotalSuffix: false,
            useSecondsForDurations: true,
            histogramBucketOverrides: Object.fromEntries(ours.map((n) => [n, PHASE_SECONDS_BUCKETS])),
          },
        },
      },
    });
  } catch (e) {
    throw new Error(
      `metrics endpoint ${bindAddress} could not be served (${e instanceof Error ? e.message : String(e)}): ` +
        `set KYBERNATE_METRICS_ADDRESS to a free host:port, or 'off'`,
      { cause: e },
    );
  }
}

/** Gauges and counters a worker process sets itself (not from an activity or workflow). */
export interface NodeGauges {
  inventory(inv: { freeVramBytes: number; totalVramBytes: number; freeDiskBytes: number }): void;
  /** unchanged: read, nothing placement reads moved, not sent (reports go on a change or every few minutes). */
  report(outcome: 'ok' | 'failed' | 'unchanged'): void;
  pendingUpload(count: number): void;
}

/** The agent's own gauges, on the runtime's meter (a no-op meter when no endpoint was installed). */
export function nodeGauges(): NodeGauges {
  const meter = Runtime.instance().metricMeter;
  const vramFree = meter.createGauge(
    Metric.nodeVramFree,
    'int',
    'bytes',
    'free VRAM on this node (the sum over its GPUs, or the declared capacity less what restored workloads hold)',
  );
  const vramTotal = meter.createGauge(Metric.nodeVramTotal, 'int', 'bytes', 'VRAM of this node');
  const diskFree = meter.createGauge(
    Metric.nodeDiskFree,
    'int',
    'bytes',
    'free disk under the data directory (the nvme tier)',
  );
  const reports = meter.createCounter(
    Metric.nodeReports,
    '1',
    'inventory reads, by outcome: sent (ok), failed, or unchanged (not sent)',
  );
  const pending = meter.createGauge(
    Metric.pendingUpload,
    'int',
    '1',
    'checkpoints sealed on this node and not yet in S3',
  );
  return {
    inventory: (inv) => {
      vramFree.set(inv.freeVramBytes);
      vramTotal.set(inv.totalVramBytes);
      diskFree.set(inv.freeDiskBytes);
    },
    report: (outcome) => reports.add(1, { outcome }),
    pendingUpload: (count) => pending.set(count),
  };
}
