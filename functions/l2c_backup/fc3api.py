"""The few FC 3.0 API calls (2023-03-30) `l2c-backup invoke` makes, over the standard library.

Functions deployed by template.yml (ROS ALIYUN::FC3::Function) exist only in FC 3.0, which
has no services: aliyun-fc2 addresses `/services/{service}/functions/{function}`, so it
cannot name them. These calls do, signed as Alibaba Cloud's own SDK
(@alicloud/fc20230330 over @alicloud/openapi-core) signs them, ACS3-HMAC-SHA256:

    canonical request = METHOD \\n percent-encoded path \\n sorted query \\n
                        `name:value\\n` for host, content-type and every x-acs-* header
                        (lower-case, sorted) \\n their names joined by ';' \\n SHA-256(body) hex
    Authorization: ACS3-HMAC-SHA256 Credential=<ak>,SignedHeaders=<names>,
                   Signature=hex(HMAC-SHA256(secret, "ACS3-HMAC-SHA256\\n" + hex(SHA-256(canonical))))

with `x-acs-date` (ISO 8601 UTC), `x-acs-signature-nonce`, `x-acs-content-sha256`, and for
an STS key `x-acs-accesskey-id` and `x-acs-security-token`. tests/test_invoke_fc3.py
checks the local FC endpoint against the official SDK and this client against that endpoint.

- InvokeFunction: POST /2023-03-30/functions/{name}/invocations, `x-fc-invocation-type`
  Sync or Async, `x-fc-async-task-id` for an async task.
- GetFunction: GET /2023-03-30/functions/{name}.
- GetAsyncTask: GET /2023-03-30/functions/{name}/async-tasks/{id}.

Errors come back as `{"Code", "Message", "RequestId"}` (FC3Error); a function that raised
answers 200 with `x-fc-error-type` and the runtime's `{"errorMessage", "errorType"}` body.
"""
import hashlib
import hmac
import http.client
import json
import socket
import time
import uuid
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

API_VERSION = "2023-03-30"
ALGORITHM = "ACS3-HMAC-SHA256"


class FC3Error(Exception):
    """FC refused the request (HTTP status, Code, Message, RequestId)."""

    def __init__(self, status, code, message, request_id=""):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.request_id = status, code, message, request_id


class FC3Timeout(Exception):
    """No answer within the read timeout."""


class FC3Unreachable(Exception):
    """The endpoint could not be reached."""


@dataclass
class Response:
    status: int
    headers: dict   # lower-case names
    body: bytes

    @property
    def request_id(self):
        return self.headers.get("x-fc-request-id", "")


def percent_encode(value):
    """The SDK's encoding: RFC 3986 unreserved characters kept, everything else %XX."""
    return quote(str(value), safe="-_.~")


def canonical_query(query):
    return "&".join(f"{k}={percent_encode(v) if v is not None else ''}" for k, v in sorted(query.items()))


def signed_headers_of(headers):
    """(canonical header lines, signed names) over host, content-type and x-acs-*."""
    picked = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower.startswith("x-acs-") or lower in ("host", "content-type"):
            picked.setdefault(lower, []).append((value or "").strip())
    names = sorted(picked)
    lines = "".join(f"{n}:{','.join(sorted(picked[n]))}\n" for n in names)
    return lines, names


def signature(secret, method, path, query, headers, payload_hash):
    """The hex signature of a request; `path` as sent (percent-encoded)."""
    lines, names = signed_headers_of(headers)
    canonical = "\n".join([method.upper(), path, canonical_query(query), lines, ";".join(names),
                           payload_hash])
    to_sign = f"{ALGORITHM}\n{hashlib.sha256(canonical.encode('utf-8')).hexdigest()}"
    return hmac.new(secret.encode("utf-8"), to_sign.encode("utf-8"), hashlib.sha256).hexdigest(), names


class Client:
    """endpoint: https://<account id>.<region>.fc.aliyuncs.com (or the local FC endpoint)."""

    def __init__(self, endpoint, access_key_id, access_key_secret, security_token="",
                 connect_timeout=10, now=time.time):
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        self.scheme, self.host = parts.scheme, parts.netloc
        self.access_key_id, self.access_key_secret = access_key_id, access_key_secret
        self.security_token = security_token or ""
        self.connect_timeout, self.now = connect_timeout, now

    # -- the calls ---------------------------------------------------------------------
    def get_function(self, name, timeout=30):
        return json.loads(self.request("GET", f"/{API_VERSION}/functions/{percent_encode(name)}",
                                       "GetFunction", timeout=timeout).body or b"{}")

    def invoke_function(self, name, payload, invocation_type="Sync", task_id="", timeout=60):
        headers = {"x-fc-invocation-type": invocation_type}
        if task_id:
            headers["x-fc-async-task-id"] = task_id
        return self.request("POST", f"/{API_VERSION}/functions/{percent_encode(name)}/invocations",
                            "InvokeFunction", body=payload, headers=headers, timeout=timeout)

    def get_async_task(self, name, task_id, timeout=60):
        path = (f"/{API_VERSION}/functions/{percent_encode(name)}/async-tasks/"
                f"{percent_encode(task_id)}")
        return json.loads(self.request("GET", path, "GetAsyncTask", timeout=timeout).body or b"{}")

    # -- signing and sending -------------------------------------------------------------
    def signed_headers(self, method, path, action, body=b"", query=None, headers=None):
        headers = {
            "host": self.host,
            "x-acs-action": action,
            "x-acs-version": API_VERSION,
            "x-acs-date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.now())),
            "x-acs-signature-nonce": uuid.uuid4().hex,
            "x-acs-content-sha256": hashlib.sha256(body).hexdigest(),
            "accept": "application/json",
            **(headers or {}),
        }
        if body:
            headers["content-type"] = "application/octet-stream"
        if self.security_token:
            headers["x-acs-accesskey-id"] = self.access_key_id
            headers["x-acs-security-token"] = self.security_token
        sig, names = signature(self.access_key_secret, method, path, query or {}, headers,
                               headers["x-acs-content-sha256"])
        headers["Authorization"] = (f"{ALGORITHM} Credential={self.access_key_id},"
                                    f"SignedHeaders={';'.join(names)},Signature={sig}")
        return headers

    def request(self, method, path, action, body=b"", headers=None, timeout=60):
        headers = self.signed_headers(method, path, action, body, None, headers)
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        conn = cls(self.host, timeout=self.connect_timeout)
        try:
            try:
                conn.connect()
            except OSError as err:
                raise FC3Unreachable(f"{type(err).__name__}: {err}") from None
            conn.sock.settimeout(timeout)
            try:
                conn.request(method, path, body=body or None, headers=headers)
                raw = conn.getresponse()
                response = Response(raw.status, {k.lower(): v for k, v in raw.getheaders()}, raw.read())
            except (socket.timeout, TimeoutError):
                raise FC3Timeout(f"no answer within {timeout:.0f} s") from None
            except OSError as err:
                raise FC3Unreachable(f"{type(err).__name__}: {err}") from None
        finally:
            conn.close()
        if response.status >= 300:
            try:
                error = json.loads(response.body)
            except ValueError:
                error = {}
            error = error if isinstance(error, dict) else {}
            raise FC3Error(response.status, error.get("Code") or str(response.status),
                           error.get("Message") or response.body.decode("utf-8", "replace")[:300],
                           error.get("RequestId") or response.request_id)
        return response
