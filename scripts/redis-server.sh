#!/usr/bin/env bash
# Starts (or stops) the throwaway Redis servers the tests need, on 127.0.0.1 only: one standalone
# redis-server and a 3-node Redis Cluster (no replicas), each on a free port, all state under DIR.
# Called by scripts/servers.sh.
#
#   scripts/redis-server.sh start DIR   # stdout: the two `export CKPT_TEST_REDIS...` lines only
#   scripts/redis-server.sh stop DIR    # idempotent; removes DIR
#
# Every server runs with `appendonly yes` and `appendfsync always`: an acknowledged save is on
# disk, as the backend's durability contract asks. Progress and diagnostics go to stderr.
set -euo pipefail

log() { echo "redis-server.sh: $*" >&2; }

usage() {
  echo "usage: $0 start|stop DIR" >&2
  exit 2
}

# Installs redis-server (and redis-cli) with apt-get when missing, and stops the service the
# package may start: the tests use their own servers only.
ensure_installed() {
  if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
    return
  fi
  log "installing redis-server with apt-get"
  local sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server >&2 \
    || { $sudo apt-get update >&2 && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server >&2; }
  $sudo service redis-server stop >&2 2>/dev/null || true
}

# A TCP port nobody listens on (and that was not handed out earlier in this run).
declare -a taken=()
free_port() {
  local port
  while :; do
    port=$(( (RANDOM % 20000) + 30000 ))
    if [[ " ${taken[*]:-} " == *" $port "* ]]; then continue; fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then continue; fi
    # The cluster bus listens on port + 10000: keep that free too.
    if (exec 3<>"/dev/tcp/127.0.0.1/$((port + 10000))") 2>/dev/null; then continue; fi
    taken+=("$port")
    echo "$port"
    return
  done
}

# Starts one redis-server in directory $1 on port $2; extra arguments are passed on.
start_server() {
  local dir=$1 port=$2
  shift 2
  mkdir -p "$dir"
  redis-server --bind 127.0.0.1 --port "$port" --daemonize yes --dir "$dir" \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --save '' \
    --appendonly yes --appendfsync always "$@" >&2
  echo "$port" >"$dir/port"
  local i
  for i in $(seq 1 100); do
    if redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then return; fi
    sleep 0.1
  done
  log "redis-server on port $port did not answer; its log:"
  tail -n 20 "$dir/redis.log" >&2 || true
  exit 1
}

# Stops the server whose state is in $1 (if any): SHUTDOWN NOSAVE, then its pid file.
stop_server() {
  local dir=$1 port pid
  [ -d "$dir" ] || return 0
  if [ -f "$dir/port" ]; then
    port=$(cat "$dir/port")
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  fi
  if [ -f "$dir/redis.pid" ]; then
    pid=$(cat "$dir/redis.pid")
    local i
    for i in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null && grep -q redis-server "/proc/$pid/cmdline" 2>/dev/null; then
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
}

stop_all() {
  local root=$1 d
  [ -d "$root" ] || return 0
  for d in "$root"/single "$root"/cluster/*; do
    stop_server "$d"
  done
  rm -rf "$root"
}

start_all() {
  local root=$1
  ensure_installed
  # A stale directory from a killed run: stop whatever still runs there, start afresh.
  stop_all "$root"
  mkdir -p "$root/cluster"

  local single
  single=$(free_port)
  start_server "$root/single" "$single"
  log "redis-server on 127.0.0.1:$single"

  local ports=() nodes=() p
  for i in 1 2 3; do
    p=$(free_port)
    start_server "$root/cluster/$i" "$p" --cluster-enabled yes \
      --cluster-config-file "$root/cluster/$i/nodes.conf" --cluster-node-timeout 5000
    ports+=("$p")
    nodes+=("127.0.0.1:$p")
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >&2
  local ok=0
  for _ in $(seq 1 200); do
    ok=1
    for p in "${ports[@]}"; do
      if ! redis-cli -p "$p" cluster info 2>/dev/null | grep -q 'cluster_state:ok'; then ok=0; fi
    done
    [ $ok = 1 ] && break
    sleep 0.1
  done
  if [ $ok != 1 ]; then
    log "the cluster did not reach cluster_state:ok"
    exit 1
  fi
  log "Redis Cluster on ${nodes[*]}"

  echo "export CKPT_TEST_REDIS_URL=redis://127.0.0.1:$single/0"
  local joined
  joined=$(IFS=,; echo "${nodes[*]}")
  echo "export CKPT_TEST_REDIS_CLUSTER_URL=redis+cluster://$joined"
}

[ $# -eq 2 ] || usage
dir=$2
case "$1" in
  start) start_all "$dir" ;;
  stop) stop_all "$dir" ;;
  *) usage ;;
esac
