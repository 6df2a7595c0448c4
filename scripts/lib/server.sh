# Shared by the scripts that run a test server on loopback (pykmip-server.sh, openbao.sh, etcd.sh):
# sourced, not run.

# Stops the server whose pid DIR/server.pid names. Each server is started with setsid, so it and
# the helper processes it forks share one process group: signal the group, and only it; TERM
# first, KILL after 5 s.
stop_server_group() {
  local dir="$1"
  [ -f "$dir/server.pid" ] || return 0
  local pid
  pid="$(cat "$dir/server.pid")"
  if kill -0 -- "-$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 -- "-$pid" 2>/dev/null || break
      sleep 0.1
    done
  fi
  kill_server_group "$dir"
}

# A crash of that server: KILL its process group at once, then wait until it is gone, so that a
# restart finds its ports free.
kill_server_group() {
  local dir="$1"
  [ -f "$dir/server.pid" ] || return 0
  local pid
  pid="$(cat "$dir/server.pid")"
  kill -KILL -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 -- "-$pid" 2>/dev/null || break
    sleep 0.05
  done
  rm -f "$dir/server.pid"
}
