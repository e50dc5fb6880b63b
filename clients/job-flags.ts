import * as path from 'node:path';
import { durationMs, MAX_VRAM_BYTES } from '../common/bounds';
import { assertSafeId, InvalidInputError } from '../common/ids';
import { DEFAULT_BACKOFF, DEFAULT_MAX_RESTARTS, type JobSpec, type JobTier, type RestartPolicy } from '../common/job';
import {
  commandProblem,
  JOB_TIERS,
  jobValueProblem,
  MAX_JOB_MEMORY_BYTES,
  parseJobSpec,
  RESTART_POLICIES,
} from '../common/job-spec';
import { parseReadiness } from '../common/readiness';
import { DEFAULT_PRIORITY } from '../common/admission';
import { parseBytes } from './bytes';

/**
 * A job's fields as an operator writes them: CLI flags (text) or a YAML entry (text or numbers), turned into a
 * JobSpec. Each problem names the field as the operator wrote it (`memory`, `jobs[1].maxRestarts`).
 */
export interface JobFields {
  jobId: unknown;
  command: unknown;
  cwd?: unknown;
  env?: unknown;
  user?: unknown;
  node?: unknown;
  vram?: unknown;
  cpu?: unknown;
  memory?: unknown;
  pids?: unknown;
  timeout?: unknown;
  priority?: unknown;
  tier?: unknown;
  restartPolicy?: unknown;
  maxRestarts?: unknown;
  backoffInitial?: unknown;
  backoffCap?: unknown;
  backoffReset?: unknown;
  checkpointEvery?: unknown;
  keep?: unknown;
  readiness?: unknown;
}
export type JobField = keyof JobFields;

/** The CLI's names: its flags (`--max-restarts`), the job argument, the command after `--`. */
export const CLI_FIELD_NAMES: Record<JobField, string> = {
  jobId: 'job',
  command: 'command',
  cwd: 'cwd',
  env: 'env',
  user: 'user',
  node: 'node',
  vram: 'vram',
  cpu: 'cpu',
  memory: 'memory',
  pids: 'pids',
  timeout: 'timeout',
  priority: 'priority',
  tier: 'tier',
  restartPolicy: 'restart-policy',
  maxRestarts: 'max-restarts',
  backoffInitial: 'backoff-initial',
  backoffCap: 'backoff-cap',
  backoffReset: 'backoff-reset',
  checkpointEvery: 'checkpoint-every',
  keep: 'keep',
  readiness: 'readiness',
};

const problemOf = (field: string, p: string | null): void => {
  if (p) throw new InvalidInputError(field, p);
};

/** --user 65534 or 65534:65534: numeric only, so that it means the same on every node. */
export function parseUser(field: string, value: unknown): { uid: number; gid?: number } {
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    const o = value as { uid?: unknown; gid?: unknown };
    const text = `${String(o.uid)}${o.gid === undefined ? '' : `:${String(o.gid)}`}`;
    return parseUser(field, text);
  }
  const text = typeof value === 'number' ? String(value) : value;
  const m = typeof text === 'string' ? /^([0-9]{1,10})(?::([0-9]{1,10}))?$/.exec(text) : null;
  if (!m) throw new InvalidInputError(field, `must be a numeric uid or uid:gid (got '${String(text)}')`);
  const uid = Number(m[1]);
  const gid = m[2] === undefined ? undefined : Number(m[2]);
  for (const v of [uid, gid]) {
    if (v !== undefined && v > 4294967294) throw new InvalidInputError(field, `id ${v} is out of range`);
  }
  if (uid === 0) throw new InvalidInputError(field, "must not be 0: leave it out to run as the agent's user");
  return gid === undefined ? { uid } : { uid, gid };
}

/** Bytes from "4GiB" or a plain number (YAML), bounded by `check`. */
function bytesField(field: string, v: unknown, max: number, check: (n: number) => string | null): number {
  let n: number;
  if (typeof v === 'number') n = v;
  else if (typeof v === 'string') n = parseBytes(field, v, max);
  else throw new InvalidInputError(field, `expected a size such as 8GiB or 512MiB (got ${typeof v})`);
  problemOf(field, check(n));
  return n;
}

/** A whole number from text ("512") or YAML; anything else ("1e3", "-1", "2.5") named. */
function wholeField(field: string, v: unknown, check: (n: number) => string | null): number {
  let n: number;
  if (typeof v === 'number') n = v;
  else if (typeof v === 'string' && /^\s*-?[0-9]{1,16}\s*$/.test(v)) n = Number(v);
  else throw new InvalidInputError(field, `expected a whole number (got '${String(v)}')`);
  problemOf(field, check(n));
  return n;
}

/** CPU cores: "2", "0.5" or Kubernetes' millicores "500m"; a YAML number as is. */
function cpuField(field: string, v: unknown): number {
  let n: number;
  if (typeof v === 'number') n = v;
  else if (typeof v === 'string' && /^\s*[0-9]{1,7}(\.[0-9]{1,6})?\s*$/.test(v)) n = Number(v);
  else if (typeof v === 'string' && /^\s*[0-9]{1,10}m\s*$/.test(v)) n = Number(v.trim().slice(0, -1)) / 1000;
  else throw new InvalidInputError(field, `expected a number of cores such as 2, 0.5 or 500m (got '${String(v)}')`);
  problemOf(field, jobValueProblem.cpu(n));
  return n;
}

/** A duration written with its unit ("90s", "2h"): a bare number (is 0 seconds? minutes?) is refused. */
function durationField(field: string, v: unknown, check: (n: number) => string | null): number {
  const ms = typeof v === 'string' ? durationMs(v.trim()) : null;
  if (ms === null)
    throw new InvalidInputError(field, `expected a duration such as 90s, 10m, 2h or 1d (got '${String(v)}')`);
  const p = check(ms);
  if (p) throw new InvalidInputError(field, `${p.replace(/ \(got [^)]*\)$/, '')} (got '${String(v)}')`);
  return ms;
}

function choiceField<T extends string>(field: string, v: unknown, choices: readonly T[]): T {
  if (typeof v === 'string' && (choices as readonly string[]).includes(v)) return v as T;
  throw new InvalidInputError(field, `must be one of ${choices.join(', ')} (got '${String(v)}')`);
}

function envField(field: string, v: unknown): Record<string, string> {
  if (v === null || typeof v !== 'object' || Array.isArray(v))
    throw new InvalidInputError(field, 'must be a map of NAME: value');
  const out: Record<string, string> = {};
  for (const [k, val] of Object.entries(v as Record<string, unknown>)) {
    if (!/^[A-Za-z_][A-Za-z0-9_]{0,255}$/.test(k))
      throw new InvalidInputError(`${field}.${k}`, 'must be a variable name of letters, digits and _');
    if (typeof val !== 'string')
      throw new InvalidInputError(
        `${field}.${k}`,
        `must be a string (quote it in YAML; got ${val === null ? 'null' : typeof val})`,
      );
    if (val.includes('\u0000')) throw new InvalidInputError(`${field}.${k}`, 'must not contain a NUL character');
    out[k] = val;
  }
  return out;
}

/**
 * A JobSpec from the fields as written, each checked and named by `name` (the CLI's flag names or a YAML
 * entry's keys), then the whole spec checked again by parseJobSpec. Defaults: no VRAM, no limits, priority 5,
 * tier normal, restart policy Always (Kubernetes'), 10 restarts, CrashLoopBackOff 10s/5m/10m.
 */
export function jobSpecFromFields(
  f: JobFields,
  name: (field: JobField) => string = (k) => CLI_FIELD_NAMES[k],
): JobSpec {
  const given = (k: JobField): boolean => f[k] !== undefined && f[k] !== null;
  const jobId = assertSafeId(name('jobId'), f.jobId);
  const cp = commandProblem(f.command);
  if (cp)
    throw new InvalidInputError(cp.index === null ? name('command') : `${name('command')}[${cp.index}]`, cp.problem);
  const spec: JobSpec = {
    jobId,
    command: f.command as string[],
    vramBytes: given('vram') ? bytesField(name('vram'), f.vram, MAX_VRAM_BYTES, jobValueProblem.vramBytes) : 0,
    limits: {},
    priority: given('priority') ? wholeField(name('priority'), f.priority, jobValueProblem.priority) : DEFAULT_PRIORITY,
    tier: given('tier') ? choiceField<JobTier>(name('tier'), f.tier, JOB_TIERS) : 'normal',
    restartPolicy: given('restartPolicy')
      ? choiceField<RestartPolicy>(name('restartPolicy'), f.restartPolicy, RESTART_POLICIES)
      : 'Always',
    maxRestarts: given('maxRestarts')
      ? wholeField(name('maxRestarts'), f.maxRestarts, jobValueProblem.maxRestarts)
      : DEFAULT_MAX_RESTARTS,
    backoff: {
      initialMs: given('backoffInitial')
        ? durationField(name('backoffInitial'), f.backoffInitial, jobValueProblem.backoffMs)
        : DEFAULT_BACKOFF.initialMs,
      capMs: given('backoffCap')
        ? durationField(name('backoffCap'), f.backoffCap, jobValueProblem.backoffMs)
        : DEFAULT_BACKOFF.capMs,
      resetAfterMs: given('backoffReset')
        ? durationField(name('backoffReset'), f.backoffReset, jobValueProblem.backoffMs)
        : DEFAULT_BACKOFF.resetAfterMs,
    },
  };
  if (spec.backoff.capMs < spec.backoff.initialMs) {
    throw new InvalidInputError(
      given('backoffCap') ? name('backoffCap') : name('backoffInitial'),
      `the cap (${spec.backoff.capMs} ms) must not be below the initial backoff (${spec.backoff.initialMs} ms)`,
    );
  }
  if (given('cwd')) {
    if (typeof f.cwd !== 'string' || !path.isAbsolute(f.cwd))
      throw new InvalidInputError(name('cwd'), `must be an absolute path (got '${String(f.cwd)}')`);
    spec.cwd = f.cwd;
  }
  if (given('env')) spec.env = envField(name('env'), f.env);
  if (given('user')) spec.user = parseUser(name('user'), f.user);
  if (given('node')) spec.node = assertSafeId(name('node'), f.node);
  if (given('cpu')) spec.limits.cpu = cpuField(name('cpu'), f.cpu);
  if (given('memory'))
    spec.limits.memoryBytes = bytesField(name('memory'), f.memory, MAX_JOB_MEMORY_BYTES, jobValueProblem.memoryBytes);
  if (given('pids')) spec.limits.pids = wholeField(name('pids'), f.pids, jobValueProblem.pids);
  if (given('timeout')) spec.timeoutMs = durationField(name('timeout'), f.timeout, jobValueProblem.timeoutMs);
  if (given('checkpointEvery'))
    spec.checkpointEveryMs = durationField(
      name('checkpointEvery'),
      f.checkpointEvery,
      jobValueProblem.checkpointEveryMs,
    );
  if (given('keep')) {
    spec.keep = wholeField(name('keep'), f.keep, jobValueProblem.keep);
    if (spec.checkpointEveryMs === undefined)
      throw new InvalidInputError(
        name('keep'),
        `needs ${name('checkpointEvery')}: only periodic checkpoints are kept or deleted`,
      );
  }
  if (given('readiness')) spec.readiness = parseReadiness(f.readiness, name('readiness'));
  return parseJobSpec(spec);
}
