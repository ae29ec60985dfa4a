"""FC handler of the `backup` function (timer daily / weekly, `s invoke` manual).

Parse the event, build the config (credentials from the function's role), run the
backup, return a JSON summary. A failure is logged as an error line and re-raised, so FC
records the invocation as failed; nothing is swallowed.

With several databases (BACKUP_DATABASES=all or a list) an event without a database is
the dispatcher: it starts one asynchronous invocation of this function per database and
records the run (l2c_backup.fanout); an event naming a database backs up that one.
"""
import json
import logging
from datetime import datetime

from l2c_backup import config, events, fanout, history, logs
from l2c_backup.backup import run_backup
from l2c_backup.errors import L2CError
from l2c_backup.fc import credentials_from, report_failure

log = logging.getLogger("l2c_backup.handler.backup")

TIMEOUT_MARGIN_SECONDS = 60  # leave time to abort the upload and report before FC kills us


def _timeout(context):
    return int(getattr(getattr(context, "function", None), "timeout", 0) or 0)


def time_budget(context, environ):
    if environ.get("BACKUP_TIMEOUT_SECONDS"):
        return None  # config reads it
    timeout = _timeout(context)
    return max(timeout - TIMEOUT_MARGIN_SECONDS, 60) if timeout else None


def handler(event, context):
    logs.setup(json_lines=True)
    request_id = getattr(context, "request_id", "") or ""
    cfg = request = None
    with logs.bound(request_id=request_id, function="backup"):
        try:
            request = events.parse_backup_event(event)
            creds = credentials_from(context)
            if creds:
                logs.register_secret(creds[1], creds[2])
            cfg = config.load(credentials=creds)
            budget = time_budget(context, config.environment())
            if budget:
                cfg.timeout_seconds = budget
            kind, database = request["kind"], request.get("database")
            if database:
                when = request.get("when")
                when = datetime.fromisoformat(when.replace("Z", "+00:00")) if when else None
                summary = fanout.run_one(cfg, kind, database, request_id, request.get("run"), when)
            elif fanout.wanted(cfg):
                invoker, function = fanout.this_function(context)
                summary = fanout.dispatch(cfg, kind, invoker, function, request_id,
                                          timeout_seconds=_timeout(context))
            else:
                summary = run_backup(cfg, kind, request_id=request_id)
        except L2CError as err:
            report_failure(log, "backup", err)
            if cfg is not None:  # else there is no target to record the failure in
                history.record_failed_run(cfg, request["kind"], request.get("database") or "",
                                          err, request_id)
            raise
    return json.dumps(summary)
