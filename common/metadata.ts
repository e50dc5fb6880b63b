import { z } from 'zod';

/** metadata.json: written last and atomically; a checkpoint without it does not exist. */
export const FileEntrySchema = z.object({
  path: z
    .string()
    .min(1)
    .refine((p) => !p.startsWith('/') && !p.split('/').includes('..'), 'must be a relative path inside the checkpoint'),
  size: z.number().int().nonnegative(),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
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

export const MetadataSchema = z.object({
  format: z.literal('kybernate.checkpoint/v1'),
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
export type Metadata = z.infer<typeof MetadataSchema>;
export type FileEntry = z.infer<typeof FileEntrySchema>;

export const METADATA_FILE = 'metadata.json';

/**
 * The seal's record while the upload still hashes the large files (PATCH 'checkpoint-hash-while-streaming'):
 * metadata.json's fields, with sha256 absent for every file the upload hashes as it sends it. Never a checkpoint:
 * readers of checkpoints look for metadata.json only; the upload turns this into metadata.json once S3 holds
 * the bytes it hashed.
 */
export const SealDraftSchema = MetadataSchema.extend({
  files: z.array(
    FileEntrySchema.extend({
      sha256: FileEntrySchema.shape.sha256.optional(),
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
