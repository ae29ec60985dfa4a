"""Backups in OSS's cold storage classes: find them, have OSS restore them, wait or say so.

The lifecycle rule `setup-oss` writes moves everything under the backup prefix to Archive
after 90 days (PLAN §4.3): manual backups, kept by count, and old weekly ones end up
there, and so do their manifests and `.verify.json` sidecars, since the rule covers the
whole prefix and OSS archives small objects too. An Archive, Cold Archive or Deep Cold
Archive object cannot be read (GET answers 403 InvalidObjectState) until a RestoreObject
completes; then a readable copy exists for the days asked for, and the object stays in
its class. Standard and IA objects, and every file in a directory target, read at once.

`ensure_readable` is what restore, verify, drill and mirror call before reading: it asks
OSS to restore what needs it (one request per object, all at once, so several objects
take the time of one), then waits, polling HEAD, until each is readable, bounded by a
timeout; or, with wait=False, raises ArchiveNotReadable at once, saying that the restore
was requested, how long OSS takes and what to run again. Asking twice is harmless: OSS
answers 409 RestoreAlreadyInProgress while a restore runs, and that counts as asked.

How long OSS takes (the "Restore objects" page of the OSS documentation; it varies):
Archive about 1 minute; Cold Archive 1 hour (Expedited), 2-5 hours (Standard, what is
asked for here, OSS's default) or 5-12 hours (Bulk); Deep Cold Archive 12 hours
(Expedited) or 48 hours (Standard). Restoring costs a retrieval fee per GB.
"""
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from .errors import ArchiveNotReadable

log = logging.getLogger(__name__)

FROZEN_CLASSES = ("Archive", "ColdArchive", "DeepColdArchive")
RESTORE_TIMES = {
    "Archive": "about 1 minute",
    "ColdArchive": "2 to 5 hours at the Standard priority asked for (1 hour Expedited, "
                   "5 to 12 hours Bulk)",
    "DeepColdArchive": "about 48 hours at the Standard priority asked for (12 hours Expedited)",
}
# How long ensure_readable waits by default: well past what OSS documents, so that only
# a restore that is really stuck ends the wait (Archive: the 2 h RTO of the PLAN).
WAIT_SECONDS = {"Archive": 2 * 3600, "ColdArchive": 6 * 3600, "DeepColdArchive": 50 * 3600}
# Days the restored copy stays readable: long enough to come back the next morning
# after a --no-wait-archive run (OSS allows 1-7 for Archive, 1-365 for the colder ones).
RESTORE_DAYS = 2
FIRST_POLL_SECONDS, MAX_POLL_SECONDS = 1.0, 30.0
NO_WAIT_FLAG = "--no-wait-archive"


@dataclass
class ColdObject:
    """An object in a frozen storage class. `restore` is "" (frozen, nothing asked),
    "ongoing" (OSS is restoring it) or "restored" (readable until `expiry`)."""
    key: str
    storage_class: str
    restore: str = ""
    expiry: str = ""

    @property
    def readable(self):
        return self.restore == "restored"

    def describe(self):
        if self.restore == "restored":
            return f"{self.storage_class}, restored" + (f" until {self.expiry}" if self.expiry else "")
        if self.restore == "ongoing":
            return f"{self.storage_class}, being restored (OSS takes {restore_time(self.storage_class)})"
        return f"{self.storage_class}, not restored"


def restore_time(storage_class):
    """How long OSS documents a restore of that class to take, in words."""
    return RESTORE_TIMES.get(storage_class, "an unknown time")


def parse_restore(header):
    """("ongoing" | "restored" | "", expiry) from x-oss-restore / a listing's RestoreInfo:
    `ongoing-request="true"`, or `ongoing-request="false", expiry-date="<date>"`."""
    text = (header or "").replace(" ", "")
    if 'ongoing-request="true"' in text:
        return "ongoing", ""
    if 'ongoing-request="false"' in text:
        expiry = (header or "").partition('expiry-date="')[2].rstrip('"').strip()
        return "restored", expiry
    return "", ""


def cold(info):
    """The ColdObject for a StoredObject (from head or list) in a frozen class, else None
    (Standard, IA, a directory's file, or nothing at all)."""
    if info is None or getattr(info, "storage_class", "") not in FROZEN_CLASSES:
        return None
    restore, expiry = parse_restore(getattr(info, "restore", ""))
    return ColdObject(info.key, info.storage_class, restore, expiry)


def needing_restore(objects):
    """{key: ColdObject} of the listed objects (StoredObjects) that cannot be read now:
    in a frozen class and not restored (nothing asked, or still restoring). For status."""
    found = {}
    for info in objects:
        state = cold(info)
        if state is not None and not state.readable:
            found[state.key] = state
    return found


def ensure_readable(storage, keys, wait=True, timeout=None, command="this command"):
    """Makes sure every one of `keys` (one key or several) can be read now, asking OSS to
    restore those in a frozen class. Keys that do not exist, and storage without storage
    classes (a directory), are left alone: the read that follows reports them.

    wait=True: waits, polling HEAD, until each is restored, at most `timeout` seconds in
    all (default: WAIT_SECONDS of the coldest class among them); ArchiveNotReadable when
    the time runs out. wait=False: ArchiveNotReadable at once when any was not readable
    (its restore requested), naming them, how long OSS takes and `command` to run again.
    Returns the ColdObjects found (also those already restored)."""
    keys = [keys] if isinstance(keys, str) else list(dict.fromkeys(keys))
    if not hasattr(storage, "restore_object"):
        return []  # a directory: nothing is ever frozen
    found = [c for c in (cold(storage.head(key)) for key in keys) if c is not None]
    pending = [c for c in found if not c.readable]
    if not pending:
        return found
    for state in pending:
        if state.restore != "ongoing":
            answer = storage.restore_object(state.key, days=RESTORE_DAYS)
            state.restore = "restored" if answer in ("restored", "not needed") else "ongoing"
            log.warning("%s is in OSS %s storage: restore requested (OSS takes %s; the copy "
                        "stays readable %d days)", state.key, state.storage_class,
                        restore_time(state.storage_class), RESTORE_DAYS)
        else:
            log.warning("%s is in OSS %s storage and already being restored (OSS takes %s)",
                        state.key, state.storage_class, restore_time(state.storage_class))
    pending = [c for c in pending if not c.readable]
    if not pending:
        return found
    slowest = max((c.storage_class for c in pending), key=FROZEN_CLASSES.index)
    if not wait:
        raise _not_readable(pending, slowest, command, waited=None)
    limit = timeout if timeout is not None else WAIT_SECONDS[slowest]
    log.warning("waiting up to %s for OSS to restore %d object(s) (%s)", _duration(limit),
                len(pending), ", ".join(c.key for c in pending))
    started, poll = time.monotonic(), FIRST_POLL_SECONDS
    while pending:
        left = limit - (time.monotonic() - started)
        if left <= 0:
            raise _not_readable(pending, slowest, command, waited=limit)
        time.sleep(min(poll, left))
        poll = min(poll * 1.5, MAX_POLL_SECONDS)
        still = []
        for state in pending:
            now = cold(storage.head(state.key))
            if now is not None and not now.readable:
                if now.restore == "":  # the copy lapsed or the request was lost: ask again
                    storage.restore_object(state.key, days=RESTORE_DAYS)
                still.append(state)
        pending = still
    log.info("restored by OSS after %.0fs: %s", time.monotonic() - started,
             ", ".join(c.key for c in found))
    return found


def _not_readable(pending, slowest, command, waited):
    names = ", ".join(c.key for c in pending[:3]) + (f" and {len(pending) - 3} more"
                                                      if len(pending) > 3 else "")
    what = (f"{pending[0].key} is" if len(pending) == 1 else f"{len(pending)} objects are ({names})")
    classes = "/".join(sorted({c.storage_class for c in pending}, key=FROZEN_CLASSES.index))
    asked = datetime.now(timezone.utc).strftime("%H:%M UTC")
    if waited is None:
        return ArchiveNotReadable(
            f"{what} in OSS {classes} storage and cannot be read yet: a restore was requested "
            f"at {asked}; OSS restores {slowest} objects in {restore_time(slowest)}",
            f"run {command} again once it is restored (the copy stays readable {RESTORE_DAYS} "
            f"days), or without {NO_WAIT_FLAG} to wait for it")
    return ArchiveNotReadable(
        f"{what} in OSS {classes} storage and still being restored after {_duration(waited)} "
        f"of waiting (OSS restores {slowest} objects in {restore_time(slowest)})",
        f"the restore goes on without us: run {command} again later")


def _duration(seconds):
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"
