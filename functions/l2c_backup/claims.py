"""One run per backup slot: a claim object beside the backup, made with what the storage
guarantees, so two runs of the same daily or weekly backup (a timer delivered twice, a
person re-running it) never mix one run's object with the other's manifest.

The claim is `<key>.claim`, a small JSON document (run id, host, pid, started,
expires_at, ttl_seconds). It expires at the run's time budget plus a margin, so a run
that died (SIGKILL, FC's timeout) blocks the slot only until then. The run that holds it
deletes it when it ends (finally); a claim that cannot be deleted (WORM) simply lapses.
A claim is over before it expires when its run is known to be gone: a process of this
machine that no longer runs (the same kernel boot and pid namespace, and that pid no
longer the process that claimed: a cron run after `kill -9`), or an earlier attempt of
this very run (the same request id, as FC's retries of one async invocation would carry
if they keep it; not verified, and harmless if they do not).

How exclusion is had, by what each storage guarantees:
- Where an existing object cannot be overwritten on request (OSS without versioning:
  `x-oss-forbid-overwrite: true` is refused with FileAlreadyExists; a directory: the
  claim file is linked into place, which fails if the name exists, so it appears whole
  and only once), the first run to create `<key>.claim` holds it. An expired claim is
  taken over by creating the next generation, `<key>.<n>.claim`, the same way: of two
  runs taking over the same dead claim only one can create that name. The dead claims
  stay until the new holder lets go (then it deletes them with its own), so every run
  that looks meanwhile finds one; and no run deletes a claim it does not hold
  (delete-then-create would let the slower taker delete the faster one's fresh claim,
  and both would go on).
- OSS with versioning enabled ignores `x-oss-forbid-overwrite` (OSS documents it; the
  PutObject answer then carries a version id): every run's claim becomes a version of
  `<key>.claim`, and OSS keeps them in the order it stored them. Replaying that history
  oldest first, a version holds the slot when no unexpired claim holds it (a delete
  marker, written when a run lets go, ends the hold); later versions lose. Every run
  reads the same history, so they agree on one holder. The loser removes its version.
  This needs oss:ListObjectVersions and oss:GetObjectVersion (and, for the loser's
  tidying, oss:DeleteObjectVersion); without them the run goes ahead unexcluded and
  says so in a warning.
- Versioning suspended: OSS overwrites and keeps no history; nothing excludes a second
  run, and the run says so in a warning. setup-oss never suspends versioning.
"""
import json
import logging
import os
import re
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from . import names
from .leftovers import FC_MAX_SECONDS  # FC's longest invocation: the budget when none is set
from .storage import ObjectLocked

log = logging.getLogger(__name__)

SUFFIX = ".claim"
MARGIN_SECONDS = 15 * 60  # past the budget: the run's own clean-up, clocks that differ
TRIES = 5  # looks at the claim before giving up on a slot that keeps changing hands


def ttl_for(timeout_seconds=0):
    """How long a claim holds: the run's time budget (by then FC has stopped it) plus a
    margin; without a budget, FC's longest run plus the margin."""
    return (timeout_seconds or FC_MAX_SECONDS) + MARGIN_SECONDS


def claim_key(key, generation=0):
    """`<key>.claim`, and `<key>.<n>.claim` for the n-th takeover of an expired claim."""
    return f"{key}.{generation}{SUFFIX}" if generation else key + SUFFIX


def is_claim_key(key):
    return key.endswith(SUFFIX)


@dataclass
class Claim:
    """A claim this run holds."""
    key: str  # the claim object
    document: dict
    version_id: str = ""  # on a versioned bucket: this run's version of the claim
    replaces: tuple = ()  # the dead claims it took over from, deleted with it


def another_run(key, holder):
    """The skip reason naming the run that holds `key` and when its claim lapses."""
    holder = holder or {}
    who = " ".join(part for part in (
        f"run {holder['run_id']}" if holder.get("run_id") else "",
        f"on {holder['host']}" if holder.get("host") else "") if part)
    if holder.get("pid"):
        who += (", " if who else "") + f"pid {holder['pid']}"
    return (f"another run is making {key} since {holder.get('started', 'an unknown time')}"
            + (f" ({who})" if who else "")
            + f"; if that run died, its claim lapses at {holder.get('expires_at', 'its expiry')}"
            + (f" (or delete {holder['claim']} to run now)" if holder.get("claim") else ""))


def take(storage, key, ttl_seconds, run_id="", now=None):
    """(Claim, None) when this run now holds backup `key`, or (None, the holder's claim
    document, with "claim": its key) when another run does; then skip, and say so with
    another_run(). Storage failures propagate. Hold it in try/finally: release()."""
    now = now or names.now()
    document = {"key": key, "run_id": run_id or uuid.uuid4().hex, "host": socket.gethostname(),
                "pid": os.getpid(), "started": now.isoformat(timespec="seconds"),
                "expires_at": (now + timedelta(seconds=ttl_seconds)).isoformat(timespec="seconds"),
                "ttl_seconds": ttl_seconds, "process": _process_identity()}
    data = json.dumps(document, sort_keys=True).encode()
    holder = None
    for _ in range(TRIES):
        generations = _generations(storage, key)
        generation = 0
        if generations:
            newest, newest_key = generations[-1]
            holder = _read(storage, newest_key)
            if holder is None:  # let go of between the listing and the read: look again
                continue
            holder["claim"] = newest_key
            over = _over(holder, now, run_id)
            if not over:
                return None, holder
            log.info("taking over the claim %s, %s (%s)", newest_key, over, another_run(key, holder))
            generation = newest + 1
        target = claim_key(key, generation)
        try:
            stored = storage.put_bytes(target, data, overwrite=False)
        except FileExistsError:
            continue  # another run created it first: it holds the slot now
        claim = Claim(target, document, stored.version_id or "",
                      tuple(older for _, older in generations))
        if claim.version_id == "null":
            log.warning("the bucket's versioning is suspended: OSS then overwrites %s instead of "
                        "refusing, so nothing stops a second run of this backup; enable "
                        "versioning (or keep it off)", target)
            return claim, None
        if claim.version_id:
            return _settle_by_history(storage, claim)
        return claim, None
    return None, holder or {"run_id": "(changing hands)"}


def release(storage, claim):
    """Lets go of a claim this run holds, and of the dead ones it took over from (on a
    versioned bucket a delete marker, which ends the hold in the claim's history).
    Never raises: a claim left behind lapses."""
    for older in claim.replaces:
        _delete_quietly(storage, older)
    try:
        storage.delete(claim.key)
    except ObjectLocked:
        log.info("claim %s stays under the bucket's retention policy (WORM); it lapses at %s",
                 claim.key, claim.document["expires_at"])
    except Exception as exc:
        log.warning("could not delete claim %s (%s); it lapses at %s", claim.key,
                    _reason(exc), claim.document["expires_at"])


# -- internals -----------------------------------------------------------------------------

def _generations(storage, key):
    """[(generation, claim key)] of the claims on `key`, oldest generation first."""
    pattern = re.compile(rf"^{re.escape(key)}\.(?:([1-9][0-9]*)\.)?claim$")
    found = []
    for obj in storage.list(key + "."):
        match = pattern.match(obj.key)
        if match:
            found.append((int(match[1] or 0), obj.key))
    return sorted(found)


def _read(storage, claim_object):
    """The claim's document; None when it is gone; {} when it is not one (it then counts
    as expired)."""
    try:
        with storage.open(claim_object) as reading:
            data = b"".join(reading)
    except FileNotFoundError:
        return None
    return _parse(data, claim_object)


def _parse(data, where):
    try:
        document = json.loads(data)
        if isinstance(document, dict):
            return document
    except ValueError:
        pass
    log.warning("%s is not a claim document; it counts as expired", where)
    return {}


def _over(document, now, run_id):
    """Why the claim no longer holds ("" while it does)."""
    try:
        if datetime.fromisoformat(document["expires_at"]) <= now:
            return "expired"
    except (KeyError, TypeError, ValueError):
        return "unreadable"
    if run_id and document.get("run_id") == run_id:
        return "left by an earlier attempt of this same run"
    if _gone(document.get("process", "")):
        return "its process is gone"
    return ""


def _process_identity(pid=None):
    """"boot id:pid namespace:pid:start time" of a process of this machine ("" where
    /proc does not tell): equal only for the same process of the same kernel boot."""
    pid = pid or os.getpid()
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        namespace = os.readlink("/proc/self/ns/pid")
        with open(f"/proc/{pid}/stat") as f:
            started = f.read().rsplit(")", 1)[1].split()[19]  # field 22: start time in ticks
    except (OSError, IndexError):
        return ""
    return f"{boot}:{namespace}:{pid}:{started}"


def _gone(identity):
    """True only when `identity` is a process of this kernel boot and pid namespace that
    no longer runs (its pid gone, or now another process's)."""
    mine = _process_identity()
    if not identity or not mine:
        return False
    boot, namespace, pid, _ = identity.rsplit(":", 3)
    if f"{boot}:{namespace}" != mine.rsplit(":", 2)[0] or not pid.isdigit():
        return False  # another machine, container or boot: nothing to tell from here
    return _process_identity(int(pid)) != identity


def _settle_by_history(storage, claim):
    """Versioned bucket: who holds the slot, by the claim's version history (see the
    module docstring). OSS's own clock (last_modified) times every version."""
    try:
        history = storage.versions(claim.key)
        holder, holder_doc, until = None, None, 0.0
        for version in history:
            if version.extra.get("delete_marker"):
                holder = None
                continue
            if holder is None or version.last_modified >= until:
                if version.version_id == claim.version_id:
                    document = claim.document
                else:
                    document = _read_version(storage, claim.key, version.version_id)
                    if document is None:  # a losing run removed its version meanwhile
                        continue
                holder, holder_doc = version, document
                until = version.last_modified + float(document.get("ttl_seconds") or 0)
            if version.version_id == claim.version_id:
                break
        else:
            raise LookupError(f"our version {claim.version_id} is not in the listing")
    except Exception as exc:
        log.warning("could not tell from the versions of %s whether another run is making "
                    "this backup (%s); going ahead: grant oss:ListObjectVersions and "
                    "oss:GetObjectVersion so that concurrent runs are excluded",
                    claim.key, _reason(exc))
        return claim, None
    if holder is not None and holder.version_id == claim.version_id:
        return claim, None
    holder_doc["claim"] = claim.key
    try:  # a version that lost changes nobody's outcome; removed, the history stays short
        storage.delete_version(claim.key, claim.version_id)
    except Exception as exc:
        log.info("left the losing claim version %s of %s (%s)", claim.version_id, claim.key,
                 _reason(exc))
    return None, holder_doc


def _read_version(storage, key, version_id):
    try:
        return _parse(storage.read_version(key, version_id), f"{key} (version {version_id})")
    except FileNotFoundError:
        return None


def _delete_quietly(storage, key):
    try:
        storage.delete(key)
    except Exception as exc:
        log.info("left the expired claim %s (%s)", key, _reason(exc))


def _reason(exc):
    return str(exc).split("\n", 1)[0] or type(exc).__name__
