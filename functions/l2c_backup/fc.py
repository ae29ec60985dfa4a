"""What every FC handler needs from the runtime's context."""


def credentials_from(context):
    """python3.10 hands the role's STS credentials in the context; python3.12 does not,
    and config falls back to ALIBABA_CLOUD_ACCESS_KEY_ID / SECRET / SECURITY_TOKEN."""
    creds = getattr(context, "credentials", None)
    if creds is None or not getattr(creds, "access_key_id", None):
        return None
    return (creds.access_key_id, creds.access_key_secret, getattr(creds, "security_token", "") or "")


def report_failure(log, function, err):
    """Every failure path ends in an alert and a non-zero outcome: log it, alert unless
    the operation already did (err.alerted), and let the caller re-raise for FC."""
    from . import alerts
    log.error("%s failed (%s, severity %s): %s", function, type(err).__name__, err.severity, err)
    if not getattr(err, "alerted", False):
        alerts.send(alerts.Alert(err.severity, f"{function} failed", str(err), {"function": function}))
        err.alerted = True


def already_alerted(err):
    """Marks an error raised after its alert went out (so report_failure stays quiet)."""
    err.alerted = True
    return err
