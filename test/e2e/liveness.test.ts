import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import type { KybernateClient } from '../../clients/api';
import type { NodesJson } from '../../clients/json-output';
import type { NodeRecord } from '../../common/node';
import { Agent, client, stack, until } from '../support/stack';
import { recordHistory } from '../support/histories';
import { nodeWorkflowId } from '../../common/queues';

const CLI = path.resolve(__dirname, '..', '..', 'dist', 'clients', 'cli.js');
const NODE = 'live-a';
// Short on purpose (production: 5 s and 15 s); the timeout leaves room for a loaded CI machine's slow signals.
const HEARTBEAT_MS = 500;
const TIMEOUT_MS = 4000;

let k: KybernateClient;
let agent: Agent | undefined;

beforeAll(async () => {
  k = await client();
}, 60000);
afterAll(async () => {
  await agent?.stop();
  await k?.close();
});

const start = (): Promise<Agent> =>
  Agent.start({
    node: NODE,
    declaredVramBytes: 2 ** 30,
    zone: 'zone-live',
    env: { KYBERNATE_HEARTBEAT_MS: String(HEARTBEAT_MS), KYBERNATE_NODE_TIMEOUT_MS: String(TIMEOUT_MS) },
  });

const inState = (state: NodeRecord['state'], timeoutMs: number): Promise<NodeRecord> =>
  until(
    `node ${NODE} ${state}`,
    async () => {
      const r = await k.node(NODE);
      return r.state === state ? r : null;
    },
    timeoutMs,
    100,
  );

describe('node liveness on the real stack', () => {
  test('an agent killed with -9 makes its node Unhealthy within the timeout; restarted, it is Ready again; stopped, Left', async () => {
    agent = await start();
    const ready = await inState('Ready', 30000);
    expect(ready).toMatchObject({ timeoutMs: TIMEOUT_MS, heartbeatMs: HEARTBEAT_MS });
    const runsBefore = ready.agentRuns;

    // `kybernate nodes` shows it, as a table and as JSON.
    const text = spawnSync(process.execPath, [CLI, 'nodes', NODE], {
      env: { ...process.env, KYBERNATE_HOME: stack().home },
      encoding: 'utf8',
      timeout: 60000,
    });
    expect(text.status).toBe(0);
    const [header, row] = text.stdout.trim().split('\n');
    expect(header.split(/ {3,}/)).toEqual(['NAME', 'STATE', 'SCORE', 'ZONE', 'GPUS', 'FREE VRAM', 'LAST SEEN']);
    expect(row.split(/ {3,}/).slice(0, 5)).toEqual([NODE, 'Ready', '1.00', 'zone-live', '1']); // a declared VRAM is one GPU
    const json = spawnSync(process.execPath, [CLI, 'nodes', NODE, '--json'], {
      env: { ...process.env, KYBERNATE_HOME: stack().home },
      encoding: 'utf8',
      timeout: 60000,
    });
    expect(json.status).toBe(0);
    expect((JSON.parse(json.stdout) as NodesJson).nodes).toEqual([
      expect.objectContaining({ node: NODE, state: 'Ready' }),
    ]);

    // LAST SEEN of a Ready node is its agent's latest watch heartbeat (the server keeps it on the pending
    // activity), not its registry's last report, which goes only on a change or every few minutes.
    await new Promise((r) => setTimeout(r, 5000));
    const seen = await k.node(NODE);
    expect(Date.now() - Date.parse(seen.lastSeen ?? '')).toBeLessThan(5 * HEARTBEAT_MS);

    const killedAt = Date.now();
    agent.kill9();
    const down = await inState('Unhealthy', TIMEOUT_MS + 20000);
    // Declared by the registry's own timer, one timeout after the last heartbeat (workflow time).
    const t = down.transitions?.at(-1);
    expect(t).toMatchObject({ from: 'Ready', to: 'Unhealthy' });
    const silence = Date.parse(t?.at ?? '') - Date.parse(down.lastSeen ?? '');
    expect(silence).toBeGreaterThanOrEqual(TIMEOUT_MS);
    expect(silence).toBeLessThan(TIMEOUT_MS + 5000);
    expect(Date.now() - killedAt).toBeGreaterThanOrEqual(TIMEOUT_MS - 1000);

    await agent.restart();
    const back = await inState('Ready', 30000);
    expect(back.agentRuns).toBe(runsBefore + 1);
    expect(back.transitions?.at(-1)).toMatchObject({ from: 'Unhealthy', to: 'Ready' });

    // A clean stop (SIGTERM): Left at once, not Unhealthy after the timeout.
    await agent.stop();
    agent = undefined;
    const left = await inState('Left', 10000);
    expect(left.transitions?.at(-1)?.why).toMatch(/agent stopped \(SIGTERM\)/);
    // The registry never ends: its history so far (registrations, watches, a timeout, a leave) is replayed.
    await recordHistory('node-liveness', k.client.workflow.getHandle(nodeWorkflowId(NODE)));
  }, 120000);
});
