"""How ``bench run`` is stopped: Ctrl-C (SIGINT) and SIGTERM both end it cleanly.

A process inherits the signals its parent ignores. A background job of a non-interactive shell
(``bench run ... &`` in a script, ``nohup``-style launchers, some CI and test runners) starts with
SIGINT ignored, and Python then installs no handler of its own: ``kill -INT`` or Ctrl-C reached
such a run and it trained on to the end. ``bench run`` therefore installs its handlers itself,
whatever it inherited. SIGTERM (what ``kill``, ``timeout``, container runtimes and schedulers send)
takes the same path as Ctrl-C: the finished cells are saved and the resume command printed.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would raise :class:`KeyboardInterrupt`, so that one path handles both."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


@contextmanager
def stop_signals() -> Iterator[None]:
    """While a run trains: SIGINT raises ``KeyboardInterrupt`` and SIGTERM raises :class:`Terminated`,
    even where the process started with either ignored; the previous handlers come back after. Outside
    the main thread (where Python takes no handlers) nothing changes."""
    handlers = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: _raise_terminated}
    try:
        previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    except ValueError:  # not the main thread
        previous = {}
    try:
        yield
    finally:
        for signum, handler in previous.items():  # None: a handler set outside Python, not restorable from here
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def exit_status(exc: KeyboardInterrupt) -> int:
    """The shell's convention, 128 + the signal's number: 130 after Ctrl-C, 143 after SIGTERM."""
    return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
