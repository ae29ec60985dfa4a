"""FC handler of the `alert` function: the failure destination of the others' async
invocations. FC calls it when an invocation failed for good (timed out, crashed, or was
dropped), including failures the function could not report itself, such as being
killed at its timeout. It sends one urgent alert naming the function and the request.
"""
import json
import logging

from l2c_backup import alerts, logs

log = logging.getLogger("l2c_backup.handler.alert")


def handler(event, context):
    logs.setup(json_lines=True)
    try:
        record = json.loads(event)
    except ValueError:
        record = {"raw": event.decode("utf-8", "replace")[:500] if isinstance(event, bytes) else str(event)[:500]}
    request = record.get("requestContext", {}) if isinstance(record, dict) else {}
    function = request.get("functionArn", "unknown function").rsplit("/", 1)[-1]
    response = record.get("responsePayload", "") if isinstance(record, dict) else ""
    reason = request.get("condition", "invocation failed")
    details = {"function": function, "request_id": request.get("requestId", "?"),
               "attempts": request.get("approximateInvokeCount", "?")}
    with logs.bound(request_id=getattr(context, "request_id", None), function="alert"):
        log.error("async invocation of %s failed: %s %s", function, reason, str(response)[:300])
        alerts.send(alerts.Alert("urgent", f"{function} failed", f"{reason}: {str(response)[:300]}",
                                 details))
    return json.dumps({"alerted": function})
