import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  CHECKPOINT_STEPS,
  type CheckpointInspection,
  type CheckpointStep,
  type ProcessRef,
} from '../../common/checkpoint';
import { assertPid, assertSafeId, InvalidInputError } from '../../common/ids';
import type { StepOutcome } from '../../common/journal';
import { METADATA_FILE } from '../../common/metadata';
import { checkpointDir, type NodeContext, stagedDir } from './context';
import { IMAGES } from './criu';
import { cudaTreeState } from './cuda';
import { journalOutcome } from './journal';
import { processIdentity, procStatFields } from './process';
import { readMetadata } from './seal';

/** The ptracer of a process (CRIU seizes the tree it dumps), null when none. */
function tracerPid(pid: number): number | null {
  try {
    const n = Number(/^TracerPid:\s+(\d+)/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
    return n > 0 ? n : null;
  } catch {
    return null;
  }
}

function inspectProcess(ref: ProcessRef): CheckpointInspection['process'] {
  const id = processIdentity(ref.pid);
  const same = id !== null && (ref.startTime === undefined || id.startTime === ref.startTime);
  if (!same)
    return {
      state: 'gone',
      sameIdentity: false,
      pidReused: id !== null,
      procState: null,
      tracerPid: null,
      cuda: 'none',
    };
  let letter: string | null = null;
  try {
    letter = procStatFields(ref.pid)[0];
  } catch {
    /* exited between the two reads */
  }
  if (letter === null)
    return { state: 'gone', sameIdentity: false, pidReused: false, procState: null, tracerPid: null, cuda: 'none' };
  return {
    state: letter === 'T' || letter === 't' ? 'stopped' : 'running',
    sameIdentity: true,
    pidReused: false,
    procState: letter,
    tracerPid: tracerPid(ref.pid),
    cuda: cudaTreeState(ref.pid),
  };
}

/** metadata.json committed, naming this checkpoint, and every file it lists present with its size (not re-hashed: that is the restore's job). */
function inspectMetadata(dir: string, checkpointId: string): CheckpointInspection['metadata'] {
  if (!fs.existsSync(path.join(dir, METADATA_FILE))) return { committed: false, valid: false, error: null };
  try {
    const md = readMetadata(dir);
    if (md.checkpointId !== checkpointId)
      return { committed: true, valid: false, error: `metadata.json names checkpoint '${md.checkpointId}'` };
    for (const f of md.files) {
      const p = path.join(dir, f.path);
      if (!fs.existsSync(p)) return { committed: true, valid: false, error: `${f.path}: missing` };
      const size = fs.statSync(p).size;
      if (size !== f.size)
        return { committed: true, valid: false, error: `${f.path}: ${size} bytes, metadata.json says ${f.size}` };
    }
    return { committed: true, valid: true, error: null };
  } catch (e) {
    return { committed: true, valid: false, error: (e as Error).message };
  }
}

/**
 * The real state of a checkpoint on this node, for a workflow that lost sight of the agent: what the journal
 * says of each step, whether the process is gone, running or stopped (and still the same process), whether
 * complete images exist in memory or on disk, whether metadata.json is committed and valid. Reads only.
 */
export function inspectCheckpoint(
  ctx: NodeContext,
  input: { checkpointId: string; process: ProcessRef },
): CheckpointInspection {
  const checkpointId = assertSafeId('checkpointId', input?.checkpointId);
  if (!input.process || typeof input.process !== 'object')
    throw new InvalidInputError('process', 'is required ({ pid, startTime })');
  const pid = assertPid('process.pid', input.process.pid);
  const startTime = input.process.startTime;
  if (startTime !== undefined && (!Number.isInteger(startTime) || startTime < 0)) {
    throw new InvalidInputError('process.startTime', `must be a non-negative integer (got '${String(startTime)}')`);
  }
  const steps = Object.fromEntries(
    CHECKPOINT_STEPS.map((s) => [s, journalOutcome(ctx, 'checkpoint', checkpointId, s)]),
  ) as Record<CheckpointStep, StepOutcome>;
  const staged = stagedDir(ctx, checkpointId);
  const disk = checkpointDir(ctx, checkpointId);
  const where: { location: 'memory' | 'disk'; dir: string } | null =
    staged && fs.existsSync(path.join(staged, IMAGES))
      ? { location: 'memory', dir: staged }
      : fs.existsSync(path.join(disk, IMAGES))
        ? { location: 'disk', dir: disk }
        : null;
  const inventory = where !== null && fs.existsSync(path.join(where.dir, IMAGES, 'inventory.img'));
  return {
    checkpointId,
    steps,
    process: inspectProcess({ pid, startTime }),
    images: { location: where?.location ?? null, inventory, complete: inventory && steps.criuDump.state === 'done' },
    metadata: where ? inspectMetadata(where.dir, checkpointId) : { committed: false, valid: false, error: null },
  };
}
