"""What every FC handler needs from the runtime's context, and how its failures are reported."""
import logging

# One urgent alert per failure. A handler alerts its own failures (it knows what failed and
# why), then raises so FC records the invocation as failed; FC then hands the failed async
# invocation to the `alert` function (the failure destination), whose own alert would be a
# second one. So a raised error whose alert went out starts with this mark; FC passes the
# error's message on as responsePayload.errorMessage, and functions/alert.py stays quiet
# when it finds the mark. Failures that never reach a handler's reporting (killed at the
# timeout, out of memory, a crash at import, an unexpected exception, an event dropped
# before it ran) carry no mark, and the destination alerts them once.
ALERTED_MARK = "[l2c: alert sent]"


def credentials_from(context):
    """python3.10 hands the role's STS credentials in the context; python3.12 does not,
    and config falls back to ALIBABA_CLOUD_ACCESS_KEY_ID / SECRET / SECURITY_TOKEN."""
    creds = getattr(context, "credentials", None)
    if creds is None or not getattr(creds, "access_key_id", None):
        return None
    return (creds.access_key_id, creds.access_key_secret, getattr(creds, "security_token", "") or "")


def report_failure(log, function, err):
    """Every failure path ends in an alert and a non-zero outcome: log it, alert unless
    the operation already did (err.alerted), mark it (ALERTED_MARK), and let the caller
    re-raise for FC."""
    from . import alerts
    log.error("%s failed (%s, severity %s): %s", function, type(err).__name__, err.severity, err)
    if not getattr(err, "alerted", False):
        alerts.send(alerts.Alert(err.severity, f"{function} failed", str(err), {"function": function}))
    already_alerted(err)


def already_alerted(err):
    """Marks an error raised after its alert went out: report_failure stays quiet, and its
    message starts with ALERTED_MARK so the failure destination does too. When an alert of
    this run reached no channel, the mark is left off: the destination alerts it, a second
    chance from another instance, rather than nobody."""
    from . import alerts
    err.alerted = True
    if alerts.take_undelivered():
        logging.getLogger(__name__).warning(
            "the alert of this failure reached no channel; the alert function (FC's failure "
            "destination) will send it")
        return err
    if err.args and not str(err.args[0]).startswith(ALERTED_MARK):
        err.args = (f"{ALERTED_MARK} {err.args[0]}",) + tuple(err.args[1:])
    return err
