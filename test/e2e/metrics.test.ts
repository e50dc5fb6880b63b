import * as fs from 'node:fs';
import * as path from 'node:path';
import { KybernateClient } from '../../clients/api';
import { readStackState } from '../../deploy/local/stack';
import { Agent, alive, client, lastTick, PATTERN, PYTHON, stack, until } from '../support/stack';

/**
 * Each worker's Prometheus endpoint, scraped around a real checkpoint and restore on the global stack: the stack's
 * control worker and an agent started here, both serving the SDK's metrics and ours on the port they recorded
 * in the stack's state file.
 */
const GiB = 1024 ** 3;
const NODE = 'metrics-node';
let k: KybernateClient;
let agent: Agent | null = null;
const pids: number[] = [];

/** One sample of the text format: name, labels, value. */
interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

function parse(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

async function scrape(address: string): Promise<Sample[]> {
  const res = await fetch(`http://${address}/metrics`, { signal: AbortSignal.timeout(5000) });
  expect(res.status).toBe(200);
  return parse(await res.text());
}

/** The sum of a metric over the samples whose labels include `want`; 0 when there are none yet. */
function total(samples: Sample[], name: string, want: Record<string, string> = {}): number {
  return samples
    .filter((s) => s.name === name && Object.entries(want).every(([k2, v]) => s.labels[k2] === v))
    .reduce((a, s) => a + s.value, 0);
}

/** The address a worker recorded for its endpoint in the stack's state file. */
function recordedAddress(component: string, pid?: number): string {
  const rec = readStackState(stack().home)?.processes.find(
    (p) => p.component === component && (pid === undefined || p.pid === pid),
  );
  if (!rec?.metricsAddress) throw new Error(`${component} recorded no metrics address in the stack state`);
  return rec.metricsAddress;
}

beforeAll(async () => {
  k = await client();
  // Reports every 2 s, so that a gauge set with the inventory is seen to follow a checkpoint within the test.
  agent = await Agent.start({ node: NODE, declaredVramBytes: 8 * GiB, reportIntervalSeconds: 2 });
}, 120000);

afterAll(async () => {
  for (const pid of pids) if (alive(pid)) process.kill(pid, 'SIGKILL');
  await agent?.stop();
  await k?.close();
});

describe('Prometheus metrics from every worker', () => {
  test("a checkpoint and a restore move bytes, phase histograms and outcome counters; the SDK's metrics are there too", async () => {
    const agentAt = await until(
      'agent recorded its metrics address',
      () => {
        try {
          return recordedAddress(`agent:${NODE}`, agent!.rec.pid);
        } catch {
          return null;
        }
      },
      30000,
    );
    const controlAt = recordedAddress('control-worker');
    const a0 = await scrape(agentAt);
    const c0 = await scrape(controlAt);
    // The node's gauges come from its first inventory report, before it took any activity.
    expect(total(a0, 'kybernate_node_vram_total_bytes', { node: NODE })).toBe(8 * GiB);
    expect(total(a0, 'kybernate_node_inventory_reports_total', { node: NODE, outcome: 'ok' })).toBeGreaterThanOrEqual(
      1,
    );

    const job = 'metrics-job';
    const w = await k.runWorkload({ node: NODE, jobId: job, command: [PYTHON, PATTERN, '16', job] });
    pids.push(w.pid);
    await until(`${job} ticking`, () => lastTick(w.logFile) >= 2, 30000);
    const { request } = await k.startCheckpoint({ target: job, node: NODE, checkpointId: `${job}-ck`, vramBytes: 0 });
    const ck = await k.checkpointResult(request.checkpointId);
    expect(ck.phase).toBe('Durable');

    const a1 = await scrape(agentAt);
    const phaseCount = (s: Sample[], kind: 'checkpoint' | 'restore', phase: string): number =>
      total(s, `kybernate_${kind}_phase_duration_seconds_count`, { node: NODE, phase, outcome: 'ok' });
    for (const phase of ['Locking', 'DumpingProcess', 'Sealing', 'Uploading']) {
      expect({ phase, count: phaseCount(a1, 'checkpoint', phase) }).toEqual({
        phase,
        count: phaseCount(a0, 'checkpoint', phase) + 1,
      });
    }
    expect(
      total(a1, 'kybernate_checkpoint_phase_duration_seconds_sum', { node: NODE, phase: 'DumpingProcess' }),
    ).toBeGreaterThan(0);
    const sent =
      total(a1, 'kybernate_checkpoint_bytes_total', { node: NODE, phase: 'Uploading' }) -
      total(a0, 'kybernate_checkpoint_bytes_total', { node: NODE, phase: 'Uploading' });
    expect(sent).toBe(ck.upload!.bytesSent);
    expect(sent).toBeGreaterThan(0);
    expect(total(a1, 'kybernate_checkpoint_bytes_total', { node: NODE, phase: 'DumpingProcess' })).toBeGreaterThan(0);
    // Durable in S3: nothing of it waits for upload, by the gauge set with the next inventory report.
    // Every inventory read sets the gauge; a read is sent (ok) only when placement's view moved, else counted unchanged.
    const reports = (s: Sample[]): number =>
      total(s, 'kybernate_node_inventory_reports_total', { node: NODE, outcome: 'ok' }) +
      total(s, 'kybernate_node_inventory_reports_total', { node: NODE, outcome: 'unchanged' });
    const after = await until(
      'an inventory read after the checkpoint',
      async () => {
        const s = await scrape(agentAt);
        return reports(s) > reports(a1) ? s : null;
      },
      30000,
    );
    expect(after.some((s) => s.name === 'kybernate_checkpoints_pending_upload' && s.labels.node === NODE)).toBe(true);
    expect(total(after, 'kybernate_checkpoints_pending_upload', { node: NODE })).toBe(0);
    // Counted by the checkpoint workflow on the control worker, through the SDK's sink after its task completes.
    const durable = { node: NODE, outcome: 'Durable', tier: 's3' };
    await until(
      'checkpoint outcome counted',
      async () =>
        total(await scrape(controlAt), 'kybernate_checkpoints_total', durable) >
        total(c0, 'kybernate_checkpoints_total', durable),
      15000,
    );

    const r = await k.startRestore({ checkpointId: request.checkpointId, node: NODE });
    const rs = await k.restoreResult(r.workflowId);
    expect(rs.phase).toBe('Running');
    pids.push(rs.pid!);
    const a2 = await scrape(agentAt);
    for (const phase of ['Fetching', 'RestoringProcess', 'Verifying']) {
      expect({ phase, count: phaseCount(a2, 'restore', phase) }).toEqual({
        phase,
        count: phaseCount(a1, 'restore', phase) + 1,
      });
    }
    expect(
      total(a2, 'kybernate_restore_bytes_total', { node: NODE, phase: 'Fetching' }) -
        total(a1, 'kybernate_restore_bytes_total', { node: NODE, phase: 'Fetching' }),
    ).toBeGreaterThan(0);
    const running = { outcome: 'Running', type: 'none' };
    await until(
      'restore outcome counted',
      async () =>
        total(await scrape(controlAt), 'kybernate_restores_total', running) >
        total(c0, 'kybernate_restores_total', running),
      15000,
    );

    // A checkpoint of the restored process that leaves it running: how long it stood frozen, in its histogram.
    const ck2 = await k.startCheckpoint({
      target: job,
      node: NODE,
      checkpointId: `${job}-ck2`,
      vramBytes: 0,
      leaveRunning: true,
    });
    const s2 = await k.checkpointResult(ck2.request.checkpointId);
    expect(s2.phase).toBe('Durable');
    const a3 = await scrape(agentAt);
    const frozen = (s: Sample[], what: 'count' | 'sum'): number =>
      total(s, `kybernate_checkpoint_frozen_seconds_${what}`, { node: NODE });
    expect(frozen(a3, 'count')).toBe(frozen(a2, 'count') + 1);
    expect(frozen(a3, 'sum') - frozen(a2, 'sum')).toBeCloseTo(s2.frozenMs! / 1000, 3);
    // Restored from S3 on this node once its copy of the second is gone: the chunks the first's copy holds are
    // read here, and counted apart from the bytes fetched.
    process.kill(rs.pid!, 'SIGKILL');
    fs.rmSync(path.join(agent!.dataDir, 'checkpoints', `${job}-ck2`), { recursive: true, force: true });
    const r2 = await k.startRestore({ checkpointId: `${job}-ck2`, node: NODE });
    const rs2 = await k.restoreResult(r2.workflowId);
    expect({ phase: rs2.phase, source: rs2.source }).toEqual({ phase: 'Running', source: 's3' });
    pids.push(rs2.pid!);
    const a4 = await scrape(agentAt);
    const fetched = (s: Sample[], source: string): number =>
      total(s, 'kybernate_restore_bytes_total', { node: NODE, phase: 'Fetching', source });
    expect(fetched(a4, 'node-chunks') - fetched(a3, 'node-chunks')).toBe(rs2.bytesFromNode);
    expect(rs2.bytesFromNode).toBeGreaterThan(0);

    // The SDK's own metrics share each endpoint: the agent's activities on its queue, the control worker's workflows.
    const sdkAgent = a4.filter((s) => s.name.startsWith('temporal_') && s.labels.task_queue === `node/${NODE}`);
    expect(sdkAgent.some((s) => s.name.startsWith('temporal_activity_execution_latency'))).toBe(true);
    expect(sdkAgent.every((s) => s.labels.node === NODE)).toBe(true);
    const c2 = await scrape(controlAt);
    expect(total(c2, 'temporal_workflow_completed', { workflow_type: 'checkpoint' })).toBeGreaterThan(0);
  }, 180000);
});
