import {
  allHandlersFinished,
  ApplicationFailure,
  condition,
  continueAsNew,
  defineQuery,
  defineSignal,
  defineUpdate,
  log,
  proxyActivities,
  setCurrentDetails,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { ControlActivities } from '../activities/control';
import {
  ADMISSION_REFUSED,
  ADMIT_UPDATE,
  type AdmissionConfig,
  admissionConfigProblem,
  type AdmissionEntry,
  type AdmissionMode,
  type AdmissionRequest,
  type AdmissionStatus,
  BACKLOG_KINDS,
  CONFIGURE_UPDATE,
  DEFAULT_ADMISSION_CONFIG,
  overload,
  priorityProblem,
  RECONCILE_GRACE_MS,
  refusal,
  SETTLE_SIGNAL,
} from '../common/admission';
import { ErrorType } from '../common/errors';
import { STATUS_QUERY } from '../common/outcome';
import { SA_PHASE } from '../common/search-attributes';

export const admitUpdate = defineUpdate<{ admitted: true; backlog: number; mode: AdmissionMode }, [AdmissionRequest]>(
  ADMIT_UPDATE,
);
export const configureUpdate = defineUpdate<AdmissionStatus, [Partial<AdmissionConfig>]>(CONFIGURE_UPDATE);
/** From the work itself: 'placed' (a job's first Running), 'done' (ended, or a restore Running or Failed). */
export const settleSignal = defineSignal<[{ workflowId: string; outcome: 'placed' | 'done' }]>(SETTLE_SIGNAL);
export const admissionStatusQuery = defineQuery<AdmissionStatus>(STATUS_QUERY);

/** What one run hands the next at continue-as-new. */
export interface AdmissionCarried {
  config: AdmissionConfig;
  entries: AdmissionEntry[];
  mode: AdmissionMode;
  why: string | null;
  since: string;
  latencyMs: number | null;
  lastProbeAt: string | null;
  calmProbes: number;
  admitted: number;
  lastReconcileAt: number;
}

export interface AdmissionInput {
  config?: Partial<AdmissionConfig>;
  carried?: AdmissionCarried;
  /** Probes per run before continue-as-new (keeps each history short; tests make it small). */
  probesPerRun?: number;
}

/** The probe waits at most this long: a control plane that cannot run a trivial activity in a minute is overloaded. */
const PROBE_TIMEOUT = '1m';

/**
 * The singleton `admission` workflow: every checkpoint, restore, migration and job asks it first (the `admit`
 * update; its validator refuses, so a refusal leaves no history). It holds the backlog of admitted-but-unplaced
 * work, settled by the work's own signal or, when that was lost, reconciled against the workflows still open,
 * and it probes the control plane every probeIntervalMs. Normal -> Degraded when backlog or latency pass their
 * marks; Degraded -> Normal after calmProbes probes in a row below lower marks (hysteresis).
 */
export async function admission(input: AdmissionInput = {}): Promise<void> {
  const c = input.carried;
  const config: AdmissionConfig = { ...DEFAULT_ADMISSION_CONFIG, ...(c?.config ?? {}) };
  const initial = input.config ?? {};
  if (!admissionConfigProblem(initial)) Object.assign(config, initial);
  const entries = new Map<string, AdmissionEntry>((c?.entries ?? []).map((e) => [e.workflowId, e]));
  let mode: AdmissionMode = c?.mode ?? 'Normal';
  let why: string | null = c?.why ?? null;
  let since = c?.since ?? new Date().toISOString();
  let latencyMs: number | null = c?.latencyMs ?? null;
  let lastProbeAt: string | null = c?.lastProbeAt ?? null;
  let calm = c?.calmProbes ?? 0;
  let admitted = c?.admitted ?? 0;
  let lastReconcileAt = c?.lastReconcileAt ?? Date.now();
  let wake = false;

  const backlogByKind = (): Record<string, number> => {
    const out: Record<string, number> = {};
    for (const e of entries.values()) out[e.kind] = (out[e.kind] ?? 0) + 1;
    return out;
  };
  const status = (): AdmissionStatus => ({
    mode,
    why,
    since,
    backlog: entries.size,
    backlogByKind: backlogByKind(),
    config: { ...config },
    latencyMs,
    lastProbeAt,
    calmProbes: calm,
    admitted,
  });
  const show = (): void =>
    setCurrentDetails(
      `${mode}${why ? ` (${why})` : ''}: backlog ${entries.size} of limit ${config.backlogLimit}, latency ${latencyMs ?? '-'} ms`,
    );
  const setMode = (next: AdmissionMode, reason: string | null): void => {
    if (next !== mode) {
      log.info(`admission ${mode} -> ${next}${reason ? `: ${reason}` : ''}`, { backlog: entries.size, latencyMs });
      mode = next;
      since = new Date().toISOString();
      calm = 0;
      upsertSearchAttributes([{ key: SA_PHASE, value: mode }]);
    }
    why = reason;
  };
  /** Enter Degraded at once; leave it only after enough calm probes (afterProbe: this call follows one). */
  const assess = (afterProbe: boolean): void => {
    const over = overload(config, entries.size, latencyMs, 'enter');
    if (mode === 'Normal') {
      if (over) setMode('Degraded', over);
    } else if (afterProbe) {
      const stillHigh = overload(config, entries.size, latencyMs, 'exit');
      calm = stillHigh ? 0 : calm + 1;
      if (over) why = over;
      if (calm >= config.calmProbes) setMode('Normal', null);
    } else if (over) {
      why = over;
    }
    show();
  };

  upsertSearchAttributes([{ key: SA_PHASE, value: mode }]);
  show();

  setHandler(
    admitUpdate,
    (req) => {
      if (BACKLOG_KINDS.includes(req.kind) && !entries.has(req.workflowId)) {
        entries.set(req.workflowId, { ...req, admittedAt: Date.now() });
      }
      admitted++;
      assess(false);
      return { admitted: true, backlog: entries.size, mode };
    },
    {
      // Runs before the update is written to history: a refusal costs the workflow nothing.
      validator: (req) => {
        const bad =
          priorityProblem(req?.priority) !== null
            ? `priority: ${priorityProblem(req?.priority)}`
            : typeof req.workflowId !== 'string' || req.workflowId.length === 0
              ? 'workflowId: is required'
              : !['job', 'restore', 'checkpoint', 'migrate'].includes(req.kind)
                ? `kind: must be job, restore, checkpoint or migrate (got ${String(req.kind)})`
                : null;
        if (bad) throw ApplicationFailure.nonRetryable(`invalid admission request: ${bad}`, ErrorType.InvalidInput);
        // A request admitted already (a client retrying) is admitted again whatever the load.
        if (entries.has(req.workflowId)) return;
        const r = refusal({ mode, why, backlog: entries.size, config }, req.priority);
        if (r) throw ApplicationFailure.nonRetryable(r.message, ADMISSION_REFUSED, r.details);
      },
    },
  );
  setHandler(
    configureUpdate,
    (patch) => {
      for (const [k, v] of Object.entries(patch)) if (v !== undefined) config[k as keyof AdmissionConfig] = v;
      wake = true;
      assess(false);
      return status();
    },
    {
      validator: (patch) => {
        const bad = admissionConfigProblem(patch ?? {});
        if (bad) throw ApplicationFailure.nonRetryable(`invalid admission config: ${bad}`, ErrorType.InvalidInput);
      },
    },
  );
  setHandler(settleSignal, ({ workflowId }) => {
    if (entries.delete(workflowId)) assess(false);
  });
  setHandler(admissionStatusQuery, status);

  const control = proxyActivities<ControlActivities>({
    startToCloseTimeout: PROBE_TIMEOUT,
    scheduleToCloseTimeout: PROBE_TIMEOUT,
    retry: { maximumAttempts: 1 },
  });

  const probesPerRun = input.probesPerRun ?? 200;
  for (let probes = 0; probes < probesPerRun && !workflowInfo().continueAsNewSuggested; probes++) {
    // ---- probe: the round trip (activity queue, activity, next workflow task), or how long it took to fail ----
    const t0 = Date.now();
    let queued = 0;
    try {
      queued = (await control.probeControlPlane()).queueLatencyMs;
    } catch (err) {
      log.warn('admission probe failed: its round trip counts as the latency', { error: String(err) });
    }
    latencyMs = Math.max(Date.now() - t0, queued);
    lastProbeAt = new Date().toISOString();
    assess(true);

    // ---- reconcile: entries whose work ended without a settle signal reaching us ----
    if (Date.now() - lastReconcileAt >= config.reconcileIntervalMs) {
      lastReconcileAt = Date.now();
      const old = [...entries.values()].filter((e) => Date.now() - e.admittedAt >= RECONCILE_GRACE_MS);
      if (old.length > 0) {
        try {
          const closed = await control.closedWorkflows({ workflowIds: old.map((e) => e.workflowId) });
          for (const id of closed) entries.delete(id);
          if (closed.length > 0) log.info(`admission reconciled ${closed.length} entries of closed workflows`);
          assess(false);
        } catch (err) {
          // Kept: an entry too many costs a refusal at worst, and the next reconcile tries again.
          log.warn('admission reconcile failed', { error: String(err) });
        }
      }
    }

    wake = false;
    await condition(() => wake, config.probeIntervalMs);
  }
  await condition(allHandlersFinished);
  const carried: AdmissionCarried = {
    config,
    entries: [...entries.values()],
    mode,
    why,
    since,
    latencyMs,
    lastProbeAt,
    calmProbes: calm,
    admitted,
    lastReconcileAt,
  };
  await continueAsNew<typeof admission>({ carried, probesPerRun: input.probesPerRun });
}
