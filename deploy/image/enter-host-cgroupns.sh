#!/bin/sh
# Entrypoint of the node agent in a pod: runs the agent in the HOST's cgroup namespace.
#
# Why: containerd gives a pod on a cgroup v2 node its own cgroup namespace, and systemd mounts cgroup2 with
# nsdelegate, so from inside it a process can neither see nor move anything into a cgroup outside the pod's.
# The run shim moves every workload into kybernate/<node>/<job> (activities/node/cgroups.ts); made under the
# pod's cgroup, those would be killed with the agent's container on its next restart (the runtime kills the
# whole cgroup of a hostPID container) and v2's no-internal-processes rule would refuse their controllers.
# In the host's cgroup namespace, with the host's cgroup2 tree mounted at $KYBERNATE_CGROUP_ROOT, workloads
# live beside the pod, not inside it: an agent restart costs time, never a workload.
# Needs hostPID (pid 1 is the host's init) and privilege (setns); the DaemonSet has both.
# KYBERNATE_HOST_NS_PID names another process whose cgroup namespace to join (test/unit/kubernetes.test.ts).
set -eu
host=${KYBERNATE_HOST_NS_PID:-1}
if [ "$(readlink "/proc/$host/ns/cgroup")" != "$(readlink /proc/self/ns/cgroup)" ]; then
  exec nsenter --target "$host" --cgroup -- "$@"
fi
exec "$@"
