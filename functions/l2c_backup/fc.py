"""What every FC handler needs from the runtime's context."""


def credentials_from(context):
    """python3.10 hands the role's STS credentials in the context; python3.12 does not,
    and config falls back to ALIBABA_CLOUD_ACCESS_KEY_ID / SECRET / SECURITY_TOKEN."""
    creds = getattr(context, "credentials", None)
    if creds is None or not getattr(creds, "access_key_id", None):
        return None
    return (creds.access_key_id, creds.access_key_secret, getattr(creds, "security_token", "") or "")
