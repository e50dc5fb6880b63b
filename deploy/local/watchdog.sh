#!/usr/bin/env bash
# Stops the local stack when its owner (a test run, a demo) dies, however it died (Ctrl-C, crash, SIGKILL).
# Usage: watchdog.sh OWNER_PID STATE_FILE PID...   Runs in its own process group.
owner=$1; state=$2; shift 2
home=$(dirname "$state")
while kill -0 "$owner" 2>/dev/null; do sleep 1; done
# Collect everything first: the state file lists workers and agents registered after the watchdog started,
# and the workloads are found through their pid files; either may vanish while we wait for TERM to work.
pids="$*"
[ -f "$state" ] && pids="$pids $(grep -o '"pid": [0-9]*' "$state" | grep -o '[0-9]*')"
workloads=""
for f in "$home"/nodes/*/workloads/*/pid; do
  [ -f "$f" ] || continue
  # A plain number, or JSON {"pid":N,"startTime":T}: the first number is the pid either way.
  pid=$(grep -o '[0-9]\+' "$f" | head -n1); job=$(basename "$(dirname "$f")")
  [ -n "$pid" ] || continue
  # Only a process that is still this job's (pids get reused).
  tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qx "KYBERNATE_JOB_ID=$job" && workloads="$workloads $pid"
done
for pid in $pids; do [ "$pid" = "$$" ] || kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null; done
for pid in $workloads; do kill -KILL "$pid" 2>/dev/null; done
sleep 3
for pid in $pids; do [ "$pid" = "$$" ] || kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null; done
rm -f "$state"
# Staged checkpoints are memory (tmpfs) that nothing else would free.
[ -n "$KYBERNATE_STAGING_ROOT" ] && rm -rf "$KYBERNATE_STAGING_ROOT"
