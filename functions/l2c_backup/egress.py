"""Can alerts and the DR drill get out? A TCP (and, for https, TLS) connect to every
configured alert channel and to OSS_DR_ENDPOINT, with a short timeout.

An FC service with internetAccess false and no NAT gateway on its VPC has no route to
the internet: DingTalk, WeCom and Slack webhooks and a public DR endpoint time out, and
the alert that would say so cannot be sent either. So the hourly watchdog runs this,
logs a warning per unreachable setting, sends this run's alerts only to the channels
that are reachable, and warns through them; `l2c-backup check-egress` runs it by hand.

Lines name the setting and the host:port, never the URL: a webhook's path and query are
its credential (DingTalk's access_token, WeCom's key, Slack's /services/T../B../secret).
"""
import concurrent.futures
import logging
import socket
import ssl
import urllib.parse
from dataclasses import dataclass

from . import alerts
from .logs import redact

log = logging.getLogger(__name__)

ALERT_SETTINGS = ("ALERT_DINGTALK_WEBHOOK", "ALERT_WECOM_WEBHOOK", "ALERT_SLACK_WEBHOOK",
                  "ALERT_WEBHOOK_URL", "ALERT_SMS_WEBHOOK_URL")
SETTINGS = ALERT_SETTINGS + ("OSS_DR_ENDPOINT",)
TIMEOUT_SECONDS = 3.0  # a route that exists answers a SYN in milliseconds
NO_ROUTE_FIX = ("the service has no route out: give its VPC a NAT gateway with an SNAT entry "
                "for the function's vSwitch, or turn on internet access for the service")
TLS_FIX = "the route is there: check the host's certificate, or a proxy in the way"


@dataclass
class Route:
    setting: str
    host: str
    port: int
    reachable: bool
    problem: str = ""
    fix: str = ""

    def line(self):
        where = f"{self.setting} ({self.host}:{self.port})"
        if self.reachable:
            return f"{where} is reachable"
        return redact(f"{where} is unreachable: {self.problem}; {self.fix}")

    def summary(self):
        return {"setting": self.setting, "host": self.host, "port": self.port,
                "reachable": self.reachable, "problem": redact(self.problem)}


def probe(setting, url, timeout=TIMEOUT_SECONDS):
    """Connects to url's host and port (TLS handshake too for https). Never raises."""
    parts = urllib.parse.urlsplit(url.strip())
    try:
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number
        host, port = None, None
    if parts.scheme not in ("http", "https") or not host:
        return Route(setting, "?", 0, False, "it is not an http(s) URL", f"fix {setting}")
    port = port or (443 if parts.scheme == "https" else 80)
    route = Route(setting, host, port, False, fix=NO_ROUTE_FIX)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror:
        route.problem = "its host name does not resolve"
        return route
    except socket.timeout:
        route.problem = f"no TCP connection within {timeout:g}s"
        return route
    except OSError as exc:
        route.problem = f"TCP connect failed: {exc.strerror or type(exc).__name__}"
        return route
    with sock:
        if parts.scheme == "https":
            try:
                with ssl.create_default_context().wrap_socket(sock, server_hostname=host):
                    pass
            except (ssl.SSLError, OSError) as exc:
                route.problem = f"TLS handshake failed: {getattr(exc, 'reason', None) or type(exc).__name__}"
                route.fix = TLS_FIX
                return route
    route.reachable, route.fix = True, ""
    return route


def check(environ, timeout=TIMEOUT_SECONDS):
    """A Route for every setting in SETTINGS that is set, probed at once."""
    wanted = [(name, environ[name]) for name in SETTINGS if (environ.get(name) or "").strip()]
    if not wanted:
        return []
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(wanted)) as pool:
        return list(pool.map(lambda item: probe(item[0], item[1], timeout), wanted))


def route_alerts(environ, timeout=TIMEOUT_SECONDS):
    """The watchdog's check: logs a warning per unreachable setting, points this run's
    alerts at the reachable channels only (an unreachable one would only burn the run's
    time on retries), and warns through them. Returns the routes."""
    routes = check(environ, timeout)
    unreachable = [r for r in routes if not r.reachable]
    for route in unreachable:
        log.warning("%s", route.line())
    dead = {r.setting for r in unreachable}
    alerts.configure({k: v for k, v in environ.items() if k not in dead})
    if unreachable:
        alerts.send(alerts.Alert(
            "warning", "no route out",
            "; ".join(f"{r.setting} ({r.host}:{r.port}): {r.problem}" for r in unreachable),
            {"fix": unreachable[0].fix}))
    return routes
