import * as fs from 'node:fs';
import type { CheckpointInspection, CheckpointStep, CudaStepResult, DumpResult, ProcessRef, SealResult, UploadResult } from '../../common/checkpoint';
import * as path from 'node:path';
import { ApplicationFailure } from '@temporalio/activity';
import { checkpointDir, checkpointLocation, type NodeContext, stagedDir, workloadDir } from './context';
import { criuDump, criuRestore, finishCutDump, workloadFileIndex } from './criu';
import { type CudaOp, cudaState, cudaStepOnce } from './cuda';
import { fetchCheckpoint, type FetchResult } from './fetch';
import { type NodeInventory, readInventory } from './inventory';
import { inspectCheckpoint } from './inspect';
import { journaled, journalOutcome } from './journal';
import {
  isSameProcess, killProcess, processAlive, processIdentity, procStatFields, readWorkloadPid, requireProcess, startWorkload, type WorkloadInfo, type WorkloadSpec,
  writableFiles,
} from './process';
import { persistCheckpoint } from './persist';
import { sealCheckpoint } from './seal';
import { releaseStaging } from './staging';
import { deleteCheckpointDir, type LocalCheckpoint, listLocalCheckpoints } from './tier';
import { uploadCheckpoint } from './upload';
import { checkVram, recordVram } from './vram';
import { ErrorType } from '../../common/errors';

/** A step's result as the journal keeps it: whole (they are small), so a workflow that lost the reply can read it back. */
const whole = <T extends object>(r: T): Record<string, unknown> => ({ ...(r as Record<string, unknown>) });

/** The CUDA steps take an optional checkpointId (inputs of older workflows lack it): with it, the step is journaled. */
type CudaInput = { pid: number; checkpointId?: string };

/** Activities that run only on a node's own queue (node/<name>), bound to that node's context. */
export function createNodeActivities(ctx: NodeContext) {
  /** Journals a checkpoint step when the workflow named its checkpoint; older inputs run unjournaled. */
  const step = <T extends object>(checkpointId: string | undefined, name: CheckpointStep, fn: () => Promise<T>): Promise<T> =>
    checkpointId === undefined ? fn() : journaled(ctx, 'checkpoint', checkpointId, name, fn, whole);
  const cuda = (op: CudaOp, name: CheckpointStep, input: CudaInput): Promise<CudaStepResult> =>
    step(input.checkpointId, name, async () => {
      if (op === 'lock') requireProcess(input.pid);
      return cudaStepOnce(op, input.pid);
    });
  return {
    async inventory(): Promise<NodeInventory> {
      return readInventory(ctx);
    },
    async startWorkload(spec: WorkloadSpec): Promise<WorkloadInfo> {
      return startWorkload(ctx, spec);
    },
    /**
     * Which process a checkpoint request means: a pid, or the pid of a workload this agent started. With its
     * start time, so that every later kill names this very process, never one that took its pid since.
     */
    async resolveTarget(input: { pid?: number; jobId: string }): Promise<ProcessRef> {
      const pid = input.pid ?? readWorkloadPid(ctx, input.jobId);
      requireProcess(pid);
      const id = processIdentity(pid);
      if (!id) throw ApplicationFailure.nonRetryable(`no such process: pid ${pid}`, ErrorType.NoSuchProcess);
      return id;
    },
    async inspectProcess(input: { pid: number }): Promise<{ alive: boolean; cuda: string }> {
      return { alive: processAlive(input.pid), cuda: cudaState(input.pid) };
    },
    async cudaLock(input: CudaInput): Promise<CudaStepResult> {
      return cuda('lock', 'cudaLock', input);
    },
    async cudaCheckpoint(input: CudaInput): Promise<CudaStepResult> {
      return cuda('checkpoint', 'cudaCheckpoint', input);
    },
    async cudaRestore(input: CudaInput): Promise<CudaStepResult> {
      return cuda('restore', 'cudaRestore', input);
    },
    async cudaUnlock(input: CudaInput): Promise<CudaStepResult> {
      return cuda('unlock', 'cudaUnlock', input);
    },
    /**
     * Taken once per checkpoint id: a dump the journal already knows of is never run again on a process whose
     * state after that try is unknown. A finished one is reported again (its images still there); anything
     * else is refused, and the workflow decides from inspectCheckpoint.
     */
    async criuDump(input: { checkpointId: string; pid: number; leaveRunning: boolean; hostVramBytes?: number }): Promise<DumpResult> {
      const before = journalOutcome(ctx, 'checkpoint', input.checkpointId, 'criuDump');
      if (before.state === 'done' && inspectCheckpoint(ctx, { checkpointId: input.checkpointId, process: { pid: input.pid } }).images.complete) {
        return before.data as unknown as DumpResult;
      }
      if (before.state !== 'never') {
        throw ApplicationFailure.nonRetryable(`checkpoint ${input.checkpointId}: a dump was already ${before.state} at ${before.at}; not taken again`, ErrorType.StepAlreadyStarted);
      }
      // The output files the dump will copy, recorded up front: if the agent is lost after CRIU finished, a
      // later agent can complete the dump with them (finishDump).
      let files: string[] | undefined;
      try {
        files = writableFiles(input.pid);
      } catch {
        files = undefined; // gone already: criuDump says so
      }
      return journaled(ctx, 'checkpoint', input.checkpointId, 'criuDump', () => criuDump(ctx, input), whole, { pid: input.pid, leaveRunning: input.leaveRunning, files });
    },
    /**
     * A dump cut off after CRIU wrote its complete images and stopped the process (now gone), before the agent
     * copied its output files: copies them now and records the dump done. Refused in any other state.
     */
    async finishDump(input: { checkpointId: string; process: ProcessRef }): Promise<DumpResult> {
      const before = journalOutcome(ctx, 'checkpoint', input.checkpointId, 'criuDump');
      if (before.state === 'done') return before.data as unknown as DumpResult;
      const seen = inspectCheckpoint(ctx, input);
      const files = before.data?.files;
      if (before.state !== 'interrupted' || seen.process.state !== 'gone' || !seen.images.inventory || !Array.isArray(files)) {
        throw ApplicationFailure.nonRetryable(
          `checkpoint ${input.checkpointId}: dump ${before.state}, process ${seen.process.state}, images ${seen.images.inventory ? 'with' : 'without'} inventory.img${Array.isArray(files) ? '' : ', no recorded file list'}: cannot be finished`,
          ErrorType.CriuDumpFailed);
      }
      const dir = seen.images.location === 'memory' ? stagedDir(ctx, input.checkpointId)! : checkpointDir(ctx, input.checkpointId);
      return journaled(ctx, 'checkpoint', input.checkpointId, 'criuDump', async () => finishCutDump(dir, files.map(String), seen.images.location === 'memory'), whole, { finishing: true, files });
    },
    /** Idempotent (re-sealing recomputes every checksum), so the workflow runs it again after a lost agent. */
    async seal(input: { checkpointId: string; jobId: string; pid: number; cudaCheckpointed: boolean; vramBytes: number }): Promise<SealResult> {
      return journaled(ctx, 'checkpoint', input.checkpointId, 'seal', () => sealCheckpoint(ctx, input), whole);
    },
    async upload(input: { checkpointId: string }): Promise<UploadResult> {
      return journaled(ctx, 'checkpoint', input.checkpointId, 'upload', () => uploadCheckpoint(ctx, input), whole);
    },
    /** A checkpoint staged in memory, copied to this node's disk while the upload runs; synced when it must stand in for S3. */
    async persist(input: { checkpointId: string; sync: boolean }): Promise<{ bytes: number; durationMs: number }> {
      return journaled(ctx, 'checkpoint', input.checkpointId, 'persist', () => persistCheckpoint(ctx, input), whole, { sync: input.sync });
    },
    /** What really happened to a checkpoint on this node: asked by a workflow after a timeout, before it compensates. */
    async inspectCheckpoint(input: { checkpointId: string; process: ProcessRef }): Promise<CheckpointInspection> {
      return inspectCheckpoint(ctx, input);
    },
    async releaseStaging(input: { checkpointId: string }): Promise<{ released: boolean }> {
      return releaseStaging(ctx, input);
    },
    async fetch(input: { checkpointId: string }): Promise<Omit<FetchResult, 'metadata'> & { jobId: string; vramBytes: number }> {
      const r = await fetchCheckpoint(ctx, input);
      return { dir: r.dir, bytes: r.bytes, source: r.source, staged: r.staged, jobId: r.metadata.jobId, vramBytes: r.metadata.cuda.vramBytes };
    },
    /**
     * From this node's copy of the checkpoint (fetched and verified, or the images of a dump just taken).
     * inPlace: a checkpoint's compensation, bringing the workload back from its own dump; journaled, and never
     * run twice: a restore the journal saw finish, or whose process is alive, is reported, not repeated.
     */
    async criuRestore(input: { checkpointId: string; inPlace?: boolean }): Promise<{ pid: number }> {
      const dir = checkpointLocation(ctx, input.checkpointId);
      if (!input.inPlace) return criuRestore(ctx, { dir, files: workloadFileIndex(dir) });
      const before = journalOutcome(ctx, 'checkpoint', input.checkpointId, 'criuRestoreInPlace');
      const earlier = before.state === 'done' ? (before.data as { pid: number; startTime?: number }) : null;
      if (earlier && (earlier.startTime === undefined ? processAlive(earlier.pid) : isSameProcess({ pid: earlier.pid, startTime: earlier.startTime }))) {
        return { pid: earlier.pid };
      }
      if (before.state === 'running' || before.state === 'interrupted') {
        // An earlier try, cut off or still at work: the restored tree may be up already (CRIU wrote its pid file).
        const pidFile = path.join(dir, 'restored.pid');
        const pid = fs.existsSync(pidFile) ? Number(fs.readFileSync(pidFile, 'utf8').trim()) : 0;
        if (pid > 1 && processAlive(pid)) return { pid };
        // Never two restores of one workload at once: the workflow's retry asks again later.
        if (before.state === 'running') throw ApplicationFailure.retryable(`checkpoint ${input.checkpointId}: a restore in place is still running`, ErrorType.StepAlreadyStarted);
      }
      return journaled(ctx, 'checkpoint', input.checkpointId, 'criuRestoreInPlace', async () => {
        const r = await criuRestore(ctx, { dir, files: workloadFileIndex(dir) });
        return { pid: r.pid, startTime: processIdentity(r.pid)?.startTime };
      }, whole).then((r) => ({ pid: r.pid }));
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
    async checkVram(input: { bytes: number }): Promise<{ freeVramBytes: number }> {
      return checkVram(ctx, input);
    },
    /** A restored workload becomes this node's: its pid file, and the VRAM it holds in the ledger. */
    async adoptWorkload(input: { jobId: string; pid: number; vramBytes: number }): Promise<void> {
      const dir = workloadDir(ctx, input.jobId);
      fs.mkdirSync(dir, { recursive: true });
      fs.writeFileSync(path.join(dir, 'pid'), String(input.pid));
      recordVram(ctx, input.pid, input.vramBytes);
    },
    /** Alive, and making progress: CPU time or one of its output files grows, checked every 100 ms up to the window. */
    async verifyProgress(input: { pid: number; checkpointId: string; windowMs?: number }): Promise<{ cpuTicks: number; bytesWritten: number; afterMs: number }> {
      const files = workloadFileIndex(checkpointLocation(ctx, input.checkpointId)).map((f) => f.path);
      const sample = (): { cpu: number; bytes: number } => {
        requireProcess(input.pid);
        const f = procStatFields(input.pid);
        const bytes = files.reduce((s, p) => s + (fs.existsSync(p) ? fs.statSync(p).size : 0), 0);
        return { cpu: Number(f[11]) + Number(f[12]), bytes };
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
    /** With startTime, only that very process is killed (a kill queued while the agent was away must not hit a reused pid). */
    async killProcess(input: { pid: number; reason: string; startTime?: number }): Promise<{ killed: boolean }> {
      return killProcess(ctx, input.pid, input.reason, input.startTime);
    },
  };
}

export type NodeActivities = ReturnType<typeof createNodeActivities>;
