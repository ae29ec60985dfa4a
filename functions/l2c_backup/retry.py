"""Retry policies, declared once: every OSS call and (later) every alert send goes
through these, with their limits in one place (after restic's retry backend)."""
import http.client
import logging

import oss2
import requests
import urllib3
from tenacity import (RetryCallState, retry_if_exception, stop_after_attempt, stop_after_delay,
                      wait_random_exponential)

log = logging.getLogger(__name__)

ATTEMPTS = 6  # first try + 5 retries
MAX_WAIT_SECONDS = 20  # cap of one backoff step (jittered exponential from 0.5 s)
MAX_TOTAL_SECONDS = 300  # give up on one call after five minutes
# A read cut short resumes with a ranged GET from the last byte received; this many tries
# in a row that bring no new bytes end it (the count starts again whenever bytes arrive).
READ_ATTEMPTS = 6

# Errors that another try cannot fix: wrong credentials, missing bucket, refused access.
PERMANENT_CODES = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket",
    "InvalidSecurityToken", "SecurityTokenExpired", "InvalidBucketName", "InvalidArgument",
    "InvalidObjectName", "EntityTooSmall", "InvalidPart", "InvalidPartOrder", "NoSuchUpload",
    "FileImmutable", "FileAlreadyExists", "InvalidEncryptionAlgorithmError", "MalformedXML",
})


# How a dropped or stalled connection surfaces: oss2 wraps failures on the way out
# (RequestError), but a body cut short is noticed by requests/urllib3 while it is read.
TRANSPORT_ERRORS = (oss2.exceptions.RequestError, requests.exceptions.RequestException,
                    urllib3.exceptions.HTTPError, http.client.HTTPException, ConnectionError,
                    TimeoutError)


def is_transient(exc):
    """True for failures worth another try: 5xx, throttling, dropped connections."""
    if isinstance(exc, oss2.exceptions.ServerError):
        if exc.code in PERMANENT_CODES:
            return False
        return exc.status >= 500 or exc.status in (408, 429) or exc.status < 0
    return isinstance(exc, TRANSPORT_ERRORS)  # connection refused / reset / timed out


def _log_retry(state: RetryCallState):
    exc = state.outcome.exception()
    log.warning("retrying %s after attempt %d failed: %s", getattr(state.fn, "__name__", "call"),
                state.attempt_number, describe(exc))


def describe(exc):
    """One line about an OSS failure that carries no secret (no headers, no signature)."""
    if isinstance(exc, oss2.exceptions.OssError):
        # A HEAD answer has no body, so no code: say so rather than print an empty one.
        code = exc.code or ("no error code (HEAD request)" if exc.status >= 400 else type(exc).__name__)
        return f"OSS {exc.status} {code}: {exc.message or ''}".strip().rstrip(":")
    return f"{type(exc).__name__}: {exc}"


def oss_policy(attempts=ATTEMPTS, max_total=MAX_TOTAL_SECONDS):
    """kwargs for tenacity.Retrying / @retry around one OSS request."""
    return dict(retry=retry_if_exception(is_transient),
                wait=wait_random_exponential(multiplier=0.5, max=MAX_WAIT_SECONDS),
                stop=stop_after_attempt(attempts) | stop_after_delay(max_total),
                before_sleep=_log_retry, reraise=True)


def read_policy():
    """kwargs for tenacity around resuming an object read cut short: one attempt is a
    ranged GET from the last byte received and its first chunk."""
    return oss_policy(attempts=READ_ATTEMPTS)
