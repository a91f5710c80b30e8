"""The graph of test_graph.py's killed-process test, and the child process that runs it.

``build(saver, workdir, block)`` compiles ``START -> first -> second -> END`` on ``saver``.
Every run of a node appends a line to a side file in ``workdir`` (``first.runs``,
``second.runs``), so the test can count runs across processes. With ``block=True`` the second
node then waits for ``workdir/release``, a file the test never creates: the child is stuck
inside the second node, after the first node's checkpoint was saved, until it is killed.

Run as a script: ``python graph_child.py STORE_URL THREAD_ID WORKDIR`` invokes the blocking graph
on that thread (it gives up after ``BLOCK_LIMIT_S``, so a child the test forgot cannot live on).
"""

from __future__ import annotations

import operator
import os
import sys
import time
from pathlib import Path
from typing import Annotated, TypedDict

from langgraph.graph import END, START, StateGraph

#: How long a blocked second node waits before failing on its own.
BLOCK_LIMIT_S = 120.0


class TwoStepState(TypedDict):
    trail: Annotated[list[str], operator.add]
    pid: Annotated[list[int], operator.add]


def _mark(workdir: Path, name: str) -> None:
    with open(workdir / name, "a") as f:
        f.write(f"{os.getpid()}\n")
        f.flush()


def runs(workdir: Path, name: str) -> list[int]:
    """The pids of the runs recorded in side file ``name`` (one per run), oldest first."""
    p = Path(workdir) / name
    return [int(line) for line in p.read_text().split()] if p.exists() else []


def build(saver, workdir, block: bool):
    workdir = Path(workdir)

    def first(state: TwoStepState) -> dict:
        _mark(workdir, "first.runs")
        return {"trail": ["first"], "pid": [os.getpid()]}

    def second(state: TwoStepState) -> dict:
        _mark(workdir, "second.runs")
        if block:
            deadline = time.monotonic() + BLOCK_LIMIT_S
            while not (workdir / "release").exists():
                if time.monotonic() > deadline:
                    raise TimeoutError("second node: nobody killed me")
                time.sleep(0.05)
        # What the second node saw of the first's output proves it resumed from the checkpoint.
        return {"trail": [f"second after {'+'.join(state['trail'])}"], "pid": [os.getpid()]}

    g = StateGraph(TwoStepState)
    g.add_node("first", first)
    g.add_node("second", second)
    g.add_edge(START, "first")
    g.add_edge("first", "second")
    g.add_edge("second", END)
    return g.compile(checkpointer=saver)


def main(url: str, thread_id: str, workdir: str) -> None:
    from ckpt_langgraph import CkptSaver

    graph = build(CkptSaver.from_url(url), workdir, block=True)
    graph.invoke({"trail": [], "pid": []}, {"configurable": {"thread_id": thread_id}})


if __name__ == "__main__":
    main(*sys.argv[1:4])
