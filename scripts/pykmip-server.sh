#!/usr/bin/env bash
# Starts and stops a real PyKMIP 0.11 server on loopback, for the kms-plugin tests and for trying
# the KMIP plug-in by hand.
#
#   scripts/pykmip-server.sh start DIR [PORT]   # PORT defaults to 5696
#   scripts/pykmip-server.sh stop DIR
#   scripts/pykmip-server.sh venv               # only create/check the venv, print its path
#
# `start` creates (once) a Python venv with `pykmip` from PyPI, at $PYKMIP_VENV or, by default,
# target/pykmip-venv of this workspace (kept between runs: the install takes ~30 s). In DIR it
# writes a test CA (ca.crt, ca.key), an EC P-256 server certificate for 127.0.0.1/localhost
# (server.crt, server.key), server.conf, an sqlite database, server.log and server.pid, starts
# `pykmip-server` in the background and returns once the port accepts connections.
#
# Why these settings:
# - PyKMIP speaks TLS 1.2 only. With an RSA server key it picks a CBC suite that rustls refuses,
#   so the server key is EC P-256 and the suites are limited to ECDHE-ECDSA with AES-GCM, which
#   rustls negotiates.
# - enable_tls_client_auth=True: PyKMIP then requires the client certificate to carry the
#   clientAuth extended key usage; the client's identity is the certificate's subject CN, and
#   the default operation policy lets only the owner (the creating identity) use an object.
# - The server listens on 127.0.0.1 only.
#
# The CA key stays in DIR so a test can sign client CSRs with
#   openssl x509 -req -in client.csr -CA DIR/ca.crt -CAkey DIR/ca.key ...
# (see `sign_csr` below: `scripts/pykmip-server.sh sign DIR CSR OUT`).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
venv="${PYKMIP_VENV:-${CARGO_TARGET_DIR:-$root/target}/pykmip-venv}"

die() {
  echo "pykmip-server.sh: $*" >&2
  exit 1
}

# shellcheck source=lib/server.sh
. "$here/lib/server.sh"

ensure_venv() {
  if [ -x "$venv/bin/pykmip-server" ]; then
    return
  fi
  command -v python3 >/dev/null 2>&1 || die "python3 is missing: install python3 and python3-venv (scripts/install-deps.sh)"
  command -v openssl >/dev/null 2>&1 || die "openssl is missing: install openssl (scripts/install-deps.sh)"
  mkdir -p "$(dirname "$venv")"
  # A lock, so parallel test binaries do not build the same venv at once.
  exec 9>"$venv.lock"
  flock 9
  if [ ! -x "$venv/bin/pykmip-server" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv" >&2 || die "cannot create a Python venv in $venv: install python3-venv (scripts/install-deps.sh)"
    "$venv/bin/pip" install --quiet --disable-pip-version-check pykmip >&2 ||
      die "cannot install pykmip from PyPI into $venv: check that PyPI is reachable"
  fi
  flock -u 9
}

make_pki() {
  local dir="$1"
  [ -f "$dir/server.crt" ] && return
  openssl ecparam -name prime256v1 -genkey -noout -out "$dir/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$dir/ca.key" -sha256 -days 3650 -subj "/CN=zkey test KMIP CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$dir/ca.crt" 2>/dev/null
  openssl ecparam -name prime256v1 -genkey -noout -out "$dir/server.key.sec1" 2>/dev/null
  openssl pkcs8 -topk8 -nocrypt -in "$dir/server.key.sec1" -out "$dir/server.key"
  rm -f "$dir/server.key.sec1"
  openssl req -new -key "$dir/server.key" -subj "/CN=localhost" -out "$dir/server.csr" 2>/dev/null
  cat >"$dir/server.ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1
EOF
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$dir/server.ext" -out "$dir/server.crt" 2>/dev/null
  chmod 600 "$dir/ca.key" "$dir/server.key"
}

sign_csr() {
  local dir="$1" csr="$2" out="$3"
  cat >"$dir/client.ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
EOF
  openssl x509 -req -in "$csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 365 -sha256 -extfile "$dir/client.ext" -out "$out" 2>/dev/null ||
    die "openssl could not sign $csr with the test CA in $dir"
}

start() {
  local dir="$1" port="${2:-5696}"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  if [ -f "$dir/server.pid" ] && kill -0 "$(cat "$dir/server.pid")" 2>/dev/null; then
    die "a server from $dir is already running (pid $(cat "$dir/server.pid")): stop it first"
  fi
  ensure_venv
  make_pki "$dir"
  mkdir -p "$dir/policies"
  cat >"$dir/server.conf" <<EOF
[server]
hostname=127.0.0.1
port=$port
certificate_path=$dir/server.crt
key_path=$dir/server.key
ca_path=$dir/ca.crt
auth_suite=TLS1.2
policy_path=$dir/policies
enable_tls_client_auth=True
tls_cipher_suites=
    ECDHE-ECDSA-AES128-GCM-SHA256
    ECDHE-ECDSA-AES256-GCM-SHA384
logging_level=INFO
database_path=$dir/pykmip.db
EOF
  # setsid: the server gets its own process group, so `stop` ends it and nothing else.
  setsid "$venv/bin/pykmip-server" -f "$dir/server.conf" -l "$dir/server.log" \
    </dev/null >"$dir/server.out" 2>&1 &
  echo $! >"$dir/server.pid"
  for _ in $(seq 1 200); do
    if ! kill -0 "$(cat "$dir/server.pid")" 2>/dev/null; then
      die "pykmip-server exited at start: see $dir/server.out and $dir/server.log"
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "pykmip-server listening on 127.0.0.1:$port (pid $(cat "$dir/server.pid"), dir $dir)"
      return
    fi
    sleep 0.1
  done
  stop "$dir"
  die "pykmip-server did not accept connections on 127.0.0.1:$port within 20 s: see $dir/server.log"
}

stop() {
  stop_server_group "$1"
}

case "${1:-}" in
  start) [ $# -ge 2 ] || die "usage: $0 start DIR [PORT]"; start "$2" "${3:-5696}" ;;
  stop) [ $# -ge 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
  sign) [ $# -ge 4 ] || die "usage: $0 sign DIR CSR OUT"; sign_csr "$2" "$3" "$4" ;;
  venv) ensure_venv; echo "$venv" ;;
  *) die "usage: $0 start DIR [PORT] | stop DIR | sign DIR CSR OUT | venv" ;;
esac
