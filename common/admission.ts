/**
 * Admission: pure types and rules of the `admission` workflow, shared by the workflow, the control worker and
 * the clients. No I/O: safe in workflow code.
 *
 * Priority 0 is critical (never refused), 10 the first to be shed. Work admitted and not yet placed (a job until
 * it first reaches Running or ends, a restore until Running or Failed) is the backlog.
 */

export const ADMISSION_WORKFLOW_ID = 'admission';
/** Its summary in the Temporal UI, whoever starts it (a client's first request, or the control worker's settings). */
export const ADMISSION_SUMMARY = 'Admission: backlog of unplaced work, control-plane load, Normal or Degraded';
export const ADMIT_UPDATE = 'admit';
export const SETTLE_SIGNAL = 'settle';
export const CONFIGURE_UPDATE = 'configure';
/** The ApplicationFailure type of a refusal (its details: AdmissionRefusal). */
export const ADMISSION_REFUSED = 'AdmissionRefused';

export const MIN_PRIORITY = 0;
export const MAX_PRIORITY = 10;
/** Checkpoints, restores and migrations asked for without a priority. */
export const DEFAULT_PRIORITY = 5;
/** Degraded mode refuses every priority above this. */
export const DEGRADED_MAX_PRIORITY = 5;

export type AdmissionKind = 'job' | 'restore' | 'checkpoint' | 'migrate';
/** Only these wait for a node, so only these count in the backlog; the others are checked against the rules. */
export const BACKLOG_KINDS: readonly AdmissionKind[] = ['job', 'restore'];

/** What is wrong with a priority, or null. */
export function priorityProblem(p: unknown): string | null {
  return typeof p === 'number' && Number.isInteger(p) && p >= MIN_PRIORITY && p <= MAX_PRIORITY
    ? null
    : `must be a whole number from ${MIN_PRIORITY} (critical) to ${MAX_PRIORITY} (got ${String(p)})`;
}

export interface AdmissionConfig {
  /** Backlog at which priority-10 requests are refused (issue 13: 1000). */
  backlogLimit: number;
  /** Backlog above which the control plane is Degraded; default twice the limit, so p10 is shed first. */
  degradedBacklog: number;
  /** Probe latency (ms) above which the control plane is Degraded. */
  degradedLatencyMs: number;
  /** How often the workflow probes the control plane. */
  probeIntervalMs: number;
  /** Consecutive calm probes (backlog and latency below the exit marks) before Degraded ends. */
  calmProbes: number;
  /** How often entries are checked against the workflows still open (entries whose report was lost). */
  reconcileIntervalMs: number;
}

export const DEFAULT_ADMISSION_CONFIG: AdmissionConfig = {
  backlogLimit: 1000,
  degradedBacklog: 2000,
  degradedLatencyMs: 5000,
  probeIntervalMs: 10_000,
  calmProbes: 3,
  reconcileIntervalMs: 60_000,
};

/** Hysteresis: Degraded ends only once backlog and latency are well below the marks that started it. */
export const EXIT_BACKLOG_FRACTION = 0.75;
export const EXIT_LATENCY_FRACTION = 0.5;
/** An entry is reconciled only once it is this old: visibility lags behind a workflow started a moment ago. */
export const RECONCILE_GRACE_MS = 60_000;

const CONFIG_BOUNDS: Record<keyof AdmissionConfig, [number, number]> = {
  backlogLimit: [1, 1_000_000],
  degradedBacklog: [1, 10_000_000],
  degradedLatencyMs: [100, 3_600_000],
  probeIntervalMs: [1000, 3_600_000],
  calmProbes: [1, 1000],
  reconcileIntervalMs: [1000, 86_400_000],
};

/** What is wrong with a partial config, naming the field, or null. */
export function admissionConfigProblem(c: Partial<Record<string, unknown>>): string | null {
  for (const [k, v] of Object.entries(c)) {
    if (v === undefined) continue;
    const b = CONFIG_BOUNDS[k as keyof AdmissionConfig];
    if (!b) return `${k}: unknown admission setting`;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < b[0] || v > b[1])
      return `${k}: must be a whole number from ${b[0]} to ${b[1]} (got ${String(v)})`;
  }
  return null;
}

/** Environment variables the control worker reads into the admission config (unset: keep what the workflow has). */
export const ADMISSION_ENV: Record<keyof AdmissionConfig, string> = {
  backlogLimit: 'KYBERNATE_ADMISSION_BACKLOG_LIMIT',
  degradedBacklog: 'KYBERNATE_ADMISSION_DEGRADED_BACKLOG',
  degradedLatencyMs: 'KYBERNATE_ADMISSION_DEGRADED_LATENCY_MS',
  probeIntervalMs: 'KYBERNATE_ADMISSION_PROBE_INTERVAL_MS',
  calmProbes: 'KYBERNATE_ADMISSION_CALM_PROBES',
  reconcileIntervalMs: 'KYBERNATE_ADMISSION_RECONCILE_INTERVAL_MS',
};

export interface AdmissionRequest {
  /** The workflow the request starts (`job/<id>`, `restore/<cp>/<n>`...): the key its settle signal uses. */
  workflowId: string;
  kind: AdmissionKind;
  priority: number;
}

export interface AdmissionEntry extends AdmissionRequest {
  admittedAt: number;
}

export type AdmissionMode = 'Normal' | 'Degraded';

/** Why a request was refused, in the refusal's details: the CLI prints the message, scripts read the rest. */
export interface AdmissionRefusal {
  reason: 'backlog' | 'degraded';
  mode: AdmissionMode;
  backlog: number;
  backlogLimit: number;
  priority: number;
  /** When asking again may succeed. */
  retryAfterS: number;
}

export interface AdmissionStatus {
  mode: AdmissionMode;
  /** Why Degraded (null when Normal). */
  why: string | null;
  since: string;
  backlog: number;
  backlogByKind: Record<string, number>;
  config: AdmissionConfig;
  /** The last probe's latency (ms): the larger of its round trip and its activity's queue time. */
  latencyMs: number | null;
  lastProbeAt: string | null;
  calmProbes: number;
  /** Requests admitted since the workflow began (refusals are not counted: a rejected update leaves no trace). */
  admitted: number;
}

/** What the rules measure: backlog and latency against the marks, at entry or (with hysteresis) at exit. */
export function overload(
  cfg: AdmissionConfig,
  backlog: number,
  latencyMs: number | null,
  mark: 'enter' | 'exit',
): string | null {
  const bl = mark === 'enter' ? cfg.degradedBacklog : Math.floor(cfg.degradedBacklog * EXIT_BACKLOG_FRACTION);
  const lat = mark === 'enter' ? cfg.degradedLatencyMs : Math.floor(cfg.degradedLatencyMs * EXIT_LATENCY_FRACTION);
  const why: string[] = [];
  if (backlog > bl) why.push(`backlog ${backlog} > ${bl}`);
  if (latencyMs !== null && latencyMs > lat) why.push(`control-plane latency ${latencyMs} ms > ${lat} ms`);
  return why.length ? why.join(', ') : null;
}

/** The refusal of a request of this priority in this state, or null when it is admitted. Priority 0 never is. */
export function refusal(
  s: Pick<AdmissionStatus, 'mode' | 'why' | 'backlog' | 'config'>,
  priority: number,
): { message: string; details: AdmissionRefusal } | null {
  if (priority === 0) return null;
  const base = { mode: s.mode, backlog: s.backlog, backlogLimit: s.config.backlogLimit, priority };
  if (s.mode === 'Degraded' && priority > DEGRADED_MAX_PRIORITY) {
    const retryAfterS = Math.ceil((s.config.probeIntervalMs * (s.config.calmProbes + 1)) / 1000);
    return {
      message: `refused: the control plane is Degraded (${s.why ?? 'overloaded'}) and refuses priority above ${DEGRADED_MAX_PRIORITY} (this request: ${priority}); retry in ${retryAfterS} s or later, or ask with priority ${DEGRADED_MAX_PRIORITY} or lower if it cannot wait`,
      details: { ...base, reason: 'degraded', retryAfterS },
    };
  }
  if (priority === MAX_PRIORITY && s.backlog >= s.config.backlogLimit) {
    const retryAfterS = Math.ceil(Math.max(60_000, s.config.probeIntervalMs) / 1000);
    return {
      message: `refused: ${s.backlog} requests wait for placement, at or above the backlog limit of ${s.config.backlogLimit}, and priority ${MAX_PRIORITY} is refused until the backlog falls; retry in ${retryAfterS} s or later, or ask with a priority below ${MAX_PRIORITY}`,
      details: { ...base, reason: 'backlog', retryAfterS },
    };
  }
  return null;
}
