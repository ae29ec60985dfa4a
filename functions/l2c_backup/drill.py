"""The restore drill: prove the newest verified backup of a kind comes back within the RTO.

It restores into a scratch database on the target server (always named `l2c_drill_...`,
never the production name), checks that every table of the manifest is there with its
row count, runs the operator's SQL checks, and always drops the scratch database, also
when a step fails. The measured restore time is reported against the RTO (PLAN: 2 h).

The restore is the parallel one (parallel_restore.py, `restore --jobs`, DRILL_RESTORE_JOBS
sessions), as an operator racing the RTO would run it. Beside its time the report gives
the time the one-stream restore would have taken, estimated with the ratio the bench
measured (ONE_STREAM_OVER_JOBS), so the RTO can be judged either way. A backup made
before the table index restores in one stream, and the report says so.

An encrypted backup (age) is opened with the identity of BACKUP_AGE_IDENTITY (on FC, from
a secret) or BACKUP_AGE_IDENTITY_FILE; without one that opens it the drill fails, naming
the public keys the backup was written to, before any scratch database is made.

Scratch names are unique per run (time and a random suffix), so two drills at once (a
timer delivered twice) never share one, and each drops only its own. A drill killed
before its clean-up (SIGKILL, FC's timeout) leaves its scratch database: the next drill
drops those older than any run can be and with no session connected.
"""
import logging
import re
import secrets
from datetime import datetime, timezone

import pg8000.native

from . import alerts, archive, config, history, manifest, names
from .database import connect
from .errors import L2CError, RestoreRefused
from .parallel_restore import restore_parallel
from .restore import drop_database, find_backup, read_manifest, restore

log = logging.getLogger(__name__)

SCRATCH_PREFIX = "l2c_drill_"
RTO_SECONDS = 2 * 3600
# FC's longest run (24 h) and a margin: no drill still running has a scratch database older.
STALE_AFTER_SECONDS = 26 * 3600
# The one-stream restore's time over the --jobs restore's, by jobs, from
# `python bench/restore_jobs.py --sizes 1 --table-size 4 --oss` (issue 14, 2 cores): (a)
# gunzip | psql -1 13.9 s over (bN)'s restore_seconds 13.9 / 9.4 / 10.9 s, rounded down
# (the medians gave less: 1.26x for --jobs 2 on the process wall).
ONE_STREAM_OVER_JOBS = {1: 1.0, 2: 1.4, 4: 1.25}
_SCRATCH = re.compile(rf"{SCRATCH_PREFIX}(?:{'|'.join(names.KINDS)})_(\d{{14}})(?:_[0-9a-f]+)?")


def scratch_name(kind, now=None):
    """`l2c_drill_<kind>_<UTC time>_<8 hex>`: unique per run, at most 40 bytes (63 allowed)."""
    stamp = (now or names.now()).strftime('%Y%m%d%H%M%S')
    return f"{SCRATCH_PREFIX}{kind}_{stamp}_{secrets.token_hex(4)}"


def drop_stale_scratch(server, now=None):
    """Drops the scratch databases of drills killed before their clean-up: named like
    one, made over STALE_AFTER_SECONDS ago, no session connected. Returns their names;
    a failure here is logged and never fails the drill."""
    now = now or names.now()
    dropped = []
    try:
        conn = connect(server)
    except L2CError as err:
        log.warning("could not look for stale drill databases: %s", err)
        return dropped
    try:
        found = conn.run("SELECT d.datname, (SELECT count(*) FROM pg_stat_activity a "
                         "WHERE a.datid = d.oid) FROM pg_database d WHERE d.datname LIKE 'l2c%'")
        for name, sessions in found:
            made = _SCRATCH.fullmatch(name)
            if not made or sessions:
                continue
            age = now - datetime.strptime(made[1], "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)
            if age.total_seconds() < STALE_AFTER_SECONDS:
                continue
            try:
                conn.run(f'DROP DATABASE "{name}"')  # without FORCE: a session now refuses it
            except pg8000.native.DatabaseError as err:
                log.warning("could not drop stale drill database %s: %s", name, err)
                continue
            log.warning("dropped %s: the scratch database of a drill killed before its "
                        "clean-up (%.0f h old, no session)", name, age.total_seconds() / 3600)
            dropped.append(name)
    finally:
        conn.close()
    return dropped


def one_stream_estimate(seconds, jobs):
    """The one-stream restore's time, from a --jobs restore's: the bench's ratio for the
    largest measured jobs not above `jobs` (more sessions than measured gain at least that)."""
    measured = [j for j in ONE_STREAM_OVER_JOBS if j <= jobs]
    return round(seconds * (ONE_STREAM_OVER_JOBS[max(measured)] if measured else 1.0), 3)


def check_restored(settings, doc, sql_checks=()):
    """Failures (strings): missing tables, row counts that differ, SQL checks not true."""
    failures = []
    conn = connect(settings)
    try:
        for table, expected in sorted(doc["table_rows"].items()):
            try:
                [[found]] = conn.run(f"SELECT count(*) FROM {table}")
            except Exception as exc:  # a missing table is a finding, not a crash
                failures.append(f"table {table} missing or unreadable: {exc}")
                continue
            if found != expected:
                failures.append(f"table {table} has {found} rows, the manifest says {expected}")
        for sql in sql_checks:
            try:
                rows = conn.run(sql)
            except Exception as exc:
                failures.append(f"check {sql!r} failed: {exc}")
                continue
            if rows != [[True]]:
                failures.append(f"check {sql!r} returned {rows!r}, not true")
    finally:
        conn.close()
    return failures


def run_drill(storage, kind, server, production_db, sql_checks=(), rto_seconds=RTO_SECONDS,
              request_id="", wait_archive=True, jobs=None, identities=None):
    """Restores the newest verified backup of `kind` into a scratch database on `server`
    (DatabaseSettings of a database to connect to there) over `jobs` sessions (default
    DRILL_RESTORE_JOBS), checks it, drops it. An encrypted backup is opened with
    `identities` (None: from the environment).
    Returns the report; alerts the result (urgent when anything failed) and records it in
    the storage's history (history.py) for the status page."""
    jobs = jobs or config.drill_restore_jobs()
    scratch = scratch_name(kind)
    if not scratch.startswith(SCRATCH_PREFIX) or scratch == production_db:
        raise RestoreRefused(f"a drill may only write to {SCRATCH_PREFIX}* databases")
    report = {"kind": kind, "source": storage.url, "scratch_database": scratch,
              "rto_seconds": rto_seconds, "request_id": request_id, "restore_jobs": jobs,
              "restore_mode": "parallel", "one_stream_seconds": None}
    try:
        report["stale_dropped"] = drop_stale_scratch(server)
        key = find_backup(storage, latest=True, kind=kind, verified_only=True)
        report["key"] = key
        # An archived backup is restored by OSS first (archive.py), or with
        # wait_archive=False the drill fails saying the restore was requested.
        archive.ensure_readable(storage, [key, names.manifest_key(key)], wait=wait_archive,
                                command="the drill")
        doc = read_manifest(storage, key)
        # restore() drops the scratch database itself when it fails, and never touches
        # one it did not make; once it returned, the database is ours to drop.
        if manifest.sections_of(doc) is None:
            log.warning("%s has no table index (it was made before l2c-backup could cut "
                        "one): the drill restores it in one stream", key)
            report.update(restore_mode="one stream: the backup has no table index",
                          restore_jobs=1)
            result = restore(storage, key, server, create_db=scratch, identities=identities)
            one_stream = result["restore_seconds"]
        else:
            result = restore_parallel(storage, key, server, scratch, jobs,
                                      wait_archive=wait_archive, identities=identities)
            one_stream = one_stream_estimate(result["restore_seconds"], jobs)
        try:
            report["restore_seconds"] = result["restore_seconds"]
            report["one_stream_seconds"] = one_stream
            report["failures"] = check_restored(server.with_dbname(scratch), doc, sql_checks)
        finally:
            drop_database(server, scratch)
    except L2CError as err:
        report["failures"] = [str(err)]
        report["error"] = err  # the handler raises the real cause (popped before JSON)
        report.setdefault("restore_seconds", None)
    seconds = report["restore_seconds"]
    report["within_rto"] = seconds is not None and seconds <= rto_seconds
    if seconds is not None and not report["within_rto"]:
        report["failures"].append(f"restore took {seconds:.0f}s, over the RTO of {rto_seconds}s")
    report["ok"] = not report["failures"]
    facts = {"kind": kind, "key": report.get("key", "-"), "restore_seconds": seconds,
             "restore_jobs": report["restore_jobs"], "restore_mode": report["restore_mode"],
             "one_stream_seconds": report["one_stream_seconds"], "rto_seconds": rto_seconds}
    if report["ok"]:
        how = (f"over {report['restore_jobs']} sessions (one stream: about "
               f"{report['one_stream_seconds']:.1f}s, from the bench's ratio)"
               if report["restore_mode"] == "parallel" else f"in {report['restore_mode']}")
        log.info("drill passed: %s restored in %.1fs %s (RTO %ds)", report["key"], seconds, how,
                 rto_seconds)
        alerts.send(alerts.Alert("info", "drill passed",
                                 f"restored and checked in {seconds:.1f}s {how}", facts))
    else:
        log.error("drill failed: %s", "; ".join(report["failures"]))
        alerts.send(alerts.Alert("urgent", "drill failed", "; ".join(report["failures"]), facts))
    history.record_drill(storage, report, history.scrub_of(server))
    return report
