"""Running the deployed FC functions from an operator's machine (`l2c-backup invoke`).

Two deployments, two APIs (FC_API_VERSION or --api):

- fc2 (default): s.yaml deploys the service `l2c-backup` with its functions on the FC 2.0
  model; aliyun-fc2 (FC 2.0 API, 2016-08-15) addresses them as service + function.
- fc3: template.yml (ROS, ALIYUN::FC3::Function) creates FC 3.0 functions, which have no
  service and which the FC 2.0 API therefore cannot name; FC3Invoker calls the FC 3.0 API
  (2023-03-30, fc3api.py) for `<FC_SERVICE>-<function>` (l2c-backup-backup, ...: the
  template's DeploymentName is FC_SERVICE). Same behaviour: sync, async, async tasks
  (`x-fc-async-task-id`, GetAsyncTask), errors mapped the same way.

Through aliyun-fc2, as the console's "invoke" does:

- sync (default): InvokeFunction with `x-fc-invocation-type: Sync`; the HTTP request stays
  open until the handler returns, and its return value (the JSON summary) is the answer.
  The client's read timeout is the function's own timeout (read with GetFunction) plus
  a margin, or `timeout`.
- async: `x-fc-invocation-type: Async`; FC answers 202 with a request id at once and runs
  the function in the background (async work may run up to 24 h; a sync request is
  bounded by the HTTP connection).
- async + wait: the invocation is an FC "asynchronous task" (stateful async invocation):
  it is sent with our own `x-fc-stateful-async-invocation-id`, then
  GetStatefulAsyncInvocation is polled until the task ends. The function must have the
  asynchronous task feature enabled (async configuration `statefulInvocation: true`);
  fc2 2.5.2 has no method for that GET, so it is signed and sent with fc2's own request
  helpers (`_build_common_headers`, `_do_request`; aliyun-fc2 is pinned to 2.5.2).

A function that raised comes back as FC's `UnhandledInvocationError` with the
exception's type and message. When the type is one of ours (errors.py), the same error
class is raised here, so `l2c-backup invoke backup` exits with the code `l2c-backup
backup` would have; any other type raises InvocationFailed. A request FC refused
(signature, key, unknown service or function, permission) is ConfigInvalid.
"""
import contextlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass

import fc2
import requests

from . import errors, fc3api, logs
from .errors import ConfigInvalid, InvocationFailed, L2CError

log = logging.getLogger(__name__)

API_VERSION = "2016-08-15"
DEFAULT_SERVICE = "l2c-backup"
API_CHOICES = ("fc2", "fc3")
FUNCTIONS = ("backup", "drill", "watchdog")
TERMINAL = ("Succeeded", "Failed", "Stopped", "Expired", "Invalid")
TIMEOUT_MARGIN_SECONDS = 300    # on top of the function's timeout: cold start, upload, queueing
FALLBACK_TIMEOUT_SECONDS = 3600  # when GetFunction is not allowed
CONNECT_TIMEOUT_SECONDS = 10
TASK_VISIBLE_SECONDS = 30       # how long a new async task may be unknown to GetStatefulAsyncInvocation

REFUSAL_HINTS = {
    "SignatureNotMatch": "the access key secret does not match the key id: check "
                         "ALIBABA_CLOUD_ACCESS_KEY_SECRET (or OSS_ACCESS_KEY_SECRET)",
    "InvalidAccessKeyID": "FC does not know this access key id: check "
                          "ALIBABA_CLOUD_ACCESS_KEY_ID (or OSS_ACCESS_KEY_ID)",
    "InvalidSecurityToken": "the STS token is wrong or expired: renew "
                            "ALIBABA_CLOUD_SECURITY_TOKEN with the key pair",
    "RequestTimeTooSkewed": "this machine's clock is off by more than 15 minutes: sync it (NTP)",
    "AccessDenied": "grant the key fc:InvokeFunction on the service (and fc:GetFunction, "
                    "fc:GetStatefulAsyncInvocation for --wait)",
    "ServiceNotFound": "check FC_SERVICE, and that FC_ENDPOINT names the account and region "
                       "the functions are deployed in",
    "FunctionNotFound": "deploy the functions (s deploy), or check FC_SERVICE and FC_ENDPOINT",
    "AliasNotFound": "check the qualifier (service version or alias)",
    "EntityTooLarge": "the event is too large for FC (128 KB async, 32 MB sync)",
}




@dataclass
class FCSettings:
    endpoint: str
    service: str
    access_key_id: str
    access_key_secret: str
    security_token: str = ""
    api: str = "fc2"


def settings_from_env(environ=None, endpoint=None, service=None, api=None):
    """FC_ENDPOINT, FC_SERVICE, FC_API_VERSION (fc2 / fc3) and the key pair
    (ALIBABA_CLOUD_ACCESS_KEY_ID / _SECRET / ALIBABA_CLOUD_SECURITY_TOKEN, else
    OSS_ACCESS_KEY_ID / _SECRET / OSS_SECURITY_TOKEN)."""
    environ = os.environ if environ is None else environ
    api = (api or environ.get("FC_API_VERSION", "") or "fc2").strip().lower()
    if api not in API_CHOICES:
        raise ConfigInvalid(f"FC_API_VERSION is '{api}'",
                            "set it to fc2 (functions deployed by s.yaml) or fc3 (by template.yml)")
    endpoint = (endpoint or environ.get("FC_ENDPOINT", "")).strip()
    if not endpoint:
        raise ConfigInvalid("FC_ENDPOINT is not set",
                            "set it to https://<account id>.<region>.fc.aliyuncs.com, the FC "
                            "endpoint of the account and region the functions run in")
    service = (service or environ.get("FC_SERVICE", "") or DEFAULT_SERVICE).strip()
    for prefix, token in (("ALIBABA_CLOUD_", "ALIBABA_CLOUD_SECURITY_TOKEN"),
                          ("OSS_", "OSS_SECURITY_TOKEN")):
        ak = environ.get(f"{prefix}ACCESS_KEY_ID", "").strip()
        if ak:
            sk = environ.get(f"{prefix}ACCESS_KEY_SECRET", "").strip()
            if not sk:
                raise ConfigInvalid(f"{prefix}ACCESS_KEY_ID is set but {prefix}ACCESS_KEY_SECRET "
                                    "is not", f"set {prefix}ACCESS_KEY_SECRET")
            return FCSettings(endpoint, service, ak, sk, environ.get(token, "").strip(), api)
    raise ConfigInvalid("no access key for FC: ALIBABA_CLOUD_ACCESS_KEY_ID (or "
                        "OSS_ACCESS_KEY_ID) is not set",
                        "set ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET "
                        "of a RAM user allowed fc:InvokeFunction on the service")


def event_for(function, kind=None, source=None, event=None):
    """The event bytes each function expects from a direct invoke."""
    if event is not None:
        try:
            json.loads(event)
        except ValueError as err:
            raise ConfigInvalid(f"--event is not JSON: {err}",
                                """e.g. --event '{"kind": "manual"}'""") from None
        return event.encode("utf-8")
    if function == "backup":
        if source:
            raise ConfigInvalid("--source applies to drill only", "leave it out for backup")
        return json.dumps({"kind": kind or "manual"}).encode()
    if function == "drill":
        request = {"kind": kind or "daily"}
        if source:
            request["source"] = source
        return json.dumps(request).encode()
    if kind or source:
        raise ConfigInvalid(f"--kind and --source do not apply to {function}",
                            f"{function} checks the kinds in its WATCHDOG_KINDS setting")
    return b"{}"


def new_task_id(function):
    """An FC async task id: starts with a letter, then letters, digits, _ and -."""
    return f"l2c_{function}_{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}_{uuid.uuid4().hex[:8]}"


def remote_failure(function, error_type, message, request_id):
    """The local error for a function that raised `error_type` on FC."""
    cls = getattr(errors, error_type, None)
    text = (f"the {function} function failed on FC with {error_type} "
            f"(request id {request_id or 'unknown'}): {message}")
    if isinstance(cls, type) and issubclass(cls, L2CError):
        return cls(text)  # the remote message already carries the "what to do" hint
    return InvocationFailed(text, f"see the {function} function's log for request "
                                  f"{request_id or '(unknown)'}")


@contextlib.contextmanager
def quiet_fc2_logs():
    """fc2 logs every refused request at ERROR on the root logger, request headers and
    all; the refusal is reported as our error instead, so those lines show with -v only."""
    fc2_dir = os.path.dirname(fc2.__file__)

    def keep(record):
        return not record.pathname.startswith(fc2_dir) or logging.getLogger().isEnabledFor(logging.DEBUG)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def invoker_for(settings):
    """The invoker of the API the functions were deployed with."""
    return FC3Invoker(settings) if settings.api == "fc3" else Invoker(settings)


class Invoker:
    TASK_NOT_FOUND = "StatefulAsyncInvocationNotFound"

    def __init__(self, settings, client=None, sleep=time.sleep, clock=time.monotonic):
        self.settings = settings
        logs.register_secret(settings.access_key_secret, settings.security_token)
        self.client = client or fc2.Client(endpoint=settings.endpoint,
                                           accessKeyID=settings.access_key_id,
                                           accessKeySecret=settings.access_key_secret,
                                           securityToken=settings.security_token)
        self.sleep, self.clock = sleep, clock

    # -- the calls --------------------------------------------------------------------
    def function_name(self, function):
        return function

    def function_timeout(self, function):
        """The function's timeout in seconds (GetFunction), or None when not allowed."""
        try:
            data = self._function_config(function)
        except ConfigInvalid as err:
            if getattr(err, "fc_code", "") == "AccessDenied":
                log.warning("not allowed to read the %s function's timeout (fc:GetFunction); "
                            "waiting up to %d s", self.function_name(function),
                            FALLBACK_TIMEOUT_SECONDS)
                return None
            raise
        return int(data.get("timeout") or 0) or None

    def _function_config(self, function):
        return self._call(function, "read the configuration of",
                          lambda: self.client.get_function(self.settings.service, function),
                          CONNECT_TIMEOUT_SECONDS * 3).data

    def _sync_timeout(self, function, timeout):
        """How long to wait for a sync run: as asked, else the function's own timeout
        and a margin, else the fallback."""
        if timeout is not None:
            return timeout
        function_timeout = self.function_timeout(function)
        return (function_timeout + TIMEOUT_MARGIN_SECONDS if function_timeout
                else FALLBACK_TIMEOUT_SECONDS)

    def invoke_sync(self, function, payload, timeout=None):
        """Runs the function and returns (request id, body bytes)."""
        timeout = self._sync_timeout(function, timeout)
        response = self._call(function, "invoke", lambda: self.client.invoke_function(
            self.settings.service, function, payload=payload,
            headers={"x-fc-invocation-type": "Sync"}), timeout)
        return response.headers.get("x-fc-request-id", ""), response.data

    def invoke_async(self, function, payload, task_id=None):
        """Queues the function; returns (request id, task id or "")."""
        headers = {"x-fc-invocation-type": "Async"}
        if task_id:
            headers["x-fc-stateful-async-invocation-id"] = task_id
        response = self._call(function, "invoke", lambda: self.client.invoke_function(
            self.settings.service, function, payload=payload, headers=headers),
            CONNECT_TIMEOUT_SECONDS * 6)
        return (response.headers.get("x-fc-request-id", ""),
                response.headers.get("x-fc-stateful-async-invocation-id", "") or task_id or "")

    def get_task(self, function, task_id):
        """GetStatefulAsyncInvocation (not in fc2 2.5.2: signed with fc2's own helpers)."""
        path = (f"/{API_VERSION}/services/{self.settings.service}/functions/{function}"
                f"/stateful-async-invocations/{task_id}")

        def call():
            headers = self.client._build_common_headers("GET", path, {})
            return self.client._do_request("GET", path, headers).json()
        return self._call(function, "read the async task of", call, CONNECT_TIMEOUT_SECONDS * 6)

    def wait(self, function, task_id, timeout=None, poll=10.0):
        """Polls the async task until it ends; returns its returnPayload (bytes or None)
        when it succeeded, raises the remote error when it did not."""
        if timeout is None:
            function_timeout = self.function_timeout(function)
            timeout = (function_timeout + TIMEOUT_MARGIN_SECONDS if function_timeout
                       else FALLBACK_TIMEOUT_SECONDS)
        started = self.clock()
        deadline = started + timeout
        status = "Enqueued"
        while True:
            try:
                task = self.get_task(function, task_id)
            except ConfigInvalid as err:
                # A new task may take a moment to show; one that never shows means the
                # function has no asynchronous task feature.
                if getattr(err, "fc_code", "") != self.TASK_NOT_FOUND:
                    raise
                if self.clock() - started > TASK_VISIBLE_SECONDS:
                    raise ConfigInvalid(
                        f"FC has no async task {task_id} for the {function} function",
                        "enable the function's asynchronous task feature (s.yaml: "
                        "statefulInvocation: true; template.yml: AsyncTask: true), or invoke "
                        "without --wait") from None
                task = {"status": "Enqueued"}
            status = task.get("status", "")
            if status in TERMINAL:
                return self._outcome(function, task_id, task)
            if self.clock() >= deadline:
                raise InvocationFailed(
                    f"the {function} function is still {status or 'queued'} on FC after "
                    f"{timeout:.0f} s (async task {task_id}); it goes on running there",
                    "check its log or wait longer (--timeout)")
            self.sleep(max(min(poll, deadline - self.clock()), 0.05))

    # -- errors ------------------------------------------------------------------------
    def _outcome(self, function, task_id, task):
        status = task["status"]
        request_id = task.get("requestId", "")
        if status == "Succeeded":
            payload = task.get("returnPayload")
            return None if payload is None else payload.encode("utf-8")
        message = task.get("invocationErrorMessage", "") or ""
        try:
            detail = json.loads(message)
        except ValueError:
            detail = None
        if isinstance(detail, dict) and detail.get("errorType"):
            raise remote_failure(function, detail["errorType"], detail.get("errorMessage", ""),
                                 request_id)
        raise InvocationFailed(
            f"the {function} function's async task {task_id} ended {status} on FC "
            f"(request id {request_id or 'unknown'}){': ' + message if message else ''}",
            f"see the {function} function's log for that request")

    def _call(self, function, what, call, timeout):
        self.client.timeout = (CONNECT_TIMEOUT_SECONDS, timeout)
        try:
            return call()
        except fc2.FcError as err:
            raise self._error(function, what, err) from None
        except requests.exceptions.ReadTimeout:
            raise InvocationFailed(
                f"no answer from FC within {timeout:.0f} s to {what} the {function} function; "
                "it may still be running there",
                f"check the {function} function's log; for long runs use --async --wait or a "
                "longer --timeout") from None
        except requests.exceptions.RequestException as err:
            raise InvocationFailed(f"cannot reach FC at {self.settings.endpoint} to {what} the "
                                   f"{function} function: {type(err).__name__}: {err}",
                                   "check FC_ENDPOINT and the network") from None

    def _error(self, function, what, err):
        try:
            body = json.loads(err.message)
        except (TypeError, ValueError):
            body = {}
        body = body if isinstance(body, dict) else {}
        request_id = err.request_id if err.request_id not in ("", "unknown") else body.get("RequestId", "")
        if err.status_code == 200 or "errorType" in body:
            # the function ran and raised: UnhandledInvocationError
            return remote_failure(function, body.get("errorType") or "UnhandledInvocationError",
                                  body.get("errorMessage", err.message), request_id)
        code = err.err_code or body.get("ErrorCode", "") or str(err.status_code)
        text = (f"FC refused to {what} the {function} function of service "
                f"{self.settings.service}: {err.status_code} {code}: "
                f"{body.get('ErrorMessage', '') or err.message} (request id {request_id or 'unknown'})")
        if 400 <= err.status_code < 500 and err.status_code != 429:
            failure = ConfigInvalid(text, REFUSAL_HINTS.get(code, "see the FC error code"))
        else:
            failure = InvocationFailed(text, "FC is failing or throttling: try again later")
        failure.fc_code = code
        return failure


class FC3Invoker(Invoker):
    """The same invocations through the FC 3.0 API, for functions template.yml deployed:
    FC 3.0 names a function `<FC_SERVICE>-<function>` and has no service around it."""
    TASK_NOT_FOUND = "AsyncTaskNotFound"

    def __init__(self, settings, client=None, sleep=time.sleep, clock=time.monotonic):
        self.settings = settings
        logs.register_secret(settings.access_key_secret, settings.security_token)
        self.client = client or fc3api.Client(settings.endpoint, settings.access_key_id,
                                              settings.access_key_secret, settings.security_token,
                                              connect_timeout=CONNECT_TIMEOUT_SECONDS)
        self.sleep, self.clock = sleep, clock

    def function_name(self, function):
        return f"{self.settings.service}-{function}"

    def _function_config(self, function):
        name = self.function_name(function)
        return self._call(function, "read the configuration of",
                          lambda t: self.client.get_function(name, timeout=t),
                          CONNECT_TIMEOUT_SECONDS * 3)

    def invoke_sync(self, function, payload, timeout=None):
        timeout = self._sync_timeout(function, timeout)
        name = self.function_name(function)
        response = self._call(function, "invoke", lambda t: self.client.invoke_function(
            name, payload, "Sync", timeout=t), timeout)
        if response.headers.get("x-fc-error-type"):  # the function ran and raised
            try:
                body = json.loads(response.body)
            except ValueError:
                body = {}
            body = body if isinstance(body, dict) else {}
            raise remote_failure(function, body.get("errorType") or response.headers["x-fc-error-type"],
                                 body.get("errorMessage", response.body.decode("utf-8", "replace")),
                                 response.request_id)
        return response.request_id, response.body

    def invoke_async(self, function, payload, task_id=None):
        name = self.function_name(function)
        response = self._call(function, "invoke", lambda t: self.client.invoke_function(
            name, payload, "Async", task_id or "", timeout=t), CONNECT_TIMEOUT_SECONDS * 6)
        return response.request_id, task_id or ""

    def get_task(self, function, task_id):
        name = self.function_name(function)
        return self._call(function, "read the async task of",
                          lambda t: self.client.get_async_task(name, task_id, timeout=t),
                          CONNECT_TIMEOUT_SECONDS * 6)

    def _outcome(self, function, task_id, task):
        # FC 3.0's AsyncTask names the error taskErrorMessage (FC 2.0: invocationErrorMessage)
        return super()._outcome(function, task_id, {**task, "invocationErrorMessage":
                                                    task.get("taskErrorMessage", "")})

    def _call(self, function, what, call, timeout):
        try:
            return call(timeout)
        except fc3api.FC3Error as err:
            raise self._refusal(function, what, err) from None
        except fc3api.FC3Timeout:
            raise InvocationFailed(
                f"no answer from FC within {timeout:.0f} s to {what} the {function} function; "
                "it may still be running there",
                f"check the {function} function's log; for long runs use --async --wait or a "
                "longer --timeout") from None
        except fc3api.FC3Unreachable as err:
            raise InvocationFailed(f"cannot reach FC at {self.settings.endpoint} to {what} the "
                                   f"{function} function: {err}",
                                   "check FC_ENDPOINT and the network") from None

    def _refusal(self, function, what, err):
        text = (f"FC refused to {what} the function {self.function_name(function)}: "
                f"{err.status} {err.code}: {err.message} (request id {err.request_id or 'unknown'})")
        if 400 <= err.status < 500 and err.status != 429:
            hint = REFUSAL_HINTS.get(err.code, "see the FC error code")
            if err.code == "FunctionNotFound":
                hint = ("deploy template.yml (ROS), or check FC_SERVICE (the template's "
                        "DeploymentName: functions are <FC_SERVICE>-<function>) and FC_ENDPOINT; "
                        "functions deployed by s.yaml need FC_API_VERSION=fc2")
            failure = ConfigInvalid(text, hint)
        else:
            failure = InvocationFailed(text, "FC is failing or throttling: try again later")
        failure.fc_code = err.code
        return failure
