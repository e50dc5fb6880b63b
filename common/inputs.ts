import { z } from 'zod';
import { bytesProblem, durationProblem } from './bounds';
import { printable, SAFE_ID } from './ids';
import { ReadinessSchema } from './readiness';

/**
 * Schemas of the workflows' inputs. The client validates the same things first (with friendlier messages);
 * these make a crafted input, started without the client, fail at once with one line naming the field,
 * before any activity runs. Pure: safe in workflow code.
 */

const id = z
  .string()
  .regex(SAFE_ID, "must be 1-128 characters of letters, digits, '.', '_' or '-', starting with a letter or digit");
const bytes = z.number().superRefine((n, ctx) => {
  const p = bytesProblem(n);
  if (p) ctx.addIssue({ code: 'custom', message: p });
});
const duration = z.string().superRefine((s, ctx) => {
  const p = durationProblem(s);
  if (p) ctx.addIssue({ code: 'custom', message: p });
});

export const CheckpointRequestSchema = z.object({
  checkpointId: id,
  jobId: id,
  node: id,
  pid: z.number().int().min(2).max(4194304).optional(),
  leaveRunning: z.boolean(),
  reason: z.enum(['manual', 'preemption']),
  vramBytes: bytes.optional(),
  uploadMaxAttempts: z.number().int().min(1).max(1000).optional(),
});

export const RestoreRequestSchema = z.object({
  checkpointId: id,
  node: id.optional(),
  prefer: z.array(id).optional(),
  exclude: z.array(id).optional(),
  vramBytes: bytes.optional(),
  placementDeadline: duration.optional(),
  readiness: ReadinessSchema.optional(),
});

export const MigrateInputSchema = z.object({
  jobId: id,
  from: id,
  to: id,
  checkpointId: id,
  vramBytes: bytes.optional(),
  placementDeadline: duration.optional(),
  readiness: ReadinessSchema.optional(),
});

/**
 * The first problem with an input as one printable line, `field: why` (with a count of any further ones), or
 * null when it is valid. Never a multi-line ZodError dump.
 */
export function inputProblem(schema: z.ZodType, value: unknown): string | null {
  const r = schema.safeParse(value);
  if (r.success) return null;
  const [first, ...rest] = r.error.issues;
  const field = first.path.length ? first.path.map(String).join('.') : 'input';
  return printable(
    `${field}: ${first.message}${rest.length ? ` (and ${rest.length} more problem${rest.length > 1 ? 's' : ''})` : ''}`,
  );
}
