"""Retention: keep the newest N backups of each kind, and never more deleted than that.

Deleting is the one thing a backup system does that can lose data, so the plan is a pure
function of what is listed, tested as a set of invariants:
- per kind (and database) the newest `keep` backups stay, ordered by the time in their
  names, never by LastModified (a copy or a restore of an object changes that);
- the newest verified (`verify=ok`) backup of a kind stays even outside `keep`, so a kind
  never loses its last verified copy;
- a backup is an object *with its manifest* (written last): an object without one (a run
  killed between the two, or whose manifest PUT failed) never counts toward `keep` and is
  never offered to restore. It waits ("waiting for manifest") while a run may still be
  writing that manifest: while its run holds an unexpired claim, and in any case until it
  is INCOMPLETE_AFTER_SECONDS old (FC's longest run, 24 h, plus a margin). Older, it is
  deleted with its sidecars and reported;
- only backups, objects without manifest and their sidecars (manifest, verify file,
  claim) are ever touched; sidecars go with their backup; a manifest or verify file
  whose backup is gone is cleaned up;
- a claim (`<key>.claim`, `<key>.<n>.claim`: claims.py) that no complete backup owns is
  removed only once it has expired *and* no run of its slot can still be going
  (INCOMPLETE_AFTER_SECONDS after the end of the backup's day, ISO week or second, Asia/
  Shanghai): claims.py has no run delete a claim it does not hold, since a claim deleted
  while another run takes it over would let a third run in. An unexpired claim belongs
  to a run still dumping;
- an object still under WORM retention, sidecars included, is skipped and reported, and
  the rest of the plan is applied.
"""
import json
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Optional

from . import alerts, claims, history, leftovers, names
from .storage import ObjectLocked
from .verify import VERIFY_SUFFIX

log = logging.getLogger(__name__)

DEFAULT_KEEP = {"daily": 30, "weekly": 12, "manual": 10}  # PLAN §3: the OSS tier
LOCAL_KEEP = 10  # PLAN §3: the local tier keeps the newest 10
# `<key>.claim` (and `<key>.<n>.claim`, the n-th takeover of an expired one): a backup
# run's claim on its slot (JSON with `expires_at`), made before the object is written and
# deleted when the run ends (claims.py). A sidecar like the others.
CLAIM_SUFFIX = claims.SUFFIX
SIDECARS = (names.MANIFEST_SUFFIX, VERIFY_SUFFIX, CLAIM_SUFFIX)
_CLAIM = re.compile(rf"^(?P<owner>.+(?:{'|'.join(map(re.escape, names.SUFFIXES))}))"
                    r"\.(?:[1-9][0-9]*\.)?claim$")
# An object without manifest younger than this may belong to a run still writing it: a
# multipart object can be dated from the start of its upload, and an FC run lasts at most
# 24 h; 2 h more for retries and clock skew. The bound of unfinished uploads too.
INCOMPLETE_AFTER_SECONDS = leftovers.safe_age()
WORM_SKIPPED = "skipped: still under the retention policy (WORM)"


@dataclass(frozen=True)
class Backup:
    key: str
    kind: str
    group: str  # database folder, "" for the single database, "globals" for roles
    stamp: str  # sorts in time order within a kind
    verified: bool = False


@dataclass(frozen=True)
class Incomplete:
    """An object named like a backup without its manifest: never a backup."""
    key: str
    last_modified: float  # epoch seconds, as storage lists it
    etag: str = ""  # as listed: deleted only if it is still this object


@dataclass(frozen=True)
class Claim:
    key: str
    expires_at: Optional[float]  # epoch seconds; None when unreadable
    last_modified: float = 0.0


@dataclass
class Inventory:
    """What one listing of the kinds found."""
    backups: list  # [Backup] with their verdicts: objects with their manifest
    sidecars: list  # keys of manifests, verify files, claims
    incomplete: list  # [Incomplete]
    claims: dict  # claim key -> Claim, read only where no complete backup owns it


@dataclass
class Decision:
    key: str
    action: str  # "keep", "delete" or "wait" (an object or claim a run may still need)
    reason: str
    sidecars: list = field(default_factory=list)
    outcome: str = ""  # after applying: deleted / delete marker left / skipped (WORM) / ...
    what: str = "backup"  # backup / incomplete (no manifest) / sidecar / claim
    sidecars_skipped: list = field(default_factory=list)  # kept by WORM retention
    etag: str = ""  # incomplete: the object as listed


def parse(prefix, key):
    """A Backup for a backup key (without its verdict), or None for anything else."""
    parsed = names.parse_backup_key(prefix, key)
    if parsed:
        kind, database, stamp = parsed
        return Backup(key, kind, database or "", stamp)
    if names.is_globals_key(prefix, key):
        kind = key[len(prefix):].split("/", 1)[0]
        stamp = key.rsplit("globals_", 1)[1][:-len(names.suffix(names.is_encrypted_key(key)))]
        return Backup(key, kind, "globals", stamp)
    return None


def sidecar_owner(key):
    """The key whose sidecar `key` is (manifest, verify file, claim of any generation),
    or None."""
    owner = claim_owner(key)
    if owner is not None:
        return owner
    for suffix in SIDECARS:
        if key.endswith(suffix):
            return key[:-len(suffix)]
    return None


def claim_owner(key):
    """The key a claim object (`<key>.claim`, `<key>.<n>.claim`) is about, or None."""
    match = _CLAIM.match(key)
    return match["owner"] if match else None


def slot_end(backup):
    """Epoch seconds when no run can start making `backup`'s key any more (a run names
    its key by the time it starts): the end of its day, ISO week or second in Asia/
    Shanghai. None when the stamp cannot be read."""
    try:
        if backup.kind == "daily":
            start, length = datetime.strptime(backup.stamp, "%Y-%m-%d"), timedelta(days=1)
        elif backup.kind == "weekly":
            year, week = backup.stamp.split("-W")
            start = datetime.combine(date.fromisocalendar(int(year), int(week), 1),
                                     datetime.min.time())
            length = timedelta(weeks=1)
        else:
            start, length = datetime.strptime(backup.stamp[:19], "%Y-%m-%dT%H-%M-%S"), timedelta(seconds=1)
    except ValueError:
        return None
    return (start.replace(tzinfo=names.SHANGHAI) + length).timestamp()


def plan(backups, keep, sidecar_keys=(), prefix="db-backups/", incomplete=(), claims=None,
         now=None, incomplete_after=INCOMPLETE_AFTER_SECONDS):
    """Decisions for `backups` of one or more kinds (keep: {kind: N}), for objects without
    manifest (`incomplete`) and for sidecars; `claims` maps a claim's key to its Claim.

    Pure and deterministic: the same inputs give the same plan, in key order. A sidecar
    is deleted only with its owner, or when it names a backup that is no longer there (a
    claim: see _claim_kept). Objects without manifest never change a backup's decision."""
    now = time.time() if now is None else now
    claims = claims or {}
    decisions = []
    groups = {}
    for b in backups:
        groups.setdefault((b.kind, b.group), []).append(b)
    for (kind, _), members in sorted(groups.items()):
        n = keep[kind]
        if n < 1:
            raise ValueError(f"keep for {kind} must be at least 1, got {n}")
        newest_first = sorted(members, key=lambda b: b.stamp, reverse=True)
        newest_verified = next((b for b in newest_first if b.verified), None)
        for rank, b in enumerate(newest_first):
            if rank < n:
                decisions.append(Decision(b.key, "keep", f"among the newest {n} {kind}"))
            elif b is newest_verified:
                decisions.append(Decision(b.key, "keep", f"the newest verified {kind} backup"))
            else:
                decisions.append(Decision(b.key, "delete", f"older than the newest {n} {kind}"))
    for obj in incomplete:
        held = [c for key, c in claims.items() if claim_owner(key) == obj.key
                and _claim_expiry(c, incomplete_after) > now]
        decisions.append(_incomplete_decision(obj, held, now, incomplete_after))
    by_key = {d.key: d for d in decisions}
    for key in sorted(sidecar_keys):
        owner_key = sidecar_owner(key)
        owner = by_key.get(owner_key)
        backup = parse(prefix, owner_key)
        if claim_owner(key) is not None and (owner is None or owner.what == "incomplete"):
            if backup is None:
                continue  # not ours: never touched
            kept = _claim_kept(claims.get(key), backup, now, incomplete_after)
            if owner is not None and (owner.action == "wait" or not kept):
                owner.sidecars.append(key)  # waits with its object, or goes with it
            elif kept:
                decisions.append(Decision(key, "wait", kept, what="claim"))
            else:
                decisions.append(Decision(key, "delete", "expired claim of a run that left "
                                          "no backup", what="claim"))
        elif owner is not None:
            owner.sidecars.append(key)
        elif backup is not None:
            decisions.append(Decision(key, "delete", "sidecar of a backup that is gone",
                                      what="sidecar"))
    return sorted(decisions, key=lambda d: d.key)


def _hours(seconds):
    return f"{seconds / 3600:.0f} h"


def _claim_expiry(claim, incomplete_after):
    # An unreadable claim expires as an object without manifest would: by its age.
    if claim.expires_at is not None:
        return claim.expires_at
    return claim.last_modified + incomplete_after


def _utc(epoch):
    return f"{datetime.fromtimestamp(epoch, timezone.utc):%Y-%m-%d %H:%M} UTC"


def _incomplete_decision(obj, held, now, incomplete_after):
    age = now - obj.last_modified
    if held:
        until = _utc(max(_claim_expiry(c, incomplete_after) for c in held))
        return Decision(obj.key, "wait", "no manifest yet, and its run still holds its claim "
                        f"(until {until}): waiting for manifest",
                        what="incomplete", etag=obj.etag)
    if age < incomplete_after:
        return Decision(obj.key, "wait", f"no manifest yet ({_hours(age)} old): waiting for "
                        f"manifest; cleaned once older than {_hours(incomplete_after)}",
                        what="incomplete", etag=obj.etag)
    return Decision(obj.key, "delete", f"no manifest after {_hours(age)}: an incomplete backup "
                    "(its run died or its manifest write failed), never one to restore",
                    what="incomplete", etag=obj.etag)


def _claim_kept(claim, backup, now, incomplete_after):
    """Why a claim no complete backup owns must stay ("" once it may go)."""
    if claim is None:
        return "claim not read: left alone"
    expiry = _claim_expiry(claim, incomplete_after)
    if expiry > now:
        return f"claim of a backup run still in progress (until {_utc(expiry)})"
    end = slot_end(backup)
    if end is None:
        return "claim of a backup whose time cannot be read: left alone"
    if now < end + incomplete_after:
        return ("expired claim, kept while a run of its slot may still take it over "
                f"(until {_utc(end + incomplete_after)})")
    return ""


def inventory(storage, kinds):
    """One listing of these kinds: backups (objects with their manifest, with verdicts
    from their tags), sidecar keys, objects without manifest, and the claims no complete
    backup owns (read, to know whether they expired)."""
    found = Inventory([], [], [], {})
    for kind in kinds:
        listed = {obj.key: obj for obj in storage.list(f"{storage.prefix}{kind}/")}
        sidecars, complete = [], set()
        for key, obj in listed.items():
            if sidecar_owner(key):
                sidecars.append(key)
                continue
            b = parse(storage.prefix, key)
            if b is None:
                continue  # not ours: never touched
            if names.manifest_key(key) not in listed:
                found.incomplete.append(Incomplete(key, obj.last_modified, obj.etag))
                continue
            complete.add(key)
            found.backups.append(Backup(b.key, b.kind, b.group, b.stamp,
                                        _verdict(storage, key) == "ok"))
        for key in sidecars:
            if claim_owner(key) is not None and claim_owner(key) not in complete:
                found.claims[key] = Claim(key, read_claim(storage, key), listed[key].last_modified)
        found.sidecars += sidecars
    return found


def survey(storage, kinds):
    """(backups with their verdicts, sidecar keys) under the prefix for these kinds. Only
    objects with their manifest are backups: one without never appears here."""
    found = inventory(storage, kinds)
    return found.backups, found.sidecars


def read_claim(storage, key):
    """A claim's `expires_at` as epoch seconds (JSON number or ISO-8601 text; no zone
    means UTC), or None when it is gone or unreadable."""
    try:
        value = json.loads(b"".join(storage.open(key)))["expires_at"]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()
    except (FileNotFoundError, ValueError, TypeError, KeyError, RecursionError):
        return None


def _verdict(storage, key):
    try:
        return storage.get_tags(key).get("verify", "")
    except FileNotFoundError:
        return ""


def apply(storage, decisions, claims=None, now=None, remember=True):
    """Deletes what the plan says; an owner first, its sidecars only once it is gone. What
    WORM retention protects is skipped and reported, and the rest is applied. With
    `remember`, each backup deleted is kept in the history (history.record_pruned)."""
    claims = claims or {}
    now = time.time() if now is None else now
    for d in decisions:
        if d.action != "delete":
            d.outcome = "kept" if d.action == "keep" else "left: waiting"
            continue
        changed = _changed_since_listed(storage, d, claims, now)
        if changed:
            d.outcome = f"left: {changed}"
            log.info("%s not deleted: %s", d.key, changed)
            continue
        gone = history.describe_backup(storage, d.key) if remember and d.what == "backup" else None
        try:
            deleted = storage.delete(d.key)
        except ObjectLocked:
            d.outcome = WORM_SKIPPED
            log.info("%s not deleted: under WORM retention", d.key)
            continue
        if gone:  # the status page's timeline keeps it (history.py)
            history.record_pruned(storage, gone)
        d.outcome = ("deleted; a delete marker is left and the old version stays until the "
                     "bucket's lifecycle rule expires it") if deleted.delete_marker else "deleted"
        for sidecar in d.sidecars:
            try:
                storage.delete(sidecar)
            except ObjectLocked:
                d.sidecars_skipped.append(sidecar)
                log.info("%s not deleted: under WORM retention", sidecar)
        if d.sidecars_skipped:
            d.outcome += (f"; {', '.join(d.sidecars_skipped)} kept: still under the retention "
                          "policy (WORM), deleted by a later prune")
    return decisions


def _changed_since_listed(storage, d, claims, now):
    """Why an object without manifest or a claim must not be deleted after all: a run
    finished it, replaced it or renewed its claim between the listing and now."""
    if d.what == "incomplete":
        head = storage.head(d.key)
        if head is None:
            return "gone since listed"
        if storage.head(names.manifest_key(d.key)) is not None:
            return "its manifest has appeared"
        if d.etag and head.etag != d.etag:
            return "replaced since listed"
        for obj in storage.list(d.key + "."):
            claimed = read_claim(storage, obj.key) if claim_owner(obj.key) == d.key else None
            if claimed is not None and claimed > now:
                return "a run has claimed it since listed"
    if d.what == "claim":
        listed = claims.get(d.key)
        if listed is None or read_claim(storage, d.key) != listed.expires_at:
            return "claim renewed since listed"
    return ""


def prune(storage, kinds, keep, dry_run=False, now=None,
          incomplete_after=INCOMPLETE_AFTER_SECONDS, remember=True):
    """Lists these kinds, plans (see the module docstring) and, unless dry_run, applies the
    plan. `now` (epoch seconds) and `incomplete_after` set when an object without manifest
    or a claim whose backup is gone counts as left by a dead run. `remember`: keep what
    is deleted in the history the status page draws (not for a mirror's copies)."""
    found = inventory(storage, kinds)
    now = time.time() if now is None else now
    decisions = plan(found.backups, keep, found.sidecars, storage.prefix, found.incomplete,
                     found.claims, now, incomplete_after)
    if not dry_run:
        apply(storage, decisions, found.claims, now, remember)
    return decisions


def summary(decisions, dry_run):
    """The plan as a dict: counts, and every object with its action, reason and outcome.
    `skipped` counts objects (sidecars included) kept by WORM retention; `incomplete`,
    objects without manifest deleted (or, dry run, to delete); `waiting`, those left
    because a run may still write their manifest."""
    def applies(d):
        return dry_run or d.outcome.startswith("deleted")
    return {"dry_run": dry_run,
            "kept": sum(d.action == "keep" for d in decisions),
            "deleted": sum(d.action == "delete" and d.outcome.startswith("deleted") for d in decisions),
            "skipped": sum(d.outcome.startswith("skipped") + len(d.sidecars_skipped) for d in decisions),
            "incomplete": sum(d.what == "incomplete" and d.action == "delete" and applies(d)
                              for d in decisions),
            "waiting": sum(d.what == "incomplete" and d.action == "wait" for d in decisions),
            "objects": [{"key": d.key, "what": d.what, "action": d.action, "reason": d.reason,
                         "sidecars": d.sidecars, "outcome": d.outcome,
                         "sidecars_skipped": d.sidecars_skipped} for d in decisions]}


def after_backup_hook(keep):
    """The step run_backup calls after a successful backup: prune that kind. A prune that
    fails never fails the backup; it sends a warning alert."""
    def prune_after_backup(kind, storage, outcomes):
        try:
            decisions = prune(storage, [kind], keep)
        except Exception as exc:
            alerts.send(alerts.Alert("warning", "prune failed", f"{type(exc).__name__}: {exc}",
                                     {"kind": kind, "target": storage.url}))
            return
        skipped = [d.key for d in decisions if d.outcome.startswith("skipped")]
        skipped += [s for d in decisions for s in d.sidecars_skipped]
        log.info("pruned %s: %s", kind, {k: v for k, v in summary(decisions, False).items()
                                         if k != "objects"})
        if skipped:
            log.info("kept by WORM retention: %s", ", ".join(skipped))
        for d in decisions:
            if d.what == "incomplete":
                log.info("%s: %s%s", d.key, d.reason, f" -> {d.outcome}" if d.action == "delete" else "")
    return prune_after_backup
