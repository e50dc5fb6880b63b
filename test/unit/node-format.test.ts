import { nodesTable } from '../../clients/node-format';
import type { NodeInventory } from '../../activities/node/inventory';
import type { NodeRecord } from '../../common/node';

const GiB = 1024 ** 3;
const inv = (over: Partial<NodeInventory>): NodeInventory => ({
  node: 'x',
  zone: 'z1',
  vramSource: 'measured',
  gpus: [],
  totalVramBytes: 0,
  freeVramBytes: 0,
  freeDiskBytes: 0,
  criuVersion: '4.0',
  reportedAt: '2026-01-01T00:00:00.000Z',
  ...over,
});

test('kybernate nodes: state, score or -, zone, GPUs, the largest free VRAM on one GPU, age of the last sign of life', () => {
  const now = Date.parse('2026-01-01T00:10:00.000Z');
  const gpu = (index: number, free: number) => ({
    index,
    uuid: `GPU-${index}`,
    model: 'H100',
    totalVramBytes: 80 * GiB,
    freeVramBytes: free * GiB,
  });
  const records: NodeRecord[] = [
    {
      node: 'gpu-1',
      state: 'Ready',
      score: 0.875,
      inventory: inv({ gpus: [gpu(0, 10), gpu(1, 70)] as NodeInventory['gpus'] }),
      lastSeen: '2026-01-01T00:09:57.000Z',
      agentRuns: 1,
    },
    {
      node: 'cpu-2',
      state: 'Unhealthy',
      inventory: inv({ zone: 'z2', vramSource: 'declared', freeVramBytes: 16 * GiB }),
      lastSeen: '2026-01-01T00:05:00.000Z',
      agentRuns: 1,
    },
    { node: 'new-3', inventory: null, lastSeen: null, agentRuns: 0 },
  ];
  expect(
    nodesTable(records, now)
      .split('\n')
      .map((l) => l.split(/ {3,}/)),
  ).toEqual([
    ['NAME', 'STATE', 'SCORE', 'ZONE', 'GPUS', 'FREE VRAM', 'LAST SEEN'],
    ['gpu-1', 'Ready', '0.88', 'z1', '2', '70.0 GiB', '3s ago'],
    ['cpu-2', 'Unhealthy', '-', 'z2', '0', '16.0 GiB (declared)', '5m ago'],
    ['new-3', '-', '-', '-', '-', '-', 'never'],
  ]);
});
