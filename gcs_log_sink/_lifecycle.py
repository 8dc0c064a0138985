"""Process-wide hooks of every GCSHandler: at exit, in multiprocessing children, after fork.

Who runs this code: the interpreter's atexit machinery (:func:`drain_at_exit`),
``multiprocessing``'s exit finalizers in its fork children, which leave through
``os._exit`` with no atexit (:func:`close_all`), and ``os.fork()`` in the child
(:func:`reset_in_child`). One budget for all handlers: a process with ten handlers and GCS
away still exits within the largest ``close_timeout``, not ten of them.
"""

from __future__ import annotations

import atexit
import math
import os
import signal
import threading
import time
import weakref
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .handler import GCSHandler

__all__ = [
    "bounded",
    "close_all",
    "drain_at_exit",
    "forget",
    "install_process_hooks",
    "register",
    "reset_in_child",
]

_live_handlers: weakref.WeakSet[GCSHandler] = weakref.WeakSet()


def register(handler: GCSHandler) -> None:
    _live_handlers.add(handler)


def forget(handler: GCSHandler) -> None:
    _live_handlers.discard(handler)


_hooks_installed = False
_hooks_lock = threading.Lock()
# Set at exit: no flush() or close() from then on waits past it, however many handlers.
_exit_deadline: float | None = None


def bounded(timeout: float) -> float:
    """``timeout``, cut to what is left of the exit budget once the process is exiting."""
    if _exit_deadline is None:
        return timeout
    return max(0.0, min(timeout, _exit_deadline - time.monotonic()))


def _start_exit_budget() -> list[GCSHandler]:
    """The live handlers; from now on no wait goes past the largest close_timeout."""
    global _exit_deadline
    handlers = list(_live_handlers)
    budget = max((handler._close_timeout for handler in handlers), default=0.0)
    _exit_deadline = time.monotonic() + budget
    return handlers


def drain_at_exit() -> None:
    """atexit: drain every live handler within the largest close_timeout, in total.

    Handlers stay open: atexit hooks registered before this one run after it and may still
    log; ``logging.shutdown`` (registered at ``import logging``, so run last) closes the
    handlers and ships those records within what is left of the budget. A handler that
    could not drain in time (GCS away) gives up now and says what it could not ship.
    """
    handlers = _start_exit_budget()
    drains = [(handler, handler._begin_drain()) for handler in handlers]
    for handler, done in drains:
        if done is not None and not done.wait(bounded(math.inf)):
            handler._give_up()
            handler.close()


def close_all() -> None:
    """Close every live handler within the largest close_timeout, in total, not each."""
    handlers = _start_exit_budget()
    deadlines = [handler._begin_close() for handler in handlers]
    deadline = max(deadlines, default=time.monotonic())
    for handler in handlers:
        handler._finish_close(deadline)


def reset_in_child() -> None:
    global _exit_deadline
    _exit_deadline = None
    for handler in list(_live_handlers):
        handler._client.after_fork()
        if not handler._closed:
            handler._start_fresh()


class _ForkToken:
    """What multiprocessing's after-fork registry holds on to (it keeps weak references)."""


_FORK_TOKEN = _ForkToken()


def _arm_multiprocessing_child(_token: _ForkToken) -> None:
    """In a multiprocessing child (fork start method), which leaves through ``os._exit``
    with no atexit: close the handlers from multiprocessing's own exit finalizers, last.

    ``Pool.terminate()`` (which ``with Pool() as pool:`` calls on exit) ends workers with
    SIGTERM, whose default action runs no finalizer. Where SIGTERM still has that default,
    a worker that holds unshipped records leaves through ``SystemExit`` instead, so the
    finalizer ships them (within ``close_timeout``); one with nothing to ship dies of the
    signal at once, as before.
    """
    import multiprocessing.util

    multiprocessing.util.Finalize(None, close_all, exitpriority=-100)
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    ):
        signal.signal(signal.SIGTERM, _leave_through_finalizers)


def _leave_through_finalizers(signum: int, frame: FrameType | None) -> None:
    import multiprocessing.util

    if _exit_deadline is not None or getattr(multiprocessing.util, "_exiting", False):
        # Already leaving through the finalizers, which ship within close_timeout: a Pool
        # worker gets its sentinel, starts to exit, and terminate()'s SIGTERM lands in the
        # middle of it. Raising there would skip the finalizers.
        return
    if any(handler._queue.unsettled for handler in list(_live_handlers)):
        raise SystemExit(128 + signum)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def install_process_hooks() -> None:
    global _hooks_installed
    with _hooks_lock:
        if _hooks_installed:
            return
        _hooks_installed = True
        import multiprocessing.util

        # Registered after `import logging`, so it runs before logging.shutdown.
        atexit.register(drain_at_exit)
        os.register_at_fork(after_in_child=reset_in_child)
        multiprocessing.util.register_after_fork(_FORK_TOKEN, _arm_multiprocessing_child)
