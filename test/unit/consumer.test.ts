/**
 * The package as another project gets it: `npm pack` of this repo (dist/ as built by tsc), unpacked into a
 * consumer project's node_modules/kybernate with the repo's node_modules beside it (no network: the registry
 * is not asked for anything), then `require('kybernate')` and a tsc type-check of a consumer file against the
 * packed .d.ts, resolving through package.json `exports` (module node16).
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const ROOT = path.resolve(__dirname, '../..');
const TSC = path.join(ROOT, 'node_modules/typescript/bin/tsc');
let tmp: string;
let consumer: string;

/** A command's stdout; when it fails, an error carrying its stdout and stderr (tsc reports on stdout). */
function run(cmd: string, args: string[], cwd: string): string {
  try {
    return execFileSync(cmd, args, { cwd, encoding: 'utf8', timeout: 90_000, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    const { stdout, stderr } = e as { stdout?: string; stderr?: string };
    throw new Error(`${cmd} ${args.join(' ')} failed:\n${stdout ?? ''}${stderr ?? ''}`, { cause: e });
  }
}

beforeAll(() => {
  if (!fs.existsSync(path.join(ROOT, 'dist/clients/index.d.ts')))
    throw new Error('dist/ is not built with declarations: run npx tsc -p tsconfig.json');
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kybernate-consumer-'));
  const packed = JSON.parse(run('npm', ['pack', '--pack-destination', tmp, '--json', '--ignore-scripts'], ROOT)) as {
    filename: string;
  }[];
  consumer = path.join(tmp, 'consumer');
  const pkgDir = path.join(consumer, 'node_modules/kybernate');
  fs.mkdirSync(pkgDir, { recursive: true });
  run('tar', ['-xzf', path.join(tmp, packed[0].filename), '-C', pkgDir, '--strip-components=1'], tmp);
  // The package's dependencies: the repo's own installed copies (the same pinned versions npm would install).
  fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(pkgDir, 'node_modules'));
  fs.symlinkSync(path.join(ROOT, 'node_modules/@types'), path.join(consumer, 'node_modules/@types'));
  fs.writeFileSync(
    path.join(consumer, 'package.json'),
    JSON.stringify({ name: 'consumer', version: '1.0.0', private: true }),
  );
}, 120_000);

afterAll(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

test('the tarball holds the library and its declarations, not the tests', () => {
  const dist = path.join(consumer, 'node_modules/kybernate/dist');
  expect(fs.existsSync(path.join(dist, 'clients/index.js'))).toBe(true);
  expect(fs.existsSync(path.join(dist, 'clients/index.d.ts'))).toBe(true);
  expect(fs.existsSync(path.join(dist, 'test'))).toBe(false);
  expect(fs.existsSync(path.join(dist, 'bench'))).toBe(false);
});

test("require('kybernate') gives the client, its errors and resultOf; deep paths are closed by exports", () => {
  const script = `
    const k = require('kybernate');
    let deep = 'open';
    try { require('kybernate/dist/clients/api'); } catch (e) { deep = e.code; }
    console.log(JSON.stringify({
      names: Object.keys(k).sort(),
      connect: typeof k.KybernateClient.connect,
      code: new k.UnavailableError('S3', 'here', 'down').code,
      isKybernateError: new k.UnavailableError('S3', 'here', 'down') instanceof k.KybernateError,
      deep,
    }));`;
  const out = JSON.parse(run(process.execPath, ['-e', script], consumer)) as {
    names: string[];
    connect: string;
    code: string;
    isKybernateError: boolean;
    deep: string;
  };
  expect(out.names).toEqual(
    expect.arrayContaining([
      'KybernateClient',
      'JobsApi',
      'JobExistsError',
      'KybernateError',
      'UnavailableError',
      'WorkflowFailedWithoutStatusError',
      'InvalidInputError',
      'describeError',
      'resultOf',
      'statusFromFailure',
      'isCheckpointStatus',
      'isRestoreStatus',
      'isMigrateStatus',
      'isJobStatus',
    ]),
  );
  expect(out.connect).toBe('function');
  expect(out.code).toBe('UNAVAILABLE');
  expect(out.isKybernateError).toBe(true);
  expect(out.deep).toBe('ERR_PACKAGE_PATH_NOT_EXPORTED');
});

test('a consumer .ts type-checks against the packed types, and wrong calls are refused', () => {
  fs.writeFileSync(
    path.join(consumer, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        strict: true,
        module: 'node16',
        moduleResolution: 'node16',
        target: 'ES2022',
        noEmit: true,
        skipLibCheck: true,
        types: ['node'],
      },
      files: ['use.ts'],
    }),
  );
  fs.writeFileSync(
    path.join(consumer, 'use.ts'),
    `
import { KybernateClient, type CheckpointStatus, type ErrorCode, type JobStatus, type RestoreStatus, describeError } from 'kybernate';
export async function checkpointAndRestore(k: KybernateClient): Promise<[CheckpointStatus, RestoreStatus, JobStatus]> {
  const c = await k.checkpoint({ target: 'job-1', node: 'node-a', leaveRunning: true }, (s) => console.log(s.phase));
  const r = await k.restore({ checkpointId: c.checkpointId });
  const j = await k.describeJob('job-1');
  return [c, r, j];
}
export const code: ErrorCode = describeError(new Error('x')).code;
// The types are real, not any: were they, these lines would have no error and tsc would fail on the directives.
// @ts-expect-error node is a string
export const wrongArgument = (k: KybernateClient) => k.checkpoint({ target: 'job-1', node: 42 });
// @ts-expect-error no such code
export const wrongCode: ErrorCode = 'NO_SUCH_CODE';
`,
  );
  expect(run(process.execPath, [TSC, '-p', 'tsconfig.json'], consumer)).toBe('');
});
