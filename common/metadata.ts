import { z } from 'zod';

/** metadata.json: written last and atomically; a checkpoint without it does not exist. */
const SHA256_HEX = z.string().regex(/^[0-9a-f]{64}$/);

/**
 * One content-addressed chunk of a file (format v2): its bytes are the S3 object chunks/<sha256>, and its
 * SHA-256 is its key, so a chunk already in the bucket is never sent again and every fetched chunk is checked
 * against the name it was fetched by. A file's chunks, in order, are the file.
 */
export const ChunkRefSchema = z.object({ sha256: SHA256_HEX, size: z.number().int().positive() });
export type ChunkRef = z.infer<typeof ChunkRefSchema>;

const FileEntryBase = z.object({
  path: z
    .string()
    .min(1)
    .refine((p) => !p.startsWith('/') && !p.split('/').includes('..'), 'must be a relative path inside the checkpoint'),
  size: z.number().int().nonnegative(),
  /** SHA-256 of the whole file; absent for a chunked file, whose chunks' SHA-256 (their keys) cover every byte. */
  sha256: SHA256_HEX.optional(),
  /** Format v2: the file's content-addressed chunks, in order; their sizes add up to `size`. */
  chunks: z.array(ChunkRefSchema).optional(),
  /**
   * S3's own full-object checksum of the object as the upload completed it: for a multipart upload the COMPOSITE
   * SHA-256 (base64 SHA-256 of the parts' SHA-256 digests, then '-' and the part count), as S3 returns it in
   * x-amz-checksum-sha256. Lets a fetch compare the object S3 serves with the one uploaded before reading a byte.
   * Absent in checkpoints sealed before it was recorded, and for files sent in one PUT (their sha256 is S3's checksum).
   */
  s3Checksum: z
    .string()
    .regex(/^[A-Za-z0-9+/]{43}=-\d+$/)
    .optional(),
});

export const FileEntrySchema = FileEntryBase.superRefine((f, ctx) => {
  if (f.sha256 === undefined && f.chunks === undefined)
    ctx.addIssue({ code: 'custom', path: ['sha256'], message: 'is required for a file without chunks' });
  if (f.chunks && f.chunks.reduce((n, c) => n + c.size, 0) !== f.size)
    ctx.addIssue({ code: 'custom', path: ['chunks'], message: `sizes do not add up to the file's size ${f.size}` });
});

/** v1: every file a whole object under the checkpoint's prefix; v2: large files as content-addressed chunks. */
export const FORMAT_V1 = 'kybernate.checkpoint/v1';
export const FORMAT_V2 = 'kybernate.checkpoint/v2';

const MetadataBase = z.object({
  format: z.enum([FORMAT_V1, FORMAT_V2]),
  checkpointId: z.string(),
  jobId: z.string(),
  node: z.string(),
  pid: z.number().int(),
  createdAt: z.string(),
  criuVersion: z.string(),
  /** vramBytes: declared (--vram, the override); measuredVramBytes: NVML's figure for the process tree at checkpoint. */
  cuda: z.object({
    checkpointed: z.boolean(),
    vramBytes: z.number().int().nonnegative(),
    measuredVramBytes: z.number().int().nonnegative().optional(),
  }),
  /** What a restore needs of its node (common/compat.ts); absent in checkpoints taken before it was recorded. */
  compat: z
    .object({
      gpuModel: z.string().nullable().optional(),
      gpuIndex: z.number().int().nonnegative().nullable().optional(),
      gpuUuid: z.string().nullable().optional(),
      driverVersion: z.string().nullable().optional(),
      cudaVersion: z.number().int().nullable().optional(),
      criuVersion: z.string().nullable().optional(),
      kernelRelease: z.string().nullable().optional(),
      cpuFlags: z.array(z.string()).optional(),
      heldVram: z.boolean().optional(),
    })
    .optional(),
  /** Files the workload had open for output, restored to the same paths before CRIU restore. */
  workloadFiles: z.array(z.object({ path: z.string(), artifact: z.string() })),
  files: z.array(FileEntrySchema),
});

/**
 * A chunked file only in format v2: an agent from before chunks reads v1 and would look for whole objects
 * that are not there, so it refuses v2 outright (field 'format') instead.
 */
export const MetadataSchema = MetadataBase.superRefine((m, ctx) => {
  m.files.forEach((f, i) => {
    if (f.chunks && m.format !== FORMAT_V2)
      ctx.addIssue({ code: 'custom', path: ['files', i, 'chunks'], message: `only in format ${FORMAT_V2}` });
  });
});
export type Metadata = z.infer<typeof MetadataSchema>;
export type FileEntry = z.infer<typeof FileEntrySchema>;

export const METADATA_FILE = 'metadata.json';

/**
 * The seal's record while the upload still hashes the large files (PATCH 'checkpoint-hash-while-streaming'):
 * metadata.json's fields, with sha256 absent for every file the upload hashes as it sends it. Never a checkpoint:
 * readers of checkpoints look for metadata.json only; the upload turns this into metadata.json once S3 holds
 * the bytes it hashed.
 */
export const SealDraftSchema = MetadataBase.extend({
  /**
   * The upload stores the unhashed files as content-addressed chunks (format v2). Absent in drafts of agents
   * before chunks: those files go as whole multipart objects (format v1).
   */
  chunked: z.boolean().optional(),
  files: z.array(
    FileEntryBase.extend({
      /**
       * For a file left unhashed: its inode and change time (ns) when sealed. Any write, truncate or utimes after
       * the seal moves the change time, so the upload refuses a file no longer the one CRIU wrote, as the seal's
       * hash used to. Absent in drafts of agents before this field: no such check then.
       */
      written: z.object({ ino: z.string().regex(/^\d+$/), ctimeNs: z.string().regex(/^\d+$/) }).optional(),
    }),
  ),
});
export type SealDraft = z.infer<typeof SealDraftSchema>;
export const SEAL_DRAFT_FILE = 'seal-draft.json';
