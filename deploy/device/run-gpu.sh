#!/usr/bin/env bash
# On the device machine, after every part was received: unpacks Node, node_modules, the compiled code and the
# cached stack (Temporal, MinIO, toxiproxy, CRIU 4.2.1), then runs the GPU end-to-end test and benchmark
# against the real stack there. Writes logs to $OUT when set.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
parts=/opt/kybernate/parts
cache=$(grep '^cache=' "$parts/MANIFEST" | cut -d= -f2)
n=$(grep '^parts=' "$parts/MANIFEST" | cut -d= -f2)
[ "$(ls "$parts" | grep -c '^part-')" = "$n" ] || { echo "run-gpu: $(ls "$parts" | grep -c '^part-') of $n parts received" >&2; exit 1; }
(cd "$parts" && grep ' part-' MANIFEST | sha256sum -c --quiet)
if [ ! -x /opt/kybernate/node/bin/node ]; then
  cat "$parts"/part-* | xz -d | tar -C /opt/kybernate -xf -
  mkdir -p "$cache" && cp -a /opt/kybernate/cache/. "$cache/"
fi
tar -xf /opt/kybernate/repo.tar
export PATH=/opt/kybernate/node/bin:$PATH KYBERNATE_CACHE=$cache
out=${OUT:-/tmp}
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv | tee "$out/gpu.txt"
"$cache/criu-"*/criu check
set -o pipefail
KYBERNATE_GPU_GIB=${KYBERNATE_GPU_GIB:-8} node node_modules/.bin/jest --runInBand test/gpu 2>&1 | tee "$out/test-gpu.log"
node dist/bench/gpu.js 2>&1 | tee "$out/bench-gpu.log"
