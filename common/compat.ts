/**
 * What a restore needs of its target node (recorded in metadata.json at seal) and the pure check of a node
 * against it. A restore onto a node that fails it would burn a whole attempt (fetch, CRIU) and then fail, or
 * worse, run with a different GPU model or without a CPU instruction the process already uses.
 */

/** Recorded at checkpoint time on the dumping node. Every field may be absent in older checkpoints. */
export interface CompatRecord {
  /** Model of the GPU the process used (null: no GPU, or a declared-VRAM node). */
  gpuModel?: string | null;
  /** Index and UUID of that GPU on the dumping node. */
  gpuIndex?: number | null;
  gpuUuid?: string | null;
  /** e.g. "580.65.06" (null without a driver). */
  driverVersion?: string | null;
  /** cuDriverGetVersion style, e.g. 13000 (null without a driver). */
  cudaVersion?: number | null;
  criuVersion?: string | null;
  kernelRelease?: string | null;
  /** /proc/cpuinfo flags of the dumping host: the process may use any of them (sorted). */
  cpuFlags?: string[];
  /** Whether VRAM was checkpointed with the process (only then must the GPU model match). */
  heldVram?: boolean;
}

/** What a node reports for the check (a subset of NodeInventory; older reports lack the new fields). */
export interface NodeCompat {
  node: string;
  vramSource: 'measured' | 'declared' | 'standin' | 'none';
  gpus: { index: number; model: string; freeVramBytes: number; totalVramBytes: number }[];
  driverVersion?: string | null;
  cudaVersion?: number | null;
  criuVersion: string;
  kernelRelease?: string | null;
  cpuFlags?: string[];
}

/** The driver (580 / CUDA 13) from which cuCheckpointProcessRestore can move a process onto another GPU. */
export const GPU_REMAP_MIN_DRIVER_MAJOR = 580;

/** Compares dotted numeric versions ("580.65.06" vs "570.172.8", "4.1.1" vs "3.17"); text around digits is ignored. */
export function compareVersions(a: string, b: string): number {
  const parts = (v: string): number[] => (v.match(/\d+/g) ?? []).map(Number);
  const pa = parts(a),
    pb = parts(b);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

export const driverMajor = (v: string | null | undefined): number | null => {
  const m = v ? /^(\d+)/.exec(v) : null;
  return m ? Number(m[1]) : null;
};

/** A node with real (or stand-in) GPUs, whose models say something; a declared node's do not. */
const hasRealGpus = (n: NodeCompat): boolean => n.vramSource === 'measured' || n.vramSource === 'standin';

/**
 * Why `node` cannot restore a checkpoint recorded as `rec`: one line per reason, empty when it can.
 * Kernel release is recorded but not checked: CRIU's own checks cover what matters of it.
 */
export function incompatibilities(rec: CompatRecord, node: NodeCompat): string[] {
  const why: string[] = [];
  if (rec.heldVram && rec.gpuModel && hasRealGpus(node)) {
    const models = [...new Set(node.gpus.map((g) => g.model))];
    if (!models.includes(rec.gpuModel))
      why.push(`GPU model ${models.map((m) => `'${m}'`).join(', ') || 'none'}, checkpoint needs '${rec.gpuModel}'`);
  }
  if (rec.heldVram && rec.driverVersion) {
    if (!node.driverVersion) why.push(`no GPU driver, checkpoint needs driver ${rec.driverVersion} or newer`);
    else if (compareVersions(node.driverVersion, rec.driverVersion) < 0)
      why.push(`driver ${node.driverVersion} older than the checkpoint's ${rec.driverVersion}`);
  }
  if (rec.criuVersion && compareVersions(node.criuVersion, rec.criuVersion) < 0)
    why.push(`CRIU ${node.criuVersion} older than the checkpoint's ${rec.criuVersion}`);
  if (rec.cpuFlags && rec.cpuFlags.length > 0 && node.cpuFlags) {
    const have = new Set(node.cpuFlags);
    const missing = rec.cpuFlags.filter((f) => !have.has(f));
    if (missing.length > 0)
      why.push(
        `CPU lacks ${missing.length} flag(s) the source had: ${missing.slice(0, 8).join(' ')}${missing.length > 8 ? ' ...' : ''}`,
      );
  } else if (rec.cpuFlags && rec.cpuFlags.length > 0 && !node.cpuFlags) {
    why.push('CPU flags not reported (agent older than the compatibility gate)');
  }
  return why;
}

/**
 * The GPUs of a compatible node a restore may use: with driver 580+ on the target any GPU of the model
 * (the restore passes the old->new UUID pair); with an older driver only the same index as on the source.
 * `note` says why the choice is narrowed, for placement's reason.
 */
export function usableGpus(rec: CompatRecord, node: NodeCompat): { indexes: number[]; note: string | null } {
  const all = node.gpus
    .filter((g) => !(rec.heldVram && rec.gpuModel && hasRealGpus(node)) || g.model === rec.gpuModel)
    .map((g) => g.index);
  if (!rec.heldVram || rec.gpuIndex === null || rec.gpuIndex === undefined || !hasRealGpus(node))
    return { indexes: all, note: null };
  const major = driverMajor(node.driverVersion);
  if (major !== null && major >= GPU_REMAP_MIN_DRIVER_MAJOR) return { indexes: all, note: null };
  const same = all.filter((i) => i === rec.gpuIndex);
  return {
    indexes: same,
    note: `driver ${node.driverVersion ?? 'unknown'} < ${GPU_REMAP_MIN_DRIVER_MAJOR}: restore only onto the same GPU index ${rec.gpuIndex}`,
  };
}
