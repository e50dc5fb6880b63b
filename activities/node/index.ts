import * as fs from 'node:fs';
import type {
  CheckpointInspection,
  CheckpointStep,
  CudaStepResult,
  DumpResult,
  ProcessRef,
  SealResult,
  UploadResult,
} from '../../common/checkpoint';
import * as path from 'node:path';
import { ApplicationFailure } from '@temporalio/activity';
import {
  checkpointDir,
  checkpointLocation,
  type NodeContext,
  restoreLocation,
  stagedDir,
  workloadDir,
} from './context';
import { criuDump, finishCutDump, refuseExistingCheckpoint, workloadFileIndex } from './criu';
import { setAsideCorrupt } from './corrupt';
import { type CudaOp, cudaStep, cudaTreeState, driverKind, type GpuRemap } from './cuda';
import { driverMajor, GPU_REMAP_MIN_DRIVER_MAJOR } from '../../common/compat';
import { driverVersions, gpuMemory } from './nvml';
import { fetchCheckpoint, type FetchResult } from './fetch';
import { type NodeInventory, readInventory } from './inventory';
import { inspectCheckpoint } from './inspect';
import { journaled, journalOutcome } from './journal';
import {
  DEFAULT_STOP_GRACE_MS,
  isSameProcess,
  killProcess,
  processAlive,
  processIdentity,
  readWorkloadPid,
  requireProcess,
  runningWorkload,
  startWorkload,
  stopProcess,
  treeCpuTicks,
  type WorkloadInfo,
  type WorkloadSpec,
  writableFiles,
} from './process';
import { writePidFile } from './pid-file';
import { registerWorkloadProcess } from './process-registry';
import { lyingRestore, testLie } from './test-lie';
import { persistCheckpoint } from './persist';
import { loadMeasurement, measureTreeVram, saveMeasurement } from './measure';
import { sealCheckpoint, type SealInput } from './seal';
import { inspectRestore, restoreProcess } from './restore-attempt';
import { releaseStaging, type StagedCopy } from './staging';
import { createRetentionNodeActivities } from './retention';
import { deleteCheckpointDir, type LocalCheckpoint, listLocalCheckpoints } from './tier';
import { uploadCheckpoint } from './upload';
import { verifyRunning, type VerifyRunningInput, type VerifyRunningResult } from './verify';
import { checkVram, recordVram } from './vram';
import type { RestoreInspection } from '../../common/restore';
import type {
  JobLimits,
  ReadRunLogInput,
  ReadRunLogResult,
  RunExit,
  RunRecord,
  StartRunInput,
  StartRunResult,
} from '../../common/job';
import type { ProcessIdentity } from '../../common/journal';
import {
  archiveRunLog,
  attachRunLimits,
  awaitRunExit,
  collectDiagnostics,
  inspectRun,
  readRunLog,
  startRun,
  stopRun,
} from './job-run';
import { ErrorType } from '../../common/errors';
import { measured, type MeasuredKind, recordFrozen } from './metrics';

/** A step's result as the journal keeps it: whole (they are small), so a workflow that lost the reply can read it back. */
const whole = <T extends object>(r: T): Record<string, unknown> => ({ ...(r as Record<string, unknown>) });

/** The CUDA steps take an optional checkpointId (inputs of older workflows lack it): with it, the step is journaled. */
type CudaInput = { pid: number; checkpointId?: string };
/** A restore placed on a GPU: the checkpoint's GPU (its UUID on the source node) and the index chosen here. */
type CudaRestoreInput = CudaInput & { sourceGpuUuid?: string; gpuIndex?: number };

/** Activities that run only on a node's own queue (node/<name>), bound to that node's context. */
export function createNodeActivities(ctx: NodeContext) {
  // Read once, when the agent starts: an agent told to lie outside test mode refuses to start at all.
  const lie = testLie();
  /** Journals a checkpoint step when the workflow named its checkpoint; older inputs run unjournaled. */
  const step = <T extends object>(
    checkpointId: string | undefined,
    name: CheckpointStep,
    fn: () => Promise<T>,
  ): Promise<T> => (checkpointId === undefined ? fn() : journaled(ctx, 'checkpoint', checkpointId, name, fn, whole));
  /**
   * With driver 580+ (CUDA 13) a restore onto another GPU than the checkpointed one passes the pair old UUID ->
   * new UUID; older drivers restore onto the same index (placement allowed nothing else), so no pair is passed.
   */
  const remapFor = async (input: CudaRestoreInput): Promise<GpuRemap | undefined> => {
    if (!input.sourceGpuUuid || input.gpuIndex === undefined) return undefined;
    const major = driverMajor((await driverVersions())?.driverVersion);
    if (major === null || major < GPU_REMAP_MIN_DRIVER_MAJOR) return undefined;
    const target = (await gpuMemory(input.gpuIndex))?.uuid;
    return target && target !== input.sourceGpuUuid ? { oldUuid: input.sourceGpuUuid, newUuid: target } : undefined;
  };
  /** The phase each CUDA op is measured under: lock and checkpoint belong to a checkpoint, restore and unlock to a restore. */
  const cudaPhase: Record<CudaOp, [MeasuredKind, string]> = {
    lock: ['checkpoint', 'Locking'],
    checkpoint: ['checkpoint', 'DumpingVram'],
    restore: ['restore', 'RestoringVram'],
    unlock: ['restore', 'Unlocking'],
  };
  const cuda = (op: CudaOp, name: CheckpointStep, input: CudaRestoreInput): Promise<CudaStepResult> =>
    measured(...cudaPhase[op], () =>
      step(input.checkpointId, name, async () => {
        if (op === 'lock') requireProcess(input.pid);
        if (op === 'checkpoint' && input.checkpointId !== undefined) {
          // Measured while the VRAM is still on the device (the checkpoint moves it to host memory). A retried step
          // whose VRAM already moved measures nothing and keeps the first measurement.
          const m = await measureTreeVram(input.pid).catch(() => null);
          if (m && (m.bytes > 0 || !loadMeasurement(ctx, input.checkpointId))) {
            saveMeasurement(ctx, input.checkpointId, m);
            ctx.logger.info(
              {
                node: ctx.node,
                checkpoint: input.checkpointId,
                pid: input.pid,
                measuredVramBytes: m.bytes,
                gpu: m.gpuIndex,
              },
              'VRAM of the process tree measured',
            );
          }
        }
        const remap = op === 'restore' ? await remapFor(input) : undefined;
        const r = await cudaStep(op, input.pid, undefined, undefined, remap);
        // driver 'standin': the test stand-in (deploy/native/standin-cuda), never to be mistaken for a GPU in the logs.
        if (r.outcome === 'done')
          ctx.logger.info(
            {
              node: ctx.node,
              checkpoint: input.checkpointId,
              pid: input.pid,
              op,
              driver: driverKind(),
              detail: r.detail,
            },
            `CUDA ${op} done`,
          );
        return r;
      }),
    );
  return {
    ...createRetentionNodeActivities(ctx),
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
    async resolveTarget(input: { pid?: number; jobId: string; checkpointId?: string }): Promise<ProcessRef> {
      // Checked before the process: an id in use is refused before anything is touched.
      if (input.checkpointId) refuseExistingCheckpoint(ctx, input.checkpointId);
      const pid = input.pid ?? readWorkloadPid(ctx, input.jobId);
      requireProcess(pid);
      const id = processIdentity(pid);
      if (!id) throw ApplicationFailure.nonRetryable(`no such process: pid ${pid}`, ErrorType.NoSuchProcess);
      return id;
    },
    async inspectProcess(input: { pid: number }): Promise<{ alive: boolean; cuda: string }> {
      return { alive: processAlive(input.pid), cuda: cudaTreeState(input.pid) };
    },
    async cudaLock(input: CudaInput): Promise<CudaStepResult> {
      return cuda('lock', 'cudaLock', input);
    },
    async cudaCheckpoint(input: CudaInput): Promise<CudaStepResult> {
      return cuda('checkpoint', 'cudaCheckpoint', input);
    },
    async cudaRestore(input: CudaRestoreInput): Promise<CudaStepResult> {
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
    async criuDump(input: {
      checkpointId: string;
      pid: number;
      leaveRunning: boolean;
      hostVramBytes?: number;
    }): Promise<DumpResult> {
      const before = journalOutcome(ctx, 'checkpoint', input.checkpointId, 'criuDump');
      if (
        before.state === 'done' &&
        inspectCheckpoint(ctx, { checkpointId: input.checkpointId, process: { pid: input.pid } }).images.complete
      ) {
        return before.data as unknown as DumpResult;
      }
      if (before.state !== 'never') {
        throw ApplicationFailure.nonRetryable(
          `checkpoint ${input.checkpointId}: a dump was already ${before.state} at ${before.at}; not taken again`,
          ErrorType.StepAlreadyStarted,
        );
      }
      // The output files the dump will copy, recorded up front: if the agent is lost after CRIU finished, a
      // later agent can complete the dump with them (finishDump).
      let files: string[] | undefined;
      try {
        files = writableFiles(input.pid);
      } catch {
        files = undefined; // gone already: criuDump says so
      }
      const r = await measured(
        'checkpoint',
        'DumpingProcess',
        () =>
          journaled(ctx, 'checkpoint', input.checkpointId, 'criuDump', () => criuDump(ctx, input), whole, {
            pid: input.pid,
            leaveRunning: input.leaveRunning,
            files,
          }),
        (d) => ({ bytes: d.imageBytes }),
      );
      if (input.leaveRunning && r.frozenMs !== undefined) recordFrozen(r.frozenMs);
      return r;
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
      if (
        before.state !== 'interrupted' ||
        seen.process.state !== 'gone' ||
        !seen.images.inventory ||
        !Array.isArray(files)
      ) {
        throw ApplicationFailure.nonRetryable(
          `checkpoint ${input.checkpointId}: dump ${before.state}, process ${seen.process.state}, images ${seen.images.inventory ? 'with' : 'without'} inventory.img${Array.isArray(files) ? '' : ', no recorded file list'}: cannot be finished`,
          ErrorType.CriuDumpFailed,
        );
      }
      const dir =
        seen.images.location === 'memory'
          ? stagedDir(ctx, input.checkpointId)!
          : checkpointDir(ctx, input.checkpointId);
      return journaled(
        ctx,
        'checkpoint',
        input.checkpointId,
        'criuDump',
        async () => finishCutDump(dir, files.map(String), seen.images.location === 'memory'),
        whole,
        { finishing: true, files },
      );
    },
    /** Idempotent (re-sealing recomputes every checksum), so the workflow runs it again after a lost agent. */
    async seal(input: SealInput): Promise<SealResult> {
      return measured(
        'checkpoint',
        'Sealing',
        () => journaled(ctx, 'checkpoint', input.checkpointId, 'seal', () => sealCheckpoint(ctx, input), whole),
        (r) => ({ bytes: r.totalBytes }),
      );
    },
    /** metadataSha256: recorded at seal; the upload refuses a metadata.json that differs from it. */
    async upload(input: { checkpointId: string; metadataSha256?: string | null }): Promise<UploadResult> {
      return measured(
        'checkpoint',
        'Uploading',
        () => journaled(ctx, 'checkpoint', input.checkpointId, 'upload', () => uploadCheckpoint(ctx, input), whole),
        (r) => ({ bytes: r.bytesSent }),
      );
    },
    /** A checkpoint staged in memory, copied to this node's disk while the upload runs; synced when it must stand in for S3. */
    async persist(input: {
      checkpointId: string;
      sync: boolean;
    }): Promise<{ bytes: number; durationMs: number; sealed?: boolean }> {
      return measured(
        'checkpoint',
        'Persisting',
        () =>
          journaled(ctx, 'checkpoint', input.checkpointId, 'persist', () => persistCheckpoint(ctx, input), whole, {
            sync: input.sync,
          }),
        (r) => ({ bytes: r.bytes }),
      );
    },
    /** What really happened to a checkpoint on this node: asked by a workflow after a timeout, before it compensates. */
    async inspectCheckpoint(input: { checkpointId: string; process: ProcessRef }): Promise<CheckpointInspection> {
      return inspectCheckpoint(ctx, input);
    },
    /**
     * copy: whose copy in memory (the checkpoint's, a restore's); unnamed (workflows from before): both.
     * attemptId: the restore attempt whose copy it is; unnamed (workflows from before): the shared restore copy.
     */
    async releaseStaging(input: {
      checkpointId: string;
      copy?: StagedCopy;
      attemptId?: string;
    }): Promise<{ released: boolean }> {
      return releaseStaging(ctx, input);
    },
    /**
     * metadataSha256: recorded at seal; a metadata.json (local or in S3) that differs is ChecksumMismatch.
     * attemptId: the restore attempt fetching; its copy in memory is its own (absent: workflows from before).
     */
    async fetch(input: {
      checkpointId: string;
      metadataSha256?: string | null;
      attemptId?: string;
    }): Promise<Omit<FetchResult, 'metadata'> & { jobId: string; vramBytes: number }> {
      const r = await measured(
        'restore',
        'Fetching',
        () => fetchCheckpoint(ctx, input),
        (f) => [
          { bytes: f.bytes - (f.bytesFromNode ?? 0), labels: { source: f.source } },
          { bytes: f.bytesFromNode ?? 0, labels: { source: 'node-chunks' } },
        ],
      );
      return {
        dir: r.dir,
        bytes: r.bytes,
        source: r.source,
        staged: r.staged,
        jobId: r.metadata.jobId,
        vramBytes: r.metadata.cuda.vramBytes,
        ...(r.bytesFromNode ? { bytesFromNode: r.bytesFromNode } : {}),
      };
    },
    /**
     * From this node's copy of the checkpoint (fetched and verified, or the images of a dump just taken); the
     * restored process by pid and start time. A restore attempt passes its attemptId: the step is then journaled.
     * inPlace: a checkpoint's compensation, bringing the workload back from its own dump; journaled under the
     * checkpoint, and never run twice: a restore the journal saw finish, or whose process is alive, is reported.
     */
    async criuRestore(input: {
      checkpointId: string;
      attemptId?: string;
      inPlace?: boolean;
    }): Promise<{ pid: number; startTime: number }> {
      if (!input.inPlace && lie === 'restore') return lyingRestore(ctx, input.checkpointId);
      if (!input.inPlace) return measured('restore', 'RestoringProcess', () => restoreProcess(ctx, input));
      const dir = checkpointLocation(ctx, input.checkpointId);
      const before = journalOutcome(ctx, 'checkpoint', input.checkpointId, 'criuRestoreInPlace');
      const earlier = before.state === 'done' ? (before.data as { pid: number; startTime: number }) : null;
      if (earlier && isSameProcess(earlier)) return { pid: earlier.pid, startTime: earlier.startTime };
      if (before.state === 'running' || before.state === 'interrupted') {
        // An earlier try, cut off or still at work: the restored tree may be up already (CRIU wrote its pid file).
        const pidFile = path.join(dir, 'restored.pid');
        const id = fs.existsSync(pidFile) ? processIdentity(Number(fs.readFileSync(pidFile, 'utf8').trim())) : null;
        if (id && id.pid > 1) return id;
        // Never two restores of one workload at once: the workflow's retry asks again later.
        if (before.state === 'running')
          throw ApplicationFailure.retryable(
            `checkpoint ${input.checkpointId}: a restore in place is still running`,
            ErrorType.StepAlreadyStarted,
          );
      }
      return measured('checkpoint', 'RestoringInPlace', () =>
        journaled(
          ctx,
          'checkpoint',
          input.checkpointId,
          'criuRestoreInPlace',
          () => restoreProcess(ctx, { checkpointId: input.checkpointId }),
          whole,
        ),
      );
    },
    /** After the workflow lost the agent mid-restore: what CRIU really did, and whether its process runs. */
    async inspectRestore(input: {
      checkpointId: string;
      attemptId: string;
      pid?: number;
      startTime?: number;
    }): Promise<RestoreInspection> {
      return inspectRestore(ctx, input);
    },
    async checkVram(input: { bytes: number; gpuIndex?: number }): Promise<{ freeVramBytes: number }> {
      return checkVram(ctx, input);
    },
    /** A restored workload becomes this node's: its pid file, and the VRAM it holds in the ledger. */
    async adoptWorkload(input: { jobId: string; pid: number; vramBytes: number }): Promise<void> {
      const dir = workloadDir(ctx, input.jobId);
      fs.mkdirSync(dir, { recursive: true });
      const id = processIdentity(input.pid);
      if (!id)
        throw ApplicationFailure.nonRetryable(
          `restored pid ${input.pid} of job ${input.jobId} is not running`,
          ErrorType.NoSuchProcess,
        );
      writePidFile(path.join(dir, 'pid'), id);
      // Registered again here: a CRIU that finished after its agent died restored it unregistered, and the
      // local stack's down finds workloads only through the registry.
      registerWorkloadProcess(ctx, input.pid, 'restored', input.jobId);
      recordVram(ctx, input.pid, input.vramBytes);
    },
    /** Running (by identity, not stopped, CUDA running or absent) and, when declared, ready by its probe. */
    async verifyRunning(input: VerifyRunningInput): Promise<VerifyRunningResult> {
      return measured('restore', 'Verifying', () => verifyRunning(ctx, input));
    },
    /**
     * Alive, and making progress: the CPU time of its tree (the workload runs under an init that uses none) or
     * one of its output files grows, checked every 100 ms up to the window.
     * Kept registered for restores started before verifyRunning (their histories call it); it fails idle workloads.
     */
    async verifyProgress(input: {
      pid: number;
      checkpointId: string;
      windowMs?: number;
    }): Promise<{ cpuTicks: number; bytesWritten: number; afterMs: number }> {
      const files = workloadFileIndex(restoreLocation(ctx, input.checkpointId)).map((f) => f.path);
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
        if (b.cpu > a.cpu || b.bytes > a.bytes)
          return { cpuTicks: b.cpu - a.cpu, bytesWritten: b.bytes - a.bytes, afterMs: waited };
      }
      throw ApplicationFailure.nonRetryable(
        `pid ${input.pid} is alive but made no progress in ${window} ms`,
        ErrorType.NoProgress,
      );
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
    async stopWorkload(input: {
      jobId: string;
      graceMs?: number;
      reason?: string;
    }): Promise<{ stopped: boolean; signal: 'SIGTERM' | 'SIGKILL' | null; afterMs: number }> {
      const graceMs = input.graceMs ?? DEFAULT_STOP_GRACE_MS;
      if (!Number.isFinite(graceMs) || graceMs < 0)
        throw ApplicationFailure.nonRetryable(
          `graceMs: must be a non-negative number (got ${graceMs})`,
          ErrorType.InvalidInput,
          { field: 'graceMs' },
        );
      const running = runningWorkload(ctx, input.jobId);
      if (!running) return { stopped: false, signal: null, afterMs: 0 };
      return stopProcess(ctx, running.pid, input.reason ?? 'stop requested', graceMs, running.startTime);
    },
    // ---- a job's runs (job-run.ts): started under tini + the shim, in the job's cgroup ----
    async startRun(input: StartRunInput): Promise<StartRunResult> {
      return startRun(ctx, input);
    },
    /** Returns once that very process is gone, with how the run ended; heartbeats every 500 ms poll. */
    async awaitRunExit(input: {
      jobId: string;
      run: number;
      process: ProcessIdentity;
      exitFile: string;
    }): Promise<RunExit> {
      return awaitRunExit(ctx, input);
    },
    /** SIGTERM, graceMs, SIGKILL, then the job's cgroup emptied and removed. Idempotent. */
    async stopRun(input: {
      jobId: string;
      run: number;
      process: ProcessIdentity | null;
      graceMs: number;
      reason: string;
    }): Promise<{ signal: 'SIGTERM' | 'SIGKILL' | null; killedStragglers: number }> {
      return stopRun(ctx, input);
    },
    async inspectRun(input: { process: ProcessIdentity }): Promise<{ running: boolean }> {
      return inspectRun(input);
    },
    async attachRunLimits(input: {
      jobId: string;
      limits: JobLimits;
      process: ProcessIdentity;
    }): Promise<{ cgroup: string[] }> {
      return await attachRunLimits(ctx, input);
    },
    async readRunLog(input: ReadRunLogInput): Promise<ReadRunLogResult> {
      return readRunLog(input);
    },
    async archiveRunLog(input: {
      jobId: string;
      run: number;
      logFile: string;
    }): Promise<{ key: string; bytes: number }> {
      return archiveRunLog(ctx, input);
    },
    async collectDiagnostics(input: {
      jobId: string;
      at: string;
      error: string;
      runs: RunRecord[];
      logFile: string | null;
    }): Promise<{ prefix: string }> {
      return collectDiagnostics(ctx, input);
    },
  };
}

export type NodeActivities = ReturnType<typeof createNodeActivities>;
