import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { Connection } from '@temporalio/client';
import { DefaultLogger, NativeConnection, Runtime, Worker } from '@temporalio/worker';
import { KybernateClient } from '../../clients/api';
import { temporalConnectionOptions } from '../../common/config';
import { hasPoller } from '../../deploy/local/workers';
import { loadConfig } from '../../workers/config';
import { stack } from '../support/stack';

/**
 * Temporal over mutual TLS, configured the production way (TEMPORAL_TLS_* through @temporalio/envconfig). The
 * dev server has no TLS flags (`temporal server start-dev --help` lists none), so a TLS terminator in this
 * process fronts the test stack's Temporal: it presents a server certificate from our own CA for a name that
 * is not the address (so TEMPORAL_TLS_SERVER_NAME matters), demands a client certificate from the same CA, and
 * passes the decrypted HTTP/2 on. What is proven is our side: the client and a worker verify the server and
 * present their certificate; without the CA they are refused.
 */
const SERVER_NAME = 'temporal.kybernate.test';
let dir: string;
let server: tls.Server;
let port: number;
const sockets = new Set<net.Socket>();

function openssl(...args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
}

beforeAll(async () => {
  // The worker's state changes would be console noise in the suite's output.
  Runtime.install({ logger: new DefaultLogger('ERROR') });
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kyb-tls-'));
  openssl(
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    'ca.key',
    '-out',
    'ca.pem',
    '-days',
    '1',
    '-subj',
    '/CN=kybernate test CA',
  );
  for (const [name, cn, ext] of [
    ['server', SERVER_NAME, `subjectAltName=DNS:${SERVER_NAME}\nextendedKeyUsage=serverAuth`],
    ['client', 'kybernate-worker', 'extendedKeyUsage=clientAuth'],
  ]) {
    fs.writeFileSync(path.join(dir, `${name}.ext`), `${ext}\n`);
    openssl(
      'req',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      `${name}.key`,
      '-out',
      `${name}.csr`,
      '-subj',
      `/CN=${cn}`,
    );
    openssl(
      'x509',
      '-req',
      '-in',
      `${name}.csr`,
      '-CA',
      'ca.pem',
      '-CAkey',
      'ca.key',
      '-CAcreateserial',
      '-out',
      `${name}.pem`,
      '-days',
      '1',
      '-extfile',
      `${name}.ext`,
    );
  }
  const read = (f: string): Buffer => fs.readFileSync(path.join(dir, f));
  const [host, upstreamPort] = stack().temporal.address.split(':');
  server = tls.createServer(
    {
      key: read('server.key'),
      cert: read('server.pem'),
      ca: read('ca.pem'),
      requestCert: true,
      rejectUnauthorized: true,
      ALPNProtocols: ['h2'],
    },
    (down) => {
      const up = net.connect(Number(upstreamPort), host);
      for (const s of [down, up]) {
        sockets.add(s);
        s.on('close', () => sockets.delete(s));
        s.on('error', () => undefined);
      }
      down.pipe(up).pipe(down);
    },
  );
  // A refused handshake (the point of one test) is not an error of the test.
  server.on('tlsClientError', () => undefined);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as net.AddressInfo).port;
});

afterAll(async () => {
  for (const s of sockets) s.destroy();
  if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  fs.rmSync(dir, { recursive: true, force: true });
});

/** The configuration a production worker would build from its environment: only TEMPORAL_* and KYBERNATE_S3_*. */
const tlsEnv = (extra: Record<string, string> = {}): NodeJS.ProcessEnv => ({
  HOME: dir,
  TEMPORAL_ADDRESS: `127.0.0.1:${port}`,
  TEMPORAL_NAMESPACE: stack().temporal.namespace,
  TEMPORAL_TLS_SERVER_CA_CERT_PATH: path.join(dir, 'ca.pem'),
  TEMPORAL_TLS_CLIENT_CERT_PATH: path.join(dir, 'client.pem'),
  TEMPORAL_TLS_CLIENT_KEY_PATH: path.join(dir, 'client.key'),
  TEMPORAL_TLS_SERVER_NAME: SERVER_NAME,
  KYBERNATE_S3_BUCKET: stack().s3.bucket,
  ...extra,
});

describe('Temporal over mutual TLS', () => {
  test('the client and a worker connect through TLS with the configured CA, client certificate and server name', async () => {
    const cfg = loadConfig(tlsEnv());
    expect(cfg.temporal?.tls).toEqual(
      expect.objectContaining({ serverNameOverride: SERVER_NAME, clientCertPair: expect.anything() }),
    );
    const k = await KybernateClient.connect(cfg);
    try {
      const ns = await k.client.workflowService.describeNamespace({ namespace: cfg.namespace });
      expect(ns.namespaceInfo?.name).toBe(cfg.namespace);
    } finally {
      await k.close();
    }

    const queue = `tls-check-${process.pid}`;
    const connection = await NativeConnection.connect(temporalConnectionOptions(cfg));
    try {
      const worker = await Worker.create({
        connection,
        namespace: cfg.namespace,
        taskQueue: queue,
        activities: { ping: async () => 'pong' },
      });
      const running = worker.run();
      try {
        // Seen from the plain side of the terminator: the worker polls through TLS.
        const deadline = Date.now() + 30000;
        while (!(await hasPoller(stack().temporal.address, cfg.namespace, queue, 'activity'))) {
          if (Date.now() > deadline) throw new Error('the TLS worker never polled its queue');
          await new Promise((r) => setTimeout(r, 250));
        }
      } finally {
        worker.shutdown();
        await running;
      }
    } finally {
      await connection.close();
    }
  });

  test('a client that does not trust the CA, or presents no certificate, is refused', async () => {
    const noCa = loadConfig(tlsEnv({ TEMPORAL_TLS_SERVER_CA_CERT_PATH: '' }));
    await expect(Connection.connect({ ...temporalConnectionOptions(noCa), connectTimeout: 5000 })).rejects.toThrow();
    const noCert = loadConfig(tlsEnv({ TEMPORAL_TLS_CLIENT_CERT_PATH: '', TEMPORAL_TLS_CLIENT_KEY_PATH: '' }));
    expect(noCert.temporal?.tls).toEqual(expect.objectContaining({ clientCertPair: undefined }));
    await expect(Connection.connect({ ...temporalConnectionOptions(noCert), connectTimeout: 5000 })).rejects.toThrow();
  });
});
