import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ApplicationFailure } from '@temporalio/activity';
import { ErrorType } from '../../common/errors';
import type { SealResult } from '../../common/checkpoint';
import type { CompatRecord } from '../../common/compat';
import { inputProblem } from '../../common/inputs';
import {
  type ChunkRef,
  FORMAT_V1,
  FORMAT_V2,
  type Metadata,
  METADATA_FILE,
  MetadataSchema,
  SEAL_DRAFT_FILE,
  type SealDraft,
  SealDraftSchema,
} from '../../common/metadata';
import { CHUNK_MAX, firstCut } from '../chunking';
import { partSizeFor } from '../s3-client';
import { BufferPool, readChunks } from './chunk-reader';
import { checkpointLocation, type NodeContext } from './context';
import { criuVersion, IMAGES, workloadFileIndex } from './criu';
import { heartbeat } from './run-tool';
import { listGpus } from './cuda';
import { cpuFlags } from './inventory';
import { loadMeasurement } from './measure';
import { driverVersions, gpuMemory } from './nvml';

export async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  const stream = fs.createReadStream(file, { highWaterMark: 4 << 20 });
  let n = 0;
  for await (const chunk of stream) {
    h.update(chunk as Buffer);
    if (++n % 64 === 0) heartbeat();
  }
  return h.digest('hex');
}

/**
 * A file's content-addressed chunks (format v2), cut exactly as the upload cuts it (the same reader,
 * chunk-reader.ts, and the same cut, chunking.ts), each named by its SHA-256: read once, no upload. A file
 * that ends before `size` is ChecksumMismatch (it changed while being sealed).
 */
export async function chunkRefsOfFile(file: string, size: number): Promise<ChunkRef[]> {
  const refs: ChunkRef[] = [];
  // Two buffers: the chunk being hashed and the next window; each chunk is hashed and released at once.
  const read = await readChunks(
    file,
    size,
    new BufferPool(2, CHUNK_MAX),
    (window, atEnd) => firstCut(window, atEnd)!,
    (_i, chunk, release) => {
      refs.push({ sha256: sha256Hex(chunk), size: chunk.length });
      release();
      if (refs.length % 16 === 0) heartbeat();
    },
  );
  if (read.bytes !== size)
    throw ApplicationFailure.nonRetryable(
      `${file}: ${read.bytes} bytes, ${size} when listed`,
      ErrorType.ChecksumMismatch,
    );
  return refs;
}

export function listFiles(dir: string, prefix = ''): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(path.join(dir, prefix), { withFileTypes: true })) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...listFiles(dir, rel));
    else if (e.isFile()) out.push(rel);
  }
  return out.sort();
}

/** Writes a file so that it is either absent or complete after a crash: temp name, fsync, rename, fsync dir. */
export function writeFileAtomic(file: string, data: string | Buffer): void {
  const tmp = `${file}.tmp-${process.pid}`;
  const fd = fs.openSync(tmp, 'w');
  try {
    fs.writeSync(fd, typeof data === 'string' ? Buffer.from(data) : data);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  fsyncDir(path.dirname(file));
}

/** A rename or a new file is durable only once its directory is synced. */
export function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** What a write to a file after the seal changes (inode, change time in ns), as sealed in seal-draft.json. */
export function writtenStamp(file: string): { ino: string; ctimeNs: string } {
  const st = fs.statSync(file, { bigint: true });
  return { ino: st.ino.toString(), ctimeNs: st.ctimeNs.toString() };
}

/** A file the upload sends part by part (multipart): with hashing streamed, its SHA-256 is computed by that upload. */
export const streamsOnUpload = (size: number): boolean => size > partSizeFor(size);

export interface SealInput {
  checkpointId: string;
  jobId: string;
  pid: number;
  cudaCheckpointed: boolean;
  vramBytes: number;
  /** 'small': the large files are hashed by the upload as it sends them (seal-draft.json, no metadata.json). */
  hash?: 'all' | 'small';
  /** A metadata.json the upload already committed is verified and kept, not replaced. */
  keepCommitted?: boolean;
}

/**
 * Checksums the artifacts (in parallel) and commits metadata.json last. Idempotent: re-sealing recomputes.
 * hash 'small' (PATCH 'checkpoint-hash-while-streaming'): the large files (pages images) are not read here;
 * their SHA-256 is computed by the upload as it sends them, so the record is written as seal-draft.json and
 * the upload commits metadata.json. keepCommitted: a metadata.json already there (committed by such an upload)
 * is verified (every file hashed) and kept, not replaced: S3 may already hold it.
 */
export async function sealCheckpoint(ctx: NodeContext, input: SealInput): Promise<SealResult> {
  const dir = checkpointLocation(ctx, input.checkpointId);
  if (!fs.existsSync(path.join(dir, IMAGES)))
    throw ApplicationFailure.nonRetryable(`no CRIU images in ${dir}`, ErrorType.CheckpointNotFound);
  if (input.keepCommitted && fs.existsSync(path.join(dir, METADATA_FILE))) {
    const md = await verifyLocal(dir);
    return {
      files: md.files.length,
      totalBytes: md.files.reduce((s, f) => s + f.size, 0),
      metadataSha256: sha256Hex(fs.readFileSync(path.join(dir, METADATA_FILE))),
      ...(md.cuda.measuredVramBytes !== undefined ? { measuredVramBytes: md.cuda.measuredVramBytes } : {}),
      ...(md.compat ? { compat: md.compat as CompatRecord } : {}),
    };
  }
  const streamed = input.hash === 'small';
  // A full seal (the disk tier's, while S3 is out of reach) cuts the large files into the chunks the upload would
  // send: the promotion then stores only the chunks S3 lacks, as the checkpoint's own upload would have.
  const chunked = !streamed && ctx.s3.chunks !== false;
  // CRIU's own logs (criu-dump.log, criu-restore.log) describe this node's run, not the workload.
  const names = listFiles(dir).filter(
    (f) =>
      f !== METADATA_FILE &&
      f !== SEAL_DRAFT_FILE &&
      !/^criu-.*\.log$/.test(f) &&
      f !== 'restored.pid' &&
      !f.includes('.tmp-'),
  );
  const files: (SealDraft['files'][number] & { chunks?: ChunkRef[] })[] = await Promise.all(
    names.map(async (p) => {
      const size = fs.statSync(path.join(dir, p)).size;
      if (streamed && streamsOnUpload(size)) return { path: p, size, written: writtenStamp(path.join(dir, p)) };
      if (chunked && streamsOnUpload(size))
        return { path: p, size, chunks: await chunkRefsOfFile(path.join(dir, p), size) };
      return { path: p, size, sha256: await sha256File(path.join(dir, p)) };
    }),
  );
  const m = loadMeasurement(ctx, input.checkpointId);
  const versions = await driverVersions();
  // The GPU the process used: the measured one, else the node's only GPU.
  const gpus = await listGpus();
  const only = gpus.length === 1 ? gpus[0] : null;
  const gpuIndex = m?.gpuIndex ?? only?.index ?? null;
  const compat: CompatRecord = {
    gpuModel: m?.gpuModel ?? only?.name ?? null,
    gpuIndex,
    gpuUuid: m?.gpuUuid ?? (gpuIndex !== null ? ((await gpuMemory(gpuIndex))?.uuid ?? null) : null),
    driverVersion: versions?.driverVersion ?? null,
    cudaVersion: versions?.cudaVersion ?? null,
    criuVersion: await criuVersion(ctx),
    kernelRelease: os.release(),
    cpuFlags: cpuFlags(),
    heldVram: input.cudaCheckpointed,
  };
  const doc = {
    format: files.some((f) => f.chunks) ? FORMAT_V2 : FORMAT_V1,
    checkpointId: input.checkpointId,
    jobId: input.jobId,
    node: ctx.node,
    pid: input.pid,
    createdAt: new Date().toISOString(),
    criuVersion: await criuVersion(ctx),
    cuda: {
      checkpointed: input.cudaCheckpointed,
      vramBytes: input.vramBytes,
      ...(m ? { measuredVramBytes: m.bytes } : {}),
    },
    compat,
    workloadFiles: workloadFileIndex(dir),
    files,
    // The upload stores the files left unhashed as content-addressed chunks (format v2), unless turned off.
    ...(streamed && ctx.s3.chunks !== false ? { chunked: true } : {}),
  };
  const deferred = files.filter((f) => f.sha256 === undefined).length;
  if (streamed) {
    const invalid = inputProblem(SealDraftSchema, doc);
    if (invalid)
      throw ApplicationFailure.nonRetryable(
        `metadata.json of ${input.checkpointId} would be invalid: ${invalid}`,
        ErrorType.InvalidInput,
      );
    // A metadata.json left by an earlier seal would name bytes this seal did not hash: the draft replaces it.
    fs.rmSync(path.join(dir, METADATA_FILE), { force: true });
    writeFileAtomic(path.join(dir, SEAL_DRAFT_FILE), JSON.stringify(SealDraftSchema.parse(doc), null, 2));
    return {
      files: files.length,
      totalBytes: files.reduce((s, f) => s + f.size, 0),
      metadataSha256: null,
      streamed: deferred,
      ...(m ? { measuredVramBytes: m.bytes } : {}),
      compat,
    };
  }
  // One line naming the field (e.g. cuda.vramBytes out of bounds), not a multi-line ZodError dump.
  const invalid = inputProblem(MetadataSchema, doc);
  if (invalid)
    throw ApplicationFailure.nonRetryable(
      `metadata.json of ${input.checkpointId} would be invalid: ${invalid}`,
      ErrorType.InvalidInput,
    );
  const metadata: Metadata = MetadataSchema.parse(doc);
  const text = JSON.stringify(metadata, null, 2);
  writeFileAtomic(path.join(dir, METADATA_FILE), text);
  return {
    files: files.length,
    totalBytes: files.reduce((s, f) => s + f.size, 0),
    metadataSha256: sha256Hex(text),
    ...(m ? { measuredVramBytes: m.bytes } : {}),
    compat,
  };
}

/**
 * Whether `dir` holds a complete copy sealed by exactly this metadata.json (bytes; a Buffer, or the metadata.json
 * of another directory): the same checkpoint, whose files each side verified or sealed. False when either is missing.
 */
export function sameMetadata(dir: string, other: Buffer | string): boolean {
  try {
    const raw = typeof other === 'string' ? fs.readFileSync(path.join(other, METADATA_FILE)) : other;
    return fs.readFileSync(path.join(dir, METADATA_FILE)).equals(raw);
  } catch {
    return false;
  }
}

export function readMetadata(dir: string): Metadata {
  const file = path.join(dir, METADATA_FILE);
  let raw: Buffer;
  try {
    raw = fs.readFileSync(file);
  } catch (e) {
    throw ApplicationFailure.nonRetryable(`${file}: ${(e as Error).message}`, ErrorType.MetadataInvalid);
  }
  return parseMetadata(raw, file);
}

/** metadata.json's bytes, checked field by field; `where` names it in the error. */
export function parseMetadata(raw: Buffer, where: string): Metadata {
  let json: unknown;
  try {
    json = JSON.parse(raw.toString('utf8'));
  } catch (e) {
    throw ApplicationFailure.nonRetryable(`${where}: ${(e as Error).message}`, ErrorType.MetadataInvalid);
  }
  const parsed = MetadataSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw ApplicationFailure.nonRetryable(
      `${where}: field '${issue.path.join('.')}' ${issue.message}`,
      ErrorType.MetadataInvalid,
    );
  }
  return parsed.data;
}

export const sha256Hex = (data: string | Buffer): string => createHash('sha256').update(data).digest('hex');

/**
 * Verifies every file of a local checkpoint against its metadata.json, and metadata.json itself against the
 * SHA-256 recorded at seal when the caller knows it; never restore unverified bytes.
 */
export async function verifyLocal(dir: string, metadataSha256?: string | null): Promise<Metadata> {
  const file = path.join(dir, METADATA_FILE);
  const raw = fs.readFileSync(file);
  if (metadataSha256 && sha256Hex(raw) !== metadataSha256) {
    throw ApplicationFailure.nonRetryable(
      `${METADATA_FILE}: sha256 ${sha256Hex(raw)} != ${metadataSha256} recorded at seal`,
      ErrorType.ChecksumMismatch,
    );
  }
  const md = parseMetadata(raw, file);
  for (const f of md.files) {
    const p = path.join(dir, f.path);
    if (!fs.existsSync(p)) throw ApplicationFailure.nonRetryable(`${f.path}: missing`, ErrorType.ChecksumMismatch);
    if (f.chunks) {
      await verifyChunks(p, f.path, f.chunks);
      continue;
    }
    const sum = await sha256File(p);
    if (sum !== f.sha256)
      throw ApplicationFailure.nonRetryable(`${f.path}: sha256 ${sum} != ${f.sha256}`, ErrorType.ChecksumMismatch);
  }
  return md;
}

/** A chunked file (format v2), read once: each run of bytes must hash to its chunk's name, and nothing may follow. */
export async function verifyChunks(file: string, name: string, chunks: ChunkRef[]): Promise<void> {
  const fh = await fs.promises.open(file, 'r');
  try {
    let offset = 0;
    for (const [i, c] of chunks.entries()) {
      const buf = Buffer.allocUnsafe(c.size);
      let got = 0;
      while (got < c.size) {
        const { bytesRead } = await fh.read(buf, got, c.size - got, offset + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      const sum = sha256Hex(buf.subarray(0, got));
      if (sum !== c.sha256)
        throw ApplicationFailure.nonRetryable(
          `${name}: chunk ${i} (bytes ${offset}-${offset + c.size - 1}) has sha256 ${sum}, metadata.json says ${c.sha256}`,
          ErrorType.ChecksumMismatch,
        );
      offset += c.size;
      if (i % 16 === 15) heartbeat();
    }
    if ((await fh.stat()).size !== offset)
      throw ApplicationFailure.nonRetryable(
        `${name}: longer than its ${offset} bytes of chunks`,
        ErrorType.ChecksumMismatch,
      );
  } finally {
    await fh.close();
  }
}
