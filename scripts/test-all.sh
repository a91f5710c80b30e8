#!/usr/bin/env bash
# Runs every test of the project: formatting and lint gates, unit, conformance, property, crash,
# corruption, CLI and doc tests, the fuzz corpus, and the examples, with the PostgreSQL and Redis
# servers they need started first (scripts/servers.sh). What CI runs (see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, all features, warnings are errors)"
cargo clippy --all-targets --all-features -- -D warnings

step "headless browser for the ckpt ui tests: chromium and chromedriver (installed when missing)"
scripts/browser.sh

step "test servers: PostgreSQL, redis-server, Redis Cluster (127.0.0.1, stopped on exit)"
trap 'scripts/servers.sh stop' EXIT
eval "$(scripts/servers.sh start)"
: "${CKPT_TEST_POSTGRES_URL:?PostgreSQL did not start}"
: "${CKPT_TEST_REDIS_URL:?redis-server did not start}"
: "${CKPT_TEST_REDIS_CLUSTER_URL:?Redis Cluster did not start}"

step "cargo test (all features)"
cargo test --all-features --no-fail-fast 2>&1 | tee target/test-all.log

step "the Python package: LangGraph's conformance suite on every backend, pytest on real graphs, the benchmark (quick)"
scripts/python-tests.sh

step "examples (each must run to completion)"
for example in examples/*.rs; do
  name=$(basename "$example" .rs)
  # The dictionary trainer reads stores: it trains on a small benchmark store instead.
  [ "$name" = train_frame_dict ] && continue
  cargo run --quiet --all-features --example "$name"
done
dict_dir=$(mktemp -d)
cargo run --quiet --all-features --bin ckpt -- --store "sled://$dict_dir/store" bench \
  --workload conversation --threads 2 --steps 100 --json >/dev/null
cargo run --quiet --all-features --example train_frame_dict -- "$dict_dir/frames.dict" \
  "sled://$dict_dir/store"
rm -rf "$dict_dir"

step "time-travel example kept on disk, its tree drawn by ckpt log --graph"
tt_dir=$(mktemp -d)
CKPT_EXAMPLE_DIR="$tt_dir/store" cargo run --quiet --all-features --example time_travel >/dev/null
cargo run --quiet --all-features --bin ckpt -- --store "sled://$tt_dir/store" log time-travel --graph
rm -rf "$tt_dir"

step "cargo test --no-default-features (memory only builds and passes)"
cargo test --no-default-features --lib

step "the fuzz targets build (cargo check of fuzz/; running them needs cargo-fuzz and nightly)"
cargo check --quiet --manifest-path fuzz/Cargo.toml --bins

# A floor on the tests run: a suite that silently compiles to fewer tests (a feature gate, a
# cfg) fails here instead of passing green.
floor=1100
grep -E '^test result:' target/test-all.log | awk -v floor="$floor" '
  {p+=$4; f+=$6; i+=$8}
  END {
    printf "\nall tests: %d passed, %d failed, %d ignored\n", p, f, i
    if (p < floor) { printf "only %d tests passed, fewer than the floor of %d: a test binary ran fewer tests than it should\n", p, floor; exit 1 }
  }'
