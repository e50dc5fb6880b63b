#!/usr/bin/env bash
# Stops the local stack when its owner (a test run, a demo) dies, however it died (Ctrl-C, crash, SIGKILL):
# kills the given process groups, then removes the state file. Runs in its own process group.
owner=$1; state=$2; shift 2
while kill -0 "$owner" 2>/dev/null; do sleep 1; done
for pid in "$@"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null; done
sleep 3
for pid in "$@"; do kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null; done
# Agents and workers registered after the watchdog started are listed in the state file.
if [ -f "$state" ]; then
  for pid in $(grep -o '"pid": [0-9]*' "$state" | grep -o '[0-9]*'); do
    [ "$pid" = "$$" ] && continue
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
  done
  rm -f "$state"
fi
# Workloads are detached on purpose (they outlive agents); the stack's owner is gone, so they go too.
home=$(dirname "$state")
for f in "$home"/nodes/*/workloads/*/pid; do
  [ -f "$f" ] || continue
  pid=$(cat "$f"); job=$(basename "$(dirname "$f")")
  tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qx "KYBERNATE_JOB_ID=$job" && kill -KILL "$pid" 2>/dev/null
done
