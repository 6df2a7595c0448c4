#!/usr/bin/env bash
# Runs the KMIP plug-in's scenario against Cosmian KMS (KMIP 2.1 server, crates.io
# `cosmian_kms_server`), the second real KMS beside the PyKMIP server of the tests.
#
#   scripts/cosmian-kms.sh build            # ~15 min on 2 cores; once
#   scripts/cosmian-kms.sh start DIR [PORT] # a server on 127.0.0.1:PORT (default 5697), mTLS
#   scripts/cosmian-kms.sh stop DIR
#   scripts/cosmian-kms.sh scenario         # build, start, run seed 004's KMS steps, stop
#
# Why a patched build: the published 5.28 crate's `non-fips` feature names a dependency the
# manifest does not have (`cosmian_kms_client_utils`), and the default FIPS build needs an
# OpenSSL FIPS module Debian does not ship. The build takes the crate from crates.io, drops
# that one feature entry, and builds with `--features non-fips` (a vendored OpenSSL). Too slow
# for every CI run: run it by hand.
#
# The server's KMIP socket speaks TTLV over mutual TLS. DIR receives a test CA, a server
# certificate, the server's configuration (kms.toml), its sqlite database, log and pid.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
version=5.28.0
prefix="${COSMIAN_KMS_PREFIX:-$root/target/cosmian-kms}"
bin="$prefix/bin/cosmian_kms"

die() {
  echo "cosmian-kms.sh: $*" >&2
  exit 1
}

build() {
  [ -x "$bin" ] && return
  local src="$prefix/src"
  mkdir -p "$src"
  # Fetch the crate through cargo (the only registry client this machine has).
  local probe="$src/probe"
  mkdir -p "$probe/src"
  printf '[workspace]\n[package]\nname="probe"\nversion="0.0.0"\nedition="2021"\n[dependencies]\ncosmian_kms_server="=%s"\n' "$version" >"$probe/Cargo.toml"
  : >"$probe/src/lib.rs"
  (cd "$probe" && cargo fetch --quiet) || die "cannot fetch cosmian_kms_server $version"
  local crate
  crate=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/cosmian_kms_server-$version.crate | head -1)
  tar -xzf "$crate" -C "$src"
  local dir="$src/cosmian_kms_server-$version"
  sed -i '/"cosmian_kms_client_utils\/non-fips",/d' "$dir/Cargo.toml"
  # The sources sit below this workspace's target/: keep them a workspace of their own.
  grep -q '^\[workspace\]' "$dir/Cargo.toml" || printf '\n[workspace]\n' >>"$dir/Cargo.toml"
  cargo install --locked --path "$dir" --no-default-features --features non-fips --root "$prefix" \
    || die "the build failed: see above"
}

certs() {
  local d=$1
  [ -f "$d/ca.crt" ] && return
  openssl ecparam -name prime256v1 -genkey -noout -out "$d/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$d/ca.key" -subj "/CN=zkey test CA" -days 30 -out "$d/ca.crt" 2>/dev/null
  openssl ecparam -name prime256v1 -genkey -noout -out "$d/server.key" 2>/dev/null
  openssl req -new -key "$d/server.key" -subj "/CN=127.0.0.1" -out "$d/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$d/server.ext"
  openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 30 -extfile "$d/server.ext" -out "$d/server.crt" 2>/dev/null
}

start() {
  local d=${1:?usage: start DIR [PORT]} port=${2:-5697}
  build
  mkdir -p "$d"
  d=$(cd "$d" && pwd)
  certs "$d"
  cat >"$d/kms.toml" <<CONF
default_username = "admin"
[db]
database_type = "sqlite"
sqlite_path = "$d/db"
[tls]
tls_cert_file = "$d/server.crt"
tls_key_file = "$d/server.key"
clients_ca_cert_file = "$d/ca.crt"
[socket_server]
socket_server_start = true
socket_server_port = $port
socket_server_hostname = "127.0.0.1"
[http]
port = $((port + 1))
hostname = "127.0.0.1"
CONF
  COSMIAN_KMS_CONF="$d/kms.toml" "$bin" >"$d/server.log" 2>&1 &
  echo $! >"$d/server.pid"
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return
    sleep 0.2
  done
  die "the server did not listen on $port: see $d/server.log"
}

stop() {
  local d=${1:?usage: stop DIR} pid
  [ -f "$d/server.pid" ] || return 0
  pid=$(cat "$d/server.pid")
  kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
}

scenario() {
  # Global, for the EXIT trap that runs after this function returned.
  w=$(mktemp -d)
  trap 'stop "$w/kms"; rm -rf "$w"' EXIT
  start "$w/kms" 5697
  cargo build --quiet --bins --manifest-path "$root/Cargo.toml"
  export PATH="$root/target/debug:$PATH" AP_SIM_DIR="$w/ap-sim" ZKEY_REPOSITORY="$w/repo"
  export ZKEY_KMS_PLUGINS="$w/kms-plugins.conf"
  echo "KMIP=$root/target/debug/zkey-kms-kmip" >"$ZKEY_KMS_PLUGINS"
  set -x
  ap-sim init
  zkey kms bind KMIP
  zkey kms configure --apqns 08.002f,09.002f --servers 127.0.0.1:5697 --server-ca "$w/kms/ca.crt" \
    --gen-csr "$w/client.csr" --cert-subject zkey-test || true
  openssl x509 -req -in "$w/client.csr" -CA "$w/kms/ca.crt" -CAkey "$w/kms/ca.key" -CAcreateserial \
    -days 30 -extfile <(echo extendedKeyUsage=clientAuth) -out "$w/client.crt"
  zkey kms configure --client-cert "$w/client.crt"
  zkey generate -N disk1 --xts --volume-type plain --volumes /dev/disk1:enc-disk1 --no-volume-check
  before=$(zkey validate --json | grep -o '"verification_pattern": "[0-9a-f]*"')
  ap-sim tke load-new -a 08.002f,09.002f -t apka --random
  ap-sim tke load-new -a 08.002f,09.002f -t aes --random
  zkey kms reencipher --to-new --staged
  zkey reencipher --apqns 08.002f,09.002f --to-new --staged
  ap-sim tke set -a 08.002f,09.002f -t apka --yes
  ap-sim tke set -a 08.002f,09.002f -t aes --yes
  zkey kms reencipher --complete
  zkey reencipher --apqns 08.002f,09.002f --complete
  zkey kms refresh
  after=$(zkey validate --json | grep -o '"verification_pattern": "[0-9a-f]*"')
  set +x
  [ "$before" = "$after" ] || die "the key changed across the rotation"
  echo "Cosmian KMS scenario passed."
}

case "${1:-}" in
  build) build ;;
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  scenario) scenario ;;
  *) die "usage: $0 build | start DIR [PORT] | stop DIR | scenario" ;;
esac
