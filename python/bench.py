#!/usr/bin/env python3
"""CkptSaver against LangGraph's own AsyncSqliteSaver, in the same run.

The workload (issue 18's conversation): ``--threads`` threads (4) x ``--steps`` steps (200);
at each step the graph state's ``messages`` list gains one ``--message-bytes`` (600) message
of random letters (seeded, made before the clock starts). The threads run concurrently
(``asyncio.gather``), each invoking once per step.

Two drivers (``--mode``):

- ``graph`` (the default): a real compiled ``StateGraph`` (``messages`` with an
  ``operator.add`` reducer on a list of strings; one async node that records the turn), driven
  by ``graph.ainvoke({"messages": [msg]}, config)``: the input appends the step's message
  through the reducer and the node writes a small counter (``turns``), so the list gains
  exactly one message per step and every step has node writes. LangGraph's default durability
  (``async``). Per step LangGraph calls the saver 6 times: ``aget_tuple`` (the latest
  checkpoint), ``aput`` (the input checkpoint), ``aput_writes`` (the input's writes: the
  message), ``aput`` (step 0, the message applied), ``aput_writes`` (the node's write), ``aput``
  (step 1): 3 checkpoints and 2 writes per step, each checkpoint holding the whole list so far.
  What is measured is what a LangGraph user gets: saver time plus LangGraph's own, which is the
  same for every saver. With async durability a checkpoint's ``aput`` runs in the background
  and its ``aput_writes`` may arrive first (CkptSaver then parks the writes until the put
  lands; the JSON counts them as ``writes_before_put``).
- ``replay``: the same graph first runs once on an in-memory recorder, and the exact saver
  calls LangGraph made (the checkpoints as LangGraph built them, with their ids, parents and
  writes) are replayed against each saver, thread by thread, concurrently. No graph overhead:
  this isolates the savers. ``both`` runs both.

For each saver: ``CkptSaver`` on ``sled://DIR`` and on ``sqlite://FILE``, and
``AsyncSqliteSaver.from_conn_string(FILE)``:

- puts/s: checkpoints saved (``aput`` calls) per second of wall time over the whole run
  (the JSON also has the process CPU time of the run, ``cpu_s``, and per checkpoint: the box has
  2 cores, so CPU per checkpoint bounds puts/s once the threads run concurrently);
- put ms: the median latency of one ``aput`` as the run saw it (``writes ms`` likewise);
- get latest / get old: the median over 100 ``aget_tuple`` calls of the thread's latest
  checkpoint, and of a random older checkpoint by id (seeded picks), in ms;
- list: a full ``alist`` of one thread, in ms (median of 3);
- bytes on disk: the sum of file sizes under the store's directory (sled), or of the SQLite
  file and its ``-wal``/``-shm``, after ``Store.flush()`` (ckpt) or
  ``PRAGMA wal_checkpoint(TRUNCATE)`` (AsyncSqliteSaver): the store at rest, still open.

Every saver is durable per save here (ckpt sled fsyncs its WAL per group of saves, ckpt's
SQLite and AsyncSqliteSaver commit with ``synchronous=FULL``).

CkptSaver runs its blocking calls in worker threads (``asyncio.to_thread``, native calls
release the GIL). The default executor has min(32, cores + 4) workers, and a ``put_writes``
may park one of them while it waits for its checkpoint's ``put``; so that no call ever queues
for a worker, the loop gets a default executor of ``8 x threads + 8`` workers. The graph's
node is async so that LangGraph runs it on the loop, not in that pool.

``--profile`` runs the recorded calls synchronously on the main thread against CkptSaver (sled)
under cProfile and prints where the Python side spends its time (a native call shows up as its
wall time, during which the GIL is released).

Usage: ``python bench.py`` (full size), ``--quick`` (2 x 30), ``--json`` (one JSON line per
saver and mode), ``--out DIR`` (keep the stores there), ``--savers sqlite,sled,ckpt-sqlite``,
``--repeat N`` (N interleaved rounds, the order rotated each round; each figure is the median
of its rounds, column by column). The disk's fsync latency on a shared VM varies from round to
round (AsyncSqliteSaver, which waits on it most, moved between 225 and 498 puts/s over 3 graph
rounds here): compare savers within one run, with ``--repeat 3`` or more.

Needs ``langgraph``, ``ckpt_langgraph`` and, for the baseline, ``langgraph-checkpoint-sqlite``
(with ``aiosqlite``).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import cProfile
import io
import json
import operator
import os
import pstats
import random
import shutil
import statistics
import string
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Optional

# Run as `python python/bench.py`, the script's directory (python/) comes first on sys.path, and
# its ckpt_langgraph/ (the sources, without the built extension) would hide the installed package.
_here = os.path.dirname(os.path.abspath(__file__))
if not os.path.exists(os.path.join(_here, "ckpt_langgraph", "_native.abi3.so")):
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict

from ckpt_langgraph import CkptSaver, Store, execution_id

SAVERS = ("sqlite", "sled", "ckpt-sqlite")
LABELS = {
    "sqlite": "AsyncSqliteSaver (file)",
    "sled": "CkptSaver sled://",
    "ckpt-sqlite": "CkptSaver sqlite://",
}
GET_CALLS = 100
LIST_RUNS = 3


# --------------------------------------------------------------------------- the workload


class State(TypedDict):
    messages: Annotated[list[str], operator.add]
    turns: Annotated[int, operator.add]


async def turn(state: State) -> dict:
    # The input already appended this step's message (through the reducer); the node writes a
    # small value of its own, so every step has node writes (put_writes) like a real turn.
    return {"turns": 1}


def build_graph(checkpointer: Any):
    g = StateGraph(State)
    g.add_node("turn", turn)
    g.add_edge(START, "turn")
    g.add_edge("turn", END)
    return g.compile(checkpointer=checkpointer)


def make_messages(threads: int, steps: int, size: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    letters = string.ascii_letters
    return [["".join(rng.choices(letters, k=size)) for _ in range(steps)] for _ in range(threads)]


def thread_id(i: int) -> str:
    return f"conversation-{i}"


def config_of(i: int) -> dict:
    return {"configurable": {"thread_id": thread_id(i), "checkpoint_ns": ""}}


async def drive_graph(saver: Any, messages: list[list[str]]) -> None:
    graph = build_graph(saver)

    async def conversation(i: int) -> None:
        config = config_of(i)
        for msg in messages[i]:
            await graph.ainvoke({"messages": [msg]}, config)

    await asyncio.gather(*(conversation(i) for i in range(len(messages))))


# --------------------------------------------------------------------------- recording, replay


class Recorder(InMemorySaver):
    """An in-memory saver that keeps, per thread, the saver calls LangGraph made, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, list[tuple[str, tuple]]] = {}

    def _log(self, config: dict, name: str, args: tuple) -> None:
        self.calls.setdefault(str(config["configurable"]["thread_id"]), []).append((name, copy.deepcopy(args)))

    async def aget_tuple(self, config):
        self._log(config, "aget_tuple", (config,))
        return await super().aget_tuple(config)

    async def aput(self, config, checkpoint, metadata, new_versions):
        self._log(config, "aput", (config, checkpoint, metadata, new_versions))
        return await super().aput(config, checkpoint, metadata, new_versions)

    async def aput_writes(self, config, writes, task_id, task_path=""):
        self._log(config, "aput_writes", (config, list(writes), task_id, task_path))
        return await super().aput_writes(config, writes, task_id, task_path)


async def record(messages: list[list[str]]) -> list[list[tuple[str, tuple]]]:
    rec = Recorder()
    await drive_graph(rec, messages)
    return [rec.calls[thread_id(i)] for i in range(len(messages))]


async def drive_replay(saver: Any, recorded: list[list[tuple[str, tuple]]]) -> None:
    async def conversation(calls: list[tuple[str, tuple]]) -> None:
        for name, args in calls:
            await getattr(saver, name)(*args)

    await asyncio.gather(*(conversation(c) for c in recorded))


# --------------------------------------------------------------------------- timing the saver


class Timed:
    """Wraps a saver's ``aput``/``aput_writes``/``aget_tuple`` on the instance (keeping their
    signatures, which LangGraph inspects) to count the calls and record their latencies."""

    def __init__(self, saver: Any) -> None:
        self.lat: dict[str, list[float]] = {"aput": [], "aput_writes": [], "aget_tuple": []}
        self.writes_before_put = 0
        aput, aput_writes, aget_tuple = saver.aput, saver.aput_writes, saver.aget_tuple
        lat = self.lat
        ids = getattr(saver, "_ids", None) if isinstance(saver, CkptSaver) else None

        async def timed_aput(config, checkpoint, metadata, new_versions):
            t = time.perf_counter()
            r = await aput(config, checkpoint, metadata, new_versions)
            lat["aput"].append(time.perf_counter() - t)
            return r

        async def timed_aput_writes(config, writes, task_id, task_path=""):
            if ids is not None:
                c = config["configurable"]
                key = (execution_id(str(c["thread_id"]), c.get("checkpoint_ns", "")), c["checkpoint_id"])
                self.writes_before_put += key not in ids
            t = time.perf_counter()
            r = await aput_writes(config, writes, task_id, task_path)
            lat["aput_writes"].append(time.perf_counter() - t)
            return r

        async def timed_aget_tuple(config):
            t = time.perf_counter()
            r = await aget_tuple(config)
            lat["aget_tuple"].append(time.perf_counter() - t)
            return r

        saver.aput, saver.aput_writes, saver.aget_tuple = timed_aput, timed_aput_writes, timed_aget_tuple


def native_build() -> str:
    """Which cargo profile built the installed ``ckpt_langgraph._native``: "release" or
    "debug" (the module says, ``_native.BUILD_PROFILE``), or "unknown" for a build older than
    that. A debug build's figures are not the project's (see pyproject's and Cargo.toml's
    notes)."""
    from ckpt_langgraph import _native

    return getattr(_native, "BUILD_PROFILE", "unknown")


def disk_bytes(paths: list[str]) -> tuple[int, int]:
    """(sum of file sizes, bytes allocated) of the files under each path (a file or a folder)."""
    size = alloc = 0
    for p in paths:
        if os.path.isfile(p):
            files = [p]
        elif os.path.isdir(p):
            files = [os.path.join(d, f) for d, _, fs in os.walk(p) for f in fs]
        else:
            files = []
        for f in files:
            st = os.stat(f)
            size += st.st_size
            alloc += st.st_blocks * 512
    return size, alloc


def ms(xs: list[float]) -> Optional[float]:
    return round(statistics.median(xs) * 1000, 3) if xs else None


@dataclass
class Opened:
    saver: Any
    paths: list[str]
    flush: Callable[[], Any]  # an async callable: the store at rest
    close: Callable[[], Any]


async def open_saver(kind: str, out: str, tag: str) -> Opened:
    if kind == "sqlite":
        path = os.path.join(out, f"lg-{tag}.sqlite")
        cm = AsyncSqliteSaver.from_conn_string(path)
        saver = await cm.__aenter__()
        await saver.setup()

        async def flush() -> None:
            async with saver.lock:
                await saver.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

        async def close() -> None:
            await cm.__aexit__(None, None, None)

        return Opened(saver, [path, path + "-wal", path + "-shm"], flush, close)
    if kind == "sled":
        path = os.path.join(out, f"ckpt-{tag}.sled")
        url = "sled://" + path
        paths = [path]
    elif kind == "ckpt-sqlite":
        path = os.path.join(out, f"ckpt-{tag}.sqlite")
        url = "sqlite://" + path
        paths = [path, path + "-wal", path + "-shm"]
    else:
        raise ValueError(kind)
    store = await asyncio.to_thread(Store.open, url)
    saver = CkptSaver(store)

    async def flush() -> None:
        await asyncio.to_thread(store.flush)

    async def close() -> None:
        # Store.close() where the build has it (it releases a sled directory's lock); else the
        # store closes when its last reference goes.
        if hasattr(store, "close"):
            await asyncio.to_thread(store.close)

    return Opened(saver, paths, flush, close)


async def measure(kind: str, mode: str, out: str, tag: str, messages, recorded, seed: int) -> dict:
    opened = await open_saver(kind, out, tag)
    saver = opened.saver
    timed = Timed(saver)
    t0, c0 = time.perf_counter(), time.process_time()
    if mode == "graph":
        await drive_graph(saver, messages)
    else:
        await drive_replay(saver, recorded)
    run_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    puts = len(timed.lat["aput"])
    run_lat = {k: list(v) for k, v in timed.lat.items()}

    before_flush = disk_bytes(opened.paths)[0]
    t = time.perf_counter()
    await opened.flush()
    flush_s = time.perf_counter() - t
    size, alloc = disk_bytes(opened.paths)

    # Reads, on thread 0: the latest checkpoint, a full list, random older ones by id.
    cfg = config_of(0)
    for _ in range(5):
        await saver.aget_tuple(cfg)
    timed.lat["aget_tuple"].clear()
    for _ in range(GET_CALLS):
        await saver.aget_tuple(cfg)
    get_latest = list(timed.lat["aget_tuple"])

    list_times = []
    for _ in range(LIST_RUNS):
        t = time.perf_counter()
        tuples = [tup async for tup in saver.alist(cfg)]
        list_times.append(time.perf_counter() - t)
    n_listed = len(tuples)
    old_ids = [tup.config["configurable"]["checkpoint_id"] for tup in tuples[1:]]
    rng = random.Random(seed + 1)
    picks = [rng.choice(old_ids) for _ in range(GET_CALLS)] if old_ids else []
    timed.lat["aget_tuple"].clear()
    for cid in picks:
        got = await saver.aget_tuple({"configurable": {**cfg["configurable"], "checkpoint_id": cid}})
        assert got is not None and got.checkpoint["id"] == cid, (kind, cid)
    get_old = list(timed.lat["aget_tuple"])

    # A check that the run stored what it should: the latest state of thread 0.
    latest = await saver.aget_tuple(cfg)
    assert latest.checkpoint["channel_values"]["messages"] == messages[0], kind
    await opened.close()

    return {
        "saver": LABELS[kind],
        "kind": kind,
        "mode": mode,
        "threads": len(messages),
        "steps": len(messages[0]),
        "message_bytes": len(messages[0][0]),
        "puts": puts,
        "put_writes": len(run_lat["aput_writes"]),
        "run_s": round(run_s, 4),
        "puts_per_s": round(puts / run_s, 1),
        "cpu_s": round(cpu_s, 4),
        "cpu_ms_per_put": round(cpu_s / puts * 1000, 3) if puts else None,
        "writes_before_put": timed.writes_before_put if isinstance(saver, CkptSaver) else None,
        "put_ms": ms(run_lat["aput"]),
        "put_p95_ms": round(sorted(run_lat["aput"])[int(0.95 * (len(run_lat["aput"]) - 1))] * 1000, 3)
        if run_lat["aput"]
        else None,
        "put_writes_ms": ms(run_lat["aput_writes"]),
        "run_get_tuple_ms": ms(run_lat["aget_tuple"]),
        "saver_busy_s": round(sum(run_lat["aput"]) + sum(run_lat["aput_writes"]) + sum(run_lat["aget_tuple"]), 4),
        "get_latest_ms": ms(get_latest),
        "get_old_ms": ms(get_old),
        "list_ms": ms(list_times),
        "listed": n_listed,
        "bytes": size,
        "bytes_allocated": alloc,
        "bytes_before_flush": before_flush,
        "flush_s": round(flush_s, 4),
    }


# --------------------------------------------------------------------------- output


def median_result(rounds: list[dict]) -> dict:
    if len(rounds) == 1:
        return rounds[0]
    out = dict(rounds[0])
    for k, v in rounds[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("threads", "steps", "message_bytes"):
            vals = [r[k] for r in rounds if r[k] is not None]
            out[k] = round(statistics.median(vals), 4) if vals else None
    out["rounds"] = len(rounds)
    return out


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return str(n)


def table(results: list[dict]) -> str:
    head = ["saver", "mode", "puts/s", "cpu ms/put", "put ms", "writes ms", "get latest ms", "get old ms", "list ms", "disk", "vs sqlite"]
    rows = []
    base = {r["mode"]: r for r in results if r["kind"] == "sqlite"}
    for r in results:
        b = base.get(r["mode"])
        ratio = f"{b['bytes'] / r['bytes']:.1f}x smaller" if b and r is not b and r["bytes"] else ""
        rows.append(
            [
                r["saver"],
                r["mode"],
                f"{r['puts_per_s']:.0f}",
                f"{r['cpu_ms_per_put']:.2f}",
                f"{r['put_ms']:.2f}",
                f"{r['put_writes_ms']:.2f}" if r["put_writes_ms"] is not None else "-",
                f"{r['get_latest_ms']:.2f}",
                f"{r['get_old_ms']:.2f}" if r["get_old_ms"] is not None else "-",
                f"{r['list_ms']:.1f}",
                fmt_bytes(r["bytes"]),
                ratio,
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def goals(results: list[dict]) -> list[str]:
    """The issue's goal per CkptSaver row: >= 25x fewer bytes, >= puts/s, <= get_tuple latency."""
    out = []
    base = {r["mode"]: r for r in results if r["kind"] == "sqlite"}
    for r in results:
        b = base.get(r["mode"])
        if r["kind"] == "sqlite" or not b:
            continue
        checks = [
            ("bytes >= 25x fewer", b["bytes"] / r["bytes"] >= 25, f"{b['bytes'] / r['bytes']:.1f}x"),
            ("puts/s >= baseline", r["puts_per_s"] >= b["puts_per_s"], f"{r['puts_per_s']:.0f} vs {b['puts_per_s']:.0f}"),
            ("get latest <= baseline", r["get_latest_ms"] <= b["get_latest_ms"], f"{r['get_latest_ms']:.2f} vs {b['get_latest_ms']:.2f} ms"),
            ("get old <= baseline", r["get_old_ms"] <= b["get_old_ms"], f"{r['get_old_ms']:.2f} vs {b['get_old_ms']:.2f} ms"),
        ]
        out.append(
            f"{r['saver']} ({r['mode']}): "
            + "; ".join(f"{name} {'met' if ok else 'NOT met'} ({detail})" for name, ok, detail in checks)
        )
    return out


# --------------------------------------------------------------------------- profiling


def profile(recorded, out: str, top: int) -> None:
    """Replays the recorded calls synchronously on this thread against CkptSaver on sled, under
    cProfile (single writer: this shows the Python side's cost per call, not contention)."""
    store = Store.open("sled://" + os.path.join(out, "ckpt-profile.sled"))
    saver = CkptSaver(store)
    sync = {"aput": saver.put, "aput_writes": saver.put_writes, "aget_tuple": saver.get_tuple}
    calls = [(sync[name], args) for conv in recorded for name, args in conv]
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    for fn, args in calls:
        fn(*args)
    prof.disable()
    wall = time.perf_counter() - t
    puts = sum(1 for fn, _ in calls if fn == saver.put)
    print(f"\nprofile: {len(calls)} calls ({puts} puts) replayed on one thread in {wall:.3f} s ({puts / wall:.0f} puts/s)")
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(top)
    print(s.getvalue())
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(top)
    print(s.getvalue())


# --------------------------------------------------------------------------- main


async def main_async(args) -> list[dict]:
    loop = asyncio.get_running_loop()
    # Enough workers that no to_thread call ever queues (see the module's docstring).
    loop.set_default_executor(ThreadPoolExecutor(max_workers=8 * args.threads + 8, thread_name_prefix="bench"))
    messages = make_messages(args.threads, args.steps, args.message_bytes, args.seed)
    modes = ["graph", "replay"] if args.mode == "both" else [args.mode]
    recorded = await record(messages) if ("replay" in modes or args.profile) else None
    if args.profile:
        profile(recorded, args.out, args.profile_top)
        return []
    kinds = [k for k in args.savers.split(",") if k]
    for k in kinds:
        if k not in SAVERS:
            raise SystemExit(f"unknown saver {k!r}: choose from {', '.join(SAVERS)}")
    build = native_build()
    if build != "release" and not args.json:
        print(f"warning: ckpt_langgraph._native is a {build} build: CkptSaver's figures are not a release build's", file=sys.stderr)
    results = []
    for mode in modes:
        rounds: dict[str, list[dict]] = {k: [] for k in kinds}
        for n in range(args.repeat):
            # Interleaved, and the order rotated each round, so no saver always runs first.
            order = kinds[n % len(kinds):] + kinds[: n % len(kinds)]
            for k in order:
                r = await measure(k, mode, args.out, f"{mode}-{n}", messages, recorded, args.seed)
                r["native_build"] = build
                rounds[k].append(r)
                if not args.json:
                    print(f"  {mode} round {n + 1}: {r['saver']}: {r['puts_per_s']:.0f} puts/s, {fmt_bytes(r['bytes'])}", file=sys.stderr)
        results += [median_result(rounds[k]) for k in kinds]
    return results


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--message-bytes", type=int, default=600)
    p.add_argument("--out", help="where the stores go (default: a temporary folder, removed after)")
    p.add_argument("--quick", action="store_true", help="2 threads x 30 steps (for tests)")
    p.add_argument("--json", action="store_true", help="one JSON line per saver (and mode)")
    p.add_argument("--mode", choices=["graph", "replay", "both"], default="graph")
    p.add_argument("--savers", default=",".join(SAVERS), help=f"comma-separated, of {', '.join(SAVERS)}")
    p.add_argument("--repeat", type=int, default=1, help="interleaved rounds; medians reported")
    p.add_argument("--seed", type=int, default=18)
    p.add_argument("--profile", action="store_true", help="cProfile CkptSaver (sled) on the recorded calls instead")
    p.add_argument("--profile-top", type=int, default=30)
    args = p.parse_args(argv)
    if args.quick:
        args.threads, args.steps = 2, 30
    if args.threads < 1 or args.steps < 2 or args.message_bytes < 1 or args.repeat < 1:
        p.error("--threads, --message-bytes and --repeat must be >= 1, --steps >= 2")
    temp = None
    if args.out is None:
        temp = args.out = tempfile.mkdtemp(prefix="ckpt-lg-bench-")
    else:
        os.makedirs(args.out, exist_ok=True)
        if os.listdir(args.out):
            p.error(f"--out {args.out} is not empty (every run starts from empty stores)")
    try:
        results = asyncio.run(main_async(args))
    finally:
        if temp:
            shutil.rmtree(temp, ignore_errors=True)
    if not results:
        return 0
    if args.json:
        for r in results:
            print(json.dumps(r))
    else:
        print(
            f"\n{args.threads} threads x {args.steps} steps, {args.message_bytes}-byte messages"
            f" ({'median of ' + str(args.repeat) + ' rounds' if args.repeat > 1 else 'one round'};"
            f" ckpt_langgraph._native: {results[0]['native_build']} build)\n"
        )
        print(table(results))
        print()
        for g in goals(results):
            print(g)
    return 0


if __name__ == "__main__":
    sys.exit(main())
