"""Type hints of the native module: ckpt's Store for Python (see src/lib.rs)."""

from typing import Any, Callable, Optional

#: The cargo profile that built this module: "release" or "debug".
BUILD_PROFILE: str

class CkptError(Exception):
    """An error of the ckpt store (its message says what failed and where)."""

class NotFoundError(CkptError):
    """The checkpoint or execution does not exist (or was deleted or cleared)."""

class Store:
    """A ckpt store, opened from any URL ``ckpt`` takes."""

    @staticmethod
    def open(url: str) -> "Store":
        """Opens (creating when missing) the store at ``url``."""
    def save(
        self,
        execution: str,
        node: str,
        metadata_json: str,
        state: bytes,
        parent_version: Optional[int] = None,
    ) -> int:
        """Saves a checkpoint whose state is one MessagePack value; returns its version."""
    def at_version(self, execution: str, version: int) -> tuple[str, str, bytes, Optional[int]]:
        """(node, metadata JSON, state MessagePack, parent version) of a live checkpoint."""
    def checkpoint(
        self, execution: str, version: int
    ) -> tuple[str, str, bytes, Optional[int], list[tuple[str, str, str, bytes, int]]]:
        """A live checkpoint and its writes in one call: (node, metadata JSON, state
        MessagePack, parent version, writes as ``writes`` gives them)."""
    def history(
        self,
        execution: str,
        metadata_json: Optional[str] = None,
        before: Optional[int] = None,
        limit: Optional[int] = None,
    ) -> str:
        """Headers newest first, as JSON: [{version, node, metadata, parent, ts}]."""
    def checkpoint_async(self, execution: str, version: int, done: Callable[[Optional[BaseException], Any], None]) -> None:
        """``checkpoint`` without waiting: returns at once and calls ``done(error, row)`` from
        the store's thread when the read ends."""
    def history_async(
        self,
        execution: str,
        metadata_json: Optional[str],
        before: Optional[int],
        limit: Optional[int],
        done: Callable[[Optional[BaseException], Any], None],
    ) -> None:
        """``history`` without waiting: calls ``done(error, json_text)`` when it ends."""
    def put_writes(self, execution: str, version: int, writes: list[tuple[str, str, str, bytes]]) -> None:
        """Appends (task, channel, metadata JSON, value MessagePack) writes to a live checkpoint."""
    def writes(self, execution: str, version: int) -> list[tuple[str, str, str, bytes, int]]:
        """(task, channel, metadata JSON, value MessagePack, seq) of a live checkpoint, oldest first."""
    def delete(self, execution: str, version: int) -> None:
        """Deletes a live checkpoint (and its writes)."""
    def clear(self, execution: str) -> None:
        """Deletes every checkpoint of an execution."""
    def executions(self, prefix: Optional[str] = None) -> list[str]:
        """Executions with live checkpoints (starting with ``prefix``), sorted."""
    def flush(self) -> None:
        """Waits until everything saved is durable and background work is done."""
    def close(self) -> None:
        """Flushes and closes the store; later calls raise CkptError."""
