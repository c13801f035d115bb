#!/usr/bin/env bash
# Install what building Portcullis needs and a fresh machine may lack.
# aws-lc-sys (the signature library's C core) builds with cmake and a C compiler.
# `setup.sh test` also installs what the tests drive: nginx (the forward-auth end-to-end test),
# Node.js and the authorization server of the interop tests (npm ci in tests/interop), and
# redis-server (the shared DPoP replay store).
# `setup.sh bench` installs what the load benchmark drives: nginx, wrk, openssl, taskset, python3.
# As root, missing Debian packages are installed with apt-get; otherwise the exact command is
# printed and the script fails, so nothing is silently assumed.
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v make >/dev/null 2>&1 || need+=(make)
if [ "${1:-}" = test ] || [ "${1:-}" = bench ]; then
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
fi
if [ "${1:-}" = test ]; then
  command -v node >/dev/null 2>&1 || need+=(nodejs)
  command -v npm >/dev/null 2>&1 || need+=(npm)
  # The DPoP replay store shared by two gateways (tests/dpop.rs).
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
fi
if [ "${1:-}" = bench ]; then
  command -v wrk >/dev/null 2>&1 || need+=(wrk)
  # The HTTP/2 rows of the TLS benchmark.
  command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  command -v taskset >/dev/null 2>&1 || need+=(util-linux)
  command -v python3 >/dev/null 2>&1 || need+=(python3)
fi

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 || {
      apt-get update -qq >/dev/null
      apt-get install -y -qq "${need[@]}" >/dev/null
    }
  else
    echo "setup: missing ${need[*]}; install with:" >&2
    echo "  sudo apt-get install -y ${need[*]}" >&2
    exit 1
  fi
fi

if [ "${1:-}" = test ]; then
  # node-oidc-provider, pinned by tests/interop/package-lock.json; reinstalled when the lock changes.
  interop="$(dirname "$0")/../tests/interop"
  if [ ! "$interop/node_modules/.package-lock.json" -nt "$interop/package-lock.json" ]; then
    echo "setup: npm ci in tests/interop" >&2
    (cd "$interop" && npm ci --no-audit --no-fund --loglevel=error)
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust from https://rustup.rs (1.85 or newer)" >&2
  exit 1
fi
