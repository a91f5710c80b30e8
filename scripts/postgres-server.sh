#!/usr/bin/env bash
# Starts (or stops) a throwaway PostgreSQL cluster for the tests, on 127.0.0.1 only.
#
#   eval "$(scripts/postgres-server.sh start DIR)"
#   scripts/postgres-server.sh stop DIR
#
# `start` initialises a cluster in DIR (removing a stale one left by a killed run), starts it on a
# free port with its Unix socket inside DIR, creates the database `ckpt_test`, and prints only the
# export lines on stdout (progress goes to stderr):
#
#   CKPT_TEST_POSTGRES_URL   postgres://USER@127.0.0.1:PORT/ckpt_test (trust auth, no password)
#   CKPT_TEST_POSTGRES_DIR   the cluster's data directory (DIR/data)
#   CKPT_TEST_POSTGRES_CTL   a command prefix running pg_ctl as the cluster's owner, e.g.
#                            `runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl`
#
# fsync stays on: durability is what the tests check. `stop` stops the cluster (fast shutdown) and
# removes DIR; it is idempotent and succeeds when nothing runs.
set -euo pipefail

log() { echo "postgres-server: $*" >&2; }

find_bindir() {
  if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
    dirname "$(readlink -f "$(command -v pg_ctl)")"
    return
  fi
  local dir
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$dir/pg_ctl" ] && [ -x "$dir/initdb" ]; then
      echo "$dir"
      return
    fi
  done
  return 1
}

ensure_bindir() {
  local dir
  if dir=$(find_bindir); then
    echo "$dir"
    return
  fi
  log "PostgreSQL binaries not found; installing the postgresql package"
  if [ "$(id -u)" -ne 0 ]; then
    log "not root: install PostgreSQL (apt-get install postgresql) and retry"
    return 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2 ||
    { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2; }
  find_bindir
}

# Runs a command as the cluster's owner: the `postgres` user when we are root (PostgreSQL refuses
# to run as root), else ourselves.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

owner_name() {
  if [ "$(id -u)" -eq 0 ]; then echo postgres; else id -un; fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

stop_cluster() {
  local dir=$1 bindir
  if [ -f "$dir/data/postmaster.pid" ] && bindir=$(find_bindir); then
    log "stopping the cluster in $dir"
    as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
  fi
  rm -rf "$dir"
}

start_cluster() {
  local dir bindir port user
  dir=$(mkdir -p "$1" && cd "$1" && pwd)
  stop_cluster "$dir"
  mkdir -p "$dir"
  bindir=$(ensure_bindir)
  user=$(owner_name)
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres: "$dir"
    # The owner must be able to reach DIR through its parents.
    local parent
    parent=$(dirname "$dir")
    while [ "$parent" != "/" ]; do
      chmod o+x "$parent" 2>/dev/null || true
      parent=$(dirname "$parent")
    done
  fi
  log "initdb in $dir/data ($bindir)"
  as_owner "$bindir/initdb" -D "$dir/data" -U "$user" --auth=trust -E UTF8 --no-locale >&2
  port=$(free_port)
  cat >>"$dir/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
max_connections = 300
fsync = on
synchronous_commit = on
logging_collector = off
EOF
  log "starting on 127.0.0.1:$port"
  as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >&2
  as_owner "$bindir/createdb" -h 127.0.0.1 -p "$port" -U "$user" ckpt_test >&2
  local ctl
  if [ "$(id -u)" -eq 0 ]; then
    ctl="runuser -u postgres -- $bindir/pg_ctl"
  else
    ctl="$bindir/pg_ctl"
  fi
  echo "export CKPT_TEST_POSTGRES_URL=postgres://$user@127.0.0.1:$port/ckpt_test"
  echo "export CKPT_TEST_POSTGRES_DIR=$dir/data"
  echo "export CKPT_TEST_POSTGRES_CTL='$ctl'"
}

case "${1:-}" in
  start)
    [ -n "${2:-}" ] || { echo "usage: $0 start DIR" >&2; exit 2; }
    start_cluster "$2"
    ;;
  stop)
    [ -n "${2:-}" ] || { echo "usage: $0 stop DIR" >&2; exit 2; }
    stop_cluster "$2"
    ;;
  *)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
