"""Alert channels: one sender per channel, chosen by environment variables, routed by
severity (ROUTES), retried, coalesced. alerts.send() is the only caller.

Channels (each on when its variable is set):
  ALERT_DINGTALK_WEBHOOK  DingTalk robot URL (with access_token); markdown message.
  ALERT_DINGTALK_SECRET   the robot's signing secret ("加签"): adds timestamp + sign.
  ALERT_WECOM_WEBHOOK     WeCom (企业微信) robot URL (with key); markdown message.
  ALERT_SLACK_WEBHOOK     Slack incoming webhook URL; {"text": ...}.
  ALERT_WEBHOOK_URL       any HTTP endpoint: the alert POSTed as JSON.
  ALERT_SMS_WEBHOOK_URL   an SMS gateway webhook, with ALERT_SMS_PHONES (comma list).
Behaviour: ALERT_SUCCESS=true sends info alerts (e.g. "drill passed") to chat;
ALERT_COALESCE_SECONDS (600) and ALERT_TIMEOUT_SECONDS (10, per HTTP request).

SMS goes through a gateway webhook, not Aliyun SMS's API: that API is a signed RPC (its
own SDK or hand-written request signing, a new dependency either way) and only sends
pre-approved templates under an approved sign name, which are account setup, not code.
A small gateway (an FC function, or whatever the on-call team already runs) in front of
Aliyun SMS owns the template and the AccessKey; this side stays one JSON POST,
{"phone_numbers": [...], "message": "..."}, testable against a local HTTP server.

Coalescing memory is per process: an FC instance lives minutes to hours and concurrent
instances do not share it, so it bounds a burst from one instance (a verify retried by
OSS events, a backup loop) rather than promising one message per window overall.

Webhook tokens, the DingTalk secret and phone numbers are registered with
logs.register_secret, and log lines name channels, never URLs.
"""
import abc
import base64
import concurrent.futures
import contextvars
import hashlib
import hmac
import http.client
import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from .logs import redact, register_secret

log = logging.getLogger(__name__)

# Who hears what. The log line (alerts.send) comes first for every severity; each entry
# lists channels in the order they are tried, and only configured ones are used.
ROUTES = {
    "urgent": ("dingtalk", "sms", "wecom", "slack", "webhook"),  # backup/verify/drill failed
    "warning": ("dingtalk", "webhook"),  # prune failed, an upload retried out
    "notice": ("dingtalk", "wecom", "slack"),  # e.g. a backup over 30 minutes
    "info": ("dingtalk", "wecom", "slack"),  # successes: only with ALERT_SUCCESS=true
}
# Where none of a severity's own channels is configured (say, only Slack), it goes to
# these rather than only to the log: a warning nobody reads helps nobody.
FALLBACK = {"warning": ("wecom", "slack"), "notice": ("webhook",)}
OPT_IN = {"info": "ALERT_SUCCESS"}  # severities that stay in the log unless this flag is on
UNKNOWN_SEVERITY = "urgent"  # a misspelt severity is heard, not dropped

# The alert retry policy lives here rather than in retry.py because its limits differ:
# an alert is news only while it is fresh, and the operation it reports is waiting.
ATTEMPTS = 3  # first try + 2 retries
WAIT = wait_random_exponential(multiplier=0.5, max=5)  # jittered: 0-0.5 s, then 0-1 s

COALESCE_SECONDS = 600
TIMEOUT_SECONDS = 10
SMS_CHARS = 70  # one SMS segment of Chinese text
WECOM_BYTES = 4096  # WeCom refuses markdown content over 4096 bytes
DINGTALK_BYTES = 18000  # DingTalk's limit is 20000 bytes per message
_SECRETISH = re.compile(r"token|key|secret|sign|sig|auth|pass", re.I)


class SendFailed(Exception):
    """A channel did not take the message. `permanent` when another try cannot help
    (a 4xx other than 408/429: wrong URL or token)."""

    def __init__(self, message, permanent=False):
        super().__init__(redact(message))
        self.permanent = permanent


def route(severity, configured, success=False):
    """The configured channels an alert of this severity goes to, in ROUTES order."""
    if severity in OPT_IN and not success:
        return ()
    chosen = tuple(name for name in ROUTES.get(severity, ROUTES[UNKNOWN_SEVERITY]) if name in configured)
    return chosen or tuple(name for name in FALLBACK.get(severity, ()) if name in configured)


def alert_policy(before_sleep, wait=None):
    """kwargs for tenacity.Retrying around one channel's send."""
    return dict(retry=retry_if_exception(lambda exc: not getattr(exc, "permanent", False)),
                wait=wait or WAIT, stop=stop_after_attempt(ATTEMPTS),
                before_sleep=before_sleep, reraise=True)


def dingtalk_sign(timestamp, secret):
    """DingTalk's robot signature: base64(HMAC-SHA256(secret, "<timestamp>\\n<secret>")),
    URL-encoded, timestamp in milliseconds."""
    digest = hmac.new(secret.encode(), f"{timestamp}\n{secret}".encode(), hashlib.sha256).digest()
    return urllib.parse.quote_plus(base64.b64encode(digest))


@dataclass
class Message:
    """One alert as the channels render it, with the count of repeats coalesced away."""
    alert: object
    suppressed: int = 0

    def note(self):
        n = self.suppressed
        if not n:
            return ""
        return f"suppressed {n} identical alert{'s' if n != 1 else ''} since the last one sent"

    def title(self):
        return self.alert.headline()

    def text(self):
        return self.alert.text() + (f" [{self.note()}]" if self.suppressed else "")

    def markdown(self):
        lines = [f"#### {self.title()}", "", redact(self.alert.reason), ""]
        lines += [f"- {name}: {value}" for name, value in self.alert.facts()]
        if self.suppressed:
            lines += ["", f"> {self.note()}"]
        return "\n".join(lines)

    def sms(self):
        facts = dict(self.alert.facts())
        where = " ".join(facts[k] for k in ("database", "kind") if k in facts)
        text = redact(f"[L2C 备份] {self.alert.title}" + (f" {where}" if where else "")
                      + f": {self.alert.reason}")
        return text if len(text) <= SMS_CHARS else text[:SMS_CHARS - 1] + "…"

    def document(self):
        alert = self.alert
        return {"severity": alert.severity, "title": alert.title, "reason": redact(alert.reason),
                "details": _redacted(alert.details), "text": self.text(),
                "suppressed": self.suppressed}


def _redacted(value):
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redacted(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return redact(str(value))


def _clip(text, max_bytes):
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes - 3].decode("utf-8", "ignore") + "…"


def post_json(url, payload, timeout):
    """POST payload as JSON; the reply body as text. Raises SendFailed, never naming the URL."""
    body = json.dumps(payload, ensure_ascii=False, default=str).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json; charset=utf-8", "User-Agent": "l2c-backup-alerts"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.read(65536).decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        text = err.read(300).decode("utf-8", "replace").strip()
        raise SendFailed(f"HTTP {err.code}" + (f": {text}" if text else ""),
                         permanent=400 <= err.code < 500 and err.code not in (408, 429)) from None
    except urllib.error.URLError as err:
        raise SendFailed(_unreachable(err.reason, timeout)) from None
    except (OSError, http.client.HTTPException) as err:  # timeouts and resets while reading
        raise SendFailed(_unreachable(err, timeout)) from None


def _unreachable(reason, timeout):
    if isinstance(reason, TimeoutError):
        return f"no reply within {timeout:g}s"
    return f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else str(reason)


def _errcode_ok(text):
    """DingTalk and WeCom answer HTTP 200 with {"errcode": 0, "errmsg": "ok"}, or a non-zero
    errcode (310000 bad signature / keyword, 130101 too fast, 93000 bad key)."""
    try:
        reply = json.loads(text)
    except ValueError:
        raise SendFailed(f"reply is not JSON: {text[:200]}") from None
    code = reply.get("errcode") if isinstance(reply, dict) else None
    if code != 0:
        raise SendFailed(f"errcode {code}: {reply.get('errmsg', '') if isinstance(reply, dict) else ''}")


class Sender(abc.ABC):
    name = ""

    def __init__(self, url, timeout):
        self.url, self.timeout = url, timeout

    def send(self, message):
        self.accept(post_json(self.target(), self.payload(message), self.timeout))

    def target(self):
        return self.url

    @abc.abstractmethod
    def payload(self, message):
        """The JSON body this channel expects."""

    def accept(self, reply):
        """Raises SendFailed when a 2xx reply still says no."""


class DingTalk(Sender):
    name = "dingtalk"

    def __init__(self, url, timeout, secret=""):
        super().__init__(url, timeout)
        self.secret = secret

    def target(self):
        if not self.secret:
            return self.url
        # Signed afresh on each try: DingTalk refuses a timestamp over an hour old.
        timestamp = str(round(time.time() * 1000))
        sep = "&" if "?" in self.url else "?"
        return f"{self.url}{sep}timestamp={timestamp}&sign={dingtalk_sign(timestamp, self.secret)}"

    def payload(self, message):
        return {"msgtype": "markdown",
                "markdown": {"title": message.title(), "text": _clip(message.markdown(), DINGTALK_BYTES)}}

    def accept(self, reply):
        _errcode_ok(reply)


class WeCom(Sender):
    name = "wecom"

    def payload(self, message):
        return {"msgtype": "markdown", "markdown": {"content": _clip(message.markdown(), WECOM_BYTES)}}

    def accept(self, reply):
        _errcode_ok(reply)


class Slack(Sender):
    name = "slack"

    def payload(self, message):
        return {"text": message.text()}

    def accept(self, reply):
        if reply.strip() != "ok":
            raise SendFailed(f"Slack replied {reply[:200]!r}, not 'ok'")


class Webhook(Sender):
    name = "webhook"

    def payload(self, message):
        return message.document()


class Sms(Sender):
    name = "sms"

    def __init__(self, url, timeout, phones):
        super().__init__(url, timeout)
        self.phones = phones

    def payload(self, message):
        return {"phone_numbers": list(self.phones), "message": message.sms()}


class Coalescer:
    """Identical alerts (severity, title, reason, key) inside the window go out once; the
    first one after it carries the count of those held back."""

    def __init__(self, seconds, clock=time.monotonic):
        self.seconds, self.clock = seconds, clock
        self._sent = {}  # identity -> [sent at, suppressed since]
        self._lock = threading.Lock()

    @staticmethod
    def identity(alert):
        return (alert.severity, alert.title, alert.reason, str((alert.details or {}).get("key")))

    def admit(self, alert):
        """None for a repeat to hold back, else how many were held back before this one."""
        if self.seconds <= 0:
            return 0
        identity, now = self.identity(alert), self.clock()
        with self._lock:
            entry = self._sent.get(identity)
            if entry and entry[0] is not None and now - entry[0] < self.seconds:
                entry[1] += 1
                return None
            if len(self._sent) > 1000:  # a long-lived CLI process: drop what has expired
                self._sent = {k: v for k, v in self._sent.items()
                              if v[1] or (v[0] is not None and now - v[0] < self.seconds)}
            self._sent[identity] = [now, 0]
            return entry[1] if entry else 0

    def undo(self, alert, suppressed):
        """Nothing was delivered: let the next identical alert through, with the count."""
        with self._lock:
            self._sent[self.identity(alert)] = [None, suppressed]


class Channels:
    def __init__(self, senders=(), success=False, coalesce_seconds=COALESCE_SECONDS,
                 clock=time.monotonic, wait=None):
        self.senders = {sender.name: sender for sender in senders}
        self.success = success
        self.coalescer = Coalescer(coalesce_seconds, clock)
        self.wait = wait

    @classmethod
    def from_env(cls, environ, clock=time.monotonic, wait=None):
        timeout = _seconds(environ, "ALERT_TIMEOUT_SECONDS", TIMEOUT_SECONDS, allow_zero=False)
        senders = []
        url = _url(environ, "ALERT_DINGTALK_WEBHOOK")
        if url:
            secret = environ.get("ALERT_DINGTALK_SECRET", "").strip()
            register_secret(secret)
            senders.append(DingTalk(url, timeout, secret))
        for name, kind in (("ALERT_WECOM_WEBHOOK", WeCom), ("ALERT_SLACK_WEBHOOK", Slack),
                           ("ALERT_WEBHOOK_URL", Webhook)):
            url = _url(environ, name)
            if url:
                senders.append(kind(url, timeout))
        url = _url(environ, "ALERT_SMS_WEBHOOK_URL")
        phones = [p.strip() for p in environ.get("ALERT_SMS_PHONES", "").split(",") if p.strip()]
        register_secret(*phones)
        if url and phones:
            senders.append(Sms(url, timeout, phones))
        elif url or phones:
            log.warning("SMS alerts off: set both ALERT_SMS_WEBHOOK_URL and ALERT_SMS_PHONES")
        success = environ.get("ALERT_SUCCESS", "").strip().lower() in ("true", "yes", "1", "on")
        channels = cls(senders, success, _seconds(environ, "ALERT_COALESCE_SECONDS", COALESCE_SECONDS),
                       clock, wait)
        if senders:
            log.info("alert channels: %s", ", ".join(
                s.name + (" (signed)" if getattr(s, "secret", "") else "")
                + (f" ({len(s.phones)} phones)" if isinstance(s, Sms) else "") for s in senders))
        return channels

    def deliver(self, alert):
        """Sends to every routed channel at once and waits for all (FC may freeze the
        instance once the handler returns, so nothing is left in the background).
        Returns {channel: delivered}; never raises."""
        names = route(alert.severity, self.senders, self.success)
        if not names:
            return {}
        suppressed = self.coalescer.admit(alert)
        if suppressed is None:
            log.info("alert (%s) repeated within %gs: held back", alert.severity, self.coalescer.seconds)
            return {}
        message = Message(alert, suppressed)
        if len(names) == 1:
            results = {names[0]: self._send_one(names[0], message)}
        else:
            with concurrent.futures.ThreadPoolExecutor(max_workers=len(names)) as pool:
                # Each thread runs in a copy of this context, so its log lines keep the
                # run's keys (request id, database, kind, key).
                futures = {name: pool.submit(contextvars.copy_context().run, self._send_one,
                                             name, message) for name in names}
                results = {name: future.result() for name, future in futures.items()}
        if not any(results.values()):
            self.coalescer.undo(alert, suppressed)
        return results

    def _send_one(self, name, message):
        sender, attempts = self.senders[name], [0]

        def attempt():
            attempts[0] += 1
            sender.send(message)

        def before_sleep(state):
            log.warning("alert to %s: attempt %d of %d failed: %s; retrying", name,
                        state.attempt_number, ATTEMPTS, _describe(state.outcome.exception()))
        try:
            Retrying(**alert_policy(before_sleep, self.wait))(attempt)
        except Exception as exc:
            log.error("alert to %s not delivered after %d attempt%s: %s", name, attempts[0],
                      "s" if attempts[0] != 1 else "", _describe(exc))
            return False
        log.info("alert sent to %s%s", name, f" after {attempts[0]} attempts" if attempts[0] > 1 else "")
        return True


def _describe(exc):
    return str(exc) if isinstance(exc, SendFailed) else f"{type(exc).__name__}: {redact(str(exc))}"


def _url(environ, name):
    url = environ.get(name, "").strip()
    if not url:
        return ""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        log.warning("%s is not an http(s) URL; that channel is off", name)  # never echo it
        return ""
    _register_url_secrets(parts)
    return url


def _register_url_secrets(parts):
    """A webhook URL is a credential: its token (access_token=, key=), its password, and
    token-like path segments (Slack's /services/T.../B.../<secret>) never reach a log."""
    values = [parts.password, parts.geturl()]
    for key, found in urllib.parse.parse_qs(parts.query).items():
        values += [v for v in found if _SECRETISH.search(key) or len(v) >= 16]
    segments = [s for s in parts.path.split("/") if s]
    if "services" in segments:  # Slack: everything after /services/ is the token
        values += segments[segments.index("services") + 1:]
    values += [s for s in segments if len(s) >= 16 and re.search(r"\d", s) and re.search(r"[A-Za-z]", s)]
    register_secret(*values)


def _seconds(environ, name, default, allow_zero=True):
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
        if value < 0 or (value == 0 and not allow_zero):
            raise ValueError
    except ValueError:
        log.warning("%s must be a number of seconds%s; using %g", name,
                    "" if allow_zero else " above 0", default)
        return default
    return value


_current = None
_configure_lock = threading.Lock()


def configure(environ=None, *, clock=time.monotonic, wait=None):
    """(Re)reads the channels from environ (os.environ when None), dropping any earlier
    configuration and its coalescing memory. clock and wait are for tests: the
    coalescing clock and the tenacity wait between attempts."""
    global _current
    channels = Channels.from_env(os.environ if environ is None else environ, clock=clock, wait=wait)
    _current = channels
    return channels


def reset():
    """Forget the configuration: the next alert reads os.environ again."""
    global _current
    _current = None


def current():
    if _current is None:
        with _configure_lock:
            if _current is None:
                configure()
    return _current


def deliver(alert):
    """Routes, coalesces and sends one alert; {channel: delivered}. Never raises."""
    try:
        return current().deliver(alert)
    except Exception as exc:
        log.error("alert channels failed: %s", _describe(exc))
        return {}
