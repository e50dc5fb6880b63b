import * as fs from 'node:fs';
import * as path from 'node:path';
import { GetObjectCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { pipeline } from 'node:stream/promises';
import type { Readable } from 'node:stream';
import { makeS3Client } from '../activities/s3-client';
import { BIN } from '../deploy/local/paths';
import { configFromStack } from '../deploy/local/stack';
import {
  activityTimes,
  benchStack,
  dropCaches,
  nodeCheckpointDir,
  persistedCopy,
  run,
  secs,
  startPattern,
  table,
  timed,
} from './harness';

/**
 * Request-to-Running of the restore workflow (on a node without a local copy: download, verify, CRIU
 * restore, verify progress) against a by-hand baseline (download each object, then criu restore), on the
 * same stack in the same run.
 */
async function main(): Promise<void> {
  const sizes = (process.env.KYBERNATE_BENCH_GIB ?? '1,4').split(',').map(Number);
  const { state, k, close } = await benchStack(['bench-a', 'bench-b']);
  const rows = [
    [
      'process memory',
      'workflow (request->Running)',
      'baseline (download; criu restore)',
      '  download',
      '  restore',
      'ratio',
    ],
  ];
  const kill: number[] = [];
  const breakdown: string[] = [];
  try {
    for (const gib of sizes) {
      const mib = Math.round(gib * 1024);
      await startPattern(k, 'bench-a', `r-${gib}`, mib);
      const { request } = await k.startCheckpoint({ target: `r-${gib}`, node: 'bench-a', checkpointId: `r-${gib}-ck` });
      const ck = await k.checkpointResult(request.checkpointId);
      if (ck.phase !== 'Durable') throw new Error(`checkpoint ended ${ck.phase}`);
      // The node's disk copy is still being written when Durable is reported: neither side runs beside it.
      await persistedCopy(nodeCheckpointDir(state, 'bench-a', ck.checkpointId));

      // Baseline: fetch the same checkpoint's objects one after the other, then criu restore.
      dropCaches();
      const dir = path.join(state.home, 'baseline-restore', `g${gib}`);
      const s3 = makeS3Client(configFromStack(state).s3);
      const prefix = `checkpoints/${ck.checkpointId}/`;
      const [, dlMs] = await timed(async () => {
        const list = await s3.send(new ListObjectsV2Command({ Bucket: state.s3.bucket, Prefix: prefix }));
        for (const o of list.Contents ?? []) {
          const dest = path.join(dir, o.Key!.slice(prefix.length));
          fs.mkdirSync(path.dirname(dest), { recursive: true });
          const r = await s3.send(new GetObjectCommand({ Bucket: state.s3.bucket, Key: o.Key! }));
          await pipeline(r.Body as Readable, fs.createWriteStream(dest));
        }
      });
      s3.destroy();
      const pidFile = path.join(dir, 'baseline.pid');
      const [, rsMs] = await timed(async () =>
        run(BIN.criu, ['restore', '-D', path.join(dir, 'images'), '-d', '-o', 'restore.log', '--pidfile', pidFile]),
      );
      kill.push(Number(fs.readFileSync(pidFile, 'utf8')));
      const baseline = dlMs + rsMs;

      dropCaches();
      const [[rs, wfId], wfMs] = await timed(async () => {
        const r = await k.startRestore({ checkpointId: ck.checkpointId, node: 'bench-b' });
        return [await k.restoreResult(r.workflowId), r.workflowId] as const;
      });
      breakdown.push(`${gib} GiB: ${await activityTimes(k, wfId)}`);
      if (rs.phase !== 'Running') throw new Error(`restore ended ${rs.phase}`);
      kill.push(rs.pid!);
      rows.push([`${gib} GiB`, secs(wfMs), secs(baseline), secs(dlMs), secs(rsMs), (wfMs / baseline).toFixed(2)]);
      for (const p of kill.splice(0)) process.kill(p, 'SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    }
  } finally {
    for (const p of kill) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    await close();
  }
  table('restore: request to Running from S3 (MinIO on loopback), ratio = workflow / baseline; target <= 1.0', rows);
  console.log(`workflow activities (scheduled to completed, >= 50 ms):\n  ${breakdown.join('\n  ')}`);
  console.log(
    '(the workflow also verifies every sha256 and checks that the process makes progress; the baseline does neither)',
  );
}

main().catch((e: unknown) => {
  console.error(`bench failed: ${(e as Error).stack}`);
  process.exit(1);
});
