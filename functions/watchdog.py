"""FC handler of the `watchdog` function (hourly timer).

Alerts urgently when the newest verified backup of a kind is older than the RPO plus a
grace period, for each database (BACKUP_DATABASES; with `all`, those of the newest run),
and for each database a run started that reported no outcome in time: it catches the
timer that never fired and the function that never started, failures nobody else
reports. Backups it cannot read (wrong credentials, a dead endpoint) are alerted
urgently too: then nobody can tell whether a backup exists. It also checks that the
alert channels and the DR endpoint can be reached (l2c_backup.egress): a service
without a route out warns in its log and through whichever channels still get through,
and reports it in its summary. Each hour it writes the status page (status_page.py) to
`<prefix>status/index.html`, a private object (`l2c-backup status --url` signs a link).
"""
import json
import logging
import time

from l2c_backup import config, egress, logs, status_page
from l2c_backup.errors import ConfigInvalid, L2CError, NotCompliant, StorageFailed
from l2c_backup.fc import already_alerted, credentials_from, report_failure
from l2c_backup.status import survey, watchdog
from l2c_backup.storage import open_storage

log = logging.getLogger("l2c_backup.handler.watchdog")
PAGE_MARGIN_SECONDS = 15  # to log, alert and return before FC's timeout


def page_seconds(context, started):
    """The time left for the page: the function's timeout less what has run, less a
    margin to report; None outside FC (no timeout)."""
    timeout = getattr(getattr(context, "function", None), "timeout", 0) or 0
    return max(timeout - (time.monotonic() - started) - PAGE_MARGIN_SECONDS, 1) if timeout else None


def handler(event, context):
    started = time.monotonic()
    logs.setup(json_lines=True)
    request_id = getattr(context, "request_id", "") or ""
    with logs.bound(request_id=request_id, function="watchdog"):
        try:
            routes = egress.route_alerts(config.environment())
            target, oss = config.storage_target(credentials=credentials_from(context))
            kinds = [k for k in config.environment().get("WATCHDOG_KINDS", "daily,weekly").split(",") if k]
            if not kinds or not set(kinds) <= {"daily", "weekly"}:
                raise ConfigInvalid("WATCHDOG_KINDS must list daily and/or weekly",
                                    "e.g. WATCHDOG_KINDS=daily,weekly (manual has no schedule)")
            grace = config.grace_seconds(config.environment())
            try:
                configured = config.environment().get("BACKUP_DATABASES", "").split(",")
                storage = open_storage(target, oss)
                backups = survey(storage)
                problems = watchdog(storage, kinds, grace=grace, configured=configured,
                                    backups=backups)
            except StorageFailed as err:
                # Elsewhere a warning; here it means nobody can tell whether backups exist.
                err.severity = "urgent"
                raise
            page = status_page.refresh(config.environment(), storage, oss, backups,
                                       credentials_from(context), page_seconds(context, started))
        except L2CError as err:
            report_failure(log, "watchdog", err)
            raise
        if problems:
            raise already_alerted(NotCompliant("; ".join(p for _, p in problems), "see the urgent alert"))
    return json.dumps({"ok": True, "kinds": kinds, "page": page,
                       "egress": {"checked": [r.setting for r in routes],
                                  "unreachable": [r.summary() for r in routes if not r.reachable]}})
