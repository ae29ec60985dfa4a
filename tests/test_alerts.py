"""Alerts: each channel's request as the real service expects it (checked by a local
receiver, DingTalk's signature included), the severity routing table, coalescing of
repeats, and failures that are retried and logged but never raised."""
import base64
import hashlib
import hmac
import logging
import urllib.parse

import pytest
from tenacity import wait_random_exponential

from alert_receiver import AlertReceiver
from l2c_backup import alerts, channels, logs

DINGTALK_SECRET = "SEC1f4c9b0e8d7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0"
DINGTALK_TOKEN = "6d1c4a6f2b3e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c"
WECOM_KEY = "693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa"
SLACK_TOKEN = "xoxbHookT0k3nZ9qW8eR7tY6u"
PHONES = ["13800138000", "13900139000"]
# Tiny jittered waits: the retries are real, the test stays fast.
FAST = wait_random_exponential(multiplier=0.005, max=0.02)

BACKUP_FAILED = alerts.Alert("urgent", "backup failed", "pg_dump exited 1: connection refused",
                             {"database": "app", "kind": "daily", "key": "daily/app/2024-05-01.sql.gz",
                              "bytes": 5 * 1024 * 1024, "seconds": 42.5, "reason": "dump-failed"})


@pytest.fixture
def receiver():
    server = AlertReceiver(dingtalk_secret=DINGTALK_SECRET).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def forget_channels():
    """Every test configures its own channels; none leaks into the next test file."""
    yield
    channels.reset()


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def environ(receiver, *only, **extra):
    """Every channel pointed at the receiver (or only the named ones)."""
    env = {"ALERT_DINGTALK_WEBHOOK": receiver.url(f"/dingtalk/robot/send?access_token={DINGTALK_TOKEN}"),
           "ALERT_DINGTALK_SECRET": DINGTALK_SECRET,
           "ALERT_WECOM_WEBHOOK": receiver.url(f"/wecom/cgi-bin/webhook/send?key={WECOM_KEY}"),
           "ALERT_SLACK_WEBHOOK": receiver.url(f"/slack/services/T0AAAA/B0BBBB/{SLACK_TOKEN}"),
           "ALERT_WEBHOOK_URL": receiver.url("/webhook/l2c"),
           "ALERT_SMS_WEBHOOK_URL": receiver.url("/sms/send"),
           "ALERT_SMS_PHONES": " , ".join(PHONES),
           "ALERT_TIMEOUT_SECONDS": "2"}
    if only:
        names = {"dingtalk": ("ALERT_DINGTALK_WEBHOOK", "ALERT_DINGTALK_SECRET"),
                 "wecom": ("ALERT_WECOM_WEBHOOK",), "slack": ("ALERT_SLACK_WEBHOOK",),
                 "webhook": ("ALERT_WEBHOOK_URL",), "sms": ("ALERT_SMS_WEBHOOK_URL", "ALERT_SMS_PHONES")}
        keep = {n for channel in only for n in names[channel]} | {"ALERT_TIMEOUT_SECONDS"}
        env = {k: v for k, v in env.items() if k in keep}
    return {**env, **extra}


def configure(env, clock=None):
    return alerts.configure(env, clock=clock or Clock(), wait=FAST)


# -- each channel's request -----------------------------------------------------------

def test_dingtalk_gets_a_signed_markdown_message(receiver):
    configure(environ(receiver, "dingtalk"))
    alerts.send(BACKUP_FAILED)
    [request] = receiver.to("dingtalk")
    assert request.path == "/dingtalk/robot/send"
    assert request.query["access_token"] == DINGTALK_TOKEN
    assert request.query["timestamp"].isdigit() and len(request.query["timestamp"]) == 13  # ms
    assert request.query["sign"]  # the receiver recomputed it: a wrong one gets errcode 310000
    assert request.headers["Content-Type"] == "application/json; charset=utf-8"
    assert request.body["msgtype"] == "markdown"
    assert request.body["markdown"]["title"] == "[L2C 备份] ❌ 失败: backup failed"
    text = request.body["markdown"]["text"]
    assert text.startswith("#### [L2C 备份] ❌ 失败: backup failed")
    for fact in ("pg_dump exited 1: connection refused", "- database: app", "- kind: daily",
                 "- key: daily/app/2024-05-01.sql.gz", "- size: 5.0 MiB", "- duration: 42.5s",
                 "- reason: dump-failed"):
        assert fact in text


def test_dingtalk_without_a_secret_sends_no_signature(receiver):
    receiver.dingtalk_secret = None
    configure(environ(receiver, "dingtalk", ALERT_DINGTALK_SECRET=""))
    assert channels.deliver(BACKUP_FAILED) == {"dingtalk": True}
    [request] = receiver.to("dingtalk")
    assert "sign" not in request.query and "timestamp" not in request.query


def test_sign_matches_dingtalks_documented_example():
    # The robot docs' Python sample: HMAC-SHA256 over "<timestamp>\n<secret>", base64, quote_plus.
    expected = urllib.parse.quote_plus(base64.b64encode(hmac.new(
        b"SECabc", b"1577262236757\nSECabc", digestmod=hashlib.sha256).digest()))
    assert channels.dingtalk_sign("1577262236757", "SECabc") == expected


def test_wecom_gets_a_markdown_content_message(receiver):
    configure(environ(receiver, "wecom"))
    assert channels.deliver(BACKUP_FAILED) == {"wecom": True}
    [request] = receiver.to("wecom")
    assert request.query == {"key": WECOM_KEY}
    assert list(request.body) == ["msgtype", "markdown"] and request.body["msgtype"] == "markdown"
    content = request.body["markdown"]["content"]
    assert content.startswith("#### [L2C 备份] ❌ 失败: backup failed") and "- database: app" in content


def test_slack_gets_one_text_line(receiver):
    configure(environ(receiver, "slack"))
    assert channels.deliver(BACKUP_FAILED) == {"slack": True}
    [request] = receiver.to("slack")
    assert request.path == f"/slack/services/T0AAAA/B0BBBB/{SLACK_TOKEN}"
    assert request.body == {"text": BACKUP_FAILED.text()}
    assert request.body["text"] == ("[L2C 备份] ❌ 失败: backup failed: pg_dump exited 1: connection refused "
                                    "(database=app, kind=daily, key=daily/app/2024-05-01.sql.gz, "
                                    "size=5.0 MiB, duration=42.5s, reason=dump-failed)")


def test_slack_reply_other_than_ok_is_a_failure(receiver, caplog):
    configure(environ(receiver, "slack"))
    receiver.fail("slack", status=200, times=3)  # 200 with body "injected failure"
    assert channels.deliver(BACKUP_FAILED) == {"slack": False}
    assert "not 'ok'" in caplog.text


def test_generic_webhook_gets_the_alert_as_json(receiver):
    configure(environ(receiver, "webhook"))
    assert channels.deliver(BACKUP_FAILED) == {"webhook": True}
    [request] = receiver.to("webhook")
    assert request.body == {"severity": "urgent", "title": "backup failed",
                            "reason": "pg_dump exited 1: connection refused",
                            "details": BACKUP_FAILED.details, "text": BACKUP_FAILED.text(),
                            "suppressed": 0}


def test_sms_gateway_gets_the_phone_list_and_a_short_message(receiver):
    configure(environ(receiver, "sms"))
    long_reason = alerts.Alert("urgent", "backup failed", "x" * 200, {"database": "app", "kind": "daily"})
    assert channels.deliver(long_reason) == {"sms": True}
    [request] = receiver.to("sms")
    assert request.body["phone_numbers"] == PHONES
    message = request.body["message"]
    assert message.startswith("[L2C 备份] backup failed app daily: xxx") and message.endswith("…")
    assert len(message) <= channels.SMS_CHARS


def test_sms_needs_both_url_and_phones(receiver, caplog):
    configured = configure(environ(receiver, "sms", ALERT_SMS_PHONES=""))
    assert "sms" not in configured.senders
    assert "set both ALERT_SMS_WEBHOOK_URL and ALERT_SMS_PHONES" in caplog.text


# -- routing --------------------------------------------------------------------------

def test_routing_table_follows_the_plan():
    assert channels.ROUTES == {
        "urgent": ("dingtalk", "sms", "wecom", "slack", "webhook"),
        "warning": ("dingtalk", "webhook"),
        "notice": ("dingtalk", "wecom", "slack"),
        "info": ("dingtalk", "wecom", "slack"),
    }
    everything = {"dingtalk", "sms", "wecom", "slack", "webhook"}
    assert channels.route("info", everything) == ()  # successes stay in the log by default
    assert channels.route("info", everything, success=True) == ("dingtalk", "wecom", "slack")
    assert channels.route("warning", {"slack", "webhook"}) == ("webhook",)
    assert channels.route("urgent", {"slack"}) == ("slack",)
    assert channels.route("misspelt", everything) == channels.ROUTES["urgent"]
    assert channels.route("urgent", set()) == ()


@pytest.mark.parametrize("severity, success, heard_by", [
    ("urgent", False, {"dingtalk", "sms", "wecom", "slack", "webhook"}),
    ("warning", False, {"dingtalk", "webhook"}),
    ("notice", False, {"dingtalk", "wecom", "slack"}),
    ("info", False, set()),
    ("info", True, {"dingtalk", "wecom", "slack"}),
])
def test_each_severity_reaches_its_channels(receiver, severity, success, heard_by):
    configure(environ(receiver, ALERT_SUCCESS="true" if success else "false"))
    alerts.send(alerts.Alert(severity, "something happened", "because", {"database": "app"}))
    assert {r.channel for r in receiver.requests} == heard_by
    assert len(receiver.requests) == len(heard_by)  # once each, no retries


@pytest.mark.parametrize("severity, mark", [("urgent", "❌ 失败"), ("warning", "❌ 失败"),
                                            ("notice", "⚠️ 注意"), ("info", "✅ 成功")])
def test_messages_follow_the_team_format(severity, mark):
    alert = alerts.Alert(severity, "drill passed", "restored in 3.0s",
                         {"rto_seconds": 1800, "restore_seconds": 3.04, "key": "k", "kind": "daily"})
    assert alert.text() == (f"[L2C 备份] {mark}: drill passed: restored in 3.0s "
                            "(kind=daily, key=k, duration=3.0s, rto_seconds=1800)")


# -- coalescing -----------------------------------------------------------------------

def test_identical_alerts_within_the_window_go_out_once_then_report_the_count(receiver):
    clock = Clock()
    configure(environ(receiver, "slack", ALERT_COALESCE_SECONDS="600"), clock)
    sent = []
    sink = alerts.add_sink(sent.append)
    try:
        for _ in range(3):
            alerts.send(BACKUP_FAILED)
            clock.now += 60
        assert len(receiver.to("slack")) == 1
        assert len(sent) == 3  # sinks (and the log) still see every one
        clock.now += 600
        alerts.send(BACKUP_FAILED)
    finally:
        alerts.remove_sink(sink)
    first, after = receiver.to("slack")
    assert "suppressed" not in first.body["text"]
    assert after.body["text"].endswith("[suppressed 2 identical alerts since the last one sent]")


def test_alerts_about_different_backups_are_not_coalesced(receiver):
    configure(environ(receiver, "webhook"))
    other = alerts.Alert(BACKUP_FAILED.severity, BACKUP_FAILED.title, BACKUP_FAILED.reason,
                         {**BACKUP_FAILED.details, "key": "daily/app/2024-05-02.sql.gz"})
    for alert in (BACKUP_FAILED, other, BACKUP_FAILED):
        alerts.send(alert)
    assert [r.body["details"]["key"] for r in receiver.to("webhook")] == [
        "daily/app/2024-05-01.sql.gz", "daily/app/2024-05-02.sql.gz"]


def test_coalesced_count_rides_in_markdown_and_json(receiver):
    clock = Clock()
    configure(environ(receiver, "dingtalk", "webhook"), clock)
    for _ in range(2):
        channels.deliver(BACKUP_FAILED)
    clock.now += 601
    channels.deliver(BACKUP_FAILED)
    assert receiver.to("dingtalk")[-1].body["markdown"]["text"].endswith(
        "> suppressed 1 identical alert since the last one sent")
    assert receiver.to("webhook")[-1].body["suppressed"] == 1


def test_an_alert_that_reached_no_one_does_not_hold_back_the_next(receiver):
    configure(environ(receiver, "slack"))
    receiver.fail("slack", times=3)
    assert channels.deliver(BACKUP_FAILED) == {"slack": False}
    assert channels.deliver(BACKUP_FAILED) == {"slack": True}
    assert len(receiver.to("slack")) == 4


# -- failures: retried, logged, never raised ------------------------------------------

def test_wrong_dingtalk_secret_is_retried_logged_and_send_still_returns(receiver, caplog):
    receiver.dingtalk_secret = "SECsomethingelse"
    configure(environ(receiver, "dingtalk"))
    sent = []
    sink = alerts.add_sink(sent.append)
    try:
        assert alerts.send(BACKUP_FAILED) is False  # returns, saying it did not go out
    finally:
        alerts.remove_sink(sink)
    assert sent == [BACKUP_FAILED]  # the rest of send() ran
    assert len(receiver.to("dingtalk")) == channels.ATTEMPTS
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert [r.levelno for r in retries] == [logging.WARNING] * (channels.ATTEMPTS - 1)
    assert "alert to dingtalk: attempt 1 of 3 failed: errcode 310000: sign not match" in caplog.text
    [failure] = [r for r in caplog.records if "not delivered" in r.getMessage()]
    assert failure.levelno == logging.ERROR
    assert failure.getMessage().startswith(
        "alert to dingtalk not delivered after 3 attempts: errcode 310000")


def test_a_5xx_is_retried_until_it_goes_through(receiver, caplog):
    caplog.set_level(logging.INFO)
    configure(environ(receiver, "wecom"))
    receiver.fail("wecom", status=503, times=2)
    assert channels.deliver(BACKUP_FAILED) == {"wecom": True}
    assert len(receiver.to("wecom")) == 3
    assert "alert to wecom: attempt 2 of 3 failed: HTTP 503: injected failure; retrying" in caplog.text
    assert "alert sent to wecom after 3 attempts" in caplog.text


def test_a_channel_that_keeps_failing_does_not_stop_the_others(receiver, caplog):
    configure(environ(receiver))
    receiver.fail("slack", status=500, times=5)
    results = channels.deliver(BACKUP_FAILED)
    assert results == {"dingtalk": True, "sms": True, "wecom": True, "slack": False, "webhook": True}
    assert len(receiver.to("slack")) == 3
    assert "alert to slack not delivered after 3 attempts: HTTP 500" in caplog.text


def test_a_channel_that_does_not_answer_in_time_is_retried_and_given_up(receiver, caplog):
    configure(environ(receiver, "webhook", ALERT_TIMEOUT_SECONDS="0.1"))
    receiver.delay("webhook", 0.5, times=3)
    alerts.send(BACKUP_FAILED)  # returns: the operation it reports goes on
    assert len(receiver.to("webhook")) == 3
    assert "alert to webhook: attempt 1 of 3 failed: no reply within 0.1s; retrying" in caplog.text
    assert "alert to webhook not delivered after 3 attempts: no reply within 0.1s" in caplog.text


def test_a_wrong_url_is_not_retried(receiver, caplog):
    configure({"ALERT_WEBHOOK_URL": receiver.url("/webhook/x")})
    receiver.fail("webhook", status=404)
    assert channels.deliver(BACKUP_FAILED) == {"webhook": False}
    assert len(receiver.to("webhook")) == 1
    assert "not delivered after 1 attempt: HTTP 404" in caplog.text


def test_nothing_listening_is_a_logged_failure(caplog):
    configure({"ALERT_WEBHOOK_URL": "http://127.0.0.1:9/l2c"})  # discard port: refused
    alerts.send(BACKUP_FAILED)
    assert "alert to webhook not delivered after 3 attempts" in caplog.text


def test_a_sender_that_raises_something_unexpected_is_contained(receiver, monkeypatch, caplog):
    configure(environ(receiver, "slack"))
    monkeypatch.setattr(channels.Slack, "payload", lambda self, message: 1 / 0)
    assert alerts.send(BACKUP_FAILED) is False
    assert "alert to slack: attempt 1 of 3 failed: ZeroDivisionError" in caplog.text


# -- configuration --------------------------------------------------------------------

def test_channels_come_from_the_environment_at_the_first_send(receiver, monkeypatch):
    channels.reset()
    monkeypatch.setenv("ALERT_SLACK_WEBHOOK", receiver.url(f"/slack/services/T/B/{SLACK_TOKEN}"))
    alerts.send(BACKUP_FAILED)
    assert len(receiver.to("slack")) == 1


def test_with_nothing_configured_send_is_only_the_log_line(caplog, monkeypatch):
    configured = configure({})
    assert configured.senders == {}
    monkeypatch.setattr(channels, "post_json", lambda *a: pytest.fail("no channel to post to"))
    with caplog.at_level(logging.DEBUG):
        alerts.send(BACKUP_FAILED)
    assert [r.name for r in caplog.records] == ["l2c_backup.alerts"]


def test_bad_settings_are_logged_without_their_value_and_fall_back(receiver, caplog):
    configured = configure({"ALERT_SLACK_WEBHOOK": "hooks.slack.com/services/T/B/notaurl0secret",
                            "ALERT_COALESCE_SECONDS": "ten minutes", "ALERT_TIMEOUT_SECONDS": "0",
                            "ALERT_WEBHOOK_URL": receiver.url("/webhook/x")})
    assert list(configured.senders) == ["webhook"]
    assert configured.coalescer.seconds == 600 and configured.senders["webhook"].timeout == 10
    assert "ALERT_SLACK_WEBHOOK is not an http(s) URL" in caplog.text
    assert "notaurl0secret" not in caplog.text


# -- secrets --------------------------------------------------------------------------

def test_webhook_tokens_the_dingtalk_secret_and_phones_are_registered_secrets(receiver):
    configure(environ(receiver))
    for secret in (DINGTALK_SECRET, DINGTALK_TOKEN, WECOM_KEY, SLACK_TOKEN, *PHONES):
        assert logs.redact(f"x {secret} y") == f"x {logs.MASK} y"


def test_no_secret_reaches_a_log_line_even_without_the_mask(receiver, caplog, monkeypatch):
    configure(environ(receiver))
    # Take away the last line of defence: the log lines must be clean by themselves.
    monkeypatch.setattr(logs, "_secrets", set())
    receiver.dingtalk_secret = "SECwrong"
    for channel in ("wecom", "slack", "webhook", "sms"):
        receiver.fail(channel, status=500, times=2)
    with caplog.at_level(logging.DEBUG):
        alerts.send(BACKUP_FAILED)
        alerts.send(alerts.Alert("info", "drill passed", "ok", {"database": "app"}))
    assert "retrying" in caplog.text and "not delivered" in caplog.text  # the error paths ran
    for secret in (DINGTALK_SECRET, DINGTALK_TOKEN, WECOM_KEY, SLACK_TOKEN, *PHONES, "127.0.0.1"):
        assert secret not in caplog.text
        assert all(secret not in r.getMessage() for r in caplog.records)


def test_secrets_in_an_alert_are_masked_before_they_leave(receiver):
    logs.register_secret("hunter2-database-password")
    configure(environ(receiver, "slack", "webhook", "dingtalk"))
    leaky = alerts.Alert("urgent", "backup failed", "auth failed for hunter2-database-password",
                         {"database": "app", "url": "postgresql://u:hunter2-database-password@db/app"})
    channels.deliver(leaky)
    assert receiver.requests and all("hunter2" not in str(r.body) for r in receiver.requests)
