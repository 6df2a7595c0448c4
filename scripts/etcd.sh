#!/usr/bin/env bash
# A 3-member etcd cluster on loopback with TLS, client-certificate users and RBAC, for the fleet
# coordinator's tests and for trying the fleet by hand.
#
#   scripts/etcd.sh start DIR [BASEPORT]   # member i serves clients on https://127.0.0.1:BASEPORT+10(i-1)
#                                          # and peers on the port after it; BASEPORT defaults to 12379
#   scripts/etcd.sh stop DIR               # ends every member
#   scripts/etcd.sh kill DIR MEMBER        # SIGKILL member 1..3 (a crash) and wait for it to exit
#   scripts/etcd.sh restart DIR MEMBER     # start that member again on its ports and data dir
#   scripts/etcd.sh leader DIR             # prints the number of the current leader
#   scripts/etcd.sh add-host DIR NAME      # makes host NAME: its certificate, user and role
#   scripts/etcd.sh ctl DIR ARGS...        # etcdctl ARGS as the root user (client certificate)
#
# Files in DIR (mode 0700; private keys 0600): ca.pem/ca.key (the test CA), server.pem/.key
# (127.0.0.1), USER.pem/USER.key per etcd user (the certificate's CN is the user), mN/ (member
# N's data dir, pid file server.pid, log server.log), endpoints (the client URLs, one a line).
#
# Users and roles: root; `officer`: readwrite on /zkey/fleet/ops/, read on /zkey/fleet/hosts/;
# host NAME: readwrite on /zkey/fleet/hosts/NAME/, read on /zkey/fleet/ops/. Auth is enabled.
# Peers talk plain HTTP on loopback: only the clients' side is what the tests exercise.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"

die() {
  echo "etcd.sh: $*" >&2
  exit 1
}

# shellcheck source=lib/server.sh
. "$here/lib/server.sh"

command -v etcd >/dev/null 2>&1 && command -v etcdctl >/dev/null 2>&1 ||
  die "etcd or etcdctl is missing: install etcd-server and etcd-client (scripts/install-deps.sh)"

base_of() { cat "$1/baseport"; }
client_port() { echo $(($(base_of "$1") + 10 * ($2 - 1))); }
peer_port() { echo $(($(client_port "$1" "$2") + 1)); }

# A key and a certificate signed by the test CA; CN is the etcd user for client certificates.
make_cert() {
  local dir="$1" name="$2" cn="$3" ext="$4"
  (
    umask 077
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$cn" \
      -keyout "$dir/$name.key" -out "$dir/$name.csr" 2>/dev/null
    printf '%s\n' "$ext" >"$dir/$name.ext"
    openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
      -days 30 -extfile "$dir/$name.ext" -out "$dir/$name.pem" 2>/dev/null
    rm -f "$dir/$name.csr" "$dir/$name.ext"
  )
  chmod 600 "$dir/$name.key"
  chmod 644 "$dir/$name.pem"
}

client_cert() { make_cert "$1" "$2" "$2" "extendedKeyUsage=clientAuth"; }

# etcdctl as the root user against ENDPOINTS (comma-separated).
ctl_at() {
  local dir="$1" endpoints="$2"
  shift 2
  ETCDCTL_API=3 etcdctl --endpoints="$endpoints" --cacert="$dir/ca.pem" \
    --cert="$dir/root.pem" --key="$dir/root.key" "$@"
}

ctl() {
  local dir="$1"
  shift
  ctl_at "$dir" "$(paste -sd, "$dir/endpoints")" --dial-timeout=3s --command-timeout=5s "$@"
}

run_member() {
  local dir="$1" n="$2" cluster="" i
  for i in 1 2 3; do cluster+="${cluster:+,}m$i=http://127.0.0.1:$(peer_port "$dir" "$i")"; done
  local state=new
  [ -d "$dir/m$n/data/member" ] && state=existing
  mkdir -p "$dir/m$n"
  # setsid: each member its own process group, so kill and stop reach it and nothing else.
  (
    umask 077
    setsid etcd --name "m$n" --data-dir "$dir/m$n/data" \
      --listen-client-urls "https://127.0.0.1:$(client_port "$dir" "$n")" \
      --advertise-client-urls "https://127.0.0.1:$(client_port "$dir" "$n")" \
      --listen-peer-urls "http://127.0.0.1:$(peer_port "$dir" "$n")" \
      --initial-advertise-peer-urls "http://127.0.0.1:$(peer_port "$dir" "$n")" \
      --initial-cluster "$cluster" --initial-cluster-token "zkey-fleet" --initial-cluster-state "$state" \
      --cert-file "$dir/server.pem" --key-file "$dir/server.key" --client-cert-auth \
      --trusted-ca-file "$dir/ca.pem" --heartbeat-interval 50 --election-timeout 500 \
      </dev/null >"$dir/m$n/server.log" 2>&1 &
    echo $! >"$dir/m$n/server.pid"
  )
}

member_up() {
  ctl_at "$1" "https://127.0.0.1:$(client_port "$1" "$2")" --dial-timeout=1s --command-timeout=2s \
    endpoint health >/dev/null 2>&1
}

wait_member() {
  local dir="$1" n="$2"
  for _ in $(seq 1 150); do
    kill -0 "$(cat "$dir/m$n/server.pid")" 2>/dev/null || die "member m$n exited at start: see $dir/m$n/server.log"
    member_up "$dir" "$n" && return
    sleep 0.1
  done
  die "member m$n did not become healthy within 15 s: see $dir/m$n/server.log"
}

start() {
  local dir="$1" base="${2:-12379}" n
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  chmod 700 "$dir"
  for n in 1 2 3; do
    if [ -f "$dir/m$n/server.pid" ] && kill -0 "$(cat "$dir/m$n/server.pid")" 2>/dev/null; then
      die "member m$n of $dir is already running: stop it first"
    fi
  done
  rm -rf "$dir"/m1 "$dir"/m2 "$dir"/m3
  echo "$base" >"$dir/baseport"
  : >"$dir/endpoints"
  for n in 1 2 3; do echo "https://127.0.0.1:$(client_port "$dir" "$n")" >>"$dir/endpoints"; done
  (
    umask 077
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=zkey fleet test CA" \
      -days 30 -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
  )
  chmod 644 "$dir/ca.pem"
  make_cert "$dir" server server "subjectAltName=IP:127.0.0.1
extendedKeyUsage=serverAuth,clientAuth"
  client_cert "$dir" root
  client_cert "$dir" officer
  for n in 1 2 3; do run_member "$dir" "$n"; done
  for n in 1 2 3; do wait_member "$dir" "$n"; done
  ctl "$dir" user add root --no-password >/dev/null
  ctl "$dir" user grant-role root root >/dev/null
  ctl "$dir" role add officer >/dev/null
  ctl "$dir" role grant-permission officer readwrite --prefix=true /zkey/fleet/ops/ >/dev/null
  ctl "$dir" role grant-permission officer read --prefix=true /zkey/fleet/hosts/ >/dev/null
  ctl "$dir" user add officer --no-password >/dev/null
  ctl "$dir" user grant-role officer officer >/dev/null
  ctl "$dir" auth enable >/dev/null
  echo "etcd cluster of 3 members on 127.0.0.1:$base,$((base + 10)),$((base + 20)) (dir $dir)"
}

add_host() {
  local dir="$1" name="$2"
  [[ "$name" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die "host name '$name' is not valid: use letters, digits, '_', '.', '-'"
  [ "$name" != root ] && [ "$name" != officer ] || die "'$name' is reserved: choose another host name"
  client_cert "$dir" "$name"
  ctl "$dir" role add "$name" >/dev/null
  ctl "$dir" role grant-permission "$name" readwrite --prefix=true "/zkey/fleet/hosts/$name/" >/dev/null
  ctl "$dir" role grant-permission "$name" read --prefix=true /zkey/fleet/ops/ >/dev/null
  ctl "$dir" user add "$name" --no-password >/dev/null
  ctl "$dir" user grant-role "$name" "$name" >/dev/null
}

check_member() { [[ "$1" =~ ^[123]$ ]] || die "member '$1' is not 1, 2 or 3"; }


leader() {
  local dir="$1" n
  # Right after a leader dies the others need an election timeout or two to agree: ask again
  # for up to 10 s. etcdctl fails as a whole when one endpoint is down, so only what it printed
  # counts: the member whose own id is the leader id it reports.
  for _ in $(seq 20); do
    n="$({ ctl "$dir" endpoint status -w json 2>/dev/null || true; } | python3 -c '
import json, sys
eps = open(sys.argv[1]).read().split()
text = sys.stdin.read().strip()
for st in json.loads(text) if text else []:
    if st["Status"]["header"]["member_id"] == st["Status"]["leader"]:
        print(eps.index(st["Endpoint"]) + 1)
        break
' "$dir/endpoints")"
    if [ -n "$n" ]; then
      echo "$n"
      return
    fi
    sleep 0.5
  done
  die "no member reports itself as leader after 10 s: is a majority of the members running?"
}

case "${1:-}" in
  start) [ $# -ge 2 ] || die "usage: $0 start DIR [BASEPORT]"; start "$2" "${3:-12379}" ;;
  stop) [ $# -ge 2 ] || die "usage: $0 stop DIR"; for m in 1 2 3; do stop_server_group "$2/m$m"; done ;;
  kill) [ $# -eq 3 ] || die "usage: $0 kill DIR MEMBER"; check_member "$3"; kill_server_group "$2/m$3" ;;
  restart) [ $# -eq 3 ] || die "usage: $0 restart DIR MEMBER"; check_member "$3"; d="$(cd "$2" && pwd)"
    kill_server_group "$d/m$3"; run_member "$d" "$3"; wait_member "$d" "$3" ;;
  leader) [ $# -eq 2 ] || die "usage: $0 leader DIR"; leader "$2" ;;
  add-host) [ $# -eq 3 ] || die "usage: $0 add-host DIR NAME"; add_host "$2" "$3" ;;
  ctl) [ $# -ge 2 ] || die "usage: $0 ctl DIR ARGS..."; d="$2"; shift 2; ctl "$d" "$@" ;;
  *) die "usage: $0 start DIR [BASEPORT] | stop DIR | kill DIR MEMBER | restart DIR MEMBER | leader DIR | add-host DIR NAME | ctl DIR ARGS..." ;;
esac
