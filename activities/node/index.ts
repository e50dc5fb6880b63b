import * as fs from 'node:fs';
import type { CudaStepResult, DumpResult, SealResult, UploadResult } from '../../common/checkpoint';
import { checkpointDir, type NodeContext } from './context';
import { criuDump, criuRestore, workloadFileIndex } from './criu';
import { cudaState, cudaStep } from './cuda';
import { fetchCheckpoint, type FetchResult } from './fetch';
import { type NodeInventory, readInventory } from './inventory';
import { killProcess, processAlive, readWorkloadPid, requireProcess, startWorkload, type WorkloadInfo, type WorkloadSpec } from './process';
import { sealCheckpoint } from './seal';
import { deleteCheckpointDir, type LocalCheckpoint, listLocalCheckpoints } from './tier';
import { uploadCheckpoint } from './upload';

/** Activities that run only on a node's own queue (node/<name>), bound to that node's context. */
export function createNodeActivities(ctx: NodeContext) {
  return {
    async inventory(): Promise<NodeInventory> {
      return readInventory(ctx);
    },
    async startWorkload(spec: WorkloadSpec): Promise<WorkloadInfo> {
      return startWorkload(ctx, spec);
    },
    /** Which process a checkpoint request means: a pid, or the pid of a workload this agent started. */
    async resolveTarget(input: { pid?: number; jobId: string }): Promise<{ pid: number }> {
      const pid = input.pid ?? readWorkloadPid(ctx, input.jobId);
      requireProcess(pid);
      return { pid };
    },
    async inspectProcess(input: { pid: number }): Promise<{ alive: boolean; cuda: string }> {
      return { alive: processAlive(input.pid), cuda: cudaState(input.pid) };
    },
    async cudaLock(input: { pid: number }): Promise<CudaStepResult> {
      requireProcess(input.pid);
      return cudaStep('lock', input.pid);
    },
    async cudaCheckpoint(input: { pid: number }): Promise<CudaStepResult> {
      return cudaStep('checkpoint', input.pid);
    },
    async cudaRestore(input: { pid: number }): Promise<CudaStepResult> {
      return cudaStep('restore', input.pid);
    },
    async cudaUnlock(input: { pid: number }): Promise<CudaStepResult> {
      return cudaStep('unlock', input.pid);
    },
    async criuDump(input: { checkpointId: string; pid: number; leaveRunning: boolean }): Promise<DumpResult> {
      return criuDump(ctx, input);
    },
    async seal(input: { checkpointId: string; jobId: string; pid: number; cudaCheckpointed: boolean; vramBytes: number }): Promise<SealResult> {
      return sealCheckpoint(ctx, input);
    },
    async upload(input: { checkpointId: string }): Promise<UploadResult> {
      return uploadCheckpoint(ctx, input);
    },
    async fetch(input: { checkpointId: string }): Promise<Omit<FetchResult, 'metadata'> & { jobId: string; vramBytes: number }> {
      const r = await fetchCheckpoint(ctx, input);
      return { dir: r.dir, bytes: r.bytes, source: r.source, jobId: r.metadata.jobId, vramBytes: r.metadata.cuda.vramBytes };
    },
    /** From this node's copy of the checkpoint (fetched and verified, or the images of a dump just taken). */
    async criuRestore(input: { checkpointId: string }): Promise<{ pid: number }> {
      const dir = checkpointDir(ctx, input.checkpointId);
      return criuRestore(ctx, { dir, files: workloadFileIndex(dir) });
    },
    async readLog(input: { path: string; maxBytes?: number }): Promise<string> {
      const max = input.maxBytes ?? 64 * 1024;
      const st = fs.statSync(input.path);
      const fd = fs.openSync(input.path, 'r');
      try {
        const len = Math.min(max, st.size);
        const buf = Buffer.alloc(len);
        fs.readSync(fd, buf, 0, len, st.size - len);
        return buf.toString('utf8');
      } finally {
        fs.closeSync(fd);
      }
    },
    async listLocalCheckpoints(): Promise<LocalCheckpoint[]> {
      return listLocalCheckpoints(ctx);
    },
    async deleteCheckpointDir(input: { checkpointId: string; onlyIfPartial: boolean }): Promise<{ deleted: boolean }> {
      return deleteCheckpointDir(ctx, input);
    },
    async killProcess(input: { pid: number; reason: string }): Promise<{ killed: boolean }> {
      return killProcess(ctx, input.pid, input.reason);
    },
  };
}

export type NodeActivities = ReturnType<typeof createNodeActivities>;
