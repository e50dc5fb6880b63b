#!/usr/bin/env bash
# On the device machine: keeps one carried part outside the repo copy (which is rebuilt each call), checked
# against the manifest. Usage: receive.sh .device/part-NN
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
part=$1
mkdir -p /opt/kybernate/parts
want=$(grep " $(basename "$part")\$" .device/MANIFEST | cut -d' ' -f1)
got=$(sha256sum "$part" | cut -d' ' -f1)
[ "$want" = "$got" ] || { echo "receive: $part sha256 $got != manifest $want" >&2; exit 1; }
cp "$part" /opt/kybernate/parts/
cp .device/MANIFEST /opt/kybernate/parts/MANIFEST
echo "received $(basename "$part") ($(ls /opt/kybernate/parts | grep -c '^part-') of $(grep '^parts=' .device/MANIFEST | cut -d= -f2))"
