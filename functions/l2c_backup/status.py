"""Where the backups stand: per kind the newest one and its age against the RPO, and the
3-2-1 view (copies in the primary bucket, the DR bucket and the local mirror; media;
off-site), plus a monthly OSS cost estimate from the real sizes and one of FC's fees for
PLAN's schedule from the durations the manifests recorded (fc_cost.py).

The watchdog uses the same survey: a timer that never fired, or a function that never
started, shows up here as a newest verified backup older than the RPO.

Encrypted backups (`.sql.gz.age`, age.py) are listed like the others and marked so; for
each configured identity (BACKUP_AGE_IDENTITY_FILE / BACKUP_AGE_IDENTITY) the report says
which of them it opens: by the public keys the manifest records, confirmed against the
object's age header where it can be read (one ranged read of the header per backup). Only
public keys (`age1...`) are ever shown.
"""
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone

from . import alerts, archive, config, fc_cost, manifest, names
from .errors import L2CError
from .prune import parse, sidecar_owner

log = logging.getLogger(__name__)

HOUR = 3600
RPO_SECONDS = {"daily": 24 * HOUR, "weekly": 7 * 24 * HOUR, "manual": None}  # PLAN: RPO 24 h
DEFAULT_GRACE_SECONDS = 2 * HOUR  # a 02:00 backup may take a while; alert past 26 h
# PLAN §7 (Hangzhou), CNY per GB-month and per GB copied across regions; configurable.
PRICES = {"standard": 0.12, "ia": 0.04, "archive": 0.033, "crr_traffic": 0.5}
IA_AFTER_DAYS, ARCHIVE_AFTER_DAYS = 30, 90  # PLAN §4.3 lifecycle rule
GB = 1024 ** 3
TIMELINE_DAYS = 90  # the status page's history
MIRROR_STALE_SECONDS = 48 * HOUR  # the mirror runs daily (README's cron): two missed runs
HEADER_READ = 65536  # an age header without its length in the manifest: ~100 bytes a recipient


@dataclass
class BackupInfo:
    key: str
    kind: str
    group: str
    stamp: str
    size: int
    verdict: str  # ok / failed / "" (not verified yet)
    finished_at: float  # from the manifest; the object's LastModified when it has none
    archive: str = ""  # e.g. "Archive, not restored": OSS must restore it before it is read
    duration: float | None = None  # the manifest's duration_seconds (FC cost estimate)
    encrypted: bool = False  # a `.sql.gz.age` object (age.py)
    recipients: tuple | None = None  # the public keys it is encrypted to (manifest); None: unknown
    opened_by: tuple | None = None  # of the identities given to survey, those whose public key
    # the header takes (None: not looked at)
    header_error: str = ""  # why the header could not be read or taken as age
    pruned: bool = False  # deleted by retention: known from its history record only


@dataclass
class Location:
    name: str  # primary / dr / mirror
    url: str
    medium: str  # "OSS" or "local disk"
    offsite: bool
    backups: list = field(default_factory=list)
    error: str = ""


def survey(storage, identities=(), listing_only=False):
    """Every backup under the prefix with its size, verdict and completion time; for an
    encrypted one, the recipients its manifest records and, with `identities` (age.Identity),
    which of them its header opens. `listing_only`: which backups are there and complete,
    from the listing alone (no manifest, verdict or header read: a copy's 3-2-1 count
    needs no more, and it saves two requests a backup)."""
    objects = {o.key: o for o in storage.list(storage.prefix)}
    frozen = archive.needing_restore(objects.values())  # unreadable until OSS restores them
    found = []
    for key, obj in sorted(objects.items()):
        if sidecar_owner(key):
            continue
        b = parse(storage.prefix, key)
        if b is None:
            continue
        finished, duration, sealed = obj.last_modified, None, None
        if names.manifest_key(key) in objects and listing_only:
            found.append(BackupInfo(key, b.kind, b.group, b.stamp, obj.size, "", finished,
                                    encrypted=names.is_encrypted_key(key)))
            continue
        if names.manifest_key(key) in objects:
            try:
                if names.manifest_key(key) not in frozen:  # else LastModified must do
                    doc = json.loads(b"".join(storage.open(names.manifest_key(key))))
                    sealed = manifest.client_side(doc)
                    finished = datetime.fromisoformat(doc["finished_at"]).timestamp()
                    duration = doc.get("duration_seconds")
            except (ValueError, KeyError, TypeError, AttributeError, FileNotFoundError):
                pass
        else:
            continue  # no manifest: the backup never completed, so it does not count
        try:
            verdict = storage.get_tags(key).get("verify", "")
        except FileNotFoundError:
            verdict = ""
        cold = frozen.get(key) or frozen.get(names.manifest_key(key))
        info = BackupInfo(key, b.kind, b.group, b.stamp, obj.size, verdict, finished,
                          cold.describe() if cold else "", duration,
                          encrypted=names.is_encrypted_key(key),
                          recipients=_recipients(sealed))
        if info.encrypted and identities and key not in frozen:
            info.opened_by, info.header_error = header_openers(storage, key, sealed, identities,
                                                               obj.size)
        found.append(info)
    return found


def header_openers(storage, key, sealed, identities, size):
    """(the public keys of `identities` that the object's age header has a stanza for, "")
    from one ranged read of the header; (None, why not) when it cannot be read or is not
    an age header. The header's MAC is verify's to check: it needs the file key."""
    from . import age
    from .reading import Broken
    length = min((sealed or {}).get("header_length") or HEADER_READ, size)
    if not length:
        return None, "its age header cannot be read: the object is empty"
    try:
        with storage.open(key, HEADER_READ, offset=0, length=length) as reading:
            header = age.read_header(b"".join(reading), key)
        opened = tuple(i.recipient for i in identities if any(
            kind == "X25519" and i.unwrap(args, body) is not None
            for (kind, args), body in zip(header.stanzas, header.bodies)))
    except FileNotFoundError:
        return None, "gone since listed"
    except Broken as exc:
        return None, f"its age header cannot be read ({exc.reason}): {exc.detail}"
    except ValueError as exc:  # Identity.unwrap: a stanza that is not X25519's shape
        return None, f"its age header has a malformed X25519 stanza: {exc}"
    except (L2CError, OSError) as exc:
        return None, f"its age header cannot be read: {(str(exc) or type(exc).__name__).splitlines()[0]}"
    return opened, ""


def _recipients(sealed):
    try:
        return tuple(str(r) for r in sealed["recipients"]) if sealed else None
    except (KeyError, TypeError):
        return None


def newest(backups, kind, verified=False, group=None):
    """The newest backup of `kind` (of one database folder when `group` is given)."""
    pool = [b for b in backups if b.kind == kind and b.group != "globals"
            and (group is None or b.group == group) and (b.verdict == "ok" or not verified)]
    return max(pool, key=lambda b: (b.stamp, b.finished_at), default=None)


def expected_databases(backups, kind, configured=None, run=None):
    """The database folders whose `kind` backups the RPO applies to ("" is the one
    database of a single-database setup, backed up without a folder): the configured
    list when it names several; with one database (BACKUP_DATABASES unset or one name)
    and its backups there, that one; with `all` (or nothing known), the databases of
    the newest run (fanout.newest_run), else every folder seen. So one database's fresh
    backup never hides another's missing one."""
    configured = [d for d in (configured or []) if d]
    groups = {b.group for b in backups if b.kind == kind and b.group != "globals"}
    if len(configured) > 1:
        return configured
    if configured != ["all"] and "" in groups:
        return [""]
    if run and run.get("databases"):
        return list(run["databases"]) if len(run["databases"]) > 1 else [""]
    return sorted(groups - {""}) or [""]


def _of(database):
    return f" of {database}" if database else ""


def rpo_findings(backups, kinds, now, grace=DEFAULT_GRACE_SECONDS, configured=None, runs=None):
    """[{kind, database, problem}]: per expected database, a newest verified backup older
    than RPO + grace or none at all; and per newest run, a database started but without
    an outcome although it was due (an invocation lost or killed)."""
    from .fanout import missing_outcomes
    runs = runs or {}
    found = []
    for kind in kinds:
        rpo = RPO_SECONDS[kind]
        if rpo is None:
            continue
        for database in expected_databases(backups, kind, configured, runs.get(kind)):
            latest = newest(backups, kind, verified=True, group=database)
            if latest is None:
                problem = f"no verified {kind} backup{_of(database)} at all"
            elif now - latest.finished_at > rpo + grace:
                age_h = (now - latest.finished_at) / HOUR
                problem = (f"the newest verified {kind} backup{_of(database)} ({latest.key}) is "
                           f"{age_h:.1f} h old, over the RPO of {rpo / HOUR:.0f} h")
            else:
                continue
            found.append({"kind": kind, "database": database, "problem": problem})
        run = runs.get(kind)
        for database in missing_outcomes(run, now):
            request = (run.get("invocations") or {}).get(database)
            found.append({"kind": kind, "database": database, "problem": (
                f"the {kind} backup of {database} was started at {run.get('dispatched_at')} "
                f"(run {run.get('run')}) and reported no outcome by {run.get('outcomes_due')}: "
                "its invocation was lost or killed; see the backup function's log"
                + (f" for request {request}" if request else ""))})
    return found


def check_rpo(backups, kinds, now, grace=DEFAULT_GRACE_SECONDS, configured=None, runs=None):
    """[(kind, problem)] for every database whose newest verified backup of a kind is
    older than RPO + grace (see rpo_findings)."""
    return [(f["kind"], f["problem"])
            for f in rpo_findings(backups, kinds, now, grace, configured, runs)]


def newest_runs(storage, kinds):
    """{kind: the newest run record of several databases} (fanout.newest_run)."""
    from .fanout import newest_run
    return {kind: run for kind in kinds if (run := newest_run(storage, kind))}


def watchdog(storage, kinds=("daily", "weekly"), now=None, grace=DEFAULT_GRACE_SECONDS,
             configured=None, backups=None):
    """One urgent alert per database and kind that missed its RPO (and per database a
    run started that never reported); returns the problems as (kind, problem).
    `backups`: the survey of `storage` when the caller made it already."""
    now = now if now is not None else datetime.now(timezone.utc).timestamp()
    findings = rpo_findings(survey(storage) if backups is None else backups, kinds, now, grace,
                            configured, newest_runs(storage, kinds))
    for f in findings:
        log.error("watchdog: %s", f["problem"])
        alerts.send(alerts.Alert("urgent", "backup missing", f["problem"],
                                 {"kind": f["kind"], "database": f["database"] or "-",
                                  "target": storage.url}))
    if not findings:
        log.info("watchdog: every database has a verified backup of every kind within its RPO")
    return [(f["kind"], f["problem"]) for f in findings]


def locations(environ, source=None, mirror=None, identities=(), credentials=None,
              primary_backups=None, now=None):
    """[Location]: the primary (`source`, else the configured target), the DR bucket
    (OSS_DR_BUCKET) and the local `mirror` directory, each surveyed (the primary's
    `primary_backups` when already surveyed); without `mirror`, the mirror as it last
    reported itself into the primary, if it ever did. An unreadable copy is a finding
    (its `error`), an unreadable primary an error: there is nothing to report on."""
    from .storage import open_storage
    target, oss = config.storage_target(environ, source, credentials, flag="--from")
    found = [("primary", target, oss, False)]
    if environ.get("OSS_DR_BUCKET"):
        dr_env = dict(environ, OSS_ENDPOINT=environ.get("OSS_DR_ENDPOINT") or environ.get("OSS_ENDPOINT", ""))
        prefix = environ.get("OSS_BACKUP_PREFIX", "db-backups/")
        found.append(("dr", *config.storage_target(dr_env, f"oss://{environ['OSS_DR_BUCKET']}/{prefix}",
                                                   credentials), True))  # another region: off-site
    if mirror:
        found.append(("mirror", mirror, None, False))
    result = []
    for name, url, settings, offsite in found:
        loc = Location(name, url, "OSS" if url.startswith("oss://") else "local disk", offsite)
        try:
            if name == "primary" and primary_backups is not None:
                loc.backups = primary_backups
            elif name == "primary":
                loc.backups = survey(open_storage(url, settings), identities)
            else:  # a copy counts by its listing: the primary's manifests describe the same objects
                loc.backups = survey(open_storage(url, settings), listing_only=True)
        except (L2CError, OSError) as exc:
            if name == "primary":
                raise  # nothing to report on: say why (StorageFailed names endpoint and bucket)
            # an unreachable copy is a finding, not a crash
            loc.error = str(exc.args[0]) if isinstance(exc, L2CError) else f"{type(exc).__name__}: {exc}"
        result.append(loc)
    if not mirror:  # the watchdog cannot see the mirror's disk: the mirror reports to the bucket
        result += [loc for loc in [reported_mirror(open_storage(target, oss), now)] if loc]
    return result


def reported_mirror(storage, now=None, stale_after=MIRROR_STALE_SECONDS):
    """The mirror as its last run reported it into `storage` (mirror.report_held), or
    None when none ever did; a report older than `stale_after` is named in its error."""
    from .mirror import held
    now = now if now is not None else datetime.now(timezone.utc).timestamp()
    try:
        found = held(storage)
    except (L2CError, OSError) as exc:
        return Location("mirror", "(its report)", "local disk", False,
                        error=f"its report cannot be read: {str(exc).splitlines()[0]}")
    if found is None:
        return None
    at, keys = found
    loc = Location("mirror", f"as `l2c-backup mirror` reported at {at}", "local disk", False)
    for key in keys:
        b = parse(storage.prefix, key)
        if b is not None:
            loc.backups.append(BackupInfo(key, b.kind, b.group, b.stamp, 0, "", 0.0))
    age = now - datetime.fromisoformat(at).timestamp()
    if age > stale_after:
        loc.error = (f"its last report is {age / HOUR:.0f} h old ({at}): is the mirror's cron "
                     "job still running?")
    return loc


def full_report(environ, storage, locs, now=None, identities=None):
    """report() with the settings of `environ` (prices, grace, keep counts, databases,
    RTO), the runs and the history of the primary `storage`: what `status` prints and
    the status page draws."""
    from .history import recent
    now = now if now is not None else datetime.now(timezone.utc).timestamp()
    configured = [d for d in environ.get("BACKUP_DATABASES", "").split(",") if d]
    return report(locs, names.KINDS, config.keep_counts(environ, locs[0].url), now,
                  grace=config.grace_seconds(environ), prices=config.prices(environ),
                  fc_prices=fc_cost.prices(environ), configured=configured,
                  runs=newest_runs(storage, names.KINDS), identities=identities,
                  history=recent(storage, now - TIMELINE_DAYS * 86400),
                  rto_seconds=config.setting(environ, "RTO_SECONDS", 0, int) or None)


def storage_class(age_days):
    if age_days >= ARCHIVE_AFTER_DAYS:
        return "archive"
    return "ia" if age_days >= IA_AFTER_DAYS else "standard"


def monthly_cost(backups, now, prices=PRICES, replicated=False):
    """CNY per month for these objects where they are now in the lifecycle, plus the
    cross-region traffic of a month of new backups when replication is on."""
    cost = {"standard": 0.0, "ia": 0.0, "archive": 0.0, "crr_traffic": 0.0}
    for b in backups:
        tier = storage_class((now - b.finished_at) / 86400)
        cost[tier] += b.size / GB * prices[tier]
    if replicated:
        month = [b for b in backups if now - b.finished_at <= 30 * 86400]
        cost["crr_traffic"] = sum(b.size for b in month) / GB * prices["crr_traffic"]
    cost["total"] = sum(cost.values())
    return {k: round(v, 4) for k, v in cost.items()}


def pruned_backups(records, present):
    """BackupInfo of the history's pruned records (history.record_pruned) whose key is not
    in `present` (a backup made again under its name is the one shown)."""
    found = []
    for r in records:
        try:
            finished = datetime.fromisoformat(r["finished_at"]).timestamp()
        except (KeyError, TypeError, ValueError):
            continue  # its manifest was unreadable: no time to draw it at
        if r.get("key") not in present:
            found.append(BackupInfo(r["key"], r.get("kind", ""), r.get("database", ""), "",
                                    r.get("bytes") or 0, r.get("verdict") or "", finished,
                                    duration=r.get("seconds"), pruned=True))
    return found


def timelines(backups, kinds, now, grace=DEFAULT_GRACE_SECONDS, days=TIMELINE_DAYS):
    """Per kind and database folder, the backups of the last `days` days oldest first, and
    the gaps: stretches longer than the RPO + grace without a verified backup, the one
    still open at `now` included (the watchdog's rule, drawn). A backup that ends a gap
    came late. Globals backups are left out (they ride along with the databases')."""
    since = now - days * 86400
    found = []
    for kind in kinds:
        groups = sorted({b.group for b in backups if b.kind == kind and b.group != "globals"})
        for group in groups:
            mine = sorted((b for b in backups if b.kind == kind and b.group == group),
                          key=lambda b: (b.finished_at, b.stamp))
            limit = RPO_SECONDS[kind] and RPO_SECONDS[kind] + grace
            gaps, late, previous = [], set(), None
            for b in [b for b in mine if b.verdict == "ok"] + [None]:
                at = b.finished_at if b else now
                if limit and previous is not None and at - previous > limit:
                    gaps.append({"from": max(previous, since), "to": at, "open": b is None})
                    if b:
                        late.add(b.key)
                previous = at if b else previous
            found.append({
                "kind": kind, "database": group, "rpo_hours": RPO_SECONDS[kind] and RPO_SECONDS[kind] / HOUR,
                "backups": [{"key": b.key, "stamp": b.stamp, "finished_at": b.finished_at,
                             "bytes": b.size, "seconds": b.duration,
                             "verdict": b.verdict or "unverified", "encrypted": b.encrypted,
                             "late": b.key in late, "pruned": b.pruned}
                            for b in mine if b.finished_at >= since],
                "gaps": [g for g in gaps if g["to"] >= since]})
    return found


def last_drill(drills):
    """The newest drill record (history.py), or None."""
    return max(drills, key=lambda d: d.get("at", ""), default=None)


def report(locations, kinds, keep, now=None, grace=DEFAULT_GRACE_SECONDS, prices=PRICES,
           fc_prices=fc_cost.PRICES, configured=None, runs=None, identities=None, history=None,
           rto_seconds=None):
    """The status report: per kind on the primary (and per database, with several:
    `configured` is BACKUP_DATABASES as a list, `runs` newest_runs()), 3-2-1 for the
    newest backups, and which encrypted backups each identity opens (`identities`: the
    configured identities' public keys, None when none is configured). With `history`
    (history.recent: failed backup attempts and drills), the timelines of the last
    TIMELINE_DAYS days, the failures in them and the last drill: what the status page
    draws (status_page.py); `rto_seconds` the drill's limit (RTO_SECONDS)."""
    from .drill import RTO_SECONDS
    now = now if now is not None else datetime.now(timezone.utc).timestamp()
    primary = locations[0]
    runs = runs or {}
    per_kind = {}
    for kind in kinds:
        mine = [b for b in primary.backups if b.kind == kind and b.group != "globals"]
        latest = newest(primary.backups, kind)
        per_kind[kind] = {
            "count": len(mine), "keep": keep.get(kind), "bytes": sum(b.size for b in mine),
            "encrypted": sum(b.encrypted for b in mine),
            "newest": latest.key if latest else None,
            "newest_encrypted": latest.encrypted if latest else None,
            "newest_verdict": (latest.verdict or "unverified") if latest else None,
            "age_hours": round((now - latest.finished_at) / HOUR, 2) if latest else None,
            "rpo_hours": RPO_SECONDS[kind] / HOUR if RPO_SECONDS[kind] else None,
            "late": False,
        }
        expected = expected_databases(primary.backups, kind, configured, runs.get(kind))
        if expected != [""]:
            per_kind[kind]["databases"] = _per_database(primary.backups, kind, expected,
                                                        runs.get(kind), now)
    rpo_problems = check_rpo(primary.backups, kinds, now, grace, configured, runs)
    for kind, _ in rpo_problems:
        per_kind[kind]["late"] = True  # over its RPO (or a database's run never reported)
    copies = []
    for kind in kinds:
        latest = newest(primary.backups, kind)
        if latest is None or RPO_SECONDS[kind] is None:
            continue
        relative = latest.key[len(names_prefix(latest.key)):]
        found = [loc for loc in locations if any(b.key.endswith(relative) for b in loc.backups)]
        copies.append({"kind": kind, "key": latest.key, "encrypted": latest.encrypted,
                       "copies": [loc.name for loc in found],
                       "media": sorted({loc.medium for loc in found}),
                       "offsite": any(loc.offsite for loc in found)})
    # the backups of the window: those there, and those retention deleted (their records)
    known = primary.backups + pruned_backups((history or {}).get("pruned", []),
                                             {b.key for b in primary.backups})
    compliant = (not rpo_problems and bool(copies) and all(
        len(c["copies"]) >= 3 and len(c["media"]) >= 2 and c["offsite"] for c in copies))
    return {
        "compliant": compliant,
        "kinds": per_kind,
        "rpo_problems": [p for _, p in rpo_problems],
        "three_two_one": copies,
        "locations": [{"name": loc.name, "url": loc.url, "medium": loc.medium,
                       "offsite": loc.offsite, "backups": len(loc.backups), "error": loc.error}
                      for loc in locations],
        "needs_restore": [{"key": b.key, "state": b.archive} for b in primary.backups if b.archive],
        "encryption": encryption(primary.backups, identities),
        "monthly_cost_cny": monthly_cost(
            primary.backups, now, prices,
            replicated=any(loc.name == "dr" and loc.backups for loc in locations)),
        "monthly_fc_cost_cny": fc_cost.monthly_from_backups(primary.backups, now, prices=fc_prices),
        "generated_at": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"),
        "window_days": TIMELINE_DAYS,
        "timelines": timelines(known, kinds, now, grace),
        "failed_verifications": [
            {"key": b.key, "kind": b.kind, "database": b.group, "finished_at": b.finished_at}
            for b in known if b.verdict == "failed" and now - b.finished_at <= TIMELINE_DAYS * 86400],
        "backup_failures": (history or {}).get("backup_failures", []),
        "drills": (history or {}).get("drills", []),
        "last_drill": last_drill((history or {}).get("drills", [])),
        "rto_seconds": rto_seconds or RTO_SECONDS,
    }


def encryption(backups, identities=None):
    """The encrypted backups, the public keys they are encrypted to, and for each of
    `identities` (public keys) the backups it opens: those its header opens with it when
    survey looked, else those whose manifest lists it. `mismatches`: where the header and
    the manifest disagree (a manifest that does not describe its object)."""
    sealed = [b for b in backups if b.encrypted]
    recipients = {}
    for b in sealed:
        for r in b.recipients or ():
            recipients.setdefault(r, []).append(b.key)
    found = {"encrypted": len(sealed), "plain": len(backups) - len(sealed),
             "recipients": {r: len(keys) for r, keys in sorted(recipients.items())},
             "unknown_recipients": [b.key for b in sealed if b.recipients is None],
             "identities": None, "opened_by_none": None, "unreadable_headers": [],
             "mismatches": []}
    if identities is None:
        return found
    found["identities"] = []
    opened = set()
    for r in identities:
        opens = []
        for b in sealed:
            listed = b.recipients is not None and r in b.recipients
            if b.opened_by is None:
                takes = listed
            else:
                takes = r in b.opened_by
                if b.recipients is not None and takes != listed:
                    found["mismatches"].append(
                        f"{b.key}: its header {'opens' if takes else 'does not open'} with "
                        f"{r}, its manifest {'lists' if listed else 'does not list'} it")
            if takes:
                opens.append(b.key)
                opened.add(b.key)
        found["identities"].append({"recipient": r, "opens": opens})
    found["opened_by_none"] = [b.key for b in sealed if b.key not in opened]
    found["unreadable_headers"] = [f"{b.key}: {b.header_error}" for b in sealed if b.header_error]
    return found


def _per_database(backups, kind, expected, run, now):
    """{database: its newest backup, verdict, age and the newest run's outcome}."""
    outcomes = (run or {}).get("outcomes", {})
    found = {}
    for database in expected:
        latest = newest(backups, kind, group=database)
        outcome = outcomes.get(database)
        found[database or "(the database)"] = {
            "count": sum(1 for b in backups if b.kind == kind and b.group == database),
            "newest": latest.key if latest else None,
            "newest_verdict": (latest.verdict or "unverified") if latest else None,
            "age_hours": round((now - latest.finished_at) / HOUR, 2) if latest else None,
            "last_run": None if not run else {
                "run": run.get("run"),
                "outcome": ("ok" if outcome["ok"] else "failed") if outcome else "no outcome yet",
                **({"error": outcome["error"]} if outcome and not outcome["ok"] else {})},
        }
    return found


def names_prefix(key):
    """The prefix part of a backup key (up to and including the folder before the kind)."""
    for kind in names.KINDS:
        marker = f"{kind}/"
        at = key.find(marker)
        if at >= 0:
            return key[:at]
    return ""
