import * as path from 'node:path';
import { parseDocument } from 'yaml';
import { InvalidInputError } from '../common/ids';
import type { JobSpec } from '../common/job';
import { type JobField, type JobFields, jobSpecFromFields } from './job-flags';

/**
 * `kybernate apply -f jobs.yaml`: a list of jobs, each validated on its own. A file that is not YAML, or not
 * `jobs: [...]`, is a usage error before anything starts; a bad entry fails alone and the others go on.
 *
 * ```yaml
 * jobs:
 *   - name: train
 *     command: [python3, train.py]
 *     node: node-a            # or placed by VRAM
 *     vram: 8GiB
 *     cpu: 2
 *     memory: 4GiB
 *     pids: 512
 *     timeout: 2h
 *     priority: 5
 *     tier: critical
 *     restartPolicy: OnFailure
 *     maxRestarts: 10
 *     checkpointEvery: 30m
 *     keep: 3
 *     env: { SEED: "1" }
 * ```
 */

/** The keys of an entry, as written in the file (`name` is the job id). */
const ENTRY_KEYS: Record<string, JobField> = {
  name: 'jobId',
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
  restartPolicy: 'restartPolicy',
  maxRestarts: 'maxRestarts',
  backoffInitial: 'backoffInitial',
  backoffCap: 'backoffCap',
  backoffReset: 'backoffReset',
  checkpointEvery: 'checkpointEvery',
  keep: 'keep',
  readiness: 'readiness',
};
const KEY_OF: Record<JobField, string> = Object.fromEntries(
  Object.entries(ENTRY_KEYS).map(([k, f]) => [f, k]),
) as Record<JobField, string>;

export type ApplyEntry =
  | { index: number; name: string | null; spec: JobSpec; error: null }
  | { index: number; name: string | null; spec: null; error: InvalidInputError };

/**
 * The entries of a jobs file, each a JobSpec or the error that names its field (`jobs[1].memory: ...`).
 * Throws InvalidInputError (a usage error: nothing may start) when the file itself is wrong. A relative or
 * absent `cwd` is the file's own directory, so the same file means the same jobs wherever it is applied from.
 */
export function parseJobsFile(text: string, file: string): ApplyEntry[] {
  const doc = parseDocument(text, { prettyErrors: false });
  if (doc.errors.length > 0)
    throw new InvalidInputError('file', `${file}: not valid YAML: ${doc.errors[0].message.split('\n')[0]}`);
  const root: unknown = doc.toJS();
  if (root === null || typeof root !== 'object' || Array.isArray(root))
    throw new InvalidInputError('jobs', `${file}: expected a map with a 'jobs' list at the top`);
  const extra = Object.keys(root).filter((k) => k !== 'jobs');
  if (extra.length > 0) throw new InvalidInputError(extra[0], `${file}: unknown key at the top (expected only 'jobs')`);
  const jobs = (root as { jobs?: unknown }).jobs;
  if (!Array.isArray(jobs)) throw new InvalidInputError('jobs', `${file}: must be a list of jobs`);
  const dir = path.dirname(path.resolve(file));
  const seen = new Map<string, number>();
  return jobs.map((entry: unknown, index): ApplyEntry => {
    const at = `jobs[${index}]`;
    const rawName =
      entry !== null && typeof entry === 'object' && typeof (entry as { name?: unknown }).name === 'string'
        ? (entry as { name: string }).name
        : null;
    try {
      if (entry === null || typeof entry !== 'object' || Array.isArray(entry))
        throw new InvalidInputError(at, 'must be a map (name, command, ...)');
      const fields: Partial<JobFields> = {};
      for (const [k, v] of Object.entries(entry as Record<string, unknown>)) {
        const f = ENTRY_KEYS[k];
        if (!f) throw new InvalidInputError(`${at}.${k}`, `unknown key (known: ${Object.keys(ENTRY_KEYS).join(', ')})`);
        fields[f] = v;
      }
      if (typeof fields.jobId === 'number') fields.jobId = String(fields.jobId); // `name: 42`: YAML reads a number
      if (typeof fields.cwd === 'string' && !path.isAbsolute(fields.cwd)) fields.cwd = path.resolve(dir, fields.cwd);
      if (fields.cwd === undefined) fields.cwd = dir;
      const spec = jobSpecFromFields(
        { ...fields, jobId: fields.jobId, command: fields.command },
        (f) => `${at}.${KEY_OF[f]}`,
      );
      const first = seen.get(spec.jobId);
      if (first !== undefined)
        throw new InvalidInputError(`${at}.name`, `'${spec.jobId}' is already the name of jobs[${first}]`);
      seen.set(spec.jobId, index);
      return { index, name: spec.jobId, spec, error: null };
    } catch (e) {
      if (!(e instanceof InvalidInputError)) throw e;
      return { index, name: rawName, spec: null, error: e };
    }
  });
}

export interface ApplyOutcome {
  index: number;
  name: string | null;
  result: 'applied' | 'unchanged' | 'failed';
  detail: string;
}

/** Canonical JSON (keys sorted), so that two specs compare equal whatever order their fields were written in. */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v !== null && typeof v === 'object') {
    return `{${Object.entries(v as Record<string, unknown>)
      .filter(([, x]) => x !== undefined)
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([k, x]) => `${JSON.stringify(k)}:${canonical(x)}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}

export const sameSpec = (a: JobSpec, b: JobSpec): boolean => canonical(a) === canonical(b);

/** What `apply` needs of the client: start a job (JobsApi.start), naming a job that exists already. */
export interface JobStarter {
  start(spec: JobSpec): Promise<{ workflowId: string }>;
}

/**
 * Starts each valid entry on its own: a bad entry, an unknown node or a refused start fails that entry only.
 * A job of the same name still open is 'unchanged' when its spec is the same, else failed: changing a running
 * job is not done in place (cancel it first).
 */
export async function applyJobs(
  starter: JobStarter,
  entries: ApplyEntry[],
  isExisting: (e: unknown) => { spec: JobSpec | null; state: string } | null,
  describe: (e: unknown) => string,
): Promise<ApplyOutcome[]> {
  const out: ApplyOutcome[] = [];
  for (const e of entries) {
    if (e.error) {
      out.push({ index: e.index, name: e.name, result: 'failed', detail: e.error.message });
      continue;
    }
    try {
      const { workflowId } = await starter.start(e.spec);
      out.push({ index: e.index, name: e.name, result: 'applied', detail: `started (${workflowId})` });
    } catch (err) {
      const existing = isExisting(err);
      if (existing && existing.spec && sameSpec(existing.spec, e.spec))
        out.push({
          index: e.index,
          name: e.name,
          result: 'unchanged',
          detail: `running with the same spec (${existing.state})`,
        });
      else if (existing)
        out.push({
          index: e.index,
          name: e.name,
          result: 'failed',
          detail: `exists (cancel it first to change it: kybernate cancel ${e.name}; state ${existing.state})`,
        });
      else out.push({ index: e.index, name: e.name, result: 'failed', detail: describe(err) });
    }
  }
  return out;
}
