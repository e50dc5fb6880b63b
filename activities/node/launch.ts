import * as fs from 'node:fs';
import * as path from 'node:path';
import { ApplicationFailure } from '@temporalio/activity';
import { ErrorType } from '../../common/errors';

/**
 * What a workload is started with, worked out and checked before anything is spawned: its environment, the
 * executable its command names, its working directory and the user it runs as. Every failure here names the
 * field and the reason, and nothing has been started yet.
 */

/** A PATH for a host whose agent runs without one (systemd units may). */
export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/**
 * The only variables a workload inherits from the agent: how to find programs and libraries (the CUDA driver
 * may live outside the default library path), its locale and time zone, and which GPUs the node gives it.
 * Nothing else: the agent's environment holds the S3 secret key and Temporal's address, and a workload's
 * environment is written into every CRIU image of it, which goes to S3. TERM is not passed: a workload runs
 * detached with its output in a file, not on a terminal. HOME is set apart (workloadEnv).
 */
export const INHERITED_ENV = ['PATH', 'LD_LIBRARY_PATH', 'LANG', 'LC_ALL', 'TZ', 'CUDA_VISIBLE_DEVICES'] as const;

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

function invalid(field: string, message: string): ApplicationFailure {
  return ApplicationFailure.nonRetryable(`${field}: ${message}`, ErrorType.InvalidInput, { field });
}

function startFailure(message: string): ApplicationFailure {
  return ApplicationFailure.nonRetryable(message, ErrorType.StartFailure);
}

/**
 * The workload's environment: the inherited minimum, HOME (the user's, or the agent's when it runs as the
 * agent's user), the job's own variables, and KYBERNATE_JOB_ID (which the job cannot override: `down` and the
 * watchdog find a job's process by it).
 */
export function workloadEnv(input: {
  jobId: string;
  jobEnv?: Record<string, string>;
  parent: NodeJS.ProcessEnv;
  home: string;
}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const k of INHERITED_ENV) {
    const v = input.parent[k];
    if (v !== undefined) env[k] = v;
  }
  env.PATH ??= DEFAULT_PATH;
  env.HOME = input.home;
  for (const [k, v] of Object.entries(input.jobEnv ?? {})) {
    if (!ENV_NAME.test(k))
      throw invalid(`env.${k}`, 'a variable name must be letters, digits and _, not starting with a digit');
    if (typeof v !== 'string' || v.includes('\0')) throw invalid(`env.${k}`, 'must be a string without NUL bytes');
    if (k === 'KYBERNATE_JOB_ID') throw invalid(`env.${k}`, 'is set by the agent');
    env[k] = v;
  }
  env.KYBERNATE_JOB_ID = input.jobId;
  return env;
}

export interface RunAs {
  uid: number;
  gid: number;
  home: string;
}

interface PasswdEntry {
  uid: number;
  gid: number;
  home: string;
}

function passwdEntry(uid: number, passwdFile: string): PasswdEntry | null {
  let text: string;
  try {
    text = fs.readFileSync(passwdFile, 'utf8');
  } catch {
    return null;
  }
  for (const line of text.split('\n')) {
    const f = line.split(':');
    if (f.length >= 7 && Number(f[2]) === uid && /^[0-9]+$/.test(f[2]))
      return { uid, gid: Number(f[3]), home: f[5] || '/' };
  }
  return null;
}

/**
 * The user a workload runs as. Numeric ids only, so that a node without the user in its passwd still runs it
 * (a checkpoint restored elsewhere keeps its uid too). The group defaults to the user's primary group in this
 * node's passwd, else to the same number; HOME to the user's home there, else '/'. uid 0 is refused: a job
 * that wants root runs without --user.
 */
export function resolveRunAs(
  user: { uid: number; gid?: number } | undefined,
  passwdFile = '/etc/passwd',
): RunAs | null {
  if (user === undefined) return null;
  const id = (field: string, v: unknown): number => {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 4294967294)
      throw invalid(field, `must be a numeric id between 0 and 4294967294 (got '${String(v)}')`);
    return v;
  };
  const uid = id('user.uid', user.uid);
  if (uid === 0) throw invalid('user.uid', "must not be 0: leave --user out to run as the agent's user");
  const entry = passwdEntry(uid, passwdFile);
  const gid = user.gid === undefined ? (entry?.gid ?? uid) : id('user.gid', user.gid);
  return { uid, gid, home: entry?.home ?? '/' };
}

/** A workload's command: a non-empty list of strings without NUL bytes (checked before anything is spawned). */
export function checkCommand(command: unknown): string[] {
  if (
    !Array.isArray(command) ||
    command.length === 0 ||
    command.some((a) => typeof a !== 'string' || a.includes('\0'))
  ) {
    throw invalid('command', 'must be a non-empty list of strings without NUL bytes');
  }
  return command as string[];
}

/** argv prefix running a workload under the node's init (tini -g: signals to the whole group), or none. */
export const initPrefix = (initBin: string | null): string[] => (initBin !== null ? [initBin, '-g', '--'] : []);

/** argv prefix dropping to the job's user just before exec (the init, and the shim, stay root), or none. */
export const dropPrivilegesPrefix = (runAs: RunAs | null): string[] =>
  runAs ? ['setpriv', `--reuid=${runAs.uid}`, `--regid=${runAs.gid}`, '--clear-groups', '--'] : [];

/** The working directory a workload runs in: absolute, an existing directory. */
export function checkCwd(cwd: unknown): string {
  if (typeof cwd !== 'string' || !path.isAbsolute(cwd))
    throw invalid('cwd', `must be an absolute path (got '${String(cwd)}')`);
  let st: fs.Stats;
  try {
    st = fs.statSync(cwd);
  } catch (e) {
    throw invalid('cwd', `${cwd}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  if (!st.isDirectory()) throw invalid('cwd', `${cwd} is not a directory`);
  return cwd;
}

/** Whether the user may execute the file, by its mode bits (root: any x bit; supplementary groups are dropped). */
function executableBy(st: fs.Stats, as: RunAs | null): boolean {
  const uid = as ? as.uid : (process.getuid?.() ?? 0);
  const gid = as ? as.gid : (process.getgid?.() ?? 0);
  if (uid === 0) return (st.mode & 0o111) !== 0;
  if (st.uid === uid) return (st.mode & 0o100) !== 0;
  if (st.gid === gid) return (st.mode & 0o010) !== 0;
  return (st.mode & 0o001) !== 0;
}

/**
 * The file the command names, resolved as a shell would: a name with a '/' against the working directory,
 * a bare name through PATH (empty and relative PATH entries against the working directory too). It must be
 * a regular file the workload's user may execute, else the run fails here with the reason, before any spawn.
 */
export function resolveExecutable(command: string, cwd: string, pathVar: string, as: RunAs | null): string {
  if (typeof command !== 'string' || command.length === 0 || command.includes('\0'))
    throw invalid('command', 'the program name must be a non-empty string');
  const check = (file: string): { ok: true } | { ok: false; why: string } => {
    let st: fs.Stats;
    try {
      st = fs.statSync(file);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      return { ok: false, why: code === 'ENOENT' ? 'no such file' : (code ?? (e as Error).message) };
    }
    if (!st.isFile()) return { ok: false, why: st.isDirectory() ? 'is a directory' : 'is not a regular file' };
    if (!executableBy(st, as))
      return {
        ok: false,
        why: `is not executable${as ? ` by uid ${as.uid}` : ''} (mode ${(st.mode & 0o777).toString(8)})`,
      };
    return { ok: true };
  };
  if (command.includes('/')) {
    const file = path.resolve(cwd, command);
    const r = check(file);
    if (!r.ok) throw startFailure(`cannot run '${command}': ${file} ${r.why}`);
    return file;
  }
  const tried: string[] = [];
  for (const dir of pathVar.split(':')) {
    const file = path.resolve(cwd, dir || '.', command);
    const r = check(file);
    if (r.ok) return file;
    if (r.why !== 'no such file') tried.push(`${file} ${r.why}`);
  }
  throw startFailure(`cannot run '${command}': ${tried.length ? tried.join('; ') : `not found in PATH (${pathVar})`}`);
}

const CAP_SYS_RESOURCE = 24;

/** Whether this process has a capability in its effective set (/proc/self/status CapEff). */
export function hasCapability(bit: number): boolean {
  try {
    const hex = /^CapEff:\s*([0-9a-f]+)$/m.exec(fs.readFileSync('/proc/self/status', 'utf8'))?.[1];
    return hex !== undefined && ((BigInt(`0x${hex}`) >> BigInt(bit)) & 1n) === 1n;
  } catch {
    return false;
  }
}

/**
 * Why a workload run as another user cannot be checkpointed on this node, or null when it can: CRIU reads the
 * process's rlimits with prlimit(), which the kernel allows on another user's process only with
 * CAP_SYS_RESOURCE (some containers drop it even for root).
 */
export function otherUserCheckpointBlocker(): string | null {
  return hasCapability(CAP_SYS_RESOURCE)
    ? null
    : "the agent lacks CAP_SYS_RESOURCE, which CRIU needs to read the rlimits of another user's process";
}
