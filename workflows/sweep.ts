import {
  ApplicationFailure,
  defineQuery,
  isCancellation,
  log,
  proxyActivities,
  setCurrentDetails,
  setHandler,
  workflowInfo,
} from '@temporalio/workflow';
import type { ControlActivities } from '../activities/control';
import { ErrorType } from '../common/errors';
import { CONTROL_QUEUE } from '../common/queues';
import { STATUS_QUERY } from '../common/outcome';
import {
  pickVictims,
  type RunningJob,
  sweepInputProblem,
  type SweepInput,
  type SweepPhase,
  type SweepStatus,
} from '../common/sweep';
import { describeFailure, failureType } from './failures';

export const sweepStatusQuery = defineQuery<SweepStatus>(STATUS_QUERY);

/**
 * One preemption sweep (started by a `preempt/<name>` schedule, or by hand): Listing (running jobs, their
 * priority, tier, age, node, zone) -> Preempting (each victim in turn through its job workflow's preempt
 * update: checkpoint, requeue; the job resumes from that checkpoint when placement allows) -> Done. Records
 * every victim with why it was chosen and what became of it, and every running job left alone with why.
 * A preemption that fails is recorded and the sweep goes on to the next victim; it never picks a substitute, so
 * a sweep never disturbs more than `max` jobs.
 */
export async function preemptionSweep(input: SweepInput): Promise<SweepStatus> {
  const invalid = sweepInputProblem(input);
  if (invalid) throw ApplicationFailure.nonRetryable(`invalid sweep: ${invalid}`, ErrorType.InvalidInput);
  const status: SweepStatus = {
    phase: 'Listing',
    input,
    startedAt: new Date().toISOString(),
    finishedAt: null,
    seen: 0,
    victims: [],
    skipped: [],
    summary: null,
  };
  setHandler(sweepStatusQuery, () => status);
  const enter = (phase: SweepPhase, detail: string): void => {
    status.phase = phase;
    setCurrentDetails(`phase: ${phase}; ${detail}`);
  };

  const control = proxyActivities<ControlActivities>({
    taskQueue: CONTROL_QUEUE,
    startToCloseTimeout: '2m',
    heartbeatTimeout: '30s',
    // A control plane away for a while delays the sweep; past this the schedule's next firing tries again.
    scheduleToCloseTimeout: '30m',
    retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '1m' },
  });
  // A preemption is a checkpoint of the job (dump, seal, upload): minutes for large VRAM. Retries attach to the
  // same update (updateId), so they never preempt a job twice.
  const preempter = proxyActivities<ControlActivities>({
    taskQueue: CONTROL_QUEUE,
    startToCloseTimeout: '1h',
    heartbeatTimeout: '30s',
    scheduleToCloseTimeout: '2h',
    retry: {
      initialInterval: '1s',
      backoffCoefficient: 2,
      maximumInterval: '1m',
      nonRetryableErrorTypes: [ErrorType.PreemptRefused],
    },
  });

  const filters = [
    input.belowPriority !== undefined ? `priority number above ${input.belowPriority}` : 'any non-critical priority',
    input.zone !== undefined ? `zone ${input.zone}` : 'any zone',
    `at most ${input.max}`,
  ].join(', ');
  enter('Listing', `looking for victims: ${filters}`);

  let running: { jobs: RunningJob[]; unanswered: string[] };
  try {
    running = await control.runningJobs.executeWithOptions(
      { summary: 'running jobs with priority, tier, node, zone' },
      [],
    );
  } catch (err) {
    if (isCancellation(err)) throw err;
    status.summary = `could not list running jobs: ${describeFailure(err)}; nothing preempted`;
    status.finishedAt = new Date().toISOString();
    enter('Done', status.summary);
    throw ApplicationFailure.nonRetryable(status.summary, ErrorType.SweepFailed, status);
  }
  status.seen = running.jobs.length;
  const { victims, skipped } = pickVictims(running.jobs, input);
  status.skipped = [
    ...skipped,
    ...running.unanswered.map((jobId) => ({
      jobId,
      reason: 'unanswered' as const,
      message: 'its workflow did not answer the status query: not seen, not preempted',
    })),
  ];
  status.victims = victims.map((v) => ({ ...v, outcome: null, checkpointId: null, message: null }));
  log.info('sweep chose its victims', {
    schedule: input.schedule,
    victims: victims.map((v) => v.job.jobId),
    seen: status.seen,
  });

  for (const [i, v] of status.victims.entries()) {
    enter('Preempting', `${i + 1} of ${status.victims.length}: ${v.job.jobId} on ${v.job.node} (${v.why})`);
    try {
      const r = await preempter.preemptJob.executeWithOptions(
        { summary: `preempt ${v.job.jobId} (priority ${v.job.priority}) on ${v.job.node}` },
        [{ jobId: v.job.jobId, updateId: `${workflowInfo().workflowId}/${v.job.jobId}` }],
      );
      v.outcome = r.outcome;
      v.checkpointId = r.checkpointId;
      v.message = r.message;
    } catch (err) {
      if (isCancellation(err)) throw err;
      // Refused: nothing was done to the job. Anything else (a timeout, the control plane away past the retries):
      // the update may still have run; the job's own status says what became of it.
      const refused = failureType(err) === ErrorType.PreemptRefused;
      v.outcome = refused ? 'refused' : 'unknown';
      v.message = describeFailure(err);
      if (!refused) {
        // Unknown is not failed: find out what became of the job before recording it.
        try {
          const now = await control.jobState.executeWithOptions({ summary: `what became of ${v.job.jobId}?` }, [
            { jobId: v.job.jobId },
          ]);
          v.message += `; outcome unknown: the job is now ${now.state}${now.reason ? ` (${now.reason})` : ''}`;
        } catch (e) {
          if (isCancellation(e)) throw e;
          v.message += `; outcome unknown, and the job did not say (${describeFailure(e)}): see 'kybernate describe job ${v.job.jobId}'`;
        }
      }
    }
    log.info('sweep preemption', {
      job: v.job.jobId,
      node: v.job.node,
      outcome: v.outcome,
      checkpoint: v.checkpointId,
    });
  }

  const requeued = status.victims.filter((v) => v.outcome === 'requeued').length;
  status.summary =
    status.victims.length === 0
      ? `no victim among ${status.seen} running job${status.seen === 1 ? '' : 's'} (${filters})`
      : `${requeued} of ${status.victims.length} victim${status.victims.length === 1 ? '' : 's'} preempted and requeued: ${status.victims
          .map((v) => `${v.job.jobId} ${v.outcome}`)
          .join(', ')}`;
  status.finishedAt = new Date().toISOString();
  enter('Done', status.summary);
  return status;
}
