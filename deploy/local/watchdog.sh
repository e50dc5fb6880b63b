#!/usr/bin/env bash
# Stops the local stack when its owner (a test run, a demo) dies, however it died (Ctrl-C, crash, SIGKILL).
# Usage: watchdog.sh OWNER_PID STATE_FILE PID...   Runs in its own process group.
owner=$1; state=$2; shift 2
home=$(dirname "$state")
# The state file is the truth while the stack runs: a component restarted since has a new pid, and an agent
# started by hand registers there. The pids given on the command line count only until it is first read.
pids="$*"
state_pids() { grep -o '"pid": [0-9]*' "$state" 2>/dev/null | grep -o '[0-9]*' | tr '\n' ' '; }
while kill -0 "$owner" 2>/dev/null; do
  p=$(state_pids); [ -n "$p" ] && pids="$p"
  sleep 1
done
p=$(state_pids); [ -n "$p" ] && pids="$p"
workloads=""
for f in "$home"/nodes/*/workloads/*/pid; do
  [ -f "$f" ] || continue
  pid=$(cat "$f"); job=$(basename "$(dirname "$f")")
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
