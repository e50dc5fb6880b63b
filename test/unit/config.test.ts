import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { makeS3Client } from '../../activities/s3-client';
import { temporalConnectionOptions } from '../../common/config';
import { ConfigError, describeConfig, loadConfig } from '../../workers/config';

const CLI = path.resolve(__dirname, '..', '..', 'dist', 'clients', 'cli.js');
let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kyb-config-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** An environment with nothing from this machine's: no HOME config file, no local stack. */
const env = (vars: Record<string, string>): NodeJS.ProcessEnv => ({ HOME: dir, ...vars });
const minimal = { TEMPORAL_ADDRESS: 'temporal.example:7233', KYBERNATE_S3_BUCKET: 'checkpoints' };

function problems(vars: Record<string, string>): string[] {
  try {
    loadConfig(env(vars));
  } catch (e) {
    if (e instanceof ConfigError) return e.problems;
    throw e;
  }
  throw new Error('loadConfig accepted the configuration');
}

describe('loadConfig', () => {
  test('names each missing required setting', () => {
    expect(problems({})).toEqual([
      expect.stringMatching(/^TEMPORAL_ADDRESS: required/),
      expect.stringMatching(/^KYBERNATE_S3_BUCKET: required/),
    ]);
  });

  test('names each malformed setting, and never quotes a secret', () => {
    const p = problems({
      ...minimal,
      KYBERNATE_S3_BUCKET: 'Bad_Bucket',
      KYBERNATE_S3_ENDPOINT: 'minio:9000',
      KYBERNATE_S3_FORCE_PATH_STYLE: 'yes',
      KYBERNATE_TEMPORAL_ADDRESS: 'no-port',
    });
    expect(p).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^KYBERNATE_S3_BUCKET: must be an S3 bucket name/),
        expect.stringMatching(/^KYBERNATE_S3_ENDPOINT: must be an http\(s\) URL/),
        expect.stringMatching(/^KYBERNATE_S3_FORCE_PATH_STYLE: /),
        expect.stringMatching(/^KYBERNATE_TEMPORAL_ADDRESS: must be host:port/),
      ]),
    );
    const half = problems({ ...minimal, KYBERNATE_S3_SECRET_ACCESS_KEY: 'sekret-value-1' });
    expect(half).toEqual(['KYBERNATE_S3_ACCESS_KEY_ID: required with KYBERNATE_S3_SECRET_ACCESS_KEY']);
    expect(half.join('\n')).not.toContain('sekret-value-1');
  });

  test('heartbeat interval and node timeout: whole milliseconds in bounds, the timeout at least twice the interval', () => {
    expect(loadConfig(env(minimal)).liveness).toBeUndefined();
    expect(
      loadConfig(env({ ...minimal, KYBERNATE_HEARTBEAT_MS: '500', KYBERNATE_NODE_TIMEOUT_MS: '2000' })).liveness,
    ).toEqual({ heartbeatMs: 500, nodeTimeoutMs: 2000 });
    expect(problems({ ...minimal, KYBERNATE_HEARTBEAT_MS: '5s' })).toEqual([
      expect.stringMatching(/^KYBERNATE_HEARTBEAT_MS: must be a whole number of milliseconds/),
    ]);
    expect(problems({ ...minimal, KYBERNATE_NODE_TIMEOUT_MS: '10' })).toEqual([
      expect.stringMatching(/^KYBERNATE_NODE_TIMEOUT_MS: must be at least 100 ms/),
    ]);
    expect(problems({ ...minimal, KYBERNATE_HEARTBEAT_MS: '5000', KYBERNATE_NODE_TIMEOUT_MS: '6000' })).toEqual([
      expect.stringMatching(/^KYBERNATE_NODE_TIMEOUT_MS: must be at least twice KYBERNATE_HEARTBEAT_MS/),
    ]);
  });

  test('the control worker cache: a whole number of workflows, at least 2', () => {
    expect(loadConfig(env(minimal)).controlCachedWorkflows).toBeUndefined();
    expect(loadConfig(env({ ...minimal, KYBERNATE_CONTROL_CACHED_WORKFLOWS: '500' })).controlCachedWorkflows).toBe(500);
    expect(problems({ ...minimal, KYBERNATE_CONTROL_CACHED_WORKFLOWS: '1' })).toEqual([
      expect.stringMatching(/^KYBERNATE_CONTROL_CACHED_WORKFLOWS: must be at least 2/),
    ]);
    expect(problems({ ...minimal, KYBERNATE_CONTROL_CACHED_WORKFLOWS: 'lots' })).toEqual([
      expect.stringMatching(/^KYBERNATE_CONTROL_CACHED_WORKFLOWS: must be a whole number of workflows/),
    ]);
  });

  test('a TLS file that cannot be read, or a client cert without its key, stops the start', () => {
    expect(problems({ ...minimal, TEMPORAL_TLS_SERVER_CA_CERT_PATH: path.join(dir, 'nope.pem') })).toEqual([
      `TEMPORAL_TLS_SERVER_CA_CERT_PATH: cannot read ${path.join(dir, 'nope.pem')} (ENOENT)`,
    ]);
    const crt = path.join(dir, 'c.pem');
    fs.writeFileSync(crt, 'x');
    expect(problems({ ...minimal, TEMPORAL_TLS_CLIENT_CERT_PATH: crt })).toEqual([
      'TEMPORAL_TLS_CLIENT_KEY_PATH: required with a client certificate',
    ]);
  });

  test('a TOML profile gives address, namespace, TLS and API key; TEMPORAL_* overrides it; KYBERNATE_TEMPORAL_ADDRESS wins', () => {
    const ca = path.join(dir, 'ca.pem');
    fs.writeFileSync(ca, 'CA BYTES');
    const file = path.join(dir, 'temporal.toml');
    fs.writeFileSync(
      file,
      [
        '[profile.prod]',
        'address = "prod.tmprl.cloud:7233"',
        'namespace = "prod-ns"',
        'api_key = "key-in-file"',
        '[profile.prod.tls]',
        `server_ca_cert_path = "${ca}"`,
        'server_name = "prod.internal"',
        '',
      ].join('\n'),
    );
    const base = { TEMPORAL_CONFIG_FILE: file, TEMPORAL_PROFILE: 'prod', KYBERNATE_S3_BUCKET: 'b-1' };
    const cfg = loadConfig(env(base));
    expect(cfg.temporalAddress).toBe('prod.tmprl.cloud:7233');
    expect(cfg.namespace).toBe('prod-ns');
    expect(cfg.temporal?.apiKey).toBe('key-in-file');
    expect(cfg.temporal?.tls).toEqual(
      expect.objectContaining({
        serverNameOverride: 'prod.internal',
        serverRootCACertificate: Buffer.from('CA BYTES'),
      }),
    );
    expect(temporalConnectionOptions(cfg)).toEqual(
      expect.objectContaining({ address: 'prod.tmprl.cloud:7233', apiKey: 'key-in-file', tls: cfg.temporal?.tls }),
    );

    const over = loadConfig(
      env({ ...base, TEMPORAL_ADDRESS: 'other:7233', TEMPORAL_NAMESPACE: 'other-ns', TEMPORAL_API_KEY: 'key-in-env' }),
    );
    expect([over.temporalAddress, over.namespace, over.temporal?.apiKey]).toEqual([
      'other:7233',
      'other-ns',
      'key-in-env',
    ]);
    expect(loadConfig(env({ ...base, KYBERNATE_TEMPORAL_ADDRESS: 'mine:1' })).temporalAddress).toBe('mine:1');
    expect(problems({ ...base, TEMPORAL_PROFILE: 'staging' })).toEqual([
      expect.stringMatching(/^TEMPORAL_CONFIG_FILE\/TEMPORAL_PROFILE: .*staging/),
    ]);
  });

  test('the environment wins over the defaults (the local stack), which win over built-in defaults', () => {
    const defaults = {
      temporalAddress: 'local:1',
      namespace: 'ns-local',
      s3: {
        endpoint: 'http://127.0.0.1:9000',
        bucket: 'local-b',
        region: 'eu-west-1',
        accessKeyId: 'k',
        secretAccessKey: 's',
      },
    };
    const local = loadConfig(env({}), defaults);
    expect(local).toEqual({
      temporalAddress: 'local:1',
      namespace: 'ns-local',
      temporal: {},
      uiUrl: null,
      s3: { ...defaults.s3, forcePathStyle: true },
    });
    const mixed = loadConfig(
      env({ KYBERNATE_S3_ENDPOINT: 'http://proxy:1', KYBERNATE_S3_SECRET_ACCESS_KEY: 's2' }),
      defaults,
    );
    expect(mixed.s3).toEqual({
      ...defaults.s3,
      endpoint: 'http://proxy:1',
      secretAccessKey: 's2',
      forcePathStyle: true,
    });
  });

  test('without static keys S3 takes the SDK default chain, at the AWS endpoint with virtual-hosted URLs unless told otherwise', async () => {
    const cfg = loadConfig(env({ ...minimal, AWS_REGION: 'eu-central-1' }));
    expect(cfg.s3).toEqual({ region: 'eu-central-1', bucket: 'checkpoints', forcePathStyle: false });
    expect(describeConfig(cfg)).toEqual(
      expect.objectContaining({ s3Credentials: 'default chain', s3: 'aws:eu-central-1' }),
    );
    const saved = { id: process.env.AWS_ACCESS_KEY_ID, secret: process.env.AWS_SECRET_ACCESS_KEY };
    process.env.AWS_ACCESS_KEY_ID = 'AKIAFROMCHAIN';
    process.env.AWS_SECRET_ACCESS_KEY = 'chain-secret';
    const client = makeS3Client(cfg.s3);
    try {
      const creds = await client.config.credentials();
      expect(creds.accessKeyId).toBe('AKIAFROMCHAIN');
      expect(await client.config.forcePathStyle).toBe(false);
    } finally {
      client.destroy();
      for (const [k, v] of [
        ['AWS_ACCESS_KEY_ID', saved.id],
        ['AWS_SECRET_ACCESS_KEY', saved.secret],
      ] as const) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });
});

describe('a worker process', () => {
  /** `kybernate worker` in an empty home (no local stack), with only these variables besides PATH. */
  const worker = (vars: Record<string, string>) =>
    spawnSync(process.execPath, [CLI, 'worker'], {
      env: { PATH: process.env.PATH ?? '', HOME: dir, KYBERNATE_HOME: path.join(dir, 'no-stack'), ...vars },
      encoding: 'utf8',
      timeout: 30000,
    });

  test('started with a bad value exits non-zero with a message naming the variable', () => {
    const r = worker({ ...minimal, KYBERNATE_S3_BUCKET: 'Bad_Bucket' });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/KYBERNATE_S3_BUCKET: must be an S3 bucket name/);
  });

  test('started with an API key and an S3 secret logs neither, even when it cannot connect', () => {
    const secrets = {
      TEMPORAL_API_KEY: 'api-key-canary-1234',
      KYBERNATE_S3_ACCESS_KEY_ID: 'AKIACANARY',
      KYBERNATE_S3_SECRET_ACCESS_KEY: 'secret-canary-5678',
    };
    // Nothing listens on port 1: the worker logs its start, fails to connect and exits.
    const r = worker({ ...minimal, TEMPORAL_ADDRESS: '127.0.0.1:1', ...secrets });
    const out = `${r.stdout}\n${r.stderr}`;
    expect(r.status).not.toBe(0);
    expect(out).toMatch(/"msg":"control worker starting"/);
    expect(out).toMatch(/"temporalApiKey":"set"/);
    expect(out).not.toContain(secrets.TEMPORAL_API_KEY);
    expect(out).not.toContain(secrets.KYBERNATE_S3_SECRET_ACCESS_KEY);
  });
});
