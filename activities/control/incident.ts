import { ApplicationFailure } from '@temporalio/activity';
import pino, { type Logger } from 'pino';
import { ErrorType } from '../../common/errors';

/** What an incident tells the on-call: which job, where, and why (e.g. quarantined past its restart limit). */
export interface IncidentRecord {
  kind: string;
  jobId: string;
  node: string | null;
  message: string;
  at: string;
  /** S3 prefix of the diagnostics stored for it, if any. */
  diagnostics: string | null;
}

/** A webhook that does not answer within this is taken as down (Temporal retries the activity). */
export const WEBHOOK_TIMEOUT_MS = 10_000;

/**
 * raiseIncident: a pino record always, and a JSON POST to KYBERNATE_ALERT_WEBHOOK when it is set. A webhook
 * that fails (HTTP error, timeout, refused) throws a retryable failure, so Temporal retries it with backoff.
 */
export function createIncidentActivities(opts: { webhook?: string; logger?: Logger; timeoutMs?: number } = {}) {
  const logger =
    opts.logger ?? pino({ level: process.env.KYBERNATE_LOG_LEVEL ?? 'info', base: { component: 'incident' } });
  return {
    async raiseIncident(rec: IncidentRecord): Promise<{ posted: boolean }> {
      logger.error(
        { incident: rec.kind, job: rec.jobId, node: rec.node, diagnostics: rec.diagnostics, at: rec.at },
        rec.message,
      );
      const webhook = opts.webhook ?? process.env.KYBERNATE_ALERT_WEBHOOK;
      if (!webhook) return { posted: false };
      let res: Response;
      try {
        res = await fetch(webhook, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify(rec),
          signal: AbortSignal.timeout(opts.timeoutMs ?? WEBHOOK_TIMEOUT_MS),
        });
      } catch (e) {
        throw ApplicationFailure.retryable(
          `alert webhook ${webhook}: ${(e as Error).message}`,
          ErrorType.WebhookFailed,
        );
      }
      // The body is drained either way so the connection is freed.
      const body = await res.text().catch(() => '');
      if (!res.ok)
        throw ApplicationFailure.retryable(
          `alert webhook ${webhook}: HTTP ${res.status} ${body.slice(0, 200)}`,
          ErrorType.WebhookFailed,
        );
      logger.info(
        { incident: rec.kind, job: rec.jobId, node: rec.node, status: res.status },
        'incident posted to the alert webhook',
      );
      return { posted: true };
    },
  };
}
