"""Checks OSS request signatures as the service does: V1 (HMAC-SHA1) and V4 (HMAC-SHA256).

The server rebuilds the string to sign from the request it received, the way oss2 builds
it before sending (oss2/auth.py), so a client bug or a wrong secret fails here as it
would on Aliyun.
"""
import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from datetime import datetime, timezone

from oss2.auth import ProviderAuth

from .store import OSSError

MAX_SKEW_SECONDS = 15 * 60

# Query parameters that V1 signs: the sub-resources of the OSS documentation, as oss2
# lists them; every other parameter (prefix, max-keys, ...) is left out of the signature.
V1_SUBRESOURCES = ProviderAuth._subresource_key_set

V4_ALWAYS_SIGNED = ("content-type", "content-md5")


@dataclass
class Credential:
    access_key_id: str
    access_key_secret: str
    security_token: str = ""


def _hmac(key, msg, digest):
    return hmac.new(key, msg, digest).digest()


def _denied(code, message, status=403, **extra):
    return OSSError(status, code, message, extra=extra)


def _raw(value):
    # http.client decodes header bytes as latin-1; undo that to sign the bytes sent.
    return value.encode("latin-1", "replace")


def _check_time(request_time, now):
    if abs(request_time - now) > MAX_SKEW_SECONDS:
        raise _denied("RequestTimeTooSkewed", "The difference between the request time and the "
                      "current time is too large.", MaxAllowedSkewMilliseconds="900000")


def _v1_string_to_sign(method, headers, bucket, key, params):
    oss_headers = sorted((k.lower(), v) for k, v in headers.items() if k.lower().startswith("x-oss-"))
    canon = b"".join(k.encode() + b":" + _raw(v) + b"\n" for k, v in oss_headers)
    resource = f"/{bucket}/{key}" if bucket else "/"
    signed = sorted((k, v) for k, v in params if k in V1_SUBRESOURCES)
    if signed:
        resource += "?" + "&".join(f"{k}={v}" if v else k for k, v in signed)
    date = headers.get("x-oss-date") or headers.get("date", "")
    return b"\n".join([method.encode(), _raw(headers.get("content-md5", "")),
                       _raw(headers.get("content-type", "")), _raw(date),
                       canon + resource.encode("utf-8")])


def _v4_encode(text, keep_slash):
    out = []
    for b in text.encode("utf-8"):
        c = chr(b)
        if c.isascii() and (c.isalnum() or c in "_-~.") or (keep_slash and c == "/"):
            out.append(c)
        else:
            out.append(f"%{b:02X}")
    return "".join(out)


def _v4_string_to_sign(method, headers, bucket, key, params, additional, date_time, scope):
    uri = _v4_encode(f"/{bucket}/{key}" if bucket else "/", True)
    query = "&".join(f"{k}={v}" if v else k for k, v in
                     sorted((_v4_encode(k, False), _v4_encode(v, False)) for k, v in params))
    signed = sorted((k.lower(), v) for k, v in headers.items()
                    if k.lower().startswith("x-oss-") or k.lower() in V4_ALWAYS_SIGNED
                    or k.lower() in additional)
    canon_headers = b"".join(k.encode() + b":" + _raw(v) + b"\n" for k, v in signed)
    canonical = (method.encode() + b"\n" + uri.encode() + b"\n" + query.encode() + b"\n"
                 + canon_headers + b"\n" + ";".join(sorted(additional)).encode() + b"\n"
                 + _raw(headers.get("x-oss-content-sha256", "UNSIGNED-PAYLOAD")))
    return ("OSS4-HMAC-SHA256\n" + date_time + "\n" + scope + "\n"
            + hashlib.sha256(canonical).hexdigest()).encode()


class Authenticator:
    def __init__(self, region, now=time.time):
        self.region = region
        self.now = now
        self.credentials = {}

    def add(self, access_key_id, access_key_secret, security_token=""):
        self.credentials[access_key_id] = Credential(access_key_id, access_key_secret,
                                                     security_token or "")

    def _lookup(self, access_key_id, headers):
        cred = self.credentials.get(access_key_id)
        if cred is None:
            raise _denied("InvalidAccessKeyId", "The OSS Access Key Id you provided does not exist "
                          "in our records.", OSSAccessKeyId=access_key_id)
        if cred.security_token and headers.get("x-oss-security-token") != cred.security_token:
            raise _denied("InvalidSecurityToken", "The security token you provided is invalid.")
        return cred

    def verify(self, method, headers, bucket, key, params):
        """Checks the request's Authorization; returns the access key id that signed it.

        headers: a case-insensitive mapping; params: decoded (name, value) query pairs."""
        auth = headers.get("authorization", "")
        if auth.startswith("OSS4-HMAC-SHA256 "):
            return self._verify_v4(auth, method, headers, bucket, key, params)
        if auth.startswith("OSS "):
            return self._verify_v1(auth, method, headers, bucket, key, params)
        raise _denied("AccessDenied", "You have no right to access this object because of bucket "
                      "acl." if auth == "" else "Authorization header is invalid.")

    def _verify_v1(self, auth, method, headers, bucket, key, params):
        access_key_id, _, signature = auth[4:].partition(":")
        cred = self._lookup(access_key_id.strip(), headers)
        # OSS takes the request time from x-oss-date when present, else from Date; the
        # same value is the Date line of the string to sign.
        date = headers.get("x-oss-date") or headers.get("date")
        try:
            request_time = parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            raise _denied("AccessDenied", "The Date (or x-oss-date) header is missing or "
                          "invalid.") from None
        _check_time(request_time, self.now())
        to_sign = _v1_string_to_sign(method, headers, bucket, key, params)
        expected = base64.b64encode(_hmac(cred.access_key_secret.encode(), to_sign,
                                          hashlib.sha1)).decode()
        if not hmac.compare_digest(expected, signature.strip()):
            raise _denied("SignatureDoesNotMatch", "The request signature we calculated does not "
                          "match the signature you provided. Check your key and signing method.",
                          StringToSign=to_sign.decode("utf-8", "replace"),
                          OSSAccessKeyId=access_key_id)
        return cred.access_key_id

    def _verify_v4(self, auth, method, headers, bucket, key, params):
        fields = {}
        for item in auth[len("OSS4-HMAC-SHA256 "):].split(","):
            name, _, value = item.strip().partition("=")
            fields[name] = value
        try:
            access_key_id, date, region, product, terminator = fields["Credential"].split("/")
            signature = fields["Signature"]
        except (KeyError, ValueError):
            raise _denied("AccessDenied", "Authorization header is invalid.", status=400) from None
        cred = self._lookup(access_key_id, headers)
        date_time = headers.get("x-oss-date", "")
        try:
            request_time = datetime.strptime(date_time, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        except ValueError:
            raise _denied("AccessDenied", "The x-oss-date header is missing or invalid.") from None
        _check_time(request_time.timestamp(), self.now())
        if region != self.region or product != "oss" or terminator != "aliyun_v4_request" \
                or date != date_time[:8]:
            raise _denied("SignatureDoesNotMatch", f"Invalid credential scope: {fields['Credential']} "
                          f"(this endpoint's region is {self.region}).")
        additional = [h for h in fields.get("AdditionalHeaders", "").lower().split(";") if h]
        scope = f"{date}/{region}/{product}/{terminator}"
        to_sign = _v4_string_to_sign(method, headers, bucket, key, params, additional,
                                     date_time, scope)
        signing_key = ("aliyun_v4" + cred.access_key_secret).encode()
        for part in (date, region, product, terminator):
            signing_key = _hmac(signing_key, part.encode(), hashlib.sha256)
        expected = hmac.new(signing_key, to_sign, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            raise _denied("SignatureDoesNotMatch", "The request signature we calculated does not "
                          "match the signature you provided. Check your key and signing method.",
                          StringToSign=to_sign.decode(), OSSAccessKeyId=access_key_id)
        return cred.access_key_id
