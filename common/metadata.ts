import { z } from 'zod';

/** metadata.json: written last and atomically; a checkpoint without it does not exist. */
export const FileEntrySchema = z.object({
  path: z
    .string()
    .min(1)
    .refine((p) => !p.startsWith('/') && !p.split('/').includes('..'), 'must be a relative path inside the checkpoint'),
  size: z.number().int().nonnegative(),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
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
