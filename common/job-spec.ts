/**
 * Bounds and the schema of a JobSpec (common/job.ts). The client checks each field as it converts flags or a
 * YAML entry (clients/job-flags.ts, naming the flag or key); parseJobSpec checks the whole spec again, so that a
 * spec built without the client (the API, a crafted workflow input) gets the same answer, naming the spec's
 * field. Pure (zod only): safe in workflow code.
 */
import { z } from 'zod';
import { bytesProblem, MAX_DURATION_MS, MIN_DURATION_MS } from './bounds';
import { InvalidInputError, printable, SAFE_ID } from './ids';
import type { JobSpec } from './job';
import { ReadinessSchema } from './readiness';

const TiB = 1024 ** 4;
const DAY_MS = 24 * 3600 * 1000;

/** Memory limit: above any host today (the largest have a few TiB), while `1e30` or `1000TiB` is refused. */
export const MAX_JOB_MEMORY_BYTES = 64 * TiB;
/** CPU cores: fractions down to a thousandth of a core (Kubernetes' millicores, the CFS quota's granularity). */
export const MAX_JOB_CPU = 1024;
/** Linux's pid_max ceiling. */
export const MAX_JOB_PIDS = 4194304;
/** A job's wall-clock limit: from 1 s to a year (training runs outlive the week that bounds other durations). */
export const MAX_JOB_TIMEOUT_MS = 365 * DAY_MS;
export const MAX_PRIORITY = 10;
export const MAX_MAX_RESTARTS = 1000;
/** Periodic checkpoints: no more often than every 10 s (each one freezes the job for its dump). */
export const MIN_CHECKPOINT_EVERY_MS = 10_000;
export const MAX_KEEP = 1000;
export const JOB_TIERS = ['critical', 'normal'] as const;
export const RESTART_POLICIES = ['Always', 'OnFailure', 'Never'] as const;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,255}$/;

const wholeIn = (n: number, min: number, max: number, what: string): string | null =>
  Number.isInteger(n) && n >= min && n <= max
    ? null
    : `must be a whole number${what ? ` ${what}` : ''} from ${min} to ${max} (got ${n})`;

/** What is wrong with each number of a spec, or null. Shared by the client (naming its flag) and the schema. */
export const jobValueProblem = {
  vramBytes: (n: number): string | null => bytesProblem(n),
  memoryBytes: (n: number): string | null =>
    n === 0 ? 'must be more than 0 bytes (leave it out for no limit)' : bytesProblem(n, MAX_JOB_MEMORY_BYTES),
  cpu: (n: number): string | null => {
    if (!Number.isFinite(n) || n <= 0 || n > MAX_JOB_CPU)
      return `must be a number of cores above 0 and at most ${MAX_JOB_CPU} (got ${n})`;
    // 0.5 and 2.25 are fine; 0.0001 of a core is below what a CFS quota can express.
    if (Math.abs(Math.round(n * 1000) - n * 1000) > 1e-6)
      return `must be a whole number of thousandths of a core (got ${n})`;
    return null;
  },
  pids: (n: number): string | null => wholeIn(n, 1, MAX_JOB_PIDS, 'of processes'),
  timeoutMs: (n: number): string | null =>
    Number.isInteger(n) && n >= MIN_DURATION_MS && n <= MAX_JOB_TIMEOUT_MS
      ? null
      : `must be from 1s to 365d (got ${n} ms)`,
  priority: (n: number): string | null => wholeIn(n, 0, MAX_PRIORITY, ''),
  maxRestarts: (n: number): string | null => wholeIn(n, 0, MAX_MAX_RESTARTS, 'of restarts'),
  backoffMs: (n: number): string | null =>
    Number.isInteger(n) && n >= MIN_DURATION_MS && n <= MAX_DURATION_MS ? null : `must be from 1s to 7d (got ${n} ms)`,
  checkpointEveryMs: (n: number): string | null =>
    Number.isInteger(n) && n >= MIN_CHECKPOINT_EVERY_MS && n <= MAX_JOB_TIMEOUT_MS
      ? null
      : `must be from 10s to 365d (got ${n} ms)`,
  keep: (n: number): string | null => wholeIn(n, 1, MAX_KEEP, 'of checkpoints'),
  evictAfterMs: (n: number): string | null =>
    Number.isInteger(n) && n >= MIN_DURATION_MS && n <= MAX_DURATION_MS ? null : `must be from 1s to 7d (got ${n} ms)`,
} as const;

/** What is wrong with a job's command, or null: a non-empty list of strings, the program non-empty, no NUL. */
export function commandProblem(command: unknown): { index: number | null; problem: string } | null {
  if (!Array.isArray(command) || command.length === 0)
    return { index: null, problem: 'is required: a program and its arguments (after --)' };
  if (command.length > 4096)
    return { index: null, problem: `has ${command.length} arguments, at most 4096 are allowed` };
  for (let i = 0; i < command.length; i++) {
    const a: unknown = command[i];
    if (typeof a !== 'string') return { index: i, problem: `must be a string (got ${typeof a})` };
    if (a.includes('\u0000')) return { index: i, problem: 'must not contain a NUL character' };
  }
  if ((command[0] as string).trim() === '') return { index: 0, problem: 'the program must not be empty' };
  return null;
}

const refined = (check: (n: number) => string | null) =>
  z.number().superRefine((n, ctx) => {
    const p = check(n);
    if (p) ctx.addIssue({ code: 'custom', message: p });
  });

const jobId = z.string().superRefine((s, ctx) => {
  if (s.includes('/') || s.includes('\\'))
    ctx.addIssue({ code: 'custom', message: `must not contain a path separator (got '${s}')` });
  else if (s.includes('..')) ctx.addIssue({ code: 'custom', message: `must not contain '..' (got '${s}')` });
  else if (!SAFE_ID.test(s))
    ctx.addIssue({
      code: 'custom',
      message: `must be 1-128 characters of letters, digits, '.', '_' or '-', starting with a letter or digit (got '${s}')`,
    });
});
const noNul = z.string().refine((s) => !s.includes('\u0000'), 'must not contain a NUL character');

export const JobSpecSchema = z
  .object({
    jobId,
    command: z.array(z.string()).superRefine((c, ctx) => {
      const p = commandProblem(c);
      if (p) ctx.addIssue({ code: 'custom', message: p.problem, path: p.index === null ? [] : [p.index] });
    }),
    cwd: noNul.refine((s) => s.startsWith('/'), 'must be an absolute path').optional(),
    env: z.record(z.string().regex(ENV_NAME, 'must be a variable name of letters, digits and _'), noNul).optional(),
    user: z
      .object({ uid: z.number().int().min(1).max(4294967294), gid: z.number().int().min(0).max(4294967294).optional() })
      .strict()
      .optional(),
    node: z
      .string()
      .regex(SAFE_ID, "must be 1-128 characters of letters, digits, '.', '_' or '-', starting with a letter or digit")
      .optional(),
    vramBytes: refined(jobValueProblem.vramBytes),
    limits: z
      .object({
        cpu: refined(jobValueProblem.cpu).optional(),
        memoryBytes: refined(jobValueProblem.memoryBytes).optional(),
        pids: refined(jobValueProblem.pids).optional(),
      })
      .strict(),
    timeoutMs: refined(jobValueProblem.timeoutMs).optional(),
    priority: refined(jobValueProblem.priority),
    tier: z.enum(JOB_TIERS),
    restartPolicy: z.enum(RESTART_POLICIES),
    maxRestarts: refined(jobValueProblem.maxRestarts),
    backoff: z
      .object({
        initialMs: refined(jobValueProblem.backoffMs),
        capMs: refined(jobValueProblem.backoffMs),
        resetAfterMs: refined(jobValueProblem.backoffMs),
      })
      .strict()
      .superRefine((b, ctx) => {
        if (b.capMs < b.initialMs)
          ctx.addIssue({
            code: 'custom',
            message: `must not be below the initial backoff (${b.capMs} ms < ${b.initialMs} ms)`,
            path: ['capMs'],
          });
      }),
    checkpointEveryMs: refined(jobValueProblem.checkpointEveryMs).optional(),
    keep: refined(jobValueProblem.keep).optional(),
    readiness: ReadinessSchema.optional(),
    evictAfterMs: refined(jobValueProblem.evictAfterMs).optional(),
  })
  .strict()
  .superRefine((s, ctx) => {
    if (s.keep !== undefined && s.checkpointEveryMs === undefined)
      ctx.addIssue({
        code: 'custom',
        message: 'needs checkpointEveryMs: only periodic checkpoints are kept or deleted',
        path: ['keep'],
      });
  });

/**
 * A whole JobSpec, checked: the spec itself, or an InvalidInputError naming the first bad field by its path in
 * the spec (`limits.memoryBytes: must be at most ...`). Never a multi-line ZodError dump.
 */
export function parseJobSpec(value: unknown): JobSpec {
  const r = JobSpecSchema.safeParse(value);
  if (r.success) return r.data;
  const issue = r.error.issues[0];
  const field = issue.path.length
    ? issue.path
        .map((p) => (typeof p === 'number' ? `[${p}]` : String(p)))
        .join('.')
        .replace(/\.\[/g, '[')
    : 'spec';
  throw new InvalidInputError(field, printable(issue.message));
}
