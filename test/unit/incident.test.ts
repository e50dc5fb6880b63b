import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { ApplicationFailure } from '@temporalio/activity';
import pino from 'pino';
import { createIncidentActivities, type IncidentRecord } from '../../activities/control/incident';

/** A real HTTP server answering each POST with the given status (or not at all), recording what it got. */
async function webhook(
  answer: number | 'never',
): Promise<{ url: string; got: { method: string; type: string; body: string }[]; close: () => Promise<void> }> {
  const got: { method: string; type: string; body: string }[] = [];
  const srv = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString('utf8')));
    req.on('end', () => {
      got.push({ method: req.method ?? '', type: req.headers['content-type'] ?? '', body });
      if (answer === 'never') return; // hangs: the caller's timeout must end it
      res.writeHead(answer, { 'content-type': 'text/plain' }).end(answer >= 400 ? 'boom' : 'ok');
    });
  });
  await new Promise<void>((res) => srv.listen(0, '127.0.0.1', () => res()));
  const url = `http://127.0.0.1:${(srv.address() as AddressInfo).port}/hook`;
  return {
    url,
    got,
    close: () =>
      new Promise<void>((res) => {
        srv.closeAllConnections();
        srv.close(() => res());
      }),
  };
}

function capture(): { logger: pino.Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(JSON.parse(chunk.toString('utf8')) as Record<string, unknown>);
      cb();
    },
  });
  return { logger: pino({ level: 'info' }, stream), lines };
}

const rec: IncidentRecord = {
  kind: 'job-quarantined',
  jobId: 'train-1',
  node: 'node-a',
  message: 'restart limit (10) reached: exit code 1',
  at: '2026-11-27T15:00:00.000Z',
  diagnostics: 'diagnostics/train-1/2026-11-27T15:00:00.000Z/',
};

describe('raiseIncident', () => {
  test('without a webhook: a pino record naming job and node, nothing posted', async () => {
    const { logger, lines } = capture();
    const r = await createIncidentActivities({ logger, webhook: '' }).raiseIncident(rec);
    expect(r).toEqual({ posted: false });
    expect(lines[0]).toMatchObject({ incident: 'job-quarantined', job: 'train-1', node: 'node-a', msg: rec.message });
  });

  test('with a webhook: the incident POSTed as JSON', async () => {
    const hook = await webhook(204);
    try {
      const { logger } = capture();
      const r = await createIncidentActivities({ logger, webhook: hook.url }).raiseIncident(rec);
      expect(r).toEqual({ posted: true });
      expect(hook.got).toHaveLength(1);
      expect(hook.got[0].method).toBe('POST');
      expect(hook.got[0].type).toBe('application/json');
      expect(JSON.parse(hook.got[0].body)).toEqual(rec);
    } finally {
      await hook.close();
    }
  });

  test('an HTTP error throws a retryable WebhookFailed (Temporal retries it with backoff)', async () => {
    const hook = await webhook(503);
    try {
      const err = await createIncidentActivities({ logger: capture().logger, webhook: hook.url })
        .raiseIncident(rec)
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ApplicationFailure);
      expect((err as ApplicationFailure).type).toBe('WebhookFailed');
      expect((err as ApplicationFailure).nonRetryable).toBe(false);
      expect((err as ApplicationFailure).message).toContain('HTTP 503');
    } finally {
      await hook.close();
    }
  });

  test('a webhook that never answers is cut off by the timeout, retryable', async () => {
    const hook = await webhook('never');
    try {
      const t0 = Date.now();
      const err = await createIncidentActivities({ logger: capture().logger, webhook: hook.url, timeoutMs: 500 })
        .raiseIncident(rec)
        .catch((e: unknown) => e);
      expect(Date.now() - t0).toBeLessThan(5000);
      expect((err as ApplicationFailure).type).toBe('WebhookFailed');
      expect((err as ApplicationFailure).nonRetryable).toBe(false);
    } finally {
      await hook.close();
    }
  });

  test('a webhook nobody listens on: retryable WebhookFailed', async () => {
    const hook = await webhook(200);
    await hook.close();
    const err = await createIncidentActivities({ logger: capture().logger, webhook: hook.url })
      .raiseIncident(rec)
      .catch((e: unknown) => e);
    expect((err as ApplicationFailure).type).toBe('WebhookFailed');
  });
});
