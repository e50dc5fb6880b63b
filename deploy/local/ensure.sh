#!/usr/bin/env bash
# Installs whatever is missing for the README's commands: npm packages, the compiled code, and the cached
# local stack binaries (Temporal CLI, MinIO, toxiproxy, CRIU 4.2, Temporal's Java test server).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# Node 24 first (cached where the machine's is older; provision.sh node), and first on PATH: npm's install
# scripts, tsc and everything started from here then run under the Node the tests and the stack run under.
bash deploy/local/provision.sh node
PATH="$(bash deploy/local/node.sh -p 'require("node:path").dirname(process.execPath)'):$PATH"
export PATH
# `npm install` rather than `npm ci`: it installs the locked versions too, but does not refuse a lock file
# that lacks other platforms' optional packages (which a registry mirror may not list).
if [ ! -d node_modules/@temporalio/worker ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "[ensure] npm install" >&2
  npm install --no-audit --no-fund >&2
fi
echo "[ensure] tsc" >&2
npx tsc -p tsconfig.json
bash deploy/local/provision.sh
