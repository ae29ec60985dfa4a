"""FC handler of the `drill` function (monthly timer, and on demand).

`{"kind": "daily"}` drills the primary bucket; `{"kind": "daily", "source": "dr"}` the
DR bucket (PLAN's quarterly and yearly drills). Scratch databases go on the server of
DRILL_DATABASE_URL (default DATABASE_URL), never under the production name. An encrypted
backup is opened with BACKUP_AGE_IDENTITY (the age key file's text, from a secret), read
only when the backup drilled is encrypted.
"""
import json
import logging

from l2c_backup import config, events, logs
from l2c_backup.database import DatabaseSettings
from l2c_backup.drill import RTO_SECONDS, run_drill
from l2c_backup.errors import ConfigInvalid, L2CError, RestoreFailed
from l2c_backup.fc import already_alerted, credentials_from, report_failure
from l2c_backup.storage import open_storage

log = logging.getLogger("l2c_backup.handler.drill")


def drill_source(environ, source):
    """The storage target of the drill: the backup bucket, or the DR bucket."""
    if source != "dr":
        return None
    bucket = environ.get("OSS_DR_BUCKET")
    if not bucket:
        raise ConfigInvalid("OSS_DR_BUCKET is not set", "set it (e.g. l2c-backups-dr) to drill the DR copy")
    return f"oss://{bucket}/{environ.get('OSS_BACKUP_PREFIX', 'db-backups/')}"


def handler(event, context):
    logs.setup(json_lines=True)
    request_id = getattr(context, "request_id", "") or ""
    with logs.bound(request_id=request_id, function="drill"):
        try:
            request = events.parse_drill_event(event)
            environ = config.environment()
            source = request.get("source", "primary")
            if source == "dr" and environ.get("OSS_DR_ENDPOINT"):
                environ["OSS_ENDPOINT"] = environ["OSS_DR_ENDPOINT"]
            target, oss = config.storage_target(environ, drill_source(environ, source),
                                                credentials_from(context))
            production = DatabaseSettings.from_url(environ.get("DATABASE_URL"), environ)
            server = DatabaseSettings.from_url(
                environ.get("DRILL_DATABASE_URL") or environ.get("DATABASE_URL"), environ,
                "DRILL_DATABASE_URL" if environ.get("DRILL_DATABASE_URL") else "DATABASE_URL")
            logs.register_secret(production.password, server.password)
            try:
                checks = json.loads(environ.get("DRILL_CHECKS", "[]"))
            except ValueError:
                checks = None
            if not isinstance(checks, list) or not all(isinstance(c, str) for c in checks):
                raise ConfigInvalid("DRILL_CHECKS must be a JSON list of SQL queries returning true",
                                    'e.g. ["SELECT count(*) > 0 FROM sales.orders"]')
            report = run_drill(open_storage(target, oss), request["kind"], server,
                               production.dbname, checks,
                               int(environ.get("RTO_SECONDS", RTO_SECONDS)), request_id)
        except L2CError as err:
            report_failure(log, "drill", err)
            raise
        cause = report.pop("error", None)
        if not report["ok"]:
            # The drill alerted already; FC records the real cause (its exit code, its hint).
            raise already_alerted(cause or RestoreFailed(
                "drill failed: " + "; ".join(report["failures"]),
                "see the alert; restore the backup by hand to investigate"))
    return json.dumps(report)
