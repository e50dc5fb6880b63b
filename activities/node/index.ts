import * as fs from 'node:fs';
import type { CudaStepResult, DumpResult, SealResult, UploadResult } from '../../common/checkpoint';
import * as path from 'node:path';
import { ApplicationFailure } from '@temporalio/activity';
import { checkpointLocation, type NodeContext, workloadDir } from './context';
import { criuDump, refuseExistingCheckpoint, workloadFileIndex } from './criu';
import { setAsideCorrupt } from './corrupt';
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
import { inspectRestore, restoreProcess } from './restore-attempt';
import { releaseStaging } from './staging';
import { deleteCheckpointDir, type LocalCheckpoint, listLocalCheckpoints } from './tier';
import { uploadCheckpoint } from './upload';
import { verifyRunning, type VerifyRunningInput, type VerifyRunningResult } from './verify';
import { checkVram, recordVram } from './vram';
import type { RestoreInspection } from '../../common/restore';
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
    async resolveTarget(input: { pid?: number; jobId: string; checkpointId?: string }): Promise<{ pid: number }> {
      // Checked before the process: an id in use is refused before anything is touched.
      if (input.checkpointId) refuseExistingCheckpoint(ctx, input.checkpointId);
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
    /** metadataSha256: recorded at seal; the upload refuses a metadata.json that differs from it. */
    async upload(input: { checkpointId: string; metadataSha256?: string | null }): Promise<UploadResult> {
      return uploadCheckpoint(ctx, input);
    },
    /** A checkpoint staged in memory, copied to this node's disk while the upload runs; synced when it must stand in for S3. */
    async persist(input: { checkpointId: string; sync: boolean }): Promise<{ bytes: number; durationMs: number }> {
      return persistCheckpoint(ctx, input);
    },
    async releaseStaging(input: { checkpointId: string }): Promise<{ released: boolean }> {
      return releaseStaging(ctx, input);
    },
    /** metadataSha256: recorded at seal; a metadata.json (local or in S3) that differs is ChecksumMismatch. */
    async fetch(input: { checkpointId: string; metadataSha256?: string | null }): Promise<Omit<FetchResult, 'metadata'> & { jobId: string; vramBytes: number }> {
      const r = await fetchCheckpoint(ctx, input);
      return { dir: r.dir, bytes: r.bytes, source: r.source, staged: r.staged, jobId: r.metadata.jobId, vramBytes: r.metadata.cuda.vramBytes };
    },
    /**
     * From this node's copy of the checkpoint (fetched and verified, or the images of a dump just taken); the
     * restored process by pid and start time. A restore attempt passes its attemptId: the step is then journaled.
     */
    async criuRestore(input: { checkpointId: string; attemptId?: string }): Promise<{ pid: number; startTime: number }> {
      return restoreProcess(ctx, input);
    },
    /** After the workflow lost the agent mid-restore: what CRIU really did, and whether its process runs. */
    async inspectRestore(input: { checkpointId: string; attemptId: string; pid?: number; startTime?: number }): Promise<RestoreInspection> {
      return inspectRestore(ctx, input);
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
    /** Running (by identity, not stopped, CUDA running or absent) and, when declared, ready by its probe. */
    async verifyRunning(input: VerifyRunningInput): Promise<VerifyRunningResult> {
      return verifyRunning(ctx, input);
    },
    /**
     * Alive, and making progress: the CPU time of its tree (the workload runs under an init that uses none) or
     * one of its output files grows, checked every 100 ms up to the window.
     * Kept registered for restores started before verifyRunning (their histories call it); it fails idle workloads.
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
    /** A copy that no longer matches its seal: out of the node's checkpoints, kept for an operator. */
    async setAsideCorrupt(input: { checkpointId: string; reason: string }): Promise<{ movedTo: string | null }> {
      return setAsideCorrupt(ctx, input);
    },
    async deleteCheckpointDir(input: { checkpointId: string }): Promise<{ deleted: boolean }> {
      return deleteCheckpointDir(ctx, input);
    },
    /** With a start time, only that very process is killed (a kill that waited for the agent must not hit a reused pid). */
    async killProcess(input: { pid: number; reason: string; startTime?: number }): Promise<{ killed: boolean }> {
      return killProcess(ctx, input.pid, input.reason, input.startTime);
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
