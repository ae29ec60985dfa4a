"""The restore drill: prove the newest verified backup of a kind comes back within the RTO.

It restores into a scratch database on the target server (always named `l2c_drill_...`,
never the production name), checks that every table of the manifest is there with its
row count, runs the operator's SQL checks, and always drops the scratch database, also
when a step fails. The measured restore time is reported against the RTO (PLAN: 2 h).
"""
import logging

from . import alerts, names
from .database import connect
from .errors import L2CError, RestoreRefused
from .restore import drop_database, find_backup, read_manifest, restore

log = logging.getLogger(__name__)

SCRATCH_PREFIX = "l2c_drill_"
RTO_SECONDS = 2 * 3600


def scratch_name(kind, now=None):
    return f"{SCRATCH_PREFIX}{kind}_{(now or names.now()).strftime('%Y%m%d%H%M%S')}"


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
              request_id=""):
    """Restores the newest verified backup of `kind` into a scratch database on `server`
    (DatabaseSettings of a database to connect to there), checks it, drops it.
    Returns the report; alerts the result (urgent when anything failed)."""
    scratch = scratch_name(kind)
    if not scratch.startswith(SCRATCH_PREFIX) or scratch == production_db:
        raise RestoreRefused(f"a drill may only write to {SCRATCH_PREFIX}* databases")
    report = {"kind": kind, "source": storage.url, "scratch_database": scratch,
              "rto_seconds": rto_seconds, "request_id": request_id}
    try:
        key = find_backup(storage, latest=True, kind=kind, verified_only=True)
        report["key"] = key
        doc = read_manifest(storage, key)
        result = restore(storage, key, server, create_db=scratch)
        report["restore_seconds"] = result["restore_seconds"]
        report["failures"] = check_restored(server.with_dbname(scratch), doc, sql_checks)
    except L2CError as err:
        report["failures"] = [str(err)]
        report.setdefault("restore_seconds", None)
    finally:
        drop_database(server, scratch)
    seconds = report["restore_seconds"]
    report["within_rto"] = seconds is not None and seconds <= rto_seconds
    if seconds is not None and not report["within_rto"]:
        report["failures"].append(f"restore took {seconds:.0f}s, over the RTO of {rto_seconds}s")
    report["ok"] = not report["failures"]
    facts = {"kind": kind, "key": report.get("key", "-"), "restore_seconds": seconds,
             "rto_seconds": rto_seconds}
    if report["ok"]:
        log.info("drill passed: %s restored in %.1fs (RTO %ds)", report["key"], seconds, rto_seconds)
        alerts.send(alerts.Alert("info", "drill passed", f"restored and checked in {seconds:.1f}s", facts))
    else:
        log.error("drill failed: %s", "; ".join(report["failures"]))
        alerts.send(alerts.Alert("urgent", "drill failed", "; ".join(report["failures"]), facts))
    return report
