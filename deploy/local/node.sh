#!/usr/bin/env bash
# Runs Node.js >= 24 with the given arguments: the machine's own `node` where it is new enough, otherwise the
# cached Node 24 that provision.sh installs (versions.env pins it), installing it first if it is missing.
# Its directory goes first on PATH, so that anything started by name (`node`, npx, a #!/usr/bin/env node
# script) runs under the same Node as the parent; the stack's own workers are started with process.execPath.
# Usage: bash deploy/local/node.sh <script or node flags> [args...]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
CACHE="${KYBERNATE_CACHE:-$HOME/.cache/kybernate}"
major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$major" -ge 24 ] && [ -z "${KYBERNATE_NODE_FORCE_CACHE:-}" ]; then exec node "$@"; fi
bin="$CACHE/node-$NODE_VERSION/bin"
if [ ! -x "$bin/node" ]; then bash "$here/provision.sh" node; fi
export PATH="$bin:$PATH"
exec "$bin/node" "$@"
