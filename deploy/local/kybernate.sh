#!/usr/bin/env bash
# `npm run kybernate`: the CLI. On a checkout that was never built (a fresh clone whose first command is not
# `npm run demo` or `npm test`), it installs and builds first (ensure.sh) instead of failing on a missing dist/.
# The caller's directory is kept: the CLI resolves relative paths against it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [ ! -f "$root/dist/clients/cli.js" ] || [ ! -d "$root/node_modules/@temporalio/worker" ]; then
  echo "[kybernate] first use of this checkout: installing and building it (deploy/local/ensure.sh)" >&2
  (cd "$root" && bash deploy/local/ensure.sh) >&2
fi
exec bash "$root/deploy/local/node.sh" "$root/dist/clients/cli.js" "$@"
