"""SIGTERM and SIGINT stop a run the way an error does, so its clean-up runs.

Python's default for SIGTERM is to die on the spot: a restore's `--create-db` database
would stay, a backup's multipart upload would stay open. Here both signals raise
`Stopped` (a BaseException, like KeyboardInterrupt: `except Exception` does not swallow
it) in the main thread, so the `finally` and `except BaseException` blocks that abort an
upload, kill psql or drop a new database run before the process ends. SIGKILL cannot be
caught: what it leaves is recognisable and cleaned by the next run (see each operation).

Threads that work beside the main thread (fanout.py's backups) are stopped by
stop_thread(): Stopped is raised in them, and what each one waits for in C is ended, since
a raised exception is seen only when the thread runs Python again, and a socket read
waiting for a count behind a table lock, or a pipe read from a pg_dump waiting on one,
returns only when the lock holder lets go (hours, maybe). Such a wait registers how to
end it with wake_on_stop().
"""
import contextlib
import ctypes
import logging
import signal
import threading

log = logging.getLogger(__name__)

HANDLED = (signal.SIGTERM, signal.SIGINT)


class Stopped(BaseException):
    """The process was asked to stop (SIGTERM / SIGINT)."""

    def __init__(self, signum):
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(f"stopped by {self.name}")

    @property
    def exit_code(self):
        return 128 + self.signum  # what a shell reports for a process killed by it


def _raise(signum, _frame):
    # Once is enough: a second signal during clean-up must not cut the clean-up short.
    for handled in HANDLED:
        signal.signal(handled, signal.SIG_IGN)
    raise Stopped(signum)


@contextlib.contextmanager
def stop_on_signals():
    """Within the block, SIGTERM and SIGINT raise Stopped. A no-op off the main thread
    (signal handlers can only be set there; FC runs handlers wherever it likes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in HANDLED}
    for handled in HANDLED:
        signal.signal(handled, _raise)
    try:
        yield
    finally:
        for handled, handler in previous.items():
            signal.signal(handled, handler)


# -- stopping other threads -------------------------------------------------------------------
_wakers = {}  # thread ident -> [callable]: what ends that thread's current wait
_wakers_lock = threading.Lock()


@contextlib.contextmanager
def wake_on_stop(wake):
    """Within the block, stop_thread() on this thread also calls `wake()`, from the
    stopping thread, to end what this thread may be waiting for in C (cancel its query,
    stop its process). `wake` must be quick, never raise, and may find nothing to end."""
    ident = threading.get_ident()
    with _wakers_lock:
        _wakers.setdefault(ident, []).append(wake)
    try:
        yield
    finally:
        with _wakers_lock:
            wakers = _wakers.get(ident, [])
            if wake in wakers:
                wakers.remove(wake)
            if not wakers:
                _wakers.pop(ident, None)


def stop_thread(ident, stop):
    """Raises a Stopped like `stop` in the thread `ident`, then ends its wait: the
    exception is pending when the wait returns, so it is what the thread raises (not
    the cancelled query's error), and each `finally` of that thread undoes its writes."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident),
                                               ctypes.py_object(_stopped_like(stop)))
    # under the lock: a thread leaving its wake_on_stop block (to reap its pg_dump, to
    # close its connection) waits until what the wakers act on is left alone
    with _wakers_lock:
        for wake in _wakers.pop(ident, []):  # a thread is stopped once
            try:
                wake()
            except Exception as exc:
                log.warning("could not interrupt a stopped thread's wait (%s)", exc)


def forget_stop(ident):
    """Drops a stop raised in the thread `ident` that it has not seen yet: called by
    the thread itself once its work is over, so the stop cannot fire later in code that
    is not ready for it (a pool's own loop)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), None)


def _stopped_like(stop):
    """A Stopped class carrying this stop's signal (an exception raised into another
    thread is given as a class and made without arguments)."""
    class StoppedToo(Stopped):
        def __init__(self):
            super().__init__(stop.signum)
    return StoppedToo
