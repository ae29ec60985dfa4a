"""What a killed backup leaves behind, removed once no run can still own it.

SIGTERM and SIGINT undo a run's own writes (signals.py), but SIGKILL (FC's timeout, the
OOM killer, `kill -9`) cannot be caught: it leaves an open multipart upload on OSS (its
parts billed, invisible in listings) or a `.partial-*` file in a directory target.
`clean` removes those of ours under the backup prefix once they are older than any run
can last; every backup calls it first, and prune does too.

The safe age. A multipart upload shows only its key and when it started, not whose it
is, and the runs sharing a target need not share a time budget (a CLI cron job beside
the FC functions, or with none at all). So the age is the longest a run can last
anywhere: FC stops any invocation after 24 h (86,400 s, its limit for timer and async
work), plus two hours for retries, clock differences and the clean-up after a stop; or
the run's own budget plus those hours when it is longer. A CLI run without
BACKUP_TIMEOUT_SECONDS that goes past 26 h could lose its upload to another run; set a
budget where that can happen. Prune waits as long for a manifest (the same bound).
OSS's lifecycle rule (`setup-oss`: incomplete uploads aborted after 7 days) is the
backstop where listing uploads is not allowed (oss:ListMultipartUploads).
"""
import logging
import time
from datetime import datetime, timezone

from . import names

log = logging.getLogger(__name__)

FC_MAX_SECONDS = 86_400  # FC's longest invocation (timer and async work)
MARGIN_SECONDS = 7_200  # retries, clock differences between hosts and OSS, clean-up after a stop


def safe_age(timeout_seconds=0):
    """Seconds after which an unfinished write cannot belong to a run still going."""
    return max(timeout_seconds or 0, FC_MAX_SECONDS) + MARGIN_SECONDS


def clean(storage, older_than_seconds, now=None):
    """Removes our unfinished writes under the backup prefix older than
    `older_than_seconds` (multipart uploads of backup keys on OSS, `.partial-*` files in
    a directory), logging a line for each. Returns one description per removal. Never
    raises for a storage failure: a backup must not fail for want of tidying (the
    failure is logged with what to do)."""
    now = time.time() if now is None else now
    removed = []
    try:
        found = list(storage.unfinished_writes(storage.prefix))
    except Exception as exc:  # StorageFailed (e.g. no oss:ListMultipartUploads), OSError
        log.warning("could not look for unfinished uploads under %s (%s); they are left to "
                    "the lifecycle rule: grant oss:ListMultipartUploads to clean them here",
                    storage.url, _reason(exc))
        return removed
    for item in found:
        target = item.extra.get("for_key", item.key)
        age = now - item.last_modified
        if not _ours(storage.prefix, target) or age < older_than_seconds:
            continue
        what = _describe(storage, item, age)
        try:
            storage.discard_unfinished(item)
        except Exception as exc:
            log.warning("could not remove %s: %s", what, _reason(exc))
            continue
        log.info("removed %s: a run that was killed left it", what)
        removed.append(what)
    return removed


def _ours(prefix, key):
    """A backup key, plain or encrypted (or a sidecar written beside one: manifest, claim,
    tags): the key itself, or one that starts with a backup key and a dot."""
    cuts = [len(key)] + [at for at, char in enumerate(key) if char == "."]
    return any(names.parse_backup_key(prefix, key[:at]) or names.is_globals_key(prefix, key[:at])
               for at in cuts)


def _describe(storage, item, age):
    started = datetime.fromtimestamp(item.last_modified, timezone.utc).isoformat(timespec="seconds")
    upload_id = item.extra.get("upload_id")
    if upload_id:
        return (f"the unfinished multipart upload {upload_id} of {item.key} in {storage.url} "
                f"(aborted; started {started}, {age / 3600:.1f} h ago)")
    return (f"the partial file {item.key} in {storage.url} "
            f"(last written {started}, {age / 3600:.1f} h ago)")


def _reason(exc):
    return str(exc).split("\n", 1)[0] or type(exc).__name__
