import { compareVersions, incompatibilities, type NodeCompat, usableGpus } from '../../common/compat';
import { MetadataSchema } from '../../common/metadata';

const node = (over: Partial<NodeCompat> = {}): NodeCompat => ({
  node: 'n',
  vramSource: 'measured',
  gpus: [
    { index: 0, model: 'H100', freeVramBytes: 1, totalVramBytes: 1 },
    { index: 1, model: 'H100', freeVramBytes: 1, totalVramBytes: 1 },
  ],
  driverVersion: '580.65.06',
  cudaVersion: 13000,
  criuVersion: '4.1.1',
  kernelRelease: '6.18.0',
  cpuFlags: ['avx', 'avx2'],
  ...over,
});

test('versions compare by their numbers, not as text', () => {
  expect(compareVersions('580.65.06', '570.172.08')).toBeGreaterThan(0);
  expect(compareVersions('3.17', '4.1.1')).toBeLessThan(0);
  expect(compareVersions('4.1', '4.1.0')).toBe(0);
  expect(compareVersions('4.10', '4.9')).toBeGreaterThan(0);
});

test('each reason a node cannot restore, and none for a matching node', () => {
  const rec = {
    gpuModel: 'H100',
    gpuIndex: 1,
    driverVersion: '575.0',
    criuVersion: '4.0',
    cpuFlags: ['avx', 'avx2', 'avx512f'],
    heldVram: true,
  };
  expect(incompatibilities(rec, node({ cpuFlags: ['avx', 'avx2', 'avx512f'] }))).toEqual([]);
  expect(
    incompatibilities(
      rec,
      node({
        gpus: [{ index: 0, model: 'A100', freeVramBytes: 1, totalVramBytes: 1 }],
        driverVersion: '570.1',
        criuVersion: '3.17',
      }),
    ),
  ).toEqual([
    "GPU model 'A100', checkpoint needs 'H100'",
    "driver 570.1 older than the checkpoint's 575.0",
    "CRIU 3.17 older than the checkpoint's 4.0",
    'CPU lacks 1 flag(s) the source had: avx512f',
  ]);
  // A declared node has no model to compare; a report without CPU flags cannot be trusted with them.
  expect(
    incompatibilities(
      { ...rec, driverVersion: null },
      node({
        vramSource: 'declared',
        gpus: [{ index: 0, model: 'declared', freeVramBytes: 1, totalVramBytes: 1 }],
        cpuFlags: undefined,
      }),
    ),
  ).toEqual(['CPU flags not reported (agent older than the compatibility gate)']);
});

test('GPU remapping: any GPU of the model from driver 580, else the same index only, with a note', () => {
  const rec = { gpuModel: 'H100', gpuIndex: 1, heldVram: true };
  expect(usableGpus(rec, node())).toEqual({ indexes: [0, 1], note: null });
  expect(usableGpus(rec, node({ driverVersion: '570.172.08' }))).toEqual({
    indexes: [1],
    note: 'driver 570.172.08 < 580: restore only onto the same GPU index 1',
  });
  expect(usableGpus({ ...rec, heldVram: false }, node({ driverVersion: '570.172.08' })).indexes).toEqual([0, 1]);
});

test('metadata.json: old documents stay valid, the compatibility record and measured VRAM are optional fields', () => {
  const old = {
    format: 'kybernate.checkpoint/v1',
    checkpointId: 'c',
    jobId: 'j',
    node: 'n',
    pid: 1,
    createdAt: 'x',
    criuVersion: '4.1.1',
    cuda: { checkpointed: false, vramBytes: 0 },
    workloadFiles: [],
    files: [],
  };
  expect(MetadataSchema.safeParse(old).success).toBe(true);
  const now = {
    ...old,
    cuda: { checkpointed: true, vramBytes: 0, measuredVramBytes: 5 },
    compat: { gpuModel: 'H100', gpuIndex: 0, cpuFlags: ['avx'], heldVram: true },
  };
  expect(MetadataSchema.parse(now).compat?.gpuModel).toBe('H100');
  expect(MetadataSchema.safeParse({ ...now, cuda: { ...now.cuda, measuredVramBytes: -1 } }).success).toBe(false);
});
