"""The alert seam: every operation reports through `send`, never to a channel directly.

An alert is a log line at its severity's level; the channels configured by environment
(DingTalk, WeCom, Slack, a JSON webhook, SMS: see channels.py) get it by the routing
table there, and any registered sink (tests) receives it too. Sending never raises: an
alert that cannot be delivered must not change the outcome of what it reports.
"""
import logging
from dataclasses import dataclass, field

from . import channels
from .channels import configure  # noqa: F401  (alerts.configure(environ) for tests and tools)
from .logs import bound_value, redact

log = logging.getLogger(__name__)

LEVELS = {"urgent": logging.ERROR, "warning": logging.WARNING, "notice": logging.INFO,
          "info": logging.INFO}
MARKS = {"info": "✅ 成功", "notice": "⚠️ 注意"}  # urgent, warning and anything unknown: failed
FAILED = "❌ 失败"
# The facts an operator looks for first, in this order; other details follow as given.
_SIZE_KEYS = ("bytes", "size")
_DURATION_KEYS = ("seconds", "restore_seconds", "duration")
_sinks = []


@dataclass
class Alert:
    severity: str  # urgent / warning / notice / info
    title: str  # e.g. "backup failed", "verify failed"
    reason: str
    details: dict = field(default_factory=dict)  # database, kind, key, bytes, seconds, reason

    def headline(self):
        return redact(f"[L2C 备份] {MARKS.get(self.severity, FAILED)}: {self.title}")

    def facts(self):
        """(name, value) pairs to show: database, kind, key, size, duration, reason, then
        the rest of the details; empty values left out."""
        details = {k: v for k, v in self.details.items() if v is not None and v != ""}
        shown = []
        for name in ("database", "kind", "key"):
            if name in details:
                shown.append((name, str(details.pop(name))))
        for name in _SIZE_KEYS:
            if name in details:
                shown.append(("size", _size(details.pop(name))))
                break
        for name in _DURATION_KEYS:
            if name in details:
                shown.append(("duration", _duration(details.pop(name))))
                break
        if "reason" in details:
            shown.append(("reason", str(details.pop("reason"))))
        shown.extend((k, str(v)) for k, v in details.items())
        return [(k, redact(v)) for k, v in shown]

    def text(self):
        facts = ", ".join(f"{k}={v}" for k, v in self.facts())
        return redact(f"{self.headline()}: {self.reason}" + (f" ({facts})" if facts else ""))


def _size(value):
    try:
        size = float(value)
    except (TypeError, ValueError):
        return str(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024


def _duration(value):
    try:
        return f"{float(value):.1f}s"
    except (TypeError, ValueError):
        return str(value)


def add_sink(sink):
    _sinks.append(sink)
    return sink


def remove_sink(sink):
    if sink in _sinks:
        _sinks.remove(sink)


# (request id, alert) of alerts that no routed channel took, until fc.already_alerted takes
# those of its run: a failure whose own alert never went out must be left to the failure
# destination, not marked as sent.
_undelivered = []


def send(alert):
    """Logs and delivers one alert. True when it went out (or had no channel to go to, or
    was held back as a repeat of one that went out); False when every channel failed."""
    log.log(LEVELS.get(alert.severity, logging.ERROR), "alert (%s): %s", alert.severity, alert.text())
    try:
        results = channels.deliver(alert)
    except Exception as exc:  # deliver() catches its own failures; this is the last guard
        log.error("alert channels failed: %s: %s", type(exc).__name__, redact(str(exc)))
        results = {"deliver": False}
    delivered = not results or any(results.values())
    if not delivered:
        _undelivered.append((bound_value("request_id"), alert))
    for sink in list(_sinks):
        try:
            sink(alert)
        except Exception as exc:  # a broken channel is logged, never fatal
            log.warning("alert sink %r failed: %s", sink, exc)
    return delivered


def take_undelivered():
    """The alerts of this run (its request id) that no channel took; forgets them all,
    since an earlier run's are no longer anyone's to report."""
    request_id = bound_value("request_id")
    taken = [alert for rid, alert in _undelivered if rid == request_id]
    _undelivered.clear()
    return taken
