#!/bin/sh
# Installs and builds everything Waymark needs, idempotently: Debian packages (only those
# missing), npm packages (only when package-lock.json changed), the C parts and the TypeScript.
# Used by `npm test`, `npm run demo` and `npm run bench`. Needs root for apt-get on first run.
set -eu
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*" >&2; }

# command -> Debian package that provides it
missing=""
for pair in ip:iproute2 nft:nftables curl:curl wget:wget socat:socat dig:dnsutils setpriv:util-linux nsenter:util-linux cc:gcc c++:g++ make:make go:golang-go clang:clang bpftool:bpftool dbus-daemon:dbus-daemon ping:iputils-ping; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || missing="$missing $pkg"
done
# The tests run Debian's python3 as an unprivileged user (a pyenv shim under /root is out of reach).
# node-gyp needs python3 and c++ too: it builds better-sqlite3 from source where no prebuilt binary downloads.
[ -x /usr/bin/python3 ] || missing="$missing python3"
# The N-API addon needs node_api.h: shipped with upstream Node, in libnode-dev for Debian's nodejs.
node_include=$(node -p "require('path').resolve(process.execPath, '../../include/node')")
[ -f "$node_include/node_api.h" ] || missing="$missing libnode-dev"
# The app BPF programs (native/bpf) and the addon's loader need libbpf's headers and library.
[ -f /usr/include/bpf/libbpf.h ] || missing="$missing libbpf-dev"
if [ -n "$missing" ]; then
  if [ "$(id -u)" -ne 0 ]; then say "missing Debian packages:$missing (run as root to install them)"; exit 1; fi
  say "installing Debian packages:$missing"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# npm packages: reinstall when the lock file is newer than the installed tree.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "installing npm packages"
  npm ci --no-audit --no-fund --loglevel=error
fi

# C: the LD_PRELOAD library and the N-API addon (make rebuilds only what changed).
make -s -C native

# TypeScript (from scratch, so no stale compiled test of a removed source can run).
rm -rf dist
npx --no-install tsc -p .
chmod +x dist/src/cli/main.js dist/src/daemon/main.js
