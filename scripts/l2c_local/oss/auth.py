"""Checks OSS request signatures as the service does: V1 (HMAC-SHA1) and V4 (HMAC-SHA256)
in the Authorization header, and V1 in the query string (a signed URL, GET and HEAD).

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
from .surface import not_implemented
from .xmlbody import iso8601

MAX_SKEW_SECONDS = 15 * 60

# Query parameters that V1 signs: the sub-resources of the OSS documentation, as oss2
# lists them; every other parameter (prefix, max-keys, ...) is left out of the signature.
V1_SUBRESOURCES = ProviderAuth._subresource_key_set

V4_ALWAYS_SIGNED = ("content-type", "content-md5")

# A V1 signed URL carries its signature in these parameters, which are never signed
# themselves; an STS key's `security-token` rides along as a signed sub-resource.
QUERY_SIGNATURE = ("OSSAccessKeyId", "Expires", "Signature")
# Methods a signed URL is served for here (the status page is read with GET).
QUERY_SIGNED_METHODS = ("GET", "HEAD")


@dataclass
class Credential:
    access_key_id: str
    access_key_secret: str
    security_token: str = ""


def _hmac(key, msg, digest):
    return hmac.new(key, msg, digest).digest()


def _denied(code, message, status=403, ec="", **extra):
    return OSSError(status, code, message, ec, extra=extra)


def _check_v1_signature(cred, to_sign, signature):
    expected = base64.b64encode(_hmac(cred.access_key_secret.encode(), to_sign,
                                      hashlib.sha1)).decode()
    if not hmac.compare_digest(expected, signature):
        raise _denied("SignatureDoesNotMatch", "The request signature we calculated does not "
                      "match the signature you provided. Check your key and signing method.",
                      StringToSign=to_sign.decode("utf-8", "replace"),
                      OSSAccessKeyId=cred.access_key_id)


def _raw(value):
    # http.client decodes header bytes as latin-1; undo that to sign the bytes sent.
    return value.encode("latin-1", "replace")


def _check_time(request_time, now):
    if abs(request_time - now) > MAX_SKEW_SECONDS:
        raise _denied("RequestTimeTooSkewed", "The difference between the request time and the "
                      "current time is too large.", MaxAllowedSkewMilliseconds="900000")


def _v1_string_to_sign(method, headers, bucket, key, params, date):
    oss_headers = sorted((k.lower(), v) for k, v in headers.items() if k.lower().startswith("x-oss-"))
    canon = b"".join(k.encode() + b":" + _raw(v) + b"\n" for k, v in oss_headers)
    resource = f"/{bucket}/{key}" if bucket else "/"
    signed = sorted((k, v) for k, v in params if k in V1_SUBRESOURCES)
    if signed:
        resource += "?" + "&".join(f"{k}={v}" if v else k for k, v in signed)
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

    def _lookup(self, access_key_id, security_token):
        cred = self.credentials.get(access_key_id)
        if cred is None:
            raise _denied("InvalidAccessKeyId", "The OSS Access Key Id you provided does not exist "
                          "in our records.", OSSAccessKeyId=access_key_id)
        if cred.security_token and security_token != cred.security_token:
            raise _denied("InvalidSecurityToken", "The security token you provided is invalid.")
        return cred

    def verify(self, method, headers, bucket, key, params):
        """Checks the request's Authorization header, or the signature in its query string
        (a signed URL); returns the access key id that signed it.

        headers: a case-insensitive mapping; params: decoded (name, value) query pairs."""
        auth = headers.get("authorization", "")
        names = {name for name, _ in params}
        if names & {"OSSAccessKeyId", "Signature"}:
            if auth:
                # OSS takes a signature in the URL or in the header, never both.
                raise _denied("InvalidArgument", "A request is signed in its Authorization "
                              "header or in its URL, not both.", status=400)
            return self._verify_query_v1(method, headers, bucket, key, params)
        if "x-oss-signature" in names or "x-oss-signature-version" in names:
            raise not_implemented("A V4 signature in the URL", {"Parameter": "x-oss-signature"})
        if auth.startswith("OSS4-HMAC-SHA256 "):
            return self._verify_v4(auth, method, headers, bucket, key, params)
        if auth.startswith("OSS "):
            return self._verify_v1(auth, method, headers, bucket, key, params)
        raise _denied("AccessDenied", "You have no right to access this object because of bucket "
                      "acl." if auth == "" else "Authorization header is invalid.")

    def _verify_v1(self, auth, method, headers, bucket, key, params):
        access_key_id, _, signature = auth[4:].partition(":")
        cred = self._lookup(access_key_id.strip(), headers.get("x-oss-security-token"))
        # OSS takes the request time from x-oss-date when present, else from Date; the
        # same value is the Date line of the string to sign.
        date = headers.get("x-oss-date") or headers.get("date")
        try:
            request_time = parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            raise _denied("AccessDenied", "The Date (or x-oss-date) header is missing or "
                          "invalid.") from None
        _check_time(request_time, self.now())
        to_sign = _v1_string_to_sign(method, headers, bucket, key, params, date)
        _check_v1_signature(cred, to_sign, signature.strip())
        return cred.access_key_id

    def _verify_query_v1(self, method, headers, bucket, key, params):
        """A V1 signed URL: the string to sign is the header form's with the Expires
        parameter (epoch seconds) in the Date line; the URL is refused once it has passed."""
        query = dict(params)
        if method not in QUERY_SIGNED_METHODS:
            raise not_implemented(f"A signed URL for {method}", {"Method": method})
        for name in QUERY_SIGNATURE:
            if not query.get(name):
                raise _denied("AccessDenied", f"The signed URL has no {name} parameter.")
        try:
            expires = int(query["Expires"])
        except ValueError:
            raise _denied("AccessDenied", "The Expires parameter is not a time in epoch "
                          "seconds.", ec="0002-00000070") from None
        now = self.now()
        if now > expires:
            raise _denied("AccessDenied", "Request has expired.", ec="0002-00000069",
                          Expires=iso8601(expires), ServerTime=iso8601(now))
        cred = self._lookup(query["OSSAccessKeyId"], query.get("security-token"))
        to_sign = _v1_string_to_sign(method, headers, bucket, key, params, query["Expires"])
        _check_v1_signature(cred, to_sign, query["Signature"])
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
        cred = self._lookup(access_key_id, headers.get("x-oss-security-token"))
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
