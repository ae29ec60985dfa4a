"""The alert seam: every operation reports through `send`, never to a channel directly.

Here an alert is a log line at its severity's level, and any registered sink (tests, and
the channel senders of the alerts work) receives it too. Sending never raises: an alert
that cannot be delivered must not change the outcome of what it reports.
"""
import logging
from dataclasses import dataclass, field

from .logs import redact

log = logging.getLogger(__name__)

LEVELS = {"urgent": logging.ERROR, "warning": logging.WARNING, "notice": logging.INFO,
          "info": logging.INFO}
_sinks = []


@dataclass
class Alert:
    severity: str  # urgent / warning / notice / info
    title: str  # e.g. "backup failed", "verify failed"
    reason: str
    details: dict = field(default_factory=dict)  # database, kind, key, bytes, seconds

    def text(self):
        mark = "✅ 成功" if self.severity == "info" else "❌ 失败"
        facts = ", ".join(f"{k}={v}" for k, v in self.details.items())
        return redact(f"[L2C 备份] {mark}: {self.title}: {self.reason}" + (f" ({facts})" if facts else ""))


def add_sink(sink):
    _sinks.append(sink)
    return sink


def remove_sink(sink):
    if sink in _sinks:
        _sinks.remove(sink)


def send(alert):
    log.log(LEVELS.get(alert.severity, logging.ERROR), "alert (%s): %s", alert.severity, alert.text())
    for sink in list(_sinks):
        try:
            sink(alert)
        except Exception as exc:  # a broken channel is logged, never fatal
            log.warning("alert sink %r failed: %s", sink, exc)
