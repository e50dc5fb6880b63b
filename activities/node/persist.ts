import * as fs from 'node:fs';
import * as path from 'node:path';
import { ApplicationFailure } from '@temporalio/activity';
import { ErrorType } from '../../common/errors';
import { METADATA_FILE, SEAL_DRAFT_FILE, SealDraftSchema } from '../../common/metadata';
import { checkpointDir, type NodeContext, stagedDir } from './context';
import { heartbeat } from './run-tool';
import { fsyncDir, readMetadata, writeFileAtomic } from './seal';

async function copyFile(from: string, to: string, sync: boolean): Promise<void> {
  fs.mkdirSync(path.dirname(to), { recursive: true });
  const src = await fs.promises.open(from, 'r');
  const dst = await fs.promises.open(to, 'w');
  try {
    const buf = Buffer.allocUnsafe(8 << 20);
    for (let pos = 0; ;) {
      const { bytesRead } = await src.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) break;
      await dst.write(buf, 0, bytesRead, pos);
      pos += bytesRead;
      heartbeat();
    }
    if (sync) await dst.sync();
  } finally {
    await src.close();
    await dst.close();
  }
}

async function syncFile(file: string): Promise<void> {
  const fh = await fs.promises.open(file, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** The directories under root that hold the checkpoint's files. */
/** The files a copy holds: metadata.json's, or with hashing streamed, the seal draft's (paths and sizes). */
type FileList = { files: Array<{ path: string; size: number }> };

const fileDirs = (root: string, md: FileList): Set<string> =>
  new Set(md.files.map((f) => path.dirname(path.join(root, f.path))));

/**
 * Copies a sealed checkpoint from memory to this node's disk: metadata.json last, then one rename, so the
 * disk holds either nothing or a complete checkpoint. With sync, every file and directory reaches the disk
 * (the nvme tier, durable); without, the copy is a cache that a crash may tear, which the verification every
 * restore runs on a local copy catches. The bytes are not hashed again here: they were hashed in memory.
 * Idempotent; syncing a copy already on disk syncs it in place.
 * With hashing streamed (seal-draft.json, no metadata.json yet: the upload commits it), the files are copied
 * and the copy is committed only if metadata.json appeared in memory meanwhile; else it returns sealed: false
 * and a later call (once metadata.json exists) finishes it, reusing the files already copied unless it syncs.
 */
export async function persistCheckpoint(
  ctx: NodeContext,
  input: { checkpointId: string; sync: boolean },
): Promise<{ bytes: number; durationMs: number; sealed?: boolean }> {
  const started = Date.now();
  const dest = checkpointDir(ctx, input.checkpointId);
  const staged = stagedDir(ctx, input.checkpointId);
  const done = (md: FileList): { bytes: number; durationMs: number } => ({
    bytes: md.files.reduce((s, f) => s + f.size, 0),
    durationMs: Date.now() - started,
  });
  try {
    if (fs.existsSync(path.join(dest, METADATA_FILE))) {
      const md = readMetadata(dest);
      if (input.sync) {
        for (const f of [...md.files.map((x) => x.path), METADATA_FILE]) await syncFile(path.join(dest, f));
        for (const d of fileDirs(dest, md)) fsyncDir(d);
        fsyncDir(dest);
        fsyncDir(path.dirname(dest));
      }
      return done(md);
    }
    const committed = !!staged && fs.existsSync(path.join(staged, METADATA_FILE));
    const drafted = !!staged && !committed && fs.existsSync(path.join(staged, SEAL_DRAFT_FILE));
    if (!staged || (!committed && !drafted)) {
      throw ApplicationFailure.nonRetryable(
        `checkpoint ${input.checkpointId}: no sealed copy in memory or on disk`,
        ErrorType.CheckpointNotFound,
      );
    }
    const md: FileList = committed
      ? readMetadata(staged)
      : SealDraftSchema.parse(JSON.parse(fs.readFileSync(path.join(staged, SEAL_DRAFT_FILE), 'utf8')));
    const tmp = `${dest}.persist`;
    // A copy a streamed call left unfinished is reused (same bytes: memory is not written after the dump), unless
    // it must be synced: then every file is written again and synced.
    if (input.sync) fs.rmSync(tmp, { recursive: true, force: true });
    try {
      for (const f of md.files) {
        const to = path.join(tmp, f.path);
        if (!input.sync && fs.existsSync(to) && fs.statSync(to).size === f.size) continue;
        await copyFile(path.join(staged, f.path), to, input.sync);
      }
      if (!fs.existsSync(path.join(staged, METADATA_FILE))) {
        return { ...done(md), sealed: false };
      }
      const mdText = fs.readFileSync(path.join(staged, METADATA_FILE));
      if (input.sync) {
        for (const d of fileDirs(tmp, md)) fsyncDir(d);
        writeFileAtomic(path.join(tmp, METADATA_FILE), mdText);
      } else {
        fs.writeFileSync(path.join(tmp, METADATA_FILE), mdText);
      }
      fs.rmSync(dest, { recursive: true, force: true });
      fs.renameSync(tmp, dest);
      if (input.sync) fsyncDir(path.dirname(dest));
    } catch (e) {
      fs.rmSync(tmp, { recursive: true, force: true });
      throw e;
    }
    return done(md);
  } catch (e) {
    if (e instanceof ApplicationFailure) throw e;
    const err = e as NodeJS.ErrnoException;
    throw ApplicationFailure.create({
      message: `copy of ${input.checkpointId} to ${dest}: ${err.message}`,
      type: err.code === 'ENOSPC' ? ErrorType.NoSpace : ErrorType.PersistFailed,
      nonRetryable: err.code === 'ENOSPC',
    });
  }
}
