#!/usr/bin/env bash
# Starts (or stops) the throwaway servers the tests need, on 127.0.0.1 only: a PostgreSQL cluster,
# one redis-server and a 3-node Redis Cluster. Installs missing server packages first.
#
#   eval "$(scripts/servers.sh start)"   # exports CKPT_TEST_POSTGRES_URL, CKPT_TEST_REDIS_URL,
#                                        # CKPT_TEST_REDIS_CLUSTER_URL
#   scripts/servers.sh stop
#
# State (data directories, logs, pid files) lives under target/test-servers/. Progress goes to
# stderr; stdout carries only the export lines.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD/target/test-servers"

case "${1:-}" in
  start)
    mkdir -p "$root"
    scripts/postgres-server.sh start "$root/postgres"
    scripts/redis-server.sh start "$root/redis"
    ;;
  stop)
    status=0
    scripts/redis-server.sh stop "$root/redis" || status=1
    scripts/postgres-server.sh stop "$root/postgres" || status=1
    exit $status
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
