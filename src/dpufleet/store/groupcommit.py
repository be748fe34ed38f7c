"""Group commit for writes that come from many threads at once (controller workers).

While one batch is being written, the writes that arrive meanwhile gather for the next, and are
written in one transaction: one BEGIN, one COMMIT and one fsync for the batch instead of one
each. No one waits for a timer: an idle store writes a lone write at once. Each caller returns
only once its own write is committed, with its own result: one that fails (a conflict, a
duplicate) fails alone. The API server batches its requests' creates the same way
(server/app.py, CreateBatcher), in its event loop rather than across threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Slot(Generic[T, R]):
    __slots__ = ("done", "item", "result")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = threading.Event()
        self.result: R | BaseException | None = None


class GroupCommit(Generic[T, R]):
    """`write_many(items)` writes a batch in one transaction and returns one result (or the
    exception for that item) per item, in order."""

    MAX_BATCH = 256

    def __init__(self, write_many: Callable[[list[T]], Sequence[R | BaseException]]) -> None:
        self._write_many = write_many
        self._lock = threading.Lock()
        self._pending: list[_Slot[T, R]] = []
        self._writing = False

    def submit(self, item: T) -> R:
        slot: _Slot[T, R] = _Slot(item)
        with self._lock:
            self._pending.append(slot)
            lead = not self._writing
            self._writing = True
        if lead:
            self._drain()  # this thread writes until nothing is pending, its own item in the first batch
        else:
            slot.done.wait()
        if isinstance(slot.result, BaseException):
            raise slot.result
        return slot.result  # type: ignore[return-value]

    def _drain(self) -> None:
        while True:
            with self._lock:
                batch, self._pending = self._pending[: self.MAX_BATCH], self._pending[self.MAX_BATCH :]
                if not batch:
                    self._writing = False
                    return
            try:
                results = list(self._write_many([slot.item for slot in batch]))
            except BaseException as exc:  # the store failed as a whole: every waiter hears of it
                results = [exc] * len(batch)
            for slot, result in zip(batch, results, strict=True):
                slot.result = result
                slot.done.set()
