"""FC handler of the `alert` function: the failure destination of the others' async
invocations. FC calls it when an invocation failed for good (timed out, crashed, or was
dropped), including failures the function could not report itself, such as being
killed at its timeout. It sends one urgent alert naming the function and the request,
unless the function already sent its own: then the error FC passes on
(responsePayload.errorMessage) starts with l2c_backup.fc.ALERTED_MARK, and a second
alert for the same failure would only be noise.

The destination event (FC "result callback"): {"timestamp", "requestContext":
{"requestId", "functionArn", "condition", "approximateInvokeCount"}, "requestPayload",
"responseContext": {"statusCode", "functionError"}, "responsePayload"}, where
responsePayload is the failed invocation's response: for a python handler that raised,
the JSON text {"errorMessage", "errorType", "stackTrace"}; empty when it never ran.
"""
import json
import logging

from l2c_backup import alerts, logs
from l2c_backup.fc import ALERTED_MARK

log = logging.getLogger("l2c_backup.handler.alert")


def _error_of(response):
    """(errorType, errorMessage) of a destination event's responsePayload."""
    if isinstance(response, (bytes, bytearray)):
        response = response.decode("utf-8", "replace")
    if isinstance(response, str):
        try:
            response = json.loads(response) if response.strip() else {}
        except (ValueError, RecursionError):
            return "", response
    if isinstance(response, dict):
        return str(response.get("errorType", "")), str(response.get("errorMessage", ""))
    return "", str(response or "")


def handler(event, context):
    logs.setup(json_lines=True)
    try:
        record = json.loads(event)
    except (ValueError, RecursionError):  # not JSON, or nested past the decoder's limit
        record = {"raw": event.decode("utf-8", "replace")[:500] if isinstance(event, bytes) else str(event)[:500]}
    if not isinstance(record, dict):
        record = {"raw": str(record)[:500]}
    request = record.get("requestContext") or {}
    function = str(request.get("functionArn") or "unknown function").rsplit("/", 1)[-1]
    error_type, message = _error_of(record.get("responsePayload", ""))
    reason = request.get("condition") or "invocation failed"
    details = {"function": function, "request_id": request.get("requestId", "?"),
               "attempts": request.get("approximateInvokeCount", "?")}
    with logs.bound(request_id=getattr(context, "request_id", None), function="alert"):
        if message.startswith(ALERTED_MARK):
            log.info("async invocation %s of %s failed and %s already sent its alert: %s",
                     details["request_id"], function, function, message[:300])
            return json.dumps({"alerted": None, "already_alerted_by": function})
        what = ": ".join(p for p in (error_type, message[:300]) if p) or "no response"
        log.error("async invocation of %s failed: %s %s", function, reason, what)
        alerts.send(alerts.Alert("urgent", f"{function} failed", f"{reason}: {what}", details))
    return json.dumps({"alerted": function})
