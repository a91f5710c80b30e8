#!/usr/bin/env bash
# Crash soak: SIGKILLs a writer at random moments (and, on PostgreSQL and Redis, sometimes the
# server too), and after every round checks that every acknowledged save is readable with its
# exact state and that the store rebuilds without damage (tests/soak.rs).
#
#   scripts/soak.sh sled|sqlite|postgres|redis [ROUNDS]    # default 1000 rounds
#
# The PostgreSQL and Redis soaks start servers of their own on 127.0.0.1 (installing the
# packages if missing) and stop them at the end. CKPT_SOAK_SEED=N replays a run. Prints one
# line: rounds, server kills, acknowledged saves checked, losses (always 0, or the run fails).
set -euo pipefail
cd "$(dirname "$0")/.."

backend=${1:-}
rounds=${2:-1000}
case "$backend" in
  sled | sqlite | postgres | redis) ;;
  *)
    echo "usage: $0 sled|sqlite|postgres|redis [ROUNDS]" >&2
    exit 2
    ;;
esac

if [ "$backend" = redis ] && ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server with apt-get" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >&2 ||
    { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >&2; }
fi

mkdir -p target
log="target/soak-$backend.log"
# Run a copy of the test binary: the soak re-runs it as its writer, for a long time, and a
# rebuild in the meantime must not pull it away.
exe=$(cargo test --quiet --all-features --test soak --no-run --message-format=json 2>/dev/null |
  grep '"name":"soak"' | grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | tail -1)
[ -n "$exe" ] || { echo "cannot build tests/soak.rs" >&2; exit 1; }
bin="target/soak-bin-$backend"
cp "$exe" "$bin"
set +e
CKPT_SOAK_ROUNDS="$rounds" "$bin" --exact "soak_$backend" --nocapture >"$log" 2>&1
status=$?
set -e
grep -E '^soak |panicked' "$log" || true
[ "$status" -eq 0 ] || echo "soak $backend failed: see $log" >&2
exit "$status"
