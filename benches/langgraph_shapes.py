#!/usr/bin/env python3
"""Issue 15's workload shapes on LangGraph's AsyncSqliteSaver, measured as `ckpt bench` measures
them, so that both can be compared in one run on one machine.

How to run (a venv of its own; the versions measured on 2026-12-02 were Python 3.11.7,
langgraph-checkpoint 4.3.2, langgraph-checkpoint-sqlite 3.1.2, aiosqlite 0.22.1):

    python3 -m venv /work/venv-lg
    /work/venv-lg/bin/pip install langgraph-checkpoint-sqlite
    /work/venv-lg/bin/python benches/langgraph_shapes.py --workload long --json
    /work/venv-lg/bin/python benches/langgraph_shapes.py --workload many --json
    /work/venv-lg/bin/python benches/langgraph_shapes.py --workload tools --json

and the same shapes on ckpt:

    ckpt bench --workload long|many|tools --json                       # sled, a scratch dir
    ckpt --store sqlite:///tmp/x.db bench --workload long|many|tools --json

Each run writes a fresh SQLite file (in a scratch directory, or --db PATH, which must not exist)
and prints one JSON line with the keys of `ckpt bench --json` (null where not measured here).

The shapes (the same states as `ckpt bench`, as JSON-able dicts; one channel per key, as a
LangGraph graph with a TypedDict state has):

- long: one thread of 20,000 checkpoints of a small state (~140 bytes: step, status, node,
  tokens, retries, score, a 52-letter cursor, done; every channel changes at every step), one
  writer.
- many: 2,000 threads x 5 checkpoints of ~1 KB (a 600-letter input written at step 1, a
  420-letter output replaced at every step, step, status, user), 4 writers (asyncio tasks), each
  taking the next thread not yet started and saving its steps one after the other.
- tools: 4 threads x 150 checkpoints, 4 writers; each step appends a ~20 KB tool output to the
  `tool_outputs` channel (a list with an add reducer: the checkpoint holds the whole list) and
  replaces a ~2 KB `scratchpad`.

A save is what a graph's loop does after a step: `aput(config, checkpoint, metadata,
new_versions)` with the full channel_values, channel_versions bumped with the saver's
`get_next_version` for the channels that changed and the node's trigger channel
`branch:to:NODE` (only those in new_versions), versions_seen as a graph records it (`__input__`,
`__start__`, and each node's trigger version), metadata {source: "loop", step: n, parents: {}}, and the config
returned by the previous `aput` as the parent. A real graph also calls `aput_writes` for each
task's writes before the checkpoint; this does not (so it flatters the saver a little).

Measures: saves/s; bytes stored (the database file + its WAL, while open, as ckpt's SQLite
backend reports them); warm reads in the saver that wrote (`aget_tuple` of the latest of up to
50 threads, and listing every thread: LangGraph has no summary API, so `alist(None)` over every
checkpoint grouped by thread); and, each from its own reopen (the saver closed, a new
`AsyncSqliteSaver.from_conn_string` opened), 3 times each, medians: the open alone, open + the
first `aget_tuple` (latest), open + `alist(limit=20)`, open + `aget_tuple` of a random
checkpoint id, open + listing every thread. Every read is checked (a wrong count is an error).
"""

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

import ormsgpack
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

try:  # uuid6 as LangGraph's loop makes checkpoint ids (time-ordered)
    from langgraph.checkpoint.base.id import uuid6
except ImportError:  # pragma: no cover - older layouts
    from uuid6 import uuid6  # type: ignore

HISTORY_LIMIT = 20
WARM_LATEST = 50
COLD_RUNS = 3
LONG_CURSOR = 52
MANY_INPUT = 600
MANY_OUTPUT = 420
TOOLS_SCRATCHPAD = 2_000
DEFAULTS = {  # executions, writers, steps
    "long": (1, 1, 20_000),
    "many": (2_000, 4, 5),
    "tools": (4, 4, 150),
}
# Random bytes to ASCII letters, in C (random.choices would dominate the tools workload).
_ALPHABET = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LETTERS = bytes(_ALPHABET[b % len(_ALPHABET)] for b in range(256))


def letters(rng: random.Random, n: int) -> str:
    return rng.randbytes(n).translate(_LETTERS).decode("ascii")


class Thread:
    """One execution: its state, channel versions and the config of its newest checkpoint."""

    def __init__(self, saver, workload, n, steps, tool_bytes, seed):
        self.saver = saver
        self.workload = workload
        self.n = n
        self.steps = steps
        self.tool_bytes = tool_bytes
        self.rng = random.Random(seed + n)
        self.thread_id = f"bench-{workload}-{n + 1}"
        self.config = {"configurable": {"thread_id": self.thread_id, "checkpoint_ns": ""}}
        # As after a graph's input step: `__start__` written and seen.
        self.checkpoint = empty_checkpoint()
        start = saver.get_next_version(None, None)
        self.checkpoint["channel_versions"] = {"__start__": start}
        self.checkpoint["versions_seen"] = {"__input__": {}, "__start__": {"__start__": start}}
        self.values = {}

    def step_values(self, step):
        """The channels this step writes (the others keep their values)."""
        rng = self.rng
        if self.workload == "long":
            node = ("plan", "act", "observe")[step % 3]
            return node, {
                "step": step,
                "status": f"running step {step}",
                "node": node,
                "tokens": step * 37,
                "retries": step % 4,
                "score": (step % 1000) / 1000.0,
                "cursor": letters(rng, LONG_CURSOR),
                "done": False,
            }
        if self.workload == "many":
            changed = {
                "step": step,
                "status": f"step {step} of {self.steps}",
                "output": letters(rng, MANY_OUTPUT),
            }
            if step == 1:
                changed = {
                    "input": letters(rng, MANY_INPUT),
                    **changed,
                    "user": f"user-{self.n}",
                }
            return "respond", changed
        # tools: the add reducer's channel holds the whole list.
        outputs = self.values.get("tool_outputs", []) + [letters(rng, self.tool_bytes)]
        return "tools", {
            "step": step,
            "tool_outputs": outputs,
            "scratchpad": letters(rng, TOOLS_SCRATCHPAD),
        }

    async def save(self, step):
        """Returns the bytes of state offered (as MessagePack, which `ckpt bench` counts too) and
        the seconds spent counting them (not part of a save: taken off the measured time)."""
        node, changed = self.step_values(step)
        self.values.update(changed)
        prev = self.checkpoint
        versions = dict(prev["channel_versions"])
        new_versions = {}
        # The node ran because the previous step wrote its trigger channel; it has seen that
        # version (what a graph's loop records in versions_seen), and wrote the state's channels.
        trigger = f"branch:to:{node}"
        for channel in [trigger, *changed]:
            v = self.saver.get_next_version(versions.get(channel), None)
            versions[channel] = v
            new_versions[channel] = v
        seen = {k: dict(v) for k, v in prev["versions_seen"].items()}
        seen[node] = {trigger: versions[trigger]}
        checkpoint = {
            "v": prev["v"],
            "id": str(uuid6(clock_seq=step)),
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
            "channel_values": dict(self.values),
            "channel_versions": versions,
            "versions_seen": seen,
            "pending_sends": [],
            "updated_channels": sorted(changed),
        }
        metadata = {"source": "loop", "step": step, "parents": {}}
        self.config = await self.saver.aput(self.config, checkpoint, metadata, new_versions)
        self.checkpoint = checkpoint
        t = time.perf_counter()
        size = len(ormsgpack.packb(self.values))
        return size, time.perf_counter() - t


def median_ms(samples):
    return round(statistics.median(samples) * 1e3, 3) if samples else 0.0


def stored_bytes(path):
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


async def list_threads(saver):
    """Every thread with its checkpoint count and newest step: no summary API, so every
    checkpoint is listed (newest first) and grouped."""
    threads = {}
    async for t in saver.alist(None):
        tid = t.config["configurable"]["thread_id"]
        if tid not in threads:
            threads[tid] = [0, t.metadata.get("step")]
        threads[tid][0] += 1
    return threads


def check_listing(threads, names, steps):
    for name in names:
        got = threads.get(name)
        if got is None or got[0] != steps or got[1] != steps:
            raise SystemExit(f"thread {name}: listed as {got} after {steps} saves")
    if len(threads) != len(names):
        raise SystemExit(f"{len(threads)} threads listed, {len(names)} written")


def check_latest(name, t, steps):
    step = t.metadata.get("step") if t else None
    if step != steps or t.checkpoint["channel_values"].get("step") != steps:
        raise SystemExit(f"thread {name}: latest step {step} after {steps} saves")


async def run(args):
    execs, writers, steps = DEFAULTS[args.workload]
    execs = args.executions or execs
    writers = args.threads or writers
    steps = args.steps or steps
    scratch = None
    if args.db:
        path = args.db
        if os.path.exists(path):
            raise SystemExit(f"{path} exists: the benchmark writes a new database")
    else:
        scratch = tempfile.mkdtemp(prefix="lg-bench-")
        path = os.path.join(scratch, "checkpoints.db")
    try:
        return await measure(args, path, execs, writers, steps)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


async def measure(args, path, execs, writers, steps):
    names = [f"bench-{args.workload}-{n + 1}" for n in range(execs)]
    cfg = lambda name, cid=None: {  # noqa: E731
        "configurable": {"thread_id": name, "checkpoint_ns": "", **({"checkpoint_id": cid} if cid else {})}
    }
    ids = {}  # thread -> checkpoint ids by step, for the random old version
    async with AsyncSqliteSaver.from_conn_string(path) as saver:
        await saver.setup()
        next_exec = 0
        logical = 0
        counting = 0.0

        async def writer():
            nonlocal next_exec, logical, counting
            while next_exec < execs:
                n = next_exec
                next_exec += 1
                th = Thread(saver, args.workload, n, steps, args.tool_bytes, args.seed)
                ids[th.thread_id] = []
                for step in range(1, steps + 1):
                    size, spent = await th.save(step)
                    logical += size
                    counting += spent
                    ids[th.thread_id].append(th.checkpoint["id"])

        started = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(writers)))
        # One event loop: the writers never count at the same time, so their counting is
        # wall time to take off.
        seconds = time.perf_counter() - started - counting
        saves = execs * steps

        t = time.perf_counter()
        listed = await list_threads(saver)
        list_executions = time.perf_counter() - t
        check_listing(listed, names, steps)
        latest = []
        for name in names[:WARM_LATEST]:
            t = time.perf_counter()
            tup = await saver.aget_tuple(cfg(name))
            latest.append(time.perf_counter() - t)
            check_latest(name, tup, steps)
        bytes_stored = stored_bytes(path)

    rng = random.Random(args.seed ^ 0x5EEDF00D4EAD0002)
    cold = {k: [] for k in ("open", "latest", "open_latest", "history", "at_version", "executions")}

    async def cold_read(kind, op):
        t = time.perf_counter()
        async with AsyncSqliteSaver.from_conn_string(path) as saver:
            opened = time.perf_counter()
            result = await op(saver)
            done = time.perf_counter()
        cold["open"].append(opened - t)
        cold[kind].append(done - t)
        return result, done - opened

    for _ in range(COLD_RUNS):
        name = names[rng.randrange(len(names))]
        tup, read = await cold_read("open_latest", lambda s: s.aget_tuple(cfg(name)))
        check_latest(name, tup, steps)
        cold["latest"].append(read)

        async def history(s):
            return [t async for t in s.alist(cfg(name), limit=HISTORY_LIMIT)]

        hist, _ = await cold_read("history", history)
        if len(hist) != min(HISTORY_LIMIT, steps) or hist[0].metadata.get("step") != steps:
            raise SystemExit(f"thread {name}: a history of {HISTORY_LIMIT} has {len(hist)}")

        step = rng.randrange(1, steps + 1)
        cid = ids[name][step - 1]
        tup, _ = await cold_read("at_version", lambda s: s.aget_tuple(cfg(name, cid)))
        if tup is None or tup.metadata.get("step") != step:
            raise SystemExit(f"thread {name}: step {step} read as {tup and tup.metadata}")

        listed, _ = await cold_read("executions", list_threads)
        check_listing(listed, names, steps)

    return {
        "workload": args.workload,
        "store": "langgraph-AsyncSqliteSaver",
        "encrypted": False,
        "threads": writers,
        "steps": steps,
        "executions": execs,
        "saves": saves,
        "seconds": round(seconds, 3),
        "saves_per_s": round(saves / max(seconds, 1e-9), 3),
        "load_latest_ms": median_ms(latest),
        "load_latest_cold_ms": median_ms(cold["latest"]),
        "load_random_ms": None,
        "list_ms": None,
        "history_ms": None,
        "bytes_logical": logical,
        "bytes_written": None,
        "bytes_stored": bytes_stored,
        "reopen_ms": median_ms(cold["open"]),
        "reopen_latest_ms": median_ms(cold["open_latest"]),
        "reopen_history_ms": median_ms(cold["history"]),
        "reopen_at_version_ms": median_ms(cold["at_version"]),
        "list_executions_ms": round(list_executions * 1e3, 3),
        "reopen_list_executions_ms": median_ms(cold["executions"]),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", choices=sorted(DEFAULTS), required=True)
    p.add_argument("--executions", type=int, help="threads (LangGraph's word for executions)")
    p.add_argument("--threads", type=int, help="concurrent writers (asyncio tasks)")
    p.add_argument("--steps", type=int, help="checkpoints per thread")
    p.add_argument("--tool-bytes", type=int, default=20_000, help="tools: bytes of a tool output")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--db", help="SQLite file to create (default: a scratch file, removed)")
    p.add_argument("--json", action="store_true", help="one JSON line (the default prints it too)")
    args = p.parse_args()
    report = asyncio.run(run(args))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
