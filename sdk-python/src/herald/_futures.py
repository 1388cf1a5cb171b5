"""Cheap ``concurrent.futures.Future`` objects for the blocking publisher.

A plain ``Future()`` makes its own ``threading.Condition`` (and ``RLock``), which
costs more than everything else the publisher does for a message. The futures
made here are ordinary ``concurrent.futures.Future`` objects (every method, and
``concurrent.futures.wait`` / ``as_completed``, work on them) that share a few
conditions per publisher. Sharing it only changes who gets woken: a
``notify_all`` for one future also wakes threads waiting on another, so
:meth:`SharedConditionFuture.result` and :meth:`SharedConditionFuture.exception`
wait in a loop until their own future is done.

The attributes a ``Future`` sets up in ``__init__`` are checked once at import
time; should a Python version lay them out differently, :func:`factory` hands out
plain ``Future()`` objects instead (slower, same behaviour).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_EXPECTED_FIELDS = {"_condition", "_state", "_result", "_exception", "_waiters", "_done_callbacks"}
_PENDING: Any = getattr(concurrent.futures.Future(), "_state", None)
_STRIPES = 16
_DONE = frozenset({"CANCELLED", "CANCELLED_AND_NOTIFIED", "FINISHED"})


def _layout_known() -> bool:
    fields = set(vars(concurrent.futures.Future()))
    return fields == _EXPECTED_FIELDS and _PENDING == "PENDING"


class SharedConditionFuture(concurrent.futures.Future[T]):
    """A ``Future`` that uses a condition shared with other futures (see above)."""

    def __init__(self, condition: threading.Condition) -> None:  # no super().__init__: cheap
        self._condition = condition
        self._state = _PENDING
        self._result = None
        self._exception = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Callable[[concurrent.futures.Future[T]], object]] = []

    def _wait_done(self, timeout: float | None) -> None:
        if self._state in _DONE:  # a plain read: once done, a future stays done
            return
        with self._condition:
            if timeout is None:
                while not self.done():
                    self._condition.wait()
                return
            end = time.monotonic() + timeout
            while not self.done():
                left = end - time.monotonic()
                if left <= 0:
                    return
                self._condition.wait(left)

    def result(self, timeout: float | None = None) -> T:
        self._wait_done(timeout)
        return super().result(0)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait_done(timeout)
        return super().exception(0)


def factory() -> Callable[[], concurrent.futures.Future[Any]]:
    """A maker of futures that share one condition (or of plain futures, see above)."""
    if not _layout_known():
        return concurrent.futures.Future
    # A few conditions taken in turn, so that the thread settling futures and a
    # thread adding callbacks to (or waiting for) later ones seldom take the same lock.
    conditions = [threading.Condition() for _ in range(_STRIPES)]
    turn = itertools.count()
    return lambda: SharedConditionFuture(conditions[next(turn) % _STRIPES])
