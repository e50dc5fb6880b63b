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
# Workloads: every process an agent of this stack started or restored, by identity (see
# deploy/local/workloads.ts, which `down` uses; this is its shell twin for when node cannot be counted on).
start_time() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; s=${s##*) }; set -- $s; echo "${20}"; }
workloads=""
dirs=$(cat "$home/node-dirs" 2>/dev/null; ls -d "$home"/nodes/* 2>/dev/null)
for d in $dirs; do
  for f in "$d"/processes/*.*; do
    [ -f "$f" ] || continue
    name=$(basename "$f"); pid=${name%%.*}; st=${name#*.}
    [ "$(start_time "$pid")" = "$st" ] || continue
    workloads="$workloads $pid"
    # Everything in its PID namespace goes too (the kernel also kills a namespace whose init dies).
    ns=$(readlink "/proc/$pid/ns/pid" 2>/dev/null)
    # Never our own namespace: that would be every process on the host.
    [ -n "$ns" ] && [ "$ns" != "$(readlink /proc/$$/ns/pid)" ] || continue
    for q in /proc/[0-9]*; do [ "$(readlink "$q/ns/pid" 2>/dev/null)" = "$ns" ] && workloads="$workloads ${q#/proc/}"; done
  done
done
for pid in $pids; do [ "$pid" = "$$" ] || kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null; done
for pid in $workloads; do kill -KILL "$pid" 2>/dev/null; done
sleep 3
for pid in $pids; do [ "$pid" = "$$" ] || kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null; done
rm -f "$state"
# Staged checkpoints are memory (tmpfs) that nothing else would free.
[ -n "$KYBERNATE_STAGING_ROOT" ] && rm -rf "$KYBERNATE_STAGING_ROOT"
