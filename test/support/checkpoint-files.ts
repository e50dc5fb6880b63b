import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { writtenStamp } from '../../activities/node/seal';
import { METADATA_FILE, type Metadata, SEAL_DRAFT_FILE, type SealDraft } from '../../common/metadata';

export const sha256 = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');

/** Writes each file under dir, making its folders: what a CRIU dump leaves, without CRIU. */
export function writeFiles(dir: string, files: Record<string, Buffer>): void {
  for (const [p, b] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(dir, p)), { recursive: true });
    fs.writeFileSync(path.join(dir, p), b);
  }
}

/** The record a seal writes for these files (sizes and SHA-256, in path order), for a test checkpoint. */
export function metadataFor(id: string, jobId: string, node: string, files: Record<string, Buffer>): Metadata {
  return {
    format: 'kybernate.checkpoint/v1',
    checkpointId: id,
    jobId,
    node,
    pid: 1,
    createdAt: new Date().toISOString(),
    criuVersion: 'test',
    cuda: { checkpointed: false, vramBytes: 0 },
    workloadFiles: [],
    files: Object.entries(files)
      .map(([p, b]) => ({ path: p, size: b.length, sha256: sha256(b) }))
      .sort((a, b) => a.path.localeCompare(b.path)),
  };
}

/** Writes the files, then their metadata.json (last, as the seal commits it); returns metadata.json's SHA-256. */
export function writeSealed(dir: string, md: Metadata, files: Record<string, Buffer>): string {
  writeFiles(dir, files);
  const text = JSON.stringify(md, null, 2);
  fs.writeFileSync(path.join(dir, METADATA_FILE), text);
  return sha256(text);
}

/**
 * What the seal leaves with chunks on (seal-draft.json marked chunked): the files written under dir, and
 * `large` left unhashed with its written stamp, for the upload to cut into chunks.
 */
export function writeChunkedDraft(
  dir: string,
  id: string,
  jobId: string,
  node: string,
  files: Record<string, Buffer>,
  large: string,
): void {
  writeFiles(dir, files);
  const sealed = metadataFor(id, jobId, node, files);
  const draft: SealDraft = {
    ...sealed,
    chunked: true,
    files: sealed.files.map((f) =>
      f.path === large ? { path: f.path, size: f.size, written: writtenStamp(path.join(dir, large)) } : f,
    ),
  };
  fs.writeFileSync(path.join(dir, SEAL_DRAFT_FILE), JSON.stringify(draft, null, 2));
}
