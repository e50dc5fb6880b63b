#!/usr/bin/env bash
# Builds or downloads every binary the local stack needs into a cache keyed by version.
# Idempotent: a component whose versioned directory already holds a working binary is skipped.
# Usage: provision.sh [temporal|minio|toxiproxy|criu ...]   (no argument: all)
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

criu_pkgs="criu libcompel1 libprotobuf-c1 libnl-3-200 libnet1 libnftables1 libbsd0 libmd0 libgnutls30t64 \
libjansson4 libmnl0 libnftnl11 libxtables12 libedit2 libuuid1 libp11-kit0 libidn2-0 libunistring5 libtasn1-6 \
libnettle8t64 libhogweed6t64 libgmp10 libffi8 libzstd1 zlib1g libc6 libcap2 libselinux1 libpcre2-8-0"

criu_install() {
  local dir="$CACHE/criu-$CRIU_DEB_VERSION"
  if [ -x "$dir/criu" ] && "$dir/criu" --version >/dev/null 2>&1; then
    log "criu $CRIU_DEB_VERSION: cached at $dir"
  else
    need apt-get "Debian's apt fetches CRIU's packages"
    need dpkg "dpkg unpacks CRIU's packages"
    local tmp="$dir.tmp.$$" apt="$CACHE/apt-$CRIU_SUITE"
    rm -rf "$tmp"; mkdir -p "$tmp/debs" "$tmp/root" "$apt/lists/partial" "$apt/sources"
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$CRIU_SUITE" > "$apt/sources/$CRIU_SUITE.sources"
    local o=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt/sources" -o "Dir::State::Lists=$apt/lists"
             -o Dir::Cache="$apt/cache" -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
    log "criu $CRIU_DEB_VERSION: downloading Debian $CRIU_SUITE packages"
    apt-get -q "${o[@]}" update >/dev/null || die "criu: apt-get update for $CRIU_SUITE failed"
    local pkgs=() p
    for p in $criu_pkgs; do if [ "$p" = criu ]; then pkgs+=("criu=$CRIU_DEB_VERSION"); else pkgs+=("$p"); fi; done
    (cd "$tmp/debs" && apt-get -q "${o[@]}" download "${pkgs[@]}" >/dev/null) || die "criu: apt-get download failed"
    for f in "$tmp"/debs/*.deb; do dpkg -x "$f" "$tmp/root"; done
    local lib="$dir/root/usr/lib/x86_64-linux-gnu"
    # criu is a trixie (glibc 2.41) binary: start it through trixie's own loader and libraries.
    cat > "$tmp/criu" <<WRAP
#!/bin/sh
exec "$lib/ld-linux-x86-64.so.2" --library-path "$lib" "$dir/root/usr/sbin/criu" "\$@"
WRAP
    chmod +x "$tmp/criu"
    rm -rf "$tmp/debs" "$dir"; mv "$tmp" "$dir"
    "$dir/criu" --version >/dev/null 2>&1 || die "criu: unpacked binary does not start ($dir/criu --version)"
    log "criu $CRIU_DEB_VERSION: installed at $dir/criu"
  fi
  criu_check "$dir/criu"
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

want=("$@"); [ ${#want[@]} -gt 0 ] || want=(temporal minio toxiproxy criu test-server)
for c in "${want[@]}"; do
  case "$c" in
    temporal)  go_tool temporal github.com/temporalio/cli/cmd/temporal "$TEMPORAL_CLI_VERSION" temporal ;;
    minio)     go_tool minio github.com/minio/minio "$MINIO_VERSION" minio ;;
    toxiproxy) go_tool toxiproxy github.com/Shopify/toxiproxy/v2/cmd/server "$TOXIPROXY_VERSION" server ;;
    criu)      criu_install ;;
    test-server) test_server_install ;;
    *) die "unknown component '$c' (known: temporal minio toxiproxy criu test-server)" ;;
  esac
done
