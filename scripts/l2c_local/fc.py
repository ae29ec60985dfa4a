"""The local Function Compute endpoint: the FC 2.0 API (2016-08-15) as aliyun-fc2 uses it,
and the FC 3.0 API (2023-03-30) calls `l2c-backup invoke --api fc3` makes.

`LocalFC` serves, over real HTTP:

- `POST /2016-08-15/services/{service}/functions/{function}/invocations` (InvokeFunction):
  `x-fc-invocation-type: Sync` (the default) runs the handler and answers 200 with its
  return value as the body; an exception answers 200 with `x-fc-error-type:
  UnhandledInvocationError` and FC's python body `{"errorMessage", "errorType",
  "stackTrace"}`. `Async` answers 202 at once (with `x-fc-request-id`) and runs the
  handler on a background thread; `x-fc-stateful-async-invocation-id` names the task.
- `GET /2016-08-15/services/{service}/functions/{function}` (GetFunction).
- `GET .../functions/{function}/stateful-async-invocations/{id}` (GetStatefulAsyncInvocation;
  fc2 2.5.2 has no method for it, see l2c_backup/invoke.py).

Every request is checked as FC checks it before anything runs: the `Authorization: FC
ak:signature` header (HMAC-SHA256 over the method, Content-MD5, Content-Type, Date, the
sorted `x-fc-*` headers and the unescaped path, rebuilt here from the request received,
the way fc2/auth.py builds it before sending), the STS token in `x-fc-security-token`
when the key is an STS key, and the Date within 15 minutes. Errors are FC's JSON
`{"ErrorCode", "ErrorMessage"}` with the request id in `x-fc-request-id`.

FC 3.0 (functions deployed by template.yml, which have no service): the function
`<service>-<name>` is the FC 2.0 function `name` of the served service.
- `POST /2023-03-30/functions/{function}/invocations` (InvokeFunction): as above, the async
  task named by `x-fc-async-task-id`.
- `GET /2023-03-30/functions/{function}` (GetFunction) and
  `GET /2023-03-30/functions/{function}/async-tasks/{id}` (GetAsyncTask).
These are signed as Alibaba Cloud's SDK signs them (ACS3-HMAC-SHA256, see `verify_acs3`:
rebuilt here from the request received; tests/test_invoke_fc3.py drives it with the official
@alicloud/fc20230330 SDK), and errors are FC 3.0's `{"Code", "Message", "RequestId"}`.

Handlers are the real modules: `<functions_dir>/<name>.py`, imported once (a warm
instance) the way FC imports them with the code directory on sys.path, and called as
`handler(event_bytes, context)` with a context shaped like FC python3.10's.

The environment: handlers read os.environ, which is one per process. Each invocation
therefore runs under a process-wide lock, with os.environ replaced by the function's
environment (the runtime's own variables - PATH, HOME, LANG, ... - plus `env`) and
restored afterwards. Invocations thus run one at a time, and while one runs every other
thread of the process sees the function's environment.

Not modelled: function timeouts (a handler runs to its end; it sees its timeout in
`context.function.timeout`), instance concurrency, FC's log service, HTTP triggers.
"""
import base64
import calendar
import dataclasses
import hashlib
import hmac
import importlib.util
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
import uuid
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qsl, quote, unquote, urlsplit

log = logging.getLogger(__name__)

API_VERSION = "2016-08-15"
FC3_API_VERSION = "2023-03-30"
ACS3 = "ACS3-HMAC-SHA256"
TEST_ACCESS_KEY_ID = "LTAI5tL2CLocalFCKey0001"
TEST_ACCESS_KEY_SECRET = "l2c-local-fc-test-secret-not-for-production"
TEST_ACCOUNT_ID = "1234567890123456"

MAX_SKEW_SECONDS = 15 * 60
MAX_SYNC_PAYLOAD = 32 * 1024 * 1024    # FC's sync invocation payload limit
MAX_ASYNC_PAYLOAD = 128 * 1024         # FC's async invocation payload limit
CHUNK = 1024 * 1024

# What the runtime itself puts in a function's environment, taken from this process so
# the handler finds its tools (pg_dump on PATH or PG_BIN_DIR, as the layer provides them
# on FC). Everything else the function sees comes from `env`.
RUNTIME_VARIABLES = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR",
                     "LD_LIBRARY_PATH", "PYTHONPATH", "PG_BIN_DIR")

# The ID of a stateful async invocation (InvokeFunction's x-fc-stateful-async-invocation-id).
INVOCATION_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,127}")
TERMINAL = ("Succeeded", "Failed", "Stopped", "Expired", "Invalid")

_ENVIRON_LOCK = threading.RLock()  # os.environ is one per process, so is this lock


class FCError(Exception):
    """An FC API error: HTTP status, ErrorCode, ErrorMessage."""

    def __init__(self, status, code, message):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


# -- the context FC hands a python3.10 handler --------------------------------------------
@dataclasses.dataclass
class Credentials:
    access_key_id: str
    access_key_secret: str
    security_token: str = ""


@dataclasses.dataclass
class FunctionMeta:
    name: str
    handler: str
    memory: int
    timeout: int
    initializer: Optional[str] = None
    initialization_timeout: Optional[int] = None


@dataclasses.dataclass
class ServiceMeta:
    name: str
    log_project: str = ""
    log_store: str = ""
    qualifier: str = "LATEST"
    version_id: str = ""


@dataclasses.dataclass
class Context:
    request_id: str
    credentials: Optional[Credentials]
    function: FunctionMeta
    service: ServiceMeta
    region: str
    account_id: str
    retry_count: int = 0


# -- functions and invocations ---------------------------------------------------------
@dataclasses.dataclass
class FunctionSpec:
    """One function of the service: `handler` is `module.function` in functions_dir."""
    name: str
    handler: str = ""
    memory: int = 1024
    timeout: int = 600
    env: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.handler = self.handler or f"{self.name}.handler"


@dataclasses.dataclass
class Invocation:
    """What the endpoint recorded about one invocation (tests read these)."""
    request_id: str
    function: str
    invocation_type: str                 # "Sync" or "Async"
    payload: bytes
    access_key_id: str                   # who invoked it
    invocation_id: str = ""              # the stateful async task id (Async only)
    status: str = "Enqueued"             # Enqueued, Running, Retrying, Succeeded, Failed
    result: Optional[bytes] = None       # the handler's return value, as the body
    error: Optional[dict] = None         # {"errorMessage", "errorType", "stackTrace"}
    retried: int = 0
    started: Optional[float] = None
    ended: Optional[float] = None

    def async_task_view(self, function_name):
        """FC 3.0's AsyncTask (GetAsyncTask)."""
        view = self.stateful_view("")
        view = {"functionArn": "", "qualifier": "LATEST", "taskId": self.invocation_id,
                "requestId": self.request_id, "status": self.status,
                "startedTime": view["startedTime"], "endTime": view["endTime"],
                "destinationStatus": "", "alreadyRetriedTimes": self.retried,
                "taskPayload": view["invocationPayload"],
                "taskErrorMessage": view["invocationErrorMessage"],
                **({"returnPayload": view["returnPayload"]} if "returnPayload" in view else {})}
        view["functionArn"] = f"acs:fc:::functions/{function_name}"
        return view

    def stateful_view(self, service):
        def ms(t):
            return int(t * 1000) if t else None
        view = {"serviceName": service, "functionName": self.function, "qualifier": "LATEST",
                "invocationId": self.invocation_id, "requestId": self.request_id,
                "status": self.status, "startedTime": ms(self.started),
                "endTime": ms(self.ended), "destinationStatus": "",
                "alreadyRetriedTimes": self.retried,
                "invocationPayload": self.payload.decode("utf-8", "replace"),
                "invocationErrorMessage": ""}
        if self.error:
            # What real FC puts here is not checked (its docs show "UnhandledInvocationError");
            # the local endpoint gives the handler's error, as JSON, so it can be read back.
            view["invocationErrorMessage"] = json.dumps(
                {k: self.error[k] for k in ("errorType", "errorMessage")})
        if self.status == "Succeeded" and self.result is not None:
            view["returnPayload"] = self.result.decode("utf-8", "replace")
        return view


def _frames(tb):
    """FC's python stackTrace: [['File "path"', 'line N', 'in name', 'source'], ...],
    without the local endpoint's own frames."""
    here = os.path.abspath(__file__)
    return [[f'File "{f.filename}"', f"line {f.lineno}", f"in {f.name}", f.line or ""]
            for f in traceback.extract_tb(tb) if os.path.abspath(f.filename) != here]


def _body_of(result):
    if result is None:
        return b""
    if isinstance(result, (bytes, bytearray)):
        return bytes(result)
    if isinstance(result, str):
        return result.encode("utf-8")
    return json.dumps(result).encode("utf-8")


# -- signatures --------------------------------------------------------------------------
def _raw(value):
    # http.client decodes header bytes as latin-1; undo that to sign the bytes sent.
    return (value or "").encode("latin-1", "replace")


def string_to_sign(method, headers, path):
    """What fc2 signs: METHOD, Content-MD5, Content-Type, Date, then the x-fc-* headers
    (lower-case names, sorted, `name:value` lines) followed by the unescaped path.
    (fc2 appends the query only for HTTP-trigger `proxy` requests, not served here.)"""
    fc_headers = sorted((k.lower(), v) for k, v in headers.items() if k.lower().startswith("x-fc-"))
    canon = b"".join(k.encode() + b":" + _raw(v) + b"\n" for k, v in fc_headers)
    return b"\n".join([method.upper().encode(), _raw(headers.get("content-md5")),
                       _raw(headers.get("content-type")), _raw(headers.get("date")),
                       canon + path.encode("utf-8")])


def acs3_encode(value):
    # the SDK's percent encoding (encodeURIComponent, then ! ' ( ) * escaped too)
    return quote(value, safe="-_.~")


def acs3_canonical_request(method, raw_path, query, headers, signed_names, payload_hash):
    """What Alibaba Cloud's SDK (openapi-core getAuthorization) hashes and signs."""
    pairs = sorted(parse_qsl(query, keep_blank_values=True))
    canonical_query = "&".join(f"{k}={acs3_encode(v)}" for k, v in pairs)
    lines = "".join(f"{n}:{','.join(sorted(v.strip() for v in headers.get_all(n) or []))}\n"
                    for n in signed_names)
    return "\n".join([method.upper(), raw_path, canonical_query, lines, ";".join(signed_names),
                      payload_hash])


class Authenticator:
    def __init__(self, now=time.time):
        self.now = now
        self.credentials = {}

    def verify_acs3(self, method, headers, raw_path, query, body):
        """An FC 3.0 request: `Authorization: ACS3-HMAC-SHA256 Credential=ak,SignedHeaders=
        names,Signature=hex`, every x-acs-* header and host signed, x-acs-date within 15
        minutes, x-acs-content-sha256 the body's hash, the STS token when the key is STS."""
        auth = headers.get("authorization", "")
        match = re.fullmatch(ACS3 + r" Credential=([^,]+),SignedHeaders=([^,]+),Signature=([0-9a-f]+)",
                             auth.strip())
        if not match:
            raise FCError(400, "IncompleteSignature",
                          f"the Authorization header is not '{ACS3} Credential=...,"
                          "SignedHeaders=...,Signature=...'")
        access_key_id, signed, signature = match.groups()
        cred = self.credentials.get(access_key_id)
        if cred is None:
            raise FCError(403, "InvalidAccessKeyID", f"invalid access key ID '{access_key_id}'")
        if cred.security_token and (headers.get("x-acs-security-token") != cred.security_token
                                    or headers.get("x-acs-accesskey-id") != access_key_id):
            raise FCError(403, "InvalidSecurityToken", "the security token you provided is invalid")
        names = signed.split(";")
        unsigned = sorted({k.lower() for k in headers.keys() if k.lower().startswith("x-acs-")}
                          - set(names))
        if names != sorted(set(names)) or "host" not in names or unsigned:
            raise FCError(400, "IncompleteSignature",
                          f"SignedHeaders must list host and every x-acs-* header, sorted "
                          f"(unsigned: {', '.join(unsigned) or 'none'})")
        date = headers.get("x-acs-date")
        if not date:
            raise FCError(400, "MissingRequiredHeader", "required HTTP header x-acs-date was not specified")
        try:
            request_time = calendar.timegm(time.strptime(date, "%Y-%m-%dT%H:%M:%SZ"))
        except ValueError:
            raise FCError(400, "InvalidArgument", f"the x-acs-date header '{date}' is invalid") from None
        if abs(request_time - self.now()) > MAX_SKEW_SECONDS:
            raise FCError(403, "RequestTimeTooSkewed",
                          f"the difference between the request time '{date}' and the current "
                          f"time is more than {MAX_SKEW_SECONDS // 60} minutes")
        payload_hash = headers.get("x-acs-content-sha256", "")
        if payload_hash != hashlib.sha256(body).hexdigest():
            raise FCError(400, "InvalidArgument", "x-acs-content-sha256 is not the SHA-256 of the body")
        canonical = acs3_canonical_request(method, raw_path, query, headers, names, payload_hash)
        to_sign = f"{ACS3}\n{hashlib.sha256(canonical.encode('utf-8')).hexdigest()}"
        expected = hmac.new(cred.access_key_secret.encode("utf-8"), to_sign.encode("utf-8"),
                            hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            raise FCError(403, "SignatureNotMatch",
                          "The request signature we calculated does not match the signature "
                          "you provided. Check your access key and signing method")
        return access_key_id

    def add(self, access_key_id, access_key_secret, security_token=""):
        self.credentials[access_key_id] = Credentials(access_key_id, access_key_secret,
                                                      security_token or "")

    def verify(self, method, headers, path):
        """Checks the request's signature, key, token and date; returns the key id."""
        auth = headers.get("authorization")
        if not auth:
            raise FCError(400, "MissingRequiredHeader",
                          "required HTTP header Authorization was not specified")
        scheme, _, rest = auth.partition(" ")
        access_key_id, sep, signature = rest.strip().rpartition(":")
        if scheme != "FC" or not sep or not access_key_id:
            raise FCError(403, "AccessDenied", "the Authorization header is not 'FC ak:signature'")
        cred = self.credentials.get(access_key_id)
        if cred is None:
            raise FCError(403, "InvalidAccessKeyID", f"invalid access key ID '{access_key_id}'")
        if cred.security_token and headers.get("x-fc-security-token") != cred.security_token:
            raise FCError(403, "InvalidSecurityToken", "the security token you provided is invalid")
        date = headers.get("date")
        if not date:
            raise FCError(400, "MissingRequiredHeader", "required HTTP header Date was not specified")
        try:
            request_time = parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            raise FCError(400, "InvalidArgument", f"the Date header '{date}' is invalid") from None
        if abs(request_time - self.now()) > MAX_SKEW_SECONDS:
            raise FCError(403, "RequestTimeTooSkewed",
                          f"the difference between the request time '{date}' and the current "
                          f"time is more than {MAX_SKEW_SECONDS // 60} minutes")
        to_sign = string_to_sign(method, headers, path)
        expected = base64.b64encode(hmac.new(cred.access_key_secret.encode("utf-8"), to_sign,
                                             hashlib.sha256).digest()).decode()
        if not hmac.compare_digest(expected, signature.strip()):
            raise FCError(403, "SignatureNotMatch",
                          "The request signature we calculated does not match the signature "
                          "you provided. Check your access key and signing method")
        return access_key_id


# -- the environment a function sees ---------------------------------------------------------
@contextmanager
def function_environment(env, inherit=RUNTIME_VARIABLES):
    """os.environ as the function sees it, under the process-wide lock, restored after.

    inherit: names taken from this process (None: all of them)."""
    with _ENVIRON_LOCK:
        saved = dict(os.environ)
        base = dict(saved) if inherit is None else {k: saved[k] for k in inherit if k in saved}
        try:
            os.environ.clear()
            os.environ.update(base)
            os.environ.update({k: str(v) for k, v in env.items()})
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)


# -- HTTP --------------------------------------------------------------------------------------
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FunctionCompute"
    sys_version = ""
    timeout = 600

    def log_message(self, fmt, *args):
        log.debug("%s " + fmt, self.address_string(), *args)

    def do_GET(self):
        self._handle()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_GET

    @property
    def fc(self):
        return self.server.fc

    def _handle(self):
        self.request_id = str(uuid.uuid4())
        url = urlsplit(self.path)
        path = unquote(url.path)
        fc3 = url.path.startswith(f"/{FC3_API_VERSION}/")
        try:
            body = self._read_body()
            if fc3:
                access_key_id = self.fc.auth.verify_acs3(self.command, self.headers, url.path,
                                                         url.query, body)
            else:
                access_key_id = self.fc.auth.verify(self.command, self.headers, path)
            self._route(path, body, access_key_id)
        except FCError as err:
            error = ({"Code": err.code, "Message": err.message, "RequestId": self.request_id}
                     if fc3 else {"ErrorCode": err.code, "ErrorMessage": err.message})
            self._send(err.status, json.dumps(error).encode(), content_type="application/json")
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:  # a bug here: answer as FC does, not with a dropped connection
            log.exception("local FC: request %s failed", self.request_id)
            self.close_connection = True
            self._send(500, json.dumps({"ErrorCode": "InternalServerError",
                                        "ErrorMessage": "an internal error has occurred. "
                                                        "Please retry."}).encode(),
                       content_type="application/json")

    def _read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                if sum(map(len, parts)) + size > MAX_SYNC_PAYLOAD:
                    self.close_connection = True
                    raise self._too_large(MAX_SYNC_PAYLOAD)
                parts.append(self.rfile.read(size))
                self.rfile.readline(16)
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_SYNC_PAYLOAD:
            self.close_connection = True
            raise self._too_large(MAX_SYNC_PAYLOAD)
        return self.rfile.read(length) if length else b""

    @staticmethod
    def _too_large(limit):
        return FCError(400, "EntityTooLarge", f"payload size exceeds maximum allowed size ({limit} bytes)")

    def _send(self, status, body=b"", headers=None, content_type="application/octet-stream"):
        self.send_response(status)
        self.send_header("x-fc-request-id", self.request_id)  # send_response added Date
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _route(self, path, body, access_key_id):
        parts = path.strip("/").split("/")
        not_supported = FCError(400, "PathNotSupported",
                                f"'{self.command}' against '{path}' is not supported")
        if parts[0] == FC3_API_VERSION:
            return self._route_fc3(parts, body, access_key_id, not_supported)
        if len(parts) < 5 or parts[0] != API_VERSION or parts[1] != "services" \
                or parts[3] != "functions":
            raise not_supported
        spec = self.fc.function(parts[2], parts[4])
        rest = parts[5:]
        if self.command == "POST" and rest == ["invocations"]:
            return self._invoke(spec, body, access_key_id)
        if self.command == "GET" and not rest:
            return self._send(200, json.dumps(self.fc.function_view(spec)).encode(),
                              content_type="application/json")
        if self.command == "GET" and len(rest) == 2 and rest[0] == "stateful-async-invocations":
            invocation = self.fc.stateful_invocation(spec.name, rest[1])
            return self._send(200, json.dumps(invocation.stateful_view(self.fc.service)).encode(),
                              content_type="application/json")
        raise not_supported

    def _route_fc3(self, parts, body, access_key_id, not_supported):
        if len(parts) < 3 or parts[1] != "functions":
            raise not_supported
        spec = self.fc.fc3_function(parts[2])
        rest = parts[3:]
        if self.command == "POST" and rest == ["invocations"]:
            return self._invoke(spec, body, access_key_id, task_header="x-fc-async-task-id")
        if self.command == "GET" and not rest:
            view = {**self.fc.function_view(spec), "functionName": parts[2]}
            return self._send(200, json.dumps(view).encode(), content_type="application/json")
        if self.command == "GET" and len(rest) == 2 and rest[0] == "async-tasks":
            invocation = self.fc.stateful_invocation(spec.name, rest[1], "AsyncTaskNotFound")
            return self._send(200, json.dumps(invocation.async_task_view(parts[2])).encode(),
                              content_type="application/json")
        raise not_supported

    def _invoke(self, spec, body, access_key_id, task_header="x-fc-stateful-async-invocation-id"):
        kind = self.headers.get("x-fc-invocation-type", "Sync")
        if kind not in ("Sync", "Async"):
            raise FCError(400, "InvalidArgument",
                          f"x-fc-invocation-type '{kind}' is invalid: use Sync or Async")
        invocation = Invocation(self.request_id, spec.name, kind, body, access_key_id)
        if kind == "Async":
            if len(body) > MAX_ASYNC_PAYLOAD:
                raise self._too_large(MAX_ASYNC_PAYLOAD)
            invocation.invocation_id = self.headers.get(task_header, "")
            self.fc.submit(invocation)
            headers = {task_header: invocation.invocation_id} if self.fc.stateful_async else {}
            return self._send(202, b"", headers)
        self.fc.run(invocation)
        if invocation.error:
            return self._send(200, json.dumps(invocation.error).encode(),
                              {"x-fc-error-type": "UnhandledInvocationError"},
                              content_type="application/json")
        return self._send(200, invocation.result)


# -- the handle -------------------------------------------------------------------------------
class LocalFC:
    """A running local FC endpoint; see the module docstring.

    functions_dir: the code directory (functions/ of this repo).
    service: the one service it serves. credentials: (ak, sk) or (ak, sk, sts_token) that
    may invoke. role_credentials: what handlers get in context.credentials (the function
    role's STS credentials on FC); default: `credentials`. env: the functions'
    environment variables. functions: names or FunctionSpec objects (default: every
    `*.py` in functions_dir). inherit_env: names taken from this process
    (RUNTIME_VARIABLES; None: the whole environment). async_retries: how often a failed
    async invocation is retried (FC retries 3 times unless the function's async
    configuration says otherwise; 0 here unless asked). now: the clock for Date checks.
    """

    def __init__(self, functions_dir, service="l2c-backup",
                 credentials=(TEST_ACCESS_KEY_ID, TEST_ACCESS_KEY_SECRET), env=None,
                 host="127.0.0.1", port=0, region="cn-hangzhou", account_id=TEST_ACCOUNT_ID,
                 role_credentials=None, functions=None, inherit_env=RUNTIME_VARIABLES,
                 stateful_async=True, async_retries=0, now=time.time):
        self.functions_dir = Path(functions_dir).resolve()
        self.service, self.host, self.port = service, host, port
        self.region, self.account_id = region, account_id
        self.access_key_id, self.access_key_secret = credentials[0], credentials[1]
        self.security_token = credentials[2] if len(credentials) > 2 else ""
        self.role_credentials = Credentials(*(role_credentials or credentials))
        self.env = dict(env or {})
        self.inherit_env = inherit_env
        self.stateful_async, self.async_retries = stateful_async, async_retries
        self.auth = Authenticator(now)
        self.auth.add(self.access_key_id, self.access_key_secret, self.security_token)
        if functions is None:
            functions = sorted(p.stem for p in self.functions_dir.glob("*.py")
                               if not p.name.startswith("_"))
        self.functions = {}
        for f in functions:
            spec = f if isinstance(f, FunctionSpec) else FunctionSpec(f)
            self.functions[spec.name] = spec
        self._modules = {}
        self._lock = threading.Lock()
        self._invocations = []
        self._by_task_id = {}
        self._busy = 0  # invocations queued or running, sync and async
        self._idle = threading.Condition(self._lock)
        self.http = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self):
        self.http = ThreadingHTTPServer((self.host, self.port), Handler)
        self.http.daemon_threads = True
        self.http.fc = self
        self.port = self.http.server_address[1]
        self.thread = threading.Thread(target=self.http.serve_forever, name="local-fc",
                                       daemon=True, kwargs={"poll_interval": 0.05})
        self.thread.start()
        return self

    def stop(self, timeout=60.0):
        """Stops serving, after the invocations still running have ended (up to timeout)."""
        if self.http is None:
            return
        try:
            self.wait_idle(timeout)
        except TimeoutError as err:
            log.warning("local FC stopping with %s", err)
        self.http.shutdown()
        self.http.server_close()
        self.http = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def endpoint(self):
        return f"http://{self.host}:{self.port}"

    # -- test controls -------------------------------------------------------------------
    def add_credentials(self, access_key_id, access_key_secret, security_token=None):
        self.auth.add(access_key_id, access_key_secret, security_token)

    @property
    def invocations(self):
        """Every invocation so far, oldest first (copies)."""
        with self._lock:
            return [dataclasses.replace(i) for i in self._invocations]

    def wait_idle(self, timeout=60.0):
        """Waits until no invocation is queued or running: async ones, and sync ones whose
        caller gave up waiting. Call it before changing os.environ again in a test: while
        a handler runs, the process's environment is the function's (see the module doc)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self._busy} invocation(s) still running after {timeout} s")
                self._idle.wait(left)

    def _done(self):
        with self._idle:
            self._busy -= 1
            self._idle.notify_all()

    # -- what the HTTP front end calls ---------------------------------------------------------
    def function(self, service, name):
        service_name, _, qualifier = service.partition(".")
        if service_name != self.service:
            raise FCError(404, "ServiceNotFound", f"service '{service_name}' does not exist")
        if qualifier and qualifier != "LATEST":
            raise FCError(404, "AliasNotFound",
                          f"alias '{qualifier}' of service '{service_name}' does not exist")
        spec = self.functions.get(name)
        if spec is None:
            raise FCError(404, "FunctionNotFound",
                          f"function '{name}' does not exist in service '{service_name}'")
        return spec

    def fc3_function(self, name):
        """FC 3.0 names the function `<service>-<name>` (template.yml's DeploymentName)."""
        prefix = f"{self.service}-"
        spec = self.functions.get(name[len(prefix):]) if name.startswith(prefix) else None
        if spec is None:
            raise FCError(404, "FunctionNotFound", f"function '{name}' does not exist")
        return spec

    def function_view(self, spec):
        return {"functionName": spec.name, "handler": spec.handler, "runtime": "python3.10",
                "memorySize": spec.memory, "timeout": spec.timeout,
                "environmentVariables": {**self.env, **spec.env}, "description": "",
                "functionId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.service}/{spec.name}"))}

    def stateful_invocation(self, function, invocation_id, not_found="StatefulAsyncInvocationNotFound"):
        with self._lock:
            invocation = self._by_task_id.get((function, invocation_id))
        if invocation is None or not self.stateful_async:
            raise FCError(404, not_found,
                          f"stateful async invocation '{invocation_id}' of function "
                          f"'{function}' does not exist")
        with self._lock:
            return dataclasses.replace(invocation)

    def submit(self, invocation):
        """Accepts an async invocation and runs it on a background thread."""
        if self.stateful_async:
            if not invocation.invocation_id:
                invocation.invocation_id = invocation.request_id
            elif not INVOCATION_ID.fullmatch(invocation.invocation_id):
                raise FCError(400, "InvalidArgument",
                              f"stateful async invocation id '{invocation.invocation_id}' is "
                              "invalid: it starts with a letter or _, then letters, digits, _ "
                              "or -, at most 128 characters")
        key = (invocation.function, invocation.invocation_id)
        with self._lock:
            if self.stateful_async and key in self._by_task_id:
                raise FCError(409, "StatefulAsyncInvocationAlreadyExists",
                              f"stateful async invocation '{invocation.invocation_id}' already exists")
            self._invocations.append(invocation)
            if self.stateful_async:
                self._by_task_id[key] = invocation
            self._busy += 1
        threading.Thread(target=self._run_async, args=(invocation,), daemon=True,
                         name=f"local-fc-async-{invocation.request_id[:8]}").start()

    def _run_async(self, invocation):
        try:
            while True:
                self._execute(invocation)
                if not invocation.error or invocation.retried >= self.async_retries:
                    break
                with self._lock:
                    invocation.retried += 1
                    invocation.status = "Retrying"
        finally:
            self._done()

    def run(self, invocation):
        """Runs a sync invocation in the caller's thread."""
        with self._lock:
            self._invocations.append(invocation)
            self._busy += 1
        try:
            self._execute(invocation)
        finally:
            self._done()

    def _execute(self, invocation):
        spec = self.functions[invocation.function]
        context = Context(
            request_id=invocation.request_id,
            credentials=dataclasses.replace(self.role_credentials),
            function=FunctionMeta(spec.name, spec.handler, spec.memory, spec.timeout),
            service=ServiceMeta(self.service), region=self.region, account_id=self.account_id,
            retry_count=invocation.retried)
        with self._lock:
            invocation.status, invocation.started = "Running", time.time()
            invocation.result = invocation.error = None
        result = error = None
        with function_environment({**self.env, **spec.env}, self.inherit_env):
            try:
                handler = self._handler(spec)
                result = _body_of(handler(invocation.payload, context))
            except (Exception, SystemExit) as exc:  # FC reports whatever the handler raised
                error = {"errorMessage": str(exc), "errorType": type(exc).__name__,
                         "stackTrace": _frames(exc.__traceback__)}
                log.info("local FC: %s (%s) failed: %s: %s", spec.name, invocation.request_id,
                         type(exc).__name__, exc)
        with self._lock:
            invocation.result, invocation.error = result, error
            invocation.status = "Failed" if error else "Succeeded"
            invocation.ended = time.time()

    def _handler(self, spec):
        module_name, _, function_name = spec.handler.rpartition(".")
        with self._lock:
            module = self._modules.get(module_name)
        if module is None:
            # FC imports the handler module with the code directory on sys.path.
            if str(self.functions_dir) not in sys.path:
                sys.path.append(str(self.functions_dir))
            path = self.functions_dir / f"{module_name.replace('.', '/')}.py"
            spec_ = importlib.util.spec_from_file_location(
                f"l2c_local_fc_{self.service.replace('-', '_')}_{module_name}", path)
            if spec_ is None or not path.is_file():
                raise ImportError(f"cannot load handler module '{module_name}' ({path})")
            module = importlib.util.module_from_spec(spec_)
            spec_.loader.exec_module(module)
            with self._lock:
                module = self._modules.setdefault(module_name, module)
        return getattr(module, function_name)
