import { z } from 'zod';

/** metadata.json: written last and atomically; a checkpoint without it does not exist. */
export const FileEntrySchema = z.object({
  path: z.string().min(1).refine((p) => !p.startsWith('/') && !p.split('/').includes('..'), 'must be a relative path inside the checkpoint'),
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
  cuda: z.object({ checkpointed: z.boolean(), vramBytes: z.number().int().nonnegative() }),
  /** Files the workload had open for output, restored to the same paths before CRIU restore. */
  workloadFiles: z.array(z.object({ path: z.string(), artifact: z.string() })),
  files: z.array(FileEntrySchema),
});
export type Metadata = z.infer<typeof MetadataSchema>;
export type FileEntry = z.infer<typeof FileEntrySchema>;

export const METADATA_FILE = 'metadata.json';
