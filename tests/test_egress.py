"""The egress check: alert channels and the DR endpoint reachable from where the functions
run (an FC service with internet access off and no NAT gateway has no route out). A live
local receiver against a port nothing listens on; the output names settings and hosts,
never a webhook's token."""
import json
import os
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

from fc_handlers import fc_context, load_handler
from l2c_backup import channels, config, egress
from l2c_backup.storage import open_storage

DINGTALK_TOKEN = "6d1c4a6f2b3e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c"
SLACK_TOKEN = "xoxbHookT0k3nZ9qW8eR7tY6u"
WECOM_KEY = "693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa"
SECRETS = (DINGTALK_TOKEN, SLACK_TOKEN, WECOM_KEY, "T0AAAA", "B0BBBB")
watchdog_fn = load_handler("watchdog")


@pytest.fixture(autouse=True)
def forget_channels():
    yield
    channels.reset()


@pytest.fixture
def closed_port():
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def settings(receiver, closed_port):
    return {"ALERT_DINGTALK_WEBHOOK": receiver.url(f"/dingtalk/robot/send?access_token={DINGTALK_TOKEN}"),
            "ALERT_SLACK_WEBHOOK": f"http://127.0.0.1:{closed_port}/slack/services/T0AAAA/B0BBBB/{SLACK_TOKEN}",
            "ALERT_WECOM_WEBHOOK": "https://" + receiver.url(f"/wecom/cgi-bin/webhook/send?key={WECOM_KEY}")[7:],
            "OSS_DR_ENDPOINT": f"http://127.0.0.1:{closed_port}"}


def assert_no_secret(text):
    for secret in SECRETS:
        assert secret not in text


def test_reachable_and_unreachable_settings_are_told_apart_by_name_and_host(receiver, closed_port):
    routes = {r.setting: r for r in egress.check(settings(receiver, closed_port), timeout=2)}

    assert set(routes) == {"ALERT_DINGTALK_WEBHOOK", "ALERT_SLACK_WEBHOOK", "ALERT_WECOM_WEBHOOK",
                           "OSS_DR_ENDPOINT"}
    assert routes["ALERT_DINGTALK_WEBHOOK"].reachable
    slack = routes["ALERT_SLACK_WEBHOOK"]
    assert not slack.reachable and (slack.host, slack.port) == ("127.0.0.1", closed_port)
    assert slack.line().startswith(f"ALERT_SLACK_WEBHOOK (127.0.0.1:{closed_port}) is unreachable: "
                                   "TCP connect failed")
    assert "NAT gateway" in slack.line() and "internet access" in slack.line()
    assert not routes["OSS_DR_ENDPOINT"].reachable
    # https to a plain-HTTP listener: the route is there, the TLS handshake is not
    wecom = routes["ALERT_WECOM_WEBHOOK"]
    assert not wecom.reachable and "TLS handshake failed" in wecom.line() and "NAT" not in wecom.line()
    for route in routes.values():
        assert_no_secret(route.line() + json.dumps(route.summary()))


def test_nothing_configured_checks_nothing():
    assert egress.check({"ALERT_SLACK_WEBHOOK": "", "OSS_ENDPOINT": "http://127.0.0.1:1"}) == []


def test_a_malformed_setting_is_named_without_its_value():
    (route,) = egress.check({"ALERT_WEBHOOK_URL": f"hooks.example.com/{SLACK_TOKEN}"})
    assert not route.reachable and route.line() == (
        "ALERT_WEBHOOK_URL (?:0) is unreachable: it is not an http(s) URL; fix ALERT_WEBHOOK_URL")


def cli(env, *args):
    return subprocess.run([sys.executable, "-m", "l2c_backup.cli", "check-egress", *args],
                          capture_output=True, text=True, env=env)


def test_cli_check_egress_exits_nonzero_naming_the_unreachable_setting(receiver, closed_port):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ALERT_", "OSS_"))}
    bad = cli({**base, **settings(receiver, closed_port)}, "--timeout", "2")
    assert bad.returncode == 1, bad.stderr
    lines = bad.stdout.splitlines()
    assert any(line.startswith("ALERT_DINGTALK_WEBHOOK (127.0.0.1:") and line.endswith("is reachable")
               for line in lines)
    assert f"ALERT_SLACK_WEBHOOK (127.0.0.1:{closed_port}) is unreachable" in bad.stdout
    assert_no_secret(bad.stdout + bad.stderr)

    as_json = cli({**base, **settings(receiver, closed_port)}, "--json")
    assert {r["setting"]: r["reachable"] for r in json.loads(as_json.stdout)["routes"]} == {
        "ALERT_DINGTALK_WEBHOOK": True, "ALERT_SLACK_WEBHOOK": False,
        "ALERT_WECOM_WEBHOOK": False, "OSS_DR_ENDPOINT": False}
    assert_no_secret(as_json.stdout)

    good = cli({**base, "ALERT_DINGTALK_WEBHOOK": settings(receiver, closed_port)["ALERT_DINGTALK_WEBHOOK"]})
    assert good.returncode == 0 and good.stdout.strip().endswith("is reachable")


@pytest.fixture
def fresh_backups(monkeypatch, oss_server):
    env = {"OSS_ENDPOINT": oss_server.endpoint, "OSS_BACKUP_BUCKET": "l2c-backups",
           "OSS_ACCESS_KEY_ID": oss_server.access_key_id,
           "OSS_ACCESS_KEY_SECRET": oss_server.access_key_secret, "WATCHDOG_KINDS": "daily"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("BACKUP_TARGET", raising=False)
    storage = open_storage(*config.storage_target(env))
    key = "db-backups/daily/backup_2026-11-27.sql.gz"
    storage.put_bytes(key, b"x" * 1000)
    finished = datetime.fromtimestamp(time.time() - 3600, timezone.utc).isoformat()
    storage.put_bytes(key + ".manifest.json", json.dumps({"finished_at": finished}).encode())
    storage.set_tags(key, {"verify": "ok", "verify-reason": "ok"})


def test_the_watchdog_warns_of_a_missing_route_through_the_channels_that_still_get_through(
        fresh_backups, receiver, closed_port, monkeypatch, capsys):
    reachable_hook = receiver.url("/webhook/l2c")
    monkeypatch.setenv("ALERT_WEBHOOK_URL", reachable_hook)
    monkeypatch.setenv("ALERT_SLACK_WEBHOOK", settings(receiver, closed_port)["ALERT_SLACK_WEBHOOK"])
    monkeypatch.setenv("ALERT_DINGTALK_WEBHOOK",
                       f"http://127.0.0.1:{closed_port}/dingtalk/robot/send?access_token={DINGTALK_TOKEN}")

    summary = json.loads(watchdog_fn.handler(b"{}", fc_context(name="watchdog")))

    assert summary["ok"] is True
    assert summary["egress"]["checked"] == ["ALERT_DINGTALK_WEBHOOK", "ALERT_SLACK_WEBHOOK",
                                            "ALERT_WEBHOOK_URL"]
    assert [r["setting"] for r in summary["egress"]["unreachable"]] == [
        "ALERT_DINGTALK_WEBHOOK", "ALERT_SLACK_WEBHOOK"]
    [warning] = receiver.to("webhook")  # the reachable channel; the others were not tried
    assert warning.body["severity"] == "warning" and warning.body["title"] == "no route out"
    assert "ALERT_SLACK_WEBHOOK (127.0.0.1:" in warning.body["reason"]
    log_lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert [(r["level"], r["message"].split(" (")[0]) for r in log_lines if "is unreachable" in r["message"]] == [
        ("warning", "ALERT_DINGTALK_WEBHOOK"), ("warning", "ALERT_SLACK_WEBHOOK")]
    assert_no_secret(json.dumps(summary) + json.dumps(warning.body) + json.dumps(log_lines))


def test_the_watchdog_is_silent_about_egress_when_every_route_is_there(fresh_backups, receiver,
                                                                       monkeypatch):
    monkeypatch.setenv("ALERT_WEBHOOK_URL", receiver.url("/webhook/l2c"))
    summary = json.loads(watchdog_fn.handler(b"{}", fc_context(name="watchdog")))
    assert summary["egress"] == {"checked": ["ALERT_WEBHOOK_URL"], "unreachable": []}
    assert receiver.requests == []
