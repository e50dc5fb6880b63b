import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CACHE_DIR, REPO_ROOT } from './paths';

/**
 * The stand-in CUDA driver for tests (deploy/native/standin-cuda): libcuda.so.1 and libnvidia-ml.so.1 that
 * prove the agent's calls, order, error handling and timing, not NVIDIA's driver. Built by
 * `provision.sh standin-cuda` into the cache under the sha256 of its sources (the same key as here).
 */
export const STANDIN_SRC = path.join(REPO_ROOT, 'deploy', 'native', 'standin-cuda');

export function standinCudaDir(): string {
  const files = fs
    .readdirSync(STANDIN_SRC)
    .filter((f) => f.endsWith('.c') || f.endsWith('.h') || f === 'build.sh')
    .sort();
  const h = createHash('sha256');
  for (const f of files) h.update(fs.readFileSync(path.join(STANDIN_SRC, f)));
  return path.join(CACHE_DIR, `standin-cuda-${h.digest('hex').slice(0, 12)}`);
}

/** Builds it when the cache lacks this version of the sources; returns the directory holding both libraries. */
export function ensureStandinCuda(): string {
  const dir = standinCudaDir();
  if (!fs.existsSync(path.join(dir, 'libcuda.so.1')) || !fs.existsSync(path.join(dir, 'libnvidia-ml.so.1'))) {
    execFileSync('bash', [path.join(REPO_ROOT, 'deploy', 'local', 'provision.sh'), 'standin-cuda'], {
      stdio: ['ignore', 'ignore', 'inherit'],
    });
  }
  if (!fs.existsSync(path.join(dir, 'libcuda.so.1'))) throw new Error(`provision.sh standin-cuda did not build ${dir}`);
  return dir;
}

/**
 * The environment an agent (and, through LD_LIBRARY_PATH, the workloads it starts) needs to use the stand-in
 * as its driver: `deviceDir` is that node's stand-in device (its device-memory files and standin.conf).
 */
export function standinAgentEnv(
  deviceDir: string,
  extra: { totalBytes?: number; faults?: string } = {},
): Record<string, string> {
  fs.mkdirSync(deviceDir, { recursive: true });
  const env: Record<string, string> = {
    LD_LIBRARY_PATH: [ensureStandinCuda(), process.env.LD_LIBRARY_PATH].filter(Boolean).join(':'),
    KYBERNATE_STANDIN_DIR: deviceDir,
  };
  if (extra.totalBytes !== undefined) env.KYBERNATE_STANDIN_TOTAL_BYTES = String(extra.totalBytes);
  if (extra.faults !== undefined) env.KYBERNATE_STANDIN_FAULTS = extra.faults;
  return env;
}
