"""A LangGraph checkpointer backed by ckpt.

``CkptSaver.from_url("sled://./ckpt-data")`` plugs into ``StateGraph.compile(checkpointer=...)``.
Every LangGraph checkpoint becomes a ckpt checkpoint: an immutable event in an append-only,
checksummed log, stored as a delta of the one before (appending a message to a long list stores
about that message), with every ckpt property (any backend URL, encryption with ``key_env``,
the ``ckpt`` CLI and ``ckpt ui`` on the same store).

The mapping (see the README's Python section):

- a LangGraph thread and checkpoint namespace is one ckpt execution, named
  ``lg:<thread>/<ns>`` (each part percent-encoded; a part longer than 120 characters is its
  sha256 instead, and the exact thread and namespace are kept in the state);
- a LangGraph checkpoint is one version of that execution; its LangGraph id and parent id are
  in the ckpt metadata under ``lg:id`` and ``lg:parent`` (removed from what LangGraph reads),
  and a checkpoint whose LangGraph parent is live in the same execution is saved with it as
  its ckpt parent, so ckpt's tree of branches is LangGraph's;
- the state is ``{"checkpoint", "values", "thread_id", "checkpoint_ns"}``, each LangGraph
  value as ``[serde type, payload]`` where a ``msgpack`` payload is embedded as the MessagePack
  tree it is (diffed and deduplicated by ckpt), any other as bytes; the checkpoint's id is not
  repeated there (it is ``lg:id``), and LangGraph's metadata is the ckpt metadata, unless the
  latter cannot give it back exactly (a value JSON cannot hold), when the state keeps a copy
  under ``"metadata"``;
- pending writes are ckpt writes (task, channel, value) with ``idx`` and ``task_path`` in their
  metadata; writes are appended and collapsed on read as LangGraph's savers do (per task and
  index the first, or the last for the special channels).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import heapq
import json
import random
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Optional
from urllib.parse import quote

import ormsgpack
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_checkpoint_metadata,
    writes_sort_key,
)

from ._native import CkptError, NotFoundError, Store

__all__ = ["CkptSaver", "CkptError", "NotFoundError", "Store", "execution_id"]

#: Reserved keys of the ckpt metadata: the LangGraph id and parent id.
ID, PARENT = "lg:id", "lg:parent"
#: How long a ``put_writes`` waits for the ``put`` of its checkpoint, which LangGraph may
#: still be running in the background (it submits both at once).
WAIT_FOR_PUT_S = 30.0
_OPT = ormsgpack.OPT_NON_STR_KEYS


def _part(s: str) -> str:
    q = quote(s, safe="")
    return q if len(q) <= 120 else "#" + hashlib.sha256(s.encode()).hexdigest()


def execution_id(thread_id: str, checkpoint_ns: str = "") -> str:
    """The ckpt execution that holds a LangGraph thread's namespace (for the ``ckpt`` CLI)."""
    return "lg:" + _part(str(thread_id)) + "/" + _part(checkpoint_ns)


def _thread_prefix(thread_id: str) -> str:
    return "lg:" + _part(str(thread_id)) + "/"


def _passthrough(code: int, data: bytes) -> ormsgpack.Ext:
    return ormsgpack.Ext(code, data)


def _unpack(b: bytes) -> Any:
    """MessagePack bytes as Python values, extensions kept as they are (not decoded)."""
    return ormsgpack.unpackb(b, ext_hook=_passthrough, option=_OPT)


def _json_safe(v: Any, exact: bool = False) -> bool:
    """Whether ``v`` is JSON: None, a bool, an int, a finite float, a str, a list, a dict with
    str keys. With ``exact``, whether it also comes back from ckpt's JSON metadata as it went in:
    integers that fit 64 bits, strings (keys too) that are UTF-8."""
    if v is None or isinstance(v, bool):
        return True
    if isinstance(v, int):
        return not exact or -(2**63) <= v < 2**64
    if isinstance(v, float):
        return v == v and v not in (float("inf"), float("-inf"))
    if isinstance(v, str):
        return not exact or _utf8(v)
    if isinstance(v, list):
        return all(_json_safe(x, exact) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and (not exact or _utf8(k)) and _json_safe(x, exact) for k, x in v.items())
    return False


def _utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _jsonable(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


def _settle(fut: asyncio.Future, err: Optional[BaseException], value: Any) -> None:
    if fut.cancelled():
        return
    if err is not None:
        fut.set_exception(err)
    else:
        fut.set_result(value)


def _native_call(method: Any, *args: Any) -> asyncio.Future:
    """Starts a native ``*_async`` call and returns an asyncio future of its outcome: the store
    runs it on its own threads and settles the future through the loop, so the loop never
    blocks and no worker thread is borrowed."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    method(*args, functools.partial(loop.call_soon_threadsafe, _settle, fut))
    return fut


def _pushable(v: Any) -> bool:
    """Whether a filter value can be matched by the store (JSON equality agrees with Python's
    ``==``): no None (a missing key is None in Python), no floats (1 == 1.0)."""
    if isinstance(v, bool) or isinstance(v, (str, int)):
        return True
    if isinstance(v, list):
        return all(map(_pushable, v))
    if isinstance(v, dict):
        return all(isinstance(k, str) and _pushable(x) for k, x in v.items())
    return False


class CkptSaver(BaseCheckpointSaver[str]):
    """A LangGraph checkpoint saver on a ckpt store (sync and async)."""

    def __init__(self, store: Store, *, serde: Any = None) -> None:
        super().__init__(serde=serde)
        self.store = store
        self._ids: dict[tuple[str, str], int] = {}  # (execution, LangGraph id) -> version
        self._landed = threading.Condition()

    @classmethod
    def from_url(cls, url: str, *, key_env: Optional[str] = None, serde: Any = None) -> "CkptSaver":
        """Opens the store at ``url`` (every URL ``ckpt`` takes: ``sled://PATH``,
        ``sqlite://PATH``, ``postgres://...``, ``redis://...``, ``memory://``); ``key_env``
        names the environment variable holding the encryption key (as ``?key_env=`` does)."""
        if key_env:
            url += ("&" if "?" in url else "?") + "key_env=" + quote(key_env, safe="")
        return cls(Store.open(url), serde=serde)

    def close(self) -> None:
        """Flushes and closes the store (a sled store can then be opened again, by this
        process or another)."""
        self.store.close()

    def __enter__(self) -> "CkptSaver":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- values

    def _typed(self, value: Any) -> list:
        t, b = self.serde.dumps_typed(value)
        if t == "msgpack":
            return [t, _unpack(b)]
        return [t, b]

    def _untyped(self, tb: list) -> Any:
        t, payload = tb[0], tb[1]
        if t == "msgpack":
            payload = ormsgpack.packb(payload, option=_OPT)
        return self.serde.loads_typed((t, payload))

    # ---------------------------------------------------------------- lookups

    def _headers(self, ex: str, metadata: Optional[dict] = None, limit: Optional[int] = None) -> list[dict]:
        """Headers of ``ex``'s live checkpoints, newest first, whose metadata has ``metadata``."""
        return json.loads(self.store.history(ex, json.dumps(metadata) if metadata else None, None, limit))

    def _version_of(self, ex: str, cid: str) -> Optional[int]:
        v = self._ids.get((ex, cid))
        if v is not None:
            return v
        found = self._headers(ex, {ID: cid}, 1)
        if found:
            self._ids[(ex, cid)] = found[0]["version"]
            return found[0]["version"]
        return None

    async def _aheaders(self, ex: str, metadata: Optional[dict] = None, limit: Optional[int] = None) -> list[dict]:
        text = await _native_call(self.store.history_async, ex, json.dumps(metadata) if metadata else None, None, limit)
        return json.loads(text)

    async def _aversion_of(self, ex: str, cid: str) -> Optional[int]:
        v = self._ids.get((ex, cid))
        if v is not None:
            return v
        found = await self._aheaders(ex, {ID: cid}, 1)
        if found:
            self._ids[(ex, cid)] = found[0]["version"]
            return found[0]["version"]
        return None

    def _tuple(self, ex: str, version: int) -> CheckpointTuple:
        return self._tuple_from(self.store.checkpoint(ex, version))

    def _tuple_from(self, row: tuple) -> CheckpointTuple:
        """A checkpoint tuple from ``Store.checkpoint``'s row."""
        _node, ck_md, state_bytes, _parent, writes = row
        state = _unpack(state_bytes)
        thread_id, ns = state["thread_id"], state["checkpoint_ns"]
        ck_md = json.loads(ck_md)
        checkpoint = self._untyped(state["checkpoint"])
        checkpoint.setdefault("id", ck_md[ID])
        checkpoint["channel_values"] = {k: self._untyped(v) for k, v in state["values"].items()}
        if "metadata" in state:
            metadata = self._untyped(state["metadata"])
        else:
            metadata = {k: v for k, v in ck_md.items() if k not in (ID, PARENT)}
        parent = ck_md.get(PARENT)
        chosen: dict[tuple[str, int], tuple] = {}
        for task, channel, w_md, value, _seq in writes:
            m = json.loads(w_md)
            key = (task, m["idx"])
            if key[1] < 0 or key not in chosen:
                chosen[key] = (m.get("task_path", ""), task, m["idx"], channel, value)
        pending = [
            (task, channel, self._untyped(_unpack(value)))
            for _path, task, _idx, channel, value in sorted(chosen.values(), key=lambda w: writes_sort_key(w[0], w[1], w[2]))
        ]
        conf = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint["id"]}}
        parent_conf = (
            {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": parent}}
            if parent
            else None
        )
        return CheckpointTuple(conf, checkpoint, metadata, parent_conf, pending)

    def _executions(self, config: Optional[RunnableConfig]) -> list[str]:
        if config is None:
            return self.store.executions("lg:")
        c = config["configurable"]
        ns = c.get("checkpoint_ns")
        if ns is not None:
            return [execution_id(str(c["thread_id"]), ns)]
        return self.store.executions(_thread_prefix(str(c["thread_id"])))

    # ---------------------------------------------------------------- the saver's API

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        c = config["configurable"]
        thread_id, ns = str(c["thread_id"]), c.get("checkpoint_ns", "")
        ex = execution_id(thread_id, ns)
        parent_id = c.get("checkpoint_id")
        cp = checkpoint.copy()
        values = cp.pop("channel_values", {})
        # The id is in the ckpt metadata (lg:id); stored once, put back on read.
        cp.pop("id", None)
        versions = cp.get("channel_versions", {})
        md = get_checkpoint_metadata(config, metadata)
        state = {
            "checkpoint": self._typed(cp),
            "values": {k: self._typed(v) for k, v in values.items() if k in versions},
            "thread_id": thread_id,
            "checkpoint_ns": ns,
        }
        ck_md = {k: _jsonable(v) for k, v in md.items() if _json_safe(_jsonable(v))}
        if not (_json_safe(md, exact=True) and ID not in md and PARENT not in md):
            # The ckpt metadata cannot give it back exactly: LangGraph's own copy goes in the
            # state (otherwise the metadata is stored once, in the ckpt metadata).
            state["metadata"] = self._typed(md)
        ck_md[ID] = checkpoint["id"]
        ck_md[PARENT] = parent_id
        node = str(md.get("source") or "checkpoint")
        parent_version = self._version_of(ex, parent_id) if parent_id else None
        blob = ormsgpack.packb(state, option=_OPT)
        version = self.store.save(ex, node, json.dumps(ck_md), blob, parent_version)
        with self._landed:
            self._ids[(ex, checkpoint["id"])] = version
            self._landed.notify_all()
        return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint["id"]}}

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        c = config["configurable"]
        ex = execution_id(str(c["thread_id"]), c.get("checkpoint_ns", ""))
        cid = c["checkpoint_id"]
        version = self._version_of(ex, cid)
        if version is None:
            # LangGraph runs a checkpoint's put in the background and may hand us its writes
            # first; ckpt attaches writes to a stored checkpoint only.
            with self._landed:
                self._landed.wait_for(lambda: self._version_of(ex, cid) is not None, timeout=WAIT_FOR_PUT_S)
            version = self._version_of(ex, cid)
            if version is None:
                raise NotFoundError(f"put_writes: no checkpoint {cid} in thread {c['thread_id']!r}")
        rows = [
            (
                task_id,
                channel,
                json.dumps({"idx": WRITES_IDX_MAP.get(channel, i), "task_path": task_path}),
                ormsgpack.packb(self._typed(value), option=_OPT),
            )
            for i, (channel, value) in enumerate(writes)
        ]
        self.store.put_writes(ex, version, rows)

    def get_tuple(self, config: RunnableConfig) -> Optional[CheckpointTuple]:
        c = config["configurable"]
        ex = execution_id(str(c["thread_id"]), c.get("checkpoint_ns", ""))
        cid = get_checkpoint_id(config)
        if cid:
            version = self._version_of(ex, cid)
            if version is None:
                return None
            try:
                return self._tuple(ex, version)
            except NotFoundError:
                self._ids.pop((ex, cid), None)
                return None
        latest = self._headers(ex, limit=1)
        return self._tuple(ex, latest[0]["version"]) if latest else None

    def list(
        self,
        config: Optional[RunnableConfig],
        *,
        filter: Optional[dict[str, Any]] = None,
        before: Optional[RunnableConfig] = None,
        limit: Optional[int] = None,
    ) -> Iterator[CheckpointTuple]:
        cid = get_checkpoint_id(config) if config else None
        before_id = get_checkpoint_id(before) if before else None
        pushed = {k: v for k, v in (filter or {}).items() if _pushable(v)}
        if cid:
            pushed[ID] = cid
        streams = []
        for ex in self._executions(config):
            headers = self._headers(ex, pushed)
            streams.append(
                [
                    (h["metadata"][ID], ex, h["version"])
                    for h in headers
                    if before_id is None or h["metadata"][ID] < before_id
                ]
            )
        n = 0
        for lg_id, ex, version in heapq.merge(*streams, key=lambda t: t[0], reverse=True):
            if limit is not None and n >= limit:
                return
            self._ids[(ex, lg_id)] = version
            t = self._tuple(ex, version)
            if filter and not all(t.metadata.get(k) == v for k, v in filter.items()):
                continue
            n += 1
            yield t

    def delete_thread(self, thread_id: str) -> None:
        prefix = _thread_prefix(str(thread_id))
        for ex in self.store.executions(prefix):
            self.store.clear(ex)
        self._ids = {k: v for k, v in self._ids.items() if not k[0].startswith(prefix)}

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copies every namespace of a thread to another, keeping LangGraph ids, parents,
        metadata, order and writes (unchanged values are shared, not copied, by ckpt)."""
        target = str(target_thread_id)
        for ex in self.store.executions(_thread_prefix(str(source_thread_id))):
            for h in reversed(self._headers(ex)):
                node, ck_md, state_bytes, _ = self.store.at_version(ex, h["version"])
                state = _unpack(state_bytes)
                state["thread_id"] = target
                tex = execution_id(target, state["checkpoint_ns"])
                md = json.loads(ck_md)
                pid = md.get(PARENT)
                pv = self._version_of(tex, pid) if pid else None
                v = self.store.save(tex, node, ck_md, ormsgpack.packb(state, option=_OPT), pv)
                self._ids[(tex, md[ID])] = v
                ws = self.store.writes(ex, h["version"])
                if ws:
                    self.store.put_writes(tex, v, [(t, ch, m, bytes(val)) for t, ch, m, val, _seq in ws])

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``keep_latest``: keep each namespace's latest checkpoint (and its writes);
        ``delete``: remove the threads."""
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"unknown prune strategy {strategy!r}: use 'keep_latest' or 'delete'")
        for tid in thread_ids:
            for ex in self.store.executions(_thread_prefix(str(tid))):
                if strategy == "delete":
                    self.store.clear(ex)
                    continue
                for h in self._headers(ex)[1:]:
                    self.store.delete(ex, h["version"])

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Deletes the checkpoints whose metadata ``run_id`` is one of ``run_ids``, in every
        thread."""
        for ex in self.store.executions("lg:"):
            for run in run_ids:
                for h in self._headers(ex, {"run_id": run}):
                    self.store.delete(ex, h["version"])

    def get_next_version(self, current: Optional[str], channel: None = None) -> str:
        if current is None:
            cur = 0
        elif isinstance(current, int):
            cur = current
        else:
            cur = int(str(current).split(".")[0])
        return f"{cur + 1:032}.{random.random():016}"

    # ---------------------------------------------------------------- async faces
    # aget_tuple awaits native async calls; the others run the blocking call in a worker
    # thread (the native calls release the GIL). Either way the event loop never waits on the
    # store.

    async def aget_tuple(self, config: RunnableConfig) -> Optional[CheckpointTuple]:
        # Native async calls (no worker thread): this is on the path of every graph step.
        c = config["configurable"]
        ex = execution_id(str(c["thread_id"]), c.get("checkpoint_ns", ""))
        cid = get_checkpoint_id(config)
        if cid:
            version = await self._aversion_of(ex, cid)
            if version is None:
                return None
            try:
                row = await _native_call(self.store.checkpoint_async, ex, version)
            except NotFoundError:
                self._ids.pop((ex, cid), None)
                return None
            return self._tuple_from(row)
        latest = await self._aheaders(ex, limit=1)
        if not latest:
            return None
        return self._tuple_from(await _native_call(self.store.checkpoint_async, ex, latest[0]["version"]))

    async def alist(
        self,
        config: Optional[RunnableConfig],
        *,
        filter: Optional[dict[str, Any]] = None,
        before: Optional[RunnableConfig] = None,
        limit: Optional[int] = None,
    ) -> AsyncIterator[CheckpointTuple]:
        found = await asyncio.to_thread(lambda: list(self.list(config, filter=filter, before=before, limit=limit)))
        for t in found:
            yield t

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await asyncio.to_thread(self.delete_thread, thread_id)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await asyncio.to_thread(self.copy_thread, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await asyncio.to_thread(self.prune, thread_ids, strategy=strategy)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await asyncio.to_thread(self.delete_for_runs, run_ids)
