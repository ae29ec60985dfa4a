"""A realistic 90-day history in a backup storage, for the status page's tests: nightly
daily backups with sizes that grow and durations that vary, Sunday weeklies, a few
manual ones, one backup that failed verification, a stretch of nights with no backup
(a gap: the timer was off), and a newest daily 30 hours old (the daily kind is late).
The objects are small stand-ins with real manifests and verify tags: the page reads
manifests, tags and listings, never the dumps."""
import json
from datetime import datetime, timedelta, timezone

from l2c_backup import names

UTC8 = timezone(timedelta(hours=8))
DAY = 86400
GAP_DAYS = range(40, 44)  # days ago with no daily backup: a gap wider than the RPO
FAILED_VERIFY_DAY = 20  # days ago: that night's backup failed verification
LATE_HOURS = 30  # the newest daily's age: over the RPO of 24 h + 2 h grace


def put_backup(storage, key, finished, size, seconds, verdict="ok"):
    storage.put_bytes(key, b"\x1f\x8b" + b"x" * (size // 1000))  # to scale, 1:1000
    doc = {"finished_at": datetime.fromtimestamp(finished, timezone.utc).isoformat(),
           "duration_seconds": seconds, "size": size}
    storage.put_bytes(names.manifest_key(key), json.dumps(doc).encode())
    if verdict:
        storage.set_tags(key, {"verify": verdict, "verify-reason": "ok" if verdict == "ok" else "gzip"})
    return key


def seed(storage, now, days=90):
    """Puts the history; returns {"late_kind", "failed_key", "newest": {kind: key}}."""
    prefix, made = storage.prefix, {}
    failed_key = None
    for ago in range(days, 0, -1):
        if ago in GAP_DAYS:
            continue
        night = datetime.fromtimestamp(now - ago * DAY, UTC8).replace(hour=2, minute=0, second=0)
        finished = night.timestamp() + 600 + (ago % 7) * 60
        if finished > now - LATE_HOURS * 3600:
            continue  # the last night's backup never ran: the daily kind is late
        key = names.backup_key(prefix, "daily", night)
        verdict = "failed" if ago == FAILED_VERIFY_DAY else "ok"
        put_backup(storage, key, finished, 180_000_000 + (days - ago) * 1_500_000,
                   420 + (ago % 5) * 45, verdict)
        failed_key = key if verdict == "failed" else failed_key
        made["daily"] = key
        if night.isoweekday() == 7:  # Sundays 03:00
            weekly = night.replace(hour=3)
            made["weekly"] = put_backup(storage, names.backup_key(prefix, "weekly", weekly),
                                        weekly.timestamp() + 700, 185_000_000 + (days - ago) * 1_500_000, 480)
    for ago in (60, 15, 3):
        at = datetime.fromtimestamp(now - ago * DAY + 5 * 3600, UTC8)
        made["manual"] = put_backup(storage, names.backup_key(prefix, "manual", at),
                                    at.timestamp() + 300, 190_000_000, 300)
    return {"late_kind": "daily", "failed_key": failed_key, "newest": made}
