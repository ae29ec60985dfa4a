"""Work that must not hold up what it serves: a history record, the status page.

An OSS that is failing retries for about a minute (retry.py), and an FC function is killed
at its timeout; a side job that waited that long would turn a backup's clean failure, or
the watchdog's clean verdict, into a killed invocation. `within` runs the job in a daemon
thread with the caller's log keys and waits a bounded time; a job still running then
finishes (or fails) on its own while the caller goes on.
"""
import contextvars
import threading
from dataclasses import dataclass


@dataclass
class Outcome:
    done: bool = False  # finished within the time given
    result: object = None
    error: Exception | None = None


def within(work, seconds, name="l2c-bounded"):
    """Runs work() for at most `seconds` (None: as long as it takes). Never raises: the
    Outcome holds work's result or the exception it raised."""
    outcome, context = Outcome(), contextvars.copy_context()  # the run's log keys

    def run():
        try:
            outcome.result = context.run(work)
        except Exception as exc:
            outcome.error = exc
        outcome.done = True

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join(seconds)
    return outcome
