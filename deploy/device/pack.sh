#!/usr/bin/env bash
# Packs everything a GPU device machine needs to run the whole stack and test/gpu + bench/gpu there: that
# machine reaches no package registry and each call carries at most 64 MiB. Output: .device/part-NN
# (xz, split at 56 MiB) plus .device/MANIFEST. Carry them one call each with deploy/device/receive.sh, then
# run deploy/device/run-gpu.sh (see deploy/device/README.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bash deploy/local/ensure.sh >&2
source deploy/local/versions.env
CACHE="${KYBERNATE_CACHE:-$HOME/.cache/kybernate}"
out=.device
grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
rm -rf "$out" && mkdir -p "$out"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/node/bin" "$stage/cache"
cp "$(command -v node)" "$stage/node/bin/node"
# The cache goes to the same absolute path there: CRIU's wrapper names its own loader by absolute path.
# The job run shim's directory is named for its source's hash (deploy/local/paths.ts computes the same name).
shim="shim-$(sha256sum deploy/native/kybernate-shim.c | cut -c1-12)"
for d in "temporal-$TEMPORAL_CLI_VERSION" "minio-$MINIO_VERSION" "toxiproxy-$TOXIPROXY_VERSION" "criu-$CRIU_DEB_VERSION" "tini-$TINI_DEB_VERSION" "$shim"; do
  cp -a "$CACHE/$d" "$stage/cache/"
done
tar -C . -cf "$stage/repo.tar" node_modules dist
tar -C "$stage" -cf - node cache repo.tar | xz -T0 -6 | split -b 56m -d -a 2 - "$out/part-"
{
  echo "cache=$CACHE"
  echo "parts=$(ls "$out" | grep -c '^part-')"
  (cd "$out" && sha256sum part-*)
} > "$out/MANIFEST"
ls -la "$out" >&2
