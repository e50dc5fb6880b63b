import * as fs from 'node:fs';
import * as path from 'node:path';
import { ApplicationFailure } from '@temporalio/activity';
import { ErrorType } from '../../common/errors';
import { METADATA_FILE } from '../../common/metadata';
import { checkpointDir, type NodeContext, stagedDir } from './context';
import { heartbeat } from './run-tool';
import { readMetadata, writeFileAtomic } from './seal';

async function copyFile(from: string, to: string): Promise<void> {
  fs.mkdirSync(path.dirname(to), { recursive: true });
  const src = await fs.promises.open(from, 'r');
  const dst = await fs.promises.open(to, 'w');
  try {
    const buf = Buffer.allocUnsafe(8 << 20);
    for (let pos = 0; ; ) {
      const { bytesRead } = await src.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) break;
      await dst.write(buf, 0, bytesRead, pos);
      pos += bytesRead;
      heartbeat();
    }
    await dst.sync();
  } finally {
    await src.close();
    await dst.close();
  }
}

function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Copies a sealed checkpoint from memory to this node's disk (the nvme tier): every file synced,
 * metadata.json last, then one rename, so the disk holds either nothing or a complete checkpoint. The bytes
 * are not hashed again here: they were hashed in memory, and every restore verifies a local copy first.
 * Idempotent; a copy already on disk is success.
 */
export async function persistCheckpoint(ctx: NodeContext, input: { checkpointId: string }): Promise<{ bytes: number; durationMs: number }> {
  const started = Date.now();
  const dest = checkpointDir(ctx, input.checkpointId);
  const staged = stagedDir(ctx, input.checkpointId);
  if (!staged || !fs.existsSync(path.join(staged, METADATA_FILE))) {
    if (fs.existsSync(path.join(dest, METADATA_FILE))) return { bytes: 0, durationMs: 0 };
    throw ApplicationFailure.nonRetryable(`checkpoint ${input.checkpointId}: no sealed copy in memory or on disk`, ErrorType.CheckpointNotFound);
  }
  const md = readMetadata(staged);
  const tmp = `${dest}.persist`;
  fs.rmSync(tmp, { recursive: true, force: true });
  try {
    for (const f of md.files) await copyFile(path.join(staged, f.path), path.join(tmp, f.path));
    for (const d of new Set(md.files.map((f) => path.dirname(path.join(tmp, f.path))))) fsyncDir(d);
    writeFileAtomic(path.join(tmp, METADATA_FILE), fs.readFileSync(path.join(staged, METADATA_FILE)));
    fs.rmSync(dest, { recursive: true, force: true });
    fs.renameSync(tmp, dest);
    fsyncDir(path.dirname(dest));
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    const err = e as NodeJS.ErrnoException;
    throw ApplicationFailure.create({
      message: `copy of ${input.checkpointId} to ${dest}: ${err.message}`,
      type: err.code === 'ENOSPC' ? ErrorType.NoSpace : ErrorType.PersistFailed,
      nonRetryable: err.code === 'ENOSPC',
    });
  }
  return { bytes: md.files.reduce((s, f) => s + f.size, 0), durationMs: Date.now() - started };
}
