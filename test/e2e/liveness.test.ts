import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { KybernateClient } from '../../clients/api';
import type { NodesJson } from '../../clients/json-output';
import type { NodeRecord } from '../../common/node';
import { Agent, client, stack, until } from '../support/stack';
import { recordHistory } from '../support/histories';
import { nodeWorkflowId } from '../../common/queues';
import { startComponent, stopComponent } from '../../deploy/local/components';

const CLI = path.resolve(__dirname, '..', '..', 'dist', 'clients', 'cli.js');
const NODE = 'live-a';
const LATE = 'live-b';
// Short on purpose (production: 5 s and 15 s); the timeout leaves room for a loaded CI machine's slow signals.
const HEARTBEAT_MS = 500;
const TIMEOUT_MS = 4000;

let k: KybernateClient;
let agent: Agent | undefined;
let late: Agent | undefined;

beforeAll(async () => {
  k = await client();
}, 60000);
afterAll(async () => {
  await agent?.stop();
  await late?.stop();
  await k?.close();
});

const start = (node = NODE): Promise<Agent> =>
  Agent.start({
    node,
    declaredVramBytes: 2 ** 30,
    zone: 'zone-live',
    env: { KYBERNATE_HEARTBEAT_MS: String(HEARTBEAT_MS), KYBERNATE_NODE_TIMEOUT_MS: String(TIMEOUT_MS) },
  });

const inState = (state: NodeRecord['state'], timeoutMs: number, node = NODE): Promise<NodeRecord> =>
  until(
    `node ${node} ${state}`,
    async () => {
      const r = await k.node(node);
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

  test('an agent and the control worker started while Temporal is down wait for it, logging each try; the node is Ready once Temporal answers', async () => {
    const home = stack().home;
    const agentLog = path.join(home, 'logs', `agent-${LATE}.log`);
    const workerLog = path.join(home, 'logs', 'control-worker.log');
    // What a log got since `from` bytes (the control worker's log holds the stack's earlier runs too).
    const since = (file: string, from = 0): string =>
      fs.existsSync(file) ? fs.readFileSync(file).subarray(from).toString('utf8') : '';
    const failedTries = (text: string): number =>
      text.split('\n').filter((l) => l.includes('"worker connection to Temporal failed"')).length;
    await stopComponent(home, 'control-worker');
    await stopComponent(home, 'temporal');
    const workerFrom = fs.statSync(workerLog).size;
    let starting: [Promise<Agent>, Promise<unknown>];
    try {
      // Each resolves once its process polls its queue, and rejects if the process exits first
      // (deploy/local/supervise.ts): neither may give up while Temporal is away.
      starting = [start(LATE), startComponent(home, 'control-worker')];
      for (const p of starting) p.catch(() => undefined); // awaited below, after Temporal is back
      await until(
        'two failed connection tries logged by each',
        () => failedTries(since(agentLog)) >= 2 && failedTries(since(workerLog, workerFrom)) >= 2,
        30000,
        250,
      );
      await sleep(3000);
    } finally {
      await startComponent(home, 'temporal');
    }
    late = await starting[0];
    await starting[1];
    // Ready needs the registry workflow, run by the control worker that waited.
    const ready = await inState('Ready', 60000, LATE);
    expect(ready.agentRun).toMatch(new RegExp(`^${LATE}/${late.rec.pid}/`));
    // One process each all along: they waited, they were not started again.
    const agentText = since(agentLog);
    const workerText = since(workerLog, workerFrom);
    expect(agentText.split('\n').filter((l) => l.includes('"agent starting"'))).toHaveLength(1);
    expect(workerText.split('\n').filter((l) => l.includes('"control worker starting"'))).toHaveLength(1);
    for (const text of [agentText, workerText]) {
      expect(failedTries(text)).toBeGreaterThanOrEqual(2);
      expect(text).toMatch(/"worker connection to Temporal: done after \d+ failed tries"/);
    }
  }, 180000);
});
