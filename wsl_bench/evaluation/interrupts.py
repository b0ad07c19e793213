"""Telling a user's Ctrl-C from a method that raises ``KeyboardInterrupt`` or calls ``sys.exit()``.

A method's ``predict`` is plugin code: whatever it raises is that method's failure (failed records
with the reason), never the end of the run — ``sys.exit(0)`` inside a plugin used to make the whole
run exit 0 with later methods never run and no report. Yet a real Ctrl-C must still stop the run.
Both arrive as ``BaseException``; :func:`watch_sigint` remembers whether the ``KeyboardInterrupt``
came from a SIGINT delivered while it was watching, and :func:`is_method_failure` says which it was.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_received = threading.Event()
"""Set when a SIGINT arrived while :func:`watch_sigint` was active."""


@contextmanager
def watch_sigint() -> Iterator[None]:
    """While active (main thread only; elsewhere it does nothing), a SIGINT is remembered and then
    handled as before: the default handler raises ``KeyboardInterrupt``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def remember(signum: int, frame: Any) -> None:
        _received.set()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.default_int_handler(signum, frame)
        # SIG_IGN: ignored, as before

    _received.clear()
    signal.signal(signal.SIGINT, remember)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def is_method_failure(exc: BaseException) -> bool:
    """Whether ``exc``, raised by a method's code, fails that method's images rather than the run:
    any ``Exception``, a ``SystemExit`` (a plugin calling ``sys.exit``), and a ``KeyboardInterrupt``
    that no SIGINT caused (a plugin raising it). A Ctrl-C, ``GeneratorExit`` and other interpreter
    signals end the run."""
    if isinstance(exc, KeyboardInterrupt):
        return not _received.is_set()
    return isinstance(exc, (Exception, SystemExit))
