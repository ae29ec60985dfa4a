"""Retention: keep the newest N backups of each kind, and never more deleted than that.

Deleting is the one thing a backup system does that can lose data, so the plan is a pure
function of what is listed, tested as a set of invariants:
- per kind (and database) the newest `keep` backups stay, ordered by the time in their
  names, never by LastModified (a copy or a restore of an object changes that);
- the newest verified (`verify=ok`) backup of a kind stays even outside `keep`, so a kind
  never loses its last verified copy;
- only backups and their sidecars (manifest, verify file) are ever touched; sidecars go
  with their backup, and sidecars whose backup is gone are cleaned up;
- an object still under WORM retention is skipped and reported, with its sidecars kept.
"""
import logging
from dataclasses import dataclass, field

from . import alerts, names
from .storage import ObjectLocked
from .verify import VERIFY_SUFFIX

log = logging.getLogger(__name__)

DEFAULT_KEEP = {"daily": 30, "weekly": 12, "manual": 10}  # PLAN §3: the OSS tier
LOCAL_KEEP = 10  # PLAN §3: the local tier keeps the newest 10
SIDECARS = (names.MANIFEST_SUFFIX, VERIFY_SUFFIX)


@dataclass(frozen=True)
class Backup:
    key: str
    kind: str
    group: str  # database folder, "" for the single database, "globals" for roles
    stamp: str  # sorts in time order within a kind
    verified: bool = False


@dataclass
class Decision:
    key: str
    action: str  # "keep" or "delete"
    reason: str
    sidecars: list = field(default_factory=list)
    outcome: str = ""  # after applying: deleted / delete marker left / skipped (WORM) / ...


def parse(prefix, key):
    """A Backup for a backup key (without its verdict), or None for anything else."""
    parsed = names.parse_backup_key(prefix, key)
    if parsed:
        kind, database, stamp = parsed
        return Backup(key, kind, database or "", stamp)
    if names.is_globals_key(prefix, key):
        kind = key[len(prefix):].split("/", 1)[0]
        stamp = key.rsplit("globals_", 1)[1][:-len(names.SUFFIX)]
        return Backup(key, kind, "globals", stamp)
    return None


def sidecar_owner(key):
    for suffix in SIDECARS:
        if key.endswith(suffix):
            return key[:-len(suffix)]
    return None


def plan(backups, keep, sidecar_keys=(), prefix="db-backups/"):
    """Decisions for `backups` of one or more kinds (keep: {kind: N}), and for sidecars.

    Pure and deterministic: the same inputs give the same plan, in key order. A sidecar
    is deleted only with its backup, or when it names a backup that is no longer there."""
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
    by_key = {d.key: d for d in decisions}
    for key in sorted(sidecar_keys):
        owner = by_key.get(sidecar_owner(key))
        if owner is not None:
            owner.sidecars.append(key)
        elif parse(prefix, sidecar_owner(key)) is not None:
            decisions.append(Decision(key, "delete", "sidecar of a backup that is gone"))
    return sorted(decisions, key=lambda d: d.key)


def survey(storage, kinds):
    """(backups with their verdicts, sidecar keys) under the prefix for these kinds."""
    backups, sidecars = [], []
    for kind in kinds:
        for obj in storage.list(f"{storage.prefix}{kind}/"):
            if sidecar_owner(obj.key):
                sidecars.append(obj.key)
                continue
            b = parse(storage.prefix, obj.key)
            if b is None:
                continue  # not ours: never touched
            verified = _verdict(storage, obj.key) == "ok"
            backups.append(Backup(b.key, b.kind, b.group, b.stamp, verified))
    return backups, sidecars


def _verdict(storage, key):
    try:
        return storage.get_tags(key).get("verify", "")
    except FileNotFoundError:
        return ""


def apply(storage, decisions):
    """Deletes what the plan says; the backup first, its sidecars only once it is gone."""
    for d in decisions:
        if d.action != "delete":
            d.outcome = "kept"
            continue
        try:
            deleted = storage.delete(d.key)
        except ObjectLocked:
            d.outcome = "skipped: still under the retention policy (WORM)"
            log.info("%s not deleted: under WORM retention", d.key)
            continue
        d.outcome = ("deleted; a delete marker is left and the old version stays until the "
                     "bucket's lifecycle rule expires it") if deleted.delete_marker else "deleted"
        for sidecar in d.sidecars:
            storage.delete(sidecar)
    return decisions


def prune(storage, kinds, keep, dry_run=False):
    backups, sidecars = survey(storage, kinds)
    decisions = plan(backups, keep, sidecars, storage.prefix)
    if not dry_run:
        apply(storage, decisions)
    return decisions


def summary(decisions, dry_run):
    return {"dry_run": dry_run,
            "kept": sum(d.action == "keep" for d in decisions),
            "deleted": sum(d.action == "delete" and d.outcome.startswith("deleted") for d in decisions),
            "skipped": sum(d.outcome.startswith("skipped") for d in decisions),
            "objects": [{"key": d.key, "action": d.action, "reason": d.reason,
                         "sidecars": d.sidecars, "outcome": d.outcome} for d in decisions]}


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
        log.info("pruned %s: %s", kind, {k: v for k, v in summary(decisions, False).items()
                                         if k in ("kept", "deleted", "skipped")})
        if skipped:
            log.info("kept by WORM retention: %s", ", ".join(skipped))
    return prune_after_backup
