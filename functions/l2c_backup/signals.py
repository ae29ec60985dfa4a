"""SIGTERM and SIGINT stop a run the way an error does, so its clean-up runs.

Python's default for SIGTERM is to die on the spot: a restore's `--create-db` database
would stay, a backup's multipart upload would stay open. Here both signals raise
`Stopped` (a BaseException, like KeyboardInterrupt: `except Exception` does not swallow
it) in the main thread, so the `finally` and `except BaseException` blocks that abort an
upload, kill psql or drop a new database run before the process ends. SIGKILL cannot be
caught: what it leaves is recognisable and cleaned by the next run (see each operation).
"""
import contextlib
import signal
import threading

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
