"""Real LangGraph graphs running on CkptSaver.

The conformance suite checks the saver's methods one by one; these tests run whole
``StateGraph``s on it, the way an application does: a tool-calling agent, a process killed in
the middle of a run and resumed by another, the state history, ``update_state`` and time
travel (branches), ``interrupt()`` resumed from a new saver, subgraphs (checkpoint namespaces),
the async faces, and what a long conversation costs on disk.

Every test has a fresh store under pytest's ``tmp_path``. Where it matters, the expected
history is also checked against LangGraph's own ``InMemorySaver`` running the same graph
(``shape()`` below), so that what is asserted is LangGraph's behaviour, not whatever the saver
happens to do.

A sled store may be opened by one process at a time, and by one ``Store`` at a time within it:
to reopen one, a test drops every reference to the old saver (``del graph, saver``) first, then
``reopen()`` collects it and opens the URL again.

Run: ``/tmp/lgvenv/bin/python -m pytest /work/main/python/tests -q``
"""

from __future__ import annotations

import asyncio
import collections
import gc
import importlib.util
import json
import operator
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Callable, TypedDict

import pytest
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.types import Command, interrupt

from ckpt_langgraph import CkptSaver, execution_id

HERE = Path(__file__).resolve().parent

# ===================================================================== stores and helpers


def store_url(kind: str, tmp_path: Path) -> str:
    return {"sled": f"sled://{tmp_path}/store", "sqlite": f"sqlite://{tmp_path}/store.db"}[kind]


@pytest.fixture(params=["sled", "sqlite"])
def url(request, tmp_path) -> str:
    """A fresh store URL, once per backend (for the cheap tests)."""
    return store_url(request.param, tmp_path)


def reopen(url: str) -> CkptSaver:
    """A new saver on ``url``; the caller has dropped its references to the old one (a sled
    store is opened by one ``Store`` at a time, and is released when it is collected)."""
    gc.collect()
    return CkptSaver.from_url(url)


def conf(thread_id: str, checkpoint_id: str | None = None, **more: Any) -> dict:
    c: dict[str, Any] = {"thread_id": thread_id, **more}
    if checkpoint_id is not None:
        c["checkpoint_id"] = checkpoint_id
    return {"configurable": c}


def cid(snapshot_or_config: Any) -> str | None:
    """The checkpoint id of a StateSnapshot or of a config (None for None)."""
    c = getattr(snapshot_or_config, "config", snapshot_or_config)
    return None if c is None else c["configurable"]["checkpoint_id"]


def saved_versions(saver: CkptSaver, thread_id: str, ns: str = "") -> int:
    """How many checkpoints the store holds for a thread's namespace (read from ckpt itself)."""
    return len(json.loads(saver.store.history(execution_id(thread_id, ns), None, None, None)))


def assert_ckpt_tree_is_langgraphs(saver: CkptSaver, thread_id: str, history: list) -> None:
    """ckpt's own parent links (what ``ckpt`` and ``ckpt ui`` show as branches) are LangGraph's:
    for every checkpoint of ``history``, the ckpt parent of its version is the version of its
    LangGraph parent."""
    headers = json.loads(saver.store.history(execution_id(thread_id), None, None, None))
    version_of = {h["metadata"]["lg:id"]: h["version"] for h in headers}
    parent_of = {h["version"]: h["parent"] for h in headers}
    assert set(version_of) == {cid(s) for s in history}
    for s in history:
        if s.parent_config is not None:
            assert parent_of[version_of[cid(s)]] == version_of[cid(s.parent_config)], s.metadata


def shape(history: list) -> list[tuple]:
    """A history (newest first) without its ids: per checkpoint its step, source, next nodes,
    values, and the position of its parent in the same list (None for a root). Two savers
    running the same deterministic graph give the same shape."""
    pos = {cid(s): i for i, s in enumerate(history)}
    return [
        (
            s.metadata["step"],
            s.metadata["source"],
            s.next,
            s.values,
            None if s.parent_config is None else pos[cid(s.parent_config)],
        )
        for s in history
    ]


def assert_chain(history: list) -> None:
    """Newest first by id, and every parent is in the history and older than its child."""
    ids = [cid(s) for s in history]
    assert ids == sorted(ids, reverse=True), "history is not newest first"
    assert len(set(ids)) == len(ids)
    for s in history:
        if s.parent_config is not None:
            assert cid(s.parent_config) in ids
            assert cid(s.parent_config) < cid(s)


# ===================================================================== the graphs

# ---- a tool-calling agent


@tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"It is sunny and 24 C in {city}."


QUESTION = "What is the weather in Paris?"
FINAL_ANSWER = "It is sunny in Paris today (24 C)."


class AgentState(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def build_agent(saver) -> Any:
    """model -> (tool call) -> tools -> model -> (answer) -> END, with a scripted fake model:
    first an AIMessage calling ``get_weather(city="Paris")``, then the final answer."""
    model = FakeMessagesListChatModel(
        responses=[
            AIMessage(
                content="",
                id="ai-1",
                tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "call-1", "type": "tool_call"}],
            ),
            AIMessage(content=FINAL_ANSWER, id="ai-2"),
        ]
    )

    def agent(state: AgentState) -> dict:
        return {"messages": [model.invoke(state["messages"])]}

    g = StateGraph(AgentState)
    g.add_node("agent", agent)
    g.add_node("tools", ToolNode([get_weather]))
    g.add_edge(START, "agent")
    g.add_conditional_edges("agent", tools_condition)
    g.add_edge("tools", "agent")
    return g.compile(checkpointer=saver)


def assert_agent_messages(messages: list) -> None:
    assert [type(m) for m in messages] == [HumanMessage, AIMessage, ToolMessage, AIMessage]
    human, call, result, answer = messages
    assert human.content == QUESTION
    assert call.tool_calls == [{"name": "get_weather", "args": {"city": "Paris"}, "id": "call-1", "type": "tool_call"}]
    assert result.content == "It is sunny and 24 C in Paris."
    assert (result.tool_call_id, result.name) == ("call-1", "get_weather")
    assert answer.content == FINAL_ANSWER and not answer.tool_calls
    assert all(m.id for m in messages)


#: The agent's history, newest first: (step, source, next).
AGENT_HISTORY = [
    (3, "loop", ()),
    (2, "loop", ("agent",)),
    (1, "loop", ("tools",)),
    (0, "loop", ("agent",)),
    (-1, "input", ("__start__",)),
]

# ---- a linear graph a -> b -> c whose nodes count their runs


class LogState(TypedDict):
    log: Annotated[list[str], operator.add]


def build_linear(saver, runs: collections.Counter) -> Any:
    """START -> a -> b -> c -> END; node x appends "x<n>" where n counts x's runs, so a re-run
    is visible in the values."""

    def step(name: str) -> Callable[[LogState], dict]:
        def run(state: LogState) -> dict:
            runs[name] += 1
            return {"log": [f"{name}{runs[name]}"]}

        return run

    g = StateGraph(LogState)
    for name in "abc":
        g.add_node(name, step(name))
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    g.add_edge("b", "c")
    g.add_edge("c", END)
    return g.compile(checkpointer=saver)


def run_linear(saver) -> tuple[Any, collections.Counter, list]:
    """Runs the linear graph once on thread "t" with input ["in"]; returns the graph, its run
    counter and the history."""
    runs: collections.Counter = collections.Counter()
    graph = build_linear(saver, runs)
    assert graph.invoke({"log": ["in"]}, conf("t")) == {"log": ["in", "a1", "b1", "c1"]}
    return graph, runs, list(graph.get_state_history(conf("t")))


# ===================================================================== 1. the agent


def test_agent_tool_calls_and_state_survive_reopening(url):
    """Guards a real tool-calling run end to end: the messages (with the model's tool call, the
    ToolNode's result and the final answer) are what LangGraph computes, and a NEW saver on the
    same store gives the same state, history and checkpoint ids (nothing lives only in memory)."""
    saver = CkptSaver.from_url(url)
    graph = build_agent(saver)
    config = conf("agent-1")
    result = graph.invoke({"messages": [HumanMessage(QUESTION, id="h-1")]}, config)
    assert_agent_messages(result["messages"])

    before = graph.get_state(config)
    history_before = list(graph.get_state_history(config))
    assert before.values == result and before.next == ()
    assert [(s.metadata["step"], s.metadata["source"], s.next) for s in history_before] == AGENT_HISTORY

    del graph, saver
    saver = reopen(url)
    graph = build_agent(saver)
    after = graph.get_state(config)
    assert after.values == result
    assert_agent_messages(after.values["messages"])
    assert (after.next, after.config, after.metadata, after.parent_config) == (
        before.next,
        before.config,
        before.metadata,
        before.parent_config,
    )
    history_after = list(graph.get_state_history(config))
    assert [(cid(s), s.values, s.next) for s in history_after] == [(cid(s), s.values, s.next) for s in history_before]
    assert len(history_after) == saved_versions(saver, "agent-1") == len(AGENT_HISTORY)
    # another thread on the same store is empty
    assert graph.get_state(conf("agent-2")).values == {}


# ===================================================================== 2. killed process


def _load_child_module():
    spec = importlib.util.spec_from_file_location("graph_child", HERE / "graph_child.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["graph_child"] = module  # LangGraph resolves the state's annotations through it
    spec.loader.exec_module(module)
    return module


def test_resume_after_the_process_is_killed(tmp_path):
    """Guards durable execution: a child process runs first -> second on SQLite and is killed
    (SIGKILL) while blocked inside the second node, after the first node's checkpoint is saved.
    The test process then resumes the thread with ``invoke(None, config)``: the first node does
    not run again, the second runs from the saved state (it sees the first's output), and the
    run completes on the line the child started."""
    child = _load_child_module()
    url = store_url("sqlite", tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    config = conf("durable")
    saver = CkptSaver.from_url(url)  # creates the database before the child opens it
    graph = child.build(saver, work, block=False)

    stderr = open(tmp_path / "child.err", "w+")
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "graph_child.py"), url, "durable", str(work)],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                stderr.seek(0)
                pytest.fail(f"child exited early ({proc.returncode}): {stderr.read()}")
            snap = graph.get_state(config)
            if snap.next == ("second",) and child.runs(work, "second.runs"):
                break
            assert time.monotonic() < deadline, f"no first-step checkpoint in 60 s: {snap}"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stderr.close()

    # What the killed child left: the first node ran once, in the child; the second started.
    assert child.runs(work, "first.runs") == [proc.pid]
    assert child.runs(work, "second.runs") == [proc.pid]
    killed_at = graph.get_state(config)
    assert killed_at.values == {"trail": ["first"], "pid": [proc.pid]}
    assert killed_at.next == ("second",) and killed_at.metadata["step"] == 1
    saved_before = saved_versions(saver, "durable")

    result = graph.invoke(None, config)

    me = os.getpid()
    assert result == {"trail": ["first", "second after first"], "pid": [proc.pid, me]}
    assert child.runs(work, "first.runs") == [proc.pid], "the first node ran again"
    assert child.runs(work, "second.runs") == [proc.pid, me]
    final = graph.get_state(config)
    assert final.next == () and final.metadata["step"] == 2
    assert cid(final.parent_config) == cid(killed_at), "the resumed run did not continue the saved line"
    history = list(graph.get_state_history(config))
    assert [h.metadata["step"] for h in history] == [2, 1, 0, -1]
    assert_chain(history)
    assert saved_versions(saver, "durable") == saved_before + 1 == len(history)


# ===================================================================== 3. history


def test_state_history_lists_every_checkpoint(url):
    """Guards ``get_state_history``: every checkpoint newest first, each ``parent_config``
    pointing at the next (older) one, metadata steps and sources, ``next`` nodes and values per
    step, as many as the store holds, and the same shape as with LangGraph's InMemorySaver."""
    saver = CkptSaver.from_url(url)
    graph, runs, history = run_linear(saver)
    assert runs == {"a": 1, "b": 1, "c": 1}

    assert [(h.metadata["step"], h.metadata["source"], h.next, h.values) for h in history] == [
        (3, "loop", (), {"log": ["in", "a1", "b1", "c1"]}),
        (2, "loop", ("c",), {"log": ["in", "a1", "b1"]}),
        (1, "loop", ("b",), {"log": ["in", "a1"]}),
        (0, "loop", ("a",), {"log": ["in"]}),
        (-1, "input", ("__start__",), {"log": []}),
    ]
    for newer, older in zip(history, history[1:]):
        assert cid(newer.parent_config) == cid(older)
        assert newer.parent_config["configurable"]["thread_id"] == "t"
    assert history[-1].parent_config is None
    assert_chain(history)
    assert len(history) == saved_versions(saver, "t") == 5
    # list's limit and before, through the graph
    assert [cid(h) for h in graph.get_state_history(conf("t"), limit=2)] == [cid(h) for h in history[:2]]
    assert [cid(h) for h in graph.get_state_history(conf("t"), before=history[1].config)] == [
        cid(h) for h in history[2:]
    ]

    _g, _r, reference = run_linear(InMemorySaver())
    assert shape(history) == shape(reference)


# ===================================================================== 4. update_state


def test_update_state_on_latest_and_on_an_older_checkpoint(url):
    """Guards ``update_state``: on the latest checkpoint it appends an "update" checkpoint whose
    parent is the latest, and the next run builds on it; on an older checkpoint (time travel,
    ``as_node="a"``) it forks: the new checkpoint's parent is the older one, continuing runs
    the rest of the graph on the fork, and every checkpoint of the original line keeps its
    values. The whole history has InMemorySaver's shape."""

    def scenario(saver) -> list:
        graph, runs, first = run_linear(saver)
        latest = first[0]

        # on the latest
        updated = graph.update_state(conf("t"), {"log": ["note"]})
        snap = graph.get_state(conf("t"))
        assert cid(updated) == cid(snap) != cid(latest)
        assert cid(snap.parent_config) == cid(latest)
        assert snap.metadata["source"] == "update" and snap.metadata["step"] == 4
        assert snap.values == {"log": ["in", "a1", "b1", "c1", "note"]}
        assert graph.invoke({"log": ["again"]}, conf("t")) == {"log": ["in", "a1", "b1", "c1", "note", "again", "a2", "b2", "c2"]}

        # on an older one: the checkpoint after a, before b, of the first run
        line = {cid(h): h.values for h in graph.get_state_history(conf("t"))}
        old = first[2]
        assert old.next == ("b",) and old.values == {"log": ["in", "a1"]}
        fork_config = graph.update_state(old.config, {"log": ["edited"]}, as_node="a")
        fork = graph.get_state(fork_config)
        assert cid(fork.parent_config) == cid(old)
        assert fork.metadata["source"] == "update"
        assert fork.next == ("b",)
        assert fork.values == {"log": ["in", "a1", "edited"]}

        assert graph.invoke(None, fork_config) == {"log": ["in", "a1", "edited", "b3", "c3"]}
        assert runs == {"a": 2, "b": 3, "c": 3}

        # the fork is the thread's latest; walking its parents reaches the old checkpoint
        history = list(graph.get_state_history(conf("t")))
        by_id = {cid(h): h for h in history}
        walk, s = [], history[0]
        while s is not None:
            walk.append(cid(s))
            s = by_id[cid(s.parent_config)] if s.parent_config else None
        assert walk[:3] == [cid(history[0]), cid(history[1]), cid(fork)]
        assert walk[3:] == [cid(h) for h in first[2:]]
        # the original line is unchanged (values and links)
        for i, values in line.items():
            assert graph.get_state(conf("t", i)).values == values
        assert [cid(h.parent_config) for h in graph.get_state_history(conf("t"), before=old.config)] == [
            cid(h.parent_config) for h in first[3:]
        ]
        assert len(history) == len(line) + 3
        return history

    saver = CkptSaver.from_url(url)
    history = scenario(saver)
    # first run 5, update 1, second run 5 (input, start, a, b, c), fork 1, its run 2 (b, c)
    assert len(history) == 5 + 1 + 5 + 1 + 2 == saved_versions(saver, "t")
    assert_ckpt_tree_is_langgraphs(saver, "t", history)
    assert shape(history) == shape(scenario(InMemorySaver()))


# ===================================================================== 5. time travel


def test_time_travel_replays_from_an_old_checkpoint(url):
    """Guards replay: ``invoke(None, {thread_id, checkpoint_id: old})`` runs the graph again from
    that checkpoint (a ran before it and is not re-run; b and c run again), the new checkpoints
    form a branch whose root's parent is ``old``, the thread's latest state is the branch's end,
    and the original line is unchanged. Same shape as InMemorySaver."""

    def scenario(saver):
        graph, runs, first = run_linear(saver)
        old = first[2]
        assert old.next == ("b",)
        replayed = graph.invoke(None, conf("t", cid(old)))
        assert replayed == {"log": ["in", "a1", "b2", "c2"]}
        assert runs == {"a": 1, "b": 2, "c": 2}

        history = list(graph.get_state_history(conf("t")))
        new = [h for h in history if cid(h) not in {cid(f) for f in first}]
        assert [h.values for h in new][:2] == [
            {"log": ["in", "a1", "b2", "c2"]},
            {"log": ["in", "a1", "b2"]},
        ]
        assert cid(new[-1].parent_config) == cid(old), "the branch does not start at the old checkpoint"
        for newer, older in zip(new, new[1:]):
            assert cid(newer.parent_config) == cid(older)
        assert graph.get_state(conf("t")).values == replayed
        # the original line: same ids, values and parents as before the replay
        assert [(cid(h), h.values, cid(h.parent_config)) for h in history if h not in new] == [
            (cid(h), h.values, cid(h.parent_config)) for h in first
        ]
        assert graph.get_state(conf("t", cid(first[0]))).values == {"log": ["in", "a1", "b1", "c1"]}
        return history, new

    saver = CkptSaver.from_url(url)
    history, new = scenario(saver)
    assert_ckpt_tree_is_langgraphs(saver, "t", history)
    ref_history, ref_new = scenario(InMemorySaver())
    assert shape(history) == shape(ref_history)
    assert len(new) == len(ref_new) >= 2


# ===================================================================== 6. interrupt


class ApprovalState(TypedDict):
    request: str
    answer: str


def build_approval(saver, runs: collections.Counter) -> Any:
    def prepare(state: ApprovalState) -> dict:
        runs["prepare"] += 1
        return {"request": f"deploy {state['request']}"}

    def ask(state: ApprovalState) -> dict:
        runs["ask"] += 1
        answer = interrupt("approve?")
        runs[f"ask saw {answer}"] += 1
        return {"answer": f"{state['request']}: {answer}"}

    g = StateGraph(ApprovalState)
    g.add_node("prepare", prepare)
    g.add_node("ask", ask)
    g.add_edge(START, "prepare")
    g.add_edge("prepare", "ask")
    g.add_edge("ask", END)
    return g.compile(checkpointer=saver)


def test_interrupt_then_resume_from_a_new_saver(url):
    """Guards human-in-the-loop: ``interrupt("approve?")`` stops the run with ``__interrupt__``
    and the interrupt is in the saved state (``get_state().tasks[0].interrupts``); a NEW saver
    and graph on the same store resume with ``Command(resume="yes")``, the node sees "yes", and
    the node before it does not run again."""
    runs: collections.Counter = collections.Counter()
    saver = CkptSaver.from_url(url)
    graph = build_approval(saver, runs)
    config = conf("approval")
    first = graph.invoke({"request": "v2"}, config)
    assert [i.value for i in first["__interrupt__"]] == ["approve?"]
    assert first["request"] == "deploy v2" and "answer" not in first
    snap = graph.get_state(config)
    assert snap.next == ("ask",)
    assert [i.value for i in snap.tasks[0].interrupts] == ["approve?"]
    assert snap.tasks[0].name == "ask"
    interrupt_id = snap.tasks[0].interrupts[0].id
    assert runs == {"prepare": 1, "ask": 1}

    del graph, saver, snap
    saver = reopen(url)
    graph = build_approval(saver, runs)
    pending = graph.get_state(config)
    assert [(i.value, i.id) for i in pending.tasks[0].interrupts] == [("approve?", interrupt_id)]
    result = graph.invoke(Command(resume="yes"), config)
    assert result == {"request": "deploy v2", "answer": "deploy v2: yes"}
    assert runs == {"prepare": 1, "ask": 2, "ask saw yes": 1}
    final = graph.get_state(config)
    assert final.next == () and final.tasks == () and final.values == result
    assert saved_versions(saver, "approval") == len(list(graph.get_state_history(config)))


# ===================================================================== 7. subgraphs


class ParentState(TypedDict):
    shared: list[str]
    parent_note: str


class SubState(TypedDict):
    shared: list[str]
    sub_note: str


def build_nested(saver) -> Any:
    """p1 -> sub (a compiled subgraph: s1 -> s2, s2 interrupts) -> p2; ``shared`` is the key
    both states have."""

    def s1(state: SubState) -> dict:
        return {"shared": state["shared"] + ["s1"], "sub_note": "from s1"}

    def s2(state: SubState) -> dict:
        ok = interrupt("sub?")
        return {"shared": state["shared"] + [f"s2:{ok}"]}

    sub = StateGraph(SubState)
    sub.add_node("s1", s1)
    sub.add_node("s2", s2)
    sub.add_edge(START, "s1")
    sub.add_edge("s1", "s2")
    sub.add_edge("s2", END)

    def p1(state: ParentState) -> dict:
        return {"shared": state["shared"] + ["p1"], "parent_note": "parent"}

    def p2(state: ParentState) -> dict:
        return {"shared": state["shared"] + ["p2"]}

    g = StateGraph(ParentState)
    g.add_node("p1", p1)
    g.add_node("sub", sub.compile())
    g.add_node("p2", p2)
    g.add_edge(START, "p1")
    g.add_edge("p1", "sub")
    g.add_edge("sub", "p2")
    g.add_edge("p2", END)
    return g.compile(checkpointer=saver)


def test_subgraph_checkpoints_live_in_their_namespace(url):
    """Guards subgraphs: the parent's saver checkpoints the subgraph too, in its own namespace
    (its own ckpt execution); ``get_state(config, subgraphs=True)`` shows the interrupted
    subgraph's state; resuming finishes both graphs with the right result; the root namespace's
    history holds only the parent's checkpoints."""
    saver = CkptSaver.from_url(url)
    graph = build_nested(saver)
    config = conf("nested")
    first = graph.invoke({"shared": [], "parent_note": ""}, config)
    assert [i.value for i in first["__interrupt__"]] == ["sub?"]

    snap = graph.get_state(config, subgraphs=True)
    assert snap.next == ("sub",)
    assert snap.values == {"shared": ["p1"], "parent_note": "parent"}
    sub_snap = snap.tasks[0].state
    assert sub_snap.values == {"shared": ["p1", "s1"], "sub_note": "from s1"}
    assert sub_snap.next == ("s2",)
    assert [i.value for i in sub_snap.tasks[0].interrupts] == ["sub?"]
    sub_ns = sub_snap.config["configurable"]["checkpoint_ns"]
    assert sub_ns.startswith("sub:")

    # the thread's executions: "lg:nested/" (the root namespace) is also their common prefix
    executions = saver.store.executions(execution_id("nested", ""))
    assert executions == sorted([execution_id("nested", ""), execution_id("nested", sub_ns)])
    sub_checkpoints = list(saver.list(conf("nested", checkpoint_ns=sub_ns)))
    assert sub_checkpoints and all(t.config["configurable"]["checkpoint_ns"] == sub_ns for t in sub_checkpoints)
    assert len(sub_checkpoints) == saved_versions(saver, "nested", sub_ns)
    assert sub_checkpoints[0].checkpoint["channel_values"]["sub_note"] == "from s1"

    result = graph.invoke(Command(resume="ok"), config)
    assert result == {"shared": ["p1", "s1", "s2:ok", "p2"], "parent_note": "parent"}
    assert graph.get_state(config, subgraphs=True).next == ()
    root = list(graph.get_state_history(config))
    assert all(h.config["configurable"]["checkpoint_ns"] == "" for h in root)
    assert len(root) == saved_versions(saver, "nested")
    assert_chain(root)
    sub_after = list(saver.list(conf("nested", checkpoint_ns=sub_ns)))
    assert len(sub_after) > len(sub_checkpoints)
    assert sub_after[0].checkpoint["channel_values"]["shared"] == ["p1", "s1", "s2:ok"]
    # a config without checkpoint_ns lists every namespace of the thread
    assert len(list(saver.list({"configurable": {"thread_id": "nested"}}))) == len(root) + len(sub_after)


# ===================================================================== 8. async


def test_async_agent_and_history(url):
    """Guards the async faces under a real graph: ``ainvoke`` of the agent, then
    ``aget_state`` and ``aget_state_history`` (newest first, linked, as many as stored), which
    agree with what a new saver reads synchronously."""

    async def main() -> tuple:
        saver = CkptSaver.from_url(url)
        graph = build_agent(saver)
        config = conf("async-agent")
        result = await graph.ainvoke({"messages": [HumanMessage(QUESTION, id="h-1")]}, config)
        state = await graph.aget_state(config)
        history = [s async for s in graph.aget_state_history(config)]
        return saver, graph, result, state, history

    saver, graph, result, state, history = asyncio.run(main())
    assert_agent_messages(result["messages"])
    assert state.values == result and state.next == ()
    assert [(s.metadata["step"], s.metadata["source"], s.next) for s in history] == AGENT_HISTORY
    for newer, older in zip(history, history[1:]):
        assert cid(newer.parent_config) == cid(older)
    assert history[-1].parent_config is None
    assert len(history) == saved_versions(saver, "async-agent")

    del graph, saver
    saver = reopen(url)
    sync_history = list(build_agent(saver).get_state_history(conf("async-agent")))
    assert [(cid(s), s.values, s.next, s.metadata) for s in sync_history] == [
        (cid(s), s.values, s.next, s.metadata) for s in history
    ]


# ===================================================================== 9. size on disk


class ChatState(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


STEPS = 200


def _text(i: int) -> str:
    """~600 bytes of varied text (words drawn by a seeded generator: not trivially compressible)."""
    rng = random.Random(i)
    words = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(110)
    ]
    return f"message {i}: " + " ".join(words)[:585]


def test_long_conversation_is_stored_as_deltas(tmp_path):
    """Guards the point of the ckpt mapping: a 200-step conversation, each step adding one
    ~600-byte message, costs on disk (the SQLite file plus its WAL) far less than the full
    message list of every checkpoint: under 20% of their sum."""
    url = store_url("sqlite", tmp_path)
    saver = CkptSaver.from_url(url)

    def talk(state: ChatState) -> dict:
        n = len(state["messages"])
        cls = HumanMessage if n % 2 == 0 else AIMessage
        return {"messages": [cls(_text(n), id=f"m-{n}")]}

    g = StateGraph(ChatState)
    g.add_node("talk", talk)
    g.add_edge(START, "talk")
    g.add_conditional_edges("talk", lambda s: "talk" if len(s["messages"]) < STEPS else END)
    graph = g.compile(checkpointer=saver)
    result = graph.invoke({"messages": []}, {**conf("chat"), "recursion_limit": STEPS + 10})
    assert len(result["messages"]) == STEPS
    assert all(590 <= len(m.content) <= 605 for m in result["messages"])
    saver.store.flush()

    serde = JsonPlusSerializer()
    history = list(graph.get_state_history(conf("chat")))
    assert len(history) == saved_versions(saver, "chat") == STEPS + 2
    assert history[0].values == result
    full = sum(len(serde.dumps_typed(h.values.get("messages", []))[1]) for h in history)
    db = tmp_path / "store.db"
    files = {p.name: p.stat().st_size for p in tmp_path.iterdir() if p.name.startswith("store.db")}
    stored = files["store.db"] + files.get("store.db-wal", 0)
    last = len(serde.dumps_typed(result["messages"])[1])
    print(
        f"\n[size] {len(history)} checkpoints, final message list {last:,} B; full copies would take "
        f"{full:,} B; stored {stored:,} B ({files}) = {100 * stored / full:.2f}% "
        f"= {stored / last:.2f}x the final list"
    )
    assert db.exists()
    assert stored < 0.20 * full


def test_a_closed_sled_store_opens_again(tmp_path):
    """close() releases a sled store's files: the same process opens it again and reads what
    was saved; calls on the closed saver raise CkptError."""
    from ckpt_langgraph import CkptError

    url = f"sled://{tmp_path}/store"
    with CkptSaver.from_url(url) as saver:
        graph = _build_closed_check_graph(saver)
        graph.invoke({"n": 1}, {"configurable": {"thread_id": "t"}})
    with pytest.raises(CkptError, match="closed"):
        saver.store.executions()
    again = CkptSaver.from_url(url)
    graph = _build_closed_check_graph(again)
    assert graph.get_state({"configurable": {"thread_id": "t"}}).values == {"n": 2}
    again.close()


def _build_closed_check_graph(saver):
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    class S(TypedDict):
        n: int

    b = StateGraph(S)
    b.add_node("inc", lambda s: {"n": s["n"] + 1})
    b.add_edge(START, "inc")
    b.add_edge("inc", END)
    return b.compile(checkpointer=saver)


def test_async_reads_settle_errors_and_survive_cancellation(tmp_path):
    """aget_tuple runs on the store's threads (native async calls): a cancelled read leaves the
    saver usable, a missing id is None, and a closed store raises CkptError, all through the
    event loop."""
    import asyncio

    from ckpt_langgraph import CkptError

    saver = CkptSaver.from_url(store_url("sled", tmp_path))
    graph = build_agent(saver)
    graph.invoke({"messages": [HumanMessage(content=QUESTION)]}, conf("a"))

    async def run() -> None:
        latest = await saver.aget_tuple(conf("a"))
        assert latest is not None and latest.metadata["step"] == 3
        reads = [asyncio.ensure_future(saver.aget_tuple(conf("a", cid(latest.config)))) for _ in range(20)]
        reads[0].cancel()
        done = await asyncio.gather(*reads[1:])
        assert all(t.checkpoint["id"] == latest.checkpoint["id"] for t in done)
        assert reads[0].cancelled()
        assert await saver.aget_tuple(conf("a", "1f000000-0000-6000-8000-000000000000")) is None
        assert await saver.aget_tuple(conf("nobody")) is None
        # The saver knows this id's version; deleted underneath, the native read fails and the
        # error comes back through the loop: None, as for any id that is gone.
        first = [t async for t in saver.alist(conf("a"))][-1]
        ex = execution_id("a")
        saver.store.delete(ex, saver._ids[(ex, cid(first.config))])
        assert await saver.aget_tuple(conf("a", cid(first.config))) is None
        saver.close()
        with pytest.raises(CkptError):
            await saver.aget_tuple(conf("a"))

    asyncio.run(run())
