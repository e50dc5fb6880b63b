import * as fs from 'node:fs';
import type { CudaStepResult, DumpResult, SealResult, UploadResult } from '../../common/checkpoint';
import * as path from 'node:path';
import { ApplicationFailure } from '@temporalio/activity';
import { checkpointLocation, type NodeContext, workloadDir } from './context';
import { criuDump, criuRestore, workloadFileIndex } from './criu';
import { cudaStep, cudaTreeState } from './cuda';
import { fetchCheckpoint, type FetchResult } from './fetch';
import { type NodeInventory, readInventory } from './inventory';
import {
  DEFAULT_STOP_GRACE_MS, killProcess, processAlive, processIdentity, readWorkloadPid, requireProcess, runningWorkload, startWorkload, stopProcess,
  treeCpuTicks, type WorkloadInfo, type WorkloadSpec,
} from './process';
import { writePidFile } from './pid-file';
import { persistCheckpoint } from './persist';
import { sealCheckpoint } from './seal';
import { releaseStaging } from './staging';
import { deleteCheckpointDir, type LocalCheckpoint, listLocalCheckpoints } from './tier';
import { uploadCheckpoint } from './upload';
import { checkVram, recordVram } from './vram';
import { ErrorType } from '../../common/errors';

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
      return { alive: processAlive(input.pid), cuda: cudaTreeState(input.pid) };
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
    async criuDump(input: { checkpointId: string; pid: number; leaveRunning: boolean; hostVramBytes?: number }): Promise<DumpResult> {
      return criuDump(ctx, input);
    },
    async seal(input: { checkpointId: string; jobId: string; pid: number; cudaCheckpointed: boolean; vramBytes: number }): Promise<SealResult> {
      return sealCheckpoint(ctx, input);
    },
    async upload(input: { checkpointId: string }): Promise<UploadResult> {
      return uploadCheckpoint(ctx, input);
    },
    /** A checkpoint staged in memory, copied to this node's disk while the upload runs; synced when it must stand in for S3. */
    async persist(input: { checkpointId: string; sync: boolean }): Promise<{ bytes: number; durationMs: number }> {
      return persistCheckpoint(ctx, input);
    },
    async releaseStaging(input: { checkpointId: string }): Promise<{ released: boolean }> {
      return releaseStaging(ctx, input);
    },
    async fetch(input: { checkpointId: string }): Promise<Omit<FetchResult, 'metadata'> & { jobId: string; vramBytes: number }> {
      const r = await fetchCheckpoint(ctx, input);
      return { dir: r.dir, bytes: r.bytes, source: r.source, staged: r.staged, jobId: r.metadata.jobId, vramBytes: r.metadata.cuda.vramBytes };
    },
    /** From this node's copy of the checkpoint (fetched and verified, or the images of a dump just taken). */
    async criuRestore(input: { checkpointId: string }): Promise<{ pid: number }> {
      const dir = checkpointLocation(ctx, input.checkpointId);
      return criuRestore(ctx, { dir, files: workloadFileIndex(dir) });
    },
    async checkVram(input: { bytes: number }): Promise<{ freeVramBytes: number }> {
      return checkVram(ctx, input);
    },
    /** A restored workload becomes this node's: its pid file, and the VRAM it holds in the ledger. */
    async adoptWorkload(input: { jobId: string; pid: number; vramBytes: number }): Promise<void> {
      const dir = workloadDir(ctx, input.jobId);
      fs.mkdirSync(dir, { recursive: true });
      const id = processIdentity(input.pid);
      if (!id) throw ApplicationFailure.nonRetryable(`restored pid ${input.pid} of job ${input.jobId} is not running`, ErrorType.NoSuchProcess);
      writePidFile(path.join(dir, 'pid'), id);
      recordVram(ctx, input.pid, input.vramBytes);
    },
    /**
     * Alive, and making progress: the CPU time of its tree (the workload runs under an init that uses none) or
     * one of its output files grows, checked every 100 ms up to the window.
     */
    async verifyProgress(input: { pid: number; checkpointId: string; windowMs?: number }): Promise<{ cpuTicks: number; bytesWritten: number; afterMs: number }> {
      const files = workloadFileIndex(checkpointLocation(ctx, input.checkpointId)).map((f) => f.path);
      const sample = (): { cpu: number; bytes: number } => {
        requireProcess(input.pid);
        const bytes = files.reduce((s, p) => s + (fs.existsSync(p) ? fs.statSync(p).size : 0), 0);
        return { cpu: treeCpuTicks(input.pid), bytes };
      };
      const window = input.windowMs ?? 3000;
      const a = sample();
      for (let waited = 100; waited <= window; waited += 100) {
        await new Promise((r) => setTimeout(r, 100));
        const b = sample();
        if (b.cpu > a.cpu || b.bytes > a.bytes) return { cpuTicks: b.cpu - a.cpu, bytesWritten: b.bytes - a.bytes, afterMs: waited };
      }
      throw ApplicationFailure.nonRetryable(`pid ${input.pid} is alive but made no progress in ${window} ms`, ErrorType.NoProgress);
    },
    async listLocalCheckpoints(): Promise<LocalCheckpoint[]> {
      return listLocalCheckpoints(ctx);
    },
    async deleteCheckpointDir(input: { checkpointId: string }): Promise<{ deleted: boolean }> {
      return deleteCheckpointDir(ctx, input);
    },
    async killProcess(input: { pid: number; reason: string }): Promise<{ killed: boolean }> {
      return killProcess(ctx, input.pid, input.reason);
    },
    /**
     * Stops a job this agent started or adopted: SIGTERM, then SIGKILL after the grace period (default 30 s).
     * Not for compensations: a process in an unknown state is killed at once (killProcess).
     */
    async stopWorkload(input: { jobId: string; graceMs?: number; reason?: string }): Promise<{ stopped: boolean; signal: 'SIGTERM' | 'SIGKILL' | null; afterMs: number }> {
      const graceMs = input.graceMs ?? DEFAULT_STOP_GRACE_MS;
      if (!Number.isFinite(graceMs) || graceMs < 0) throw ApplicationFailure.nonRetryable(`graceMs: must be a non-negative number (got ${graceMs})`, ErrorType.InvalidInput, { field: 'graceMs' });
      const running = runningWorkload(ctx, input.jobId);
      if (!running) return { stopped: false, signal: null, afterMs: 0 };
      return stopProcess(ctx, running.pid, input.reason ?? 'stop requested', graceMs, running.startTime);
    },
  };
}

export type NodeActivities = ReturnType<typeof createNodeActivities>;
