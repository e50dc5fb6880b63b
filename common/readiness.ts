/**
 * A readiness probe declared on a restore or migration, in the style of Kubernetes readiness probes: a restored
 * workload counts as Running only once it passes. Pure (zod only): safe in workflow code.
 */
import { z } from 'zod';
import { InvalidInputError } from './ids';

const timing = {
  /** Wait this long after the restore before the first probe. */
  initialDelaySeconds: z.number().min(0).max(3600).optional(),
  /** Time between probes. */
  periodSeconds: z.number().positive().max(300).optional(),
  /** A probe that has not answered after this long failed. */
  timeoutSeconds: z.number().positive().max(300).optional(),
  /** This many failed probes in a row and the workload is not ready. */
  failureThreshold: z.number().int().min(1).max(1000).optional(),
};

const TcpSocketProbe = z
  .object({
    /** A TCP connect to host:port succeeds; the workload has its own PID namespace but the host's network. */
    tcpSocket: z.object({ port: z.number().int().min(1).max(65535), host: z.string().min(1).optional() }).strict(),
    ...timing,
  })
  .strict();

const ExecProbe = z
  .object({
    /** The command, run by the node's agent on the host, exits 0. */
    exec: z.object({ command: z.array(z.string()).min(1) }).strict(),
    ...timing,
  })
  .strict();

export const ReadinessSchema = z.union([TcpSocketProbe, ExecProbe]);
export type Readiness = z.infer<typeof ReadinessSchema>;

/** Defaults: one probe a second, one second each, ten failures in a row: a workload gets about ten seconds. */
export const READINESS_DEFAULTS = {
  initialDelaySeconds: 0,
  periodSeconds: 1,
  timeoutSeconds: 1,
  failureThreshold: 10,
} as const;

/** Validated readiness, or an InvalidInputError naming the field (e.g. `readiness.tcpSocket.port: ...`). */
export function parseReadiness(value: unknown, field = 'readiness'): Readiness {
  const obj = value !== null && typeof value === 'object' && !Array.isArray(value) ? value : null;
  const schema = obj && 'tcpSocket' in obj ? TcpSocketProbe : obj && 'exec' in obj ? ExecProbe : null;
  if (!schema) throw new InvalidInputError(field, 'needs either tcpSocket: { port } or exec: { command: [...] }');
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  const issue = r.error.issues[0];
  throw new InvalidInputError([field, ...issue.path.map(String)].join('.'), issue.message);
}

/** The probe with every timing field filled in. */
export function withDefaults(r: Readiness): Readiness & typeof READINESS_DEFAULTS {
  return { ...READINESS_DEFAULTS, ...r } as Readiness & typeof READINESS_DEFAULTS;
}

/** One line for logs and activity summaries. */
export function describeReadiness(r: Readiness): string {
  return 'tcpSocket' in r
    ? `tcp ${r.tcpSocket.host ?? '127.0.0.1'}:${r.tcpSocket.port}`
    : `exec ${JSON.stringify(r.exec.command)}`;
}
