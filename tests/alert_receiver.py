"""A local stand-in for the alert channels: one threaded HTTP server on 127.0.0.1 that
records every POST and answers as each real service does.

The first path segment names the channel: /dingtalk/robot/send?access_token=...,
/wecom/cgi-bin/webhook/send?key=..., /slack/services/T/B/X, /webhook/..., /sms/...
DingTalk replies {"errcode":0,"errmsg":"ok"}, and when the receiver holds the robot's
secret it checks the signature the way DingTalk does (errcode 310000 when wrong);
WeCom replies the same errcode JSON, Slack replies the text "ok", the rest an empty 200.
`fail` and `delay` script a channel's next replies for fault tests.
"""
import base64
import hashlib
import hmac
import http.server
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

import pytest


@dataclass
class Captured:
    channel: str
    path: str
    query: dict  # name -> value (single values, decoded)
    headers: dict
    body: object  # parsed JSON, or the text when it is not JSON
    at: float = field(default_factory=time.time)


class AlertReceiver:
    def __init__(self, dingtalk_secret=None):
        self.dingtalk_secret = dingtalk_secret
        self.requests = []
        self._faults = {}  # channel -> list of ("status", code) / ("delay", seconds)
        self._lock = threading.Lock()
        self._server = None

    # -- set-up -------------------------------------------------------------------------
    def start(self):
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                receiver._handle(self)

            def log_message(self, *args):  # keep pytest output clean
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True  # a request still sleeping must not block close
        # A short poll keeps stop() (shutdown waits one poll) from costing half a second a test.
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()
        return self

    def stop(self):
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def url(self, path):
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def fail(self, channel, status=500, times=1):
        """The channel's next `times` requests get this HTTP status."""
        with self._lock:
            self._faults.setdefault(channel, []).extend([("status", status)] * times)

    def delay(self, channel, seconds, times=1):
        """The channel's next `times` requests are answered only after `seconds`."""
        with self._lock:
            self._faults.setdefault(channel, []).extend([("delay", seconds)] * times)

    def to(self, channel):
        return [r for r in self.requests if r.channel == channel]

    # -- serving ------------------------------------------------------------------------
    def _handle(self, handler):
        parts = urllib.parse.urlsplit(handler.path)
        channel = parts.path.strip("/").split("/")[0]
        raw = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        with self._lock:
            self.requests.append(Captured(channel, parts.path, dict(urllib.parse.parse_qsl(parts.query)),
                                          dict(handler.headers), body))
            fault = self._faults.get(channel, [None]).pop(0) if self._faults.get(channel) else None
        if fault and fault[0] == "delay":
            time.sleep(fault[1])
        if fault and fault[0] == "status":
            return self._reply(handler, fault[1], "text/plain", "injected failure")
        if channel == "dingtalk":
            return self._reply_json(handler, self._dingtalk_verdict(parts.query, body))
        if channel == "wecom":
            ok = "key" in urllib.parse.parse_qs(parts.query)
            return self._reply_json(handler, {"errcode": 0, "errmsg": "ok"} if ok else
                                    {"errcode": 93000, "errmsg": "invalid webhook url"})
        if channel == "slack":
            return self._reply(handler, 200, "text/plain", "ok")
        return self._reply(handler, 200, "text/plain", "")

    def _dingtalk_verdict(self, query, body):
        params = urllib.parse.parse_qs(query)
        if "access_token" not in params:
            return {"errcode": 300001, "errmsg": "token is not exist"}
        if not isinstance(body, dict) or body.get("msgtype") != "markdown":
            return {"errcode": 40035, "errmsg": "缺少参数 json"}
        if self.dingtalk_secret is None:
            return {"errcode": 0, "errmsg": "ok"}
        # DingTalk's check: HMAC-SHA256 keyed by the secret over "<timestamp>\n<secret>",
        # base64, and a timestamp within an hour of now. parse_qs has already undone the
        # URL-encoding of sign.
        timestamp, sign = params.get("timestamp", [""])[0], params.get("sign", [""])[0]
        expected = base64.b64encode(hmac.new(
            self.dingtalk_secret.encode("utf-8"), f"{timestamp}\n{self.dingtalk_secret}".encode("utf-8"),
            hashlib.sha256).digest()).decode()
        fresh = timestamp.isdigit() and abs(time.time() * 1000 - int(timestamp)) < 3600 * 1000
        if not (fresh and hmac.compare_digest(sign, expected)):
            return {"errcode": 310000, "errmsg": "sign not match"}
        return {"errcode": 0, "errmsg": "ok"}

    @staticmethod
    def _reply_json(handler, document):
        AlertReceiver._reply(handler, 200, "application/json", json.dumps(document))

    @staticmethod
    def _reply(handler, status, content_type, text):
        data = text.encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:  # the client gave up waiting (a timeout test)
            pass


@pytest.fixture
def receiver():
    """A running AlertReceiver for one test (a test file may override it, e.g. with a
    DingTalk secret)."""
    server = AlertReceiver().start()
    yield server
    server.stop()


@pytest.fixture
def alerts_sent():
    """Every alert this test sends, as l2c_backup.alerts hands it to its sinks (a test
    file may override it, e.g. to leave out the backups' own "backup done")."""
    from l2c_backup import alerts
    sent = []
    sink = alerts.add_sink(sent.append)
    yield sent
    alerts.remove_sink(sink)
