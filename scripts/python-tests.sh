#!/usr/bin/env bash
# The Python package's tests: builds ckpt_langgraph (maturin, release) into a venv under
# target/python-venv with the pinned packages of python/requirements.txt, then runs LangGraph's
# checkpointer conformance suite on memory, sled, SQLite, PostgreSQL and Redis, the pytest
# tests of real graphs, and the benchmark (quick). Needs the test servers
# (CKPT_TEST_POSTGRES_URL, CKPT_TEST_REDIS_URL: eval "$(scripts/servers.sh start)").
set -euo pipefail
cd "$(dirname "$0")/.."

: "${CKPT_TEST_POSTGRES_URL:?start the servers first: eval \"\$(scripts/servers.sh start)\"}"
: "${CKPT_TEST_REDIS_URL:?start the servers first: eval \"\$(scripts/servers.sh start)\"}"

venv=target/python-venv
py="$venv/bin/python"
if [ ! -x "$py" ]; then
  python3 -m venv "$venv"
fi
# maturin's build hook runs `maturin` from PATH.
export PATH="$PWD/$venv/bin:$PATH"
"$py" -m pip install -q --disable-pip-version-check -r python/requirements.txt
# The extension is built in the crate's target directory with the dev profile (dependencies at
# opt-level 2, as the crate's tests build them): what `cargo test` built is reused. A user's
# `pip install ./python` builds a release wheel.
CARGO_TARGET_DIR="$PWD/target" MATURIN_PEP517_ARGS="--profile dev" \
  "$py" -m pip install -q --disable-pip-version-check --no-build-isolation --force-reinstall \
  --no-deps ./python

# `URL` with `key=value` added to its query.
with_param() { case "$1" in *\?*) echo "$1&$2" ;; *) echo "$1?$2" ;; esac; }

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
echo "conformance: langgraph-checkpoint-conformance on every backend"
"$py" python/tests/conformance_run.py \
  memory:// \
  "sled://$dir/sled-{n}" \
  "sqlite://$dir/sqlite-{n}.db" \
  "$(with_param "$CKPT_TEST_POSTGRES_URL" "schema=lg_conformance_$$_{n}")" \
  "$(with_param "$CKPT_TEST_REDIS_URL" "prefix=lgconf$$-{n}")"

echo "pytest: real graphs on CkptSaver"
"$py" -m pytest python/tests -q

echo "benchmark (quick)"
"$py" python/bench.py --quick --out "$dir/bench"
