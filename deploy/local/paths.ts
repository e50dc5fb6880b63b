import { createHash } from 'node:crypto';
import * as os from 'node:os';
import * as path from 'node:path';

import * as fs from 'node:fs';

/** The repository root, whether this runs from TypeScript sources (jest) or from dist/. */
function findRepoRoot(start: string): string {
  for (let dir = start; ; dir = path.dirname(dir)) {
    if (fs.existsSync(path.join(dir, 'deploy', 'local', 'versions.env'))) return dir;
    if (path.dirname(dir) === dir) throw new Error(`cannot find the kybernate repository above ${start}`);
  }
}
export const REPO_ROOT = findRepoRoot(__dirname);
export const CACHE_DIR = process.env.KYBERNATE_CACHE ?? path.join(os.homedir(), '.cache', 'kybernate');
/** Memory (tmpfs) where a local stack's agents stage dumps and fetches; one per stack home, removed by `down`. */
export const stagingRootFor = (home: string): string =>
  path.join('/dev/shm', `kybernate-${createHash('sha256').update(path.resolve(home)).digest('hex').slice(0, 12)}`);
/** Runtime state of a local stack: its ports, pids, data and logs. */
export const defaultStackHome = (): string => process.env.KYBERNATE_HOME ?? path.join(REPO_ROOT, '.kybernate');

function readVersions(): Record<string, string> {
  const text = fs.readFileSync(path.join(REPO_ROOT, 'deploy', 'local', 'versions.env'), 'utf8');
  const out: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^([A-Z_]+)=(.*)$/.exec(line.trim());
    if (m) out[m[1]] = m[2];
  }
  return out;
}
const v = readVersions();
/** The run shim is built from source (provision.sh shim): its cache directory is named for the source's hash. */
const shimSum = createHash('sha256')
  .update(fs.readFileSync(path.join(REPO_ROOT, 'deploy', 'native', 'kybernate-shim.c')))
  .digest('hex')
  .slice(0, 12);
export const BIN = {
  temporal: path.join(CACHE_DIR, `temporal-${v.TEMPORAL_CLI_VERSION}`, 'temporal'),
  minio: path.join(CACHE_DIR, `minio-${v.MINIO_VERSION}`, 'minio'),
  /** Built on demand (provision.sh mc), by the transfer bench only. */
  mc: path.join(CACHE_DIR, `mc-${v.MC_VERSION}`, 'mc'),
  toxiproxy: path.join(CACHE_DIR, `toxiproxy-${v.TOXIPROXY_VERSION}`, 'server'),
  criu: path.join(CACHE_DIR, `criu-${v.CRIU_DEB_VERSION}`, 'criu'),
  tini: path.join(CACHE_DIR, `tini-${v.TINI_DEB_VERSION}`, 'tini'),
  shim: path.join(CACHE_DIR, `shim-${shimSum}`, 'kybernate-shim'),
  testServer: path.join(CACHE_DIR, `temporal-test-server-${v.TEST_SERVER_VERSION}`, 'temporal-test-server'),
};
