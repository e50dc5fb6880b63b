import * as fs from 'node:fs';
import * as path from 'node:path';
import { METADATA_FILE, MetadataSchema } from '../../common/metadata';
import type { NodeContext } from './context';
import { sha256Hex } from './seal';
import { readAt } from './upload-chunks';

/** Where a chunk's bytes sit in a file of a checkpoint this node holds. */
export interface LocalChunk {
  file: string;
  offset: number;
  size: number;
}

/**
 * The chunks of the checkpoints this node already holds (committed copies on its disk and in its staging
 * memory, format v2), by SHA-256: a restore of a later checkpoint of the same job, or of a replica of the same
 * model, finds most of its chunks here and reads them instead of fetching them. Only an index: nothing in it is
 * trusted, each chunk read from it is checked against its name (readLocalChunk), and a copy deleted or changed
 * meanwhile only sends that chunk to S3. `except` is the checkpoint being fetched (its own copy, if any, has
 * just failed verification).
 */
export function localChunkIndex(ctx: NodeContext, except: string): Map<string, LocalChunk> {
  const index = new Map<string, LocalChunk>();
  // Memory first: of two copies of a chunk, the one in tmpfs is the faster read.
  for (const root of [ctx.stagingDir, path.join(ctx.dataDir, 'checkpoints')]) {
    if (!root) continue;
    let names: string[];
    try {
      names = fs.readdirSync(root);
    } catch {
      continue;
    }
    for (const name of names) {
      if (name === except) continue;
      const dir = path.join(root, name);
      let parsed;
      try {
        parsed = MetadataSchema.safeParse(JSON.parse(fs.readFileSync(path.join(dir, METADATA_FILE), 'utf8')));
      } catch {
        continue; // no committed metadata.json: a dump, download or copy under way, or not a checkpoint
      }
      // A download or restore copy beside a checkpoint carries that checkpoint's metadata.json under another name.
      if (!parsed.success || parsed.data.checkpointId !== name) continue;
      for (const f of parsed.data.files) {
        if (!f.chunks) continue;
        const file = path.join(dir, f.path);
        let offset = 0;
        for (const c of f.chunks) {
          if (!index.has(c.sha256)) index.set(c.sha256, { file, offset, size: c.size });
          offset += c.size;
        }
      }
    }
  }
  return index;
}

/**
 * The chunk's bytes read from where the index says, into `buf`, if they still hash to `sha256`; null when the
 * file is gone, shorter, or holds other bytes now (then the chunk comes from S3).
 */
export async function readLocalChunk(at: LocalChunk, sha256: string, buf: Buffer): Promise<Buffer | null> {
  if (at.size > buf.length) return null;
  let fh: fs.promises.FileHandle;
  try {
    fh = await fs.promises.open(at.file, 'r');
  } catch {
    return null;
  }
  try {
    const chunk = await readAt(fh, at.offset, at.size, buf);
    if (chunk.length < at.size) return null;
    return sha256Hex(chunk) === sha256 ? chunk : null;
  } catch {
    return null;
  } finally {
    await fh.close();
  }
}
