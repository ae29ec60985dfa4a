"""The FC `backup` handler: timer and direct events, credentials from the context."""
import json

import oss2
import pytest

from fc_handlers import fc_context, load_handler
from l2c_backup.errors import ConfigInvalid, EventInvalid, L2CError, UploadFailed

backup = load_handler("backup")


@pytest.fixture
def fc_env(monkeypatch, pg_cluster, seeded_db, oss_server):
    """Function config as s.yaml sets it: no credentials in env, they come from the role."""
    for name in ("OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET", "ALIBABA_CLOUD_ACCESS_KEY_ID",
                 "ALIBABA_CLOUD_ACCESS_KEY_SECRET", "ALIBABA_CLOUD_SECURITY_TOKEN", "BACKUP_TARGET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", pg_cluster.url(seeded_db))
    monkeypatch.setenv("OSS_ENDPOINT", oss_server.endpoint)
    monkeypatch.setenv("OSS_BACKUP_BUCKET", "l2c-backups")
    oss_server.add_credentials("STS.role-key", "role-secret", security_token="role-token")
    return oss_server


def timer_event(payload):
    return json.dumps({"triggerTime": "2026-11-26T18:00:00Z", "triggerName": "daily-0200",
                       "payload": payload}).encode()


def test_timer_event_runs_a_daily_backup_with_the_roles_sts_credentials(fc_env, bucket):
    context = fc_context("req-timer", "STS.role-key", "role-secret", "role-token")
    summary = json.loads(backup.handler(timer_event('{"kind":"daily"}'), context))

    assert summary["kind"] == "daily" and summary["request_id"] == "req-timer"
    (done,) = summary["backups"]
    assert done["key"].startswith("db-backups/daily/backup_") and done["bytes"] > 0
    assert len(done["sha256"]) == 64 and done["seconds"] > 0
    doc = json.loads(bucket.get_object(done["key"] + ".manifest.json").read())
    assert doc["request_id"] == "req-timer"


def test_direct_invoke_runs_a_manual_backup(fc_env, bucket):
    context = fc_context("req-manual", "STS.role-key", "role-secret", "role-token")
    summary = json.loads(backup.handler(b'{"kind":"manual"}', context))
    assert summary["backups"][0]["key"].startswith("db-backups/manual/backup_")


def test_python312_runtime_takes_credentials_from_alibaba_cloud_variables(fc_env, monkeypatch):
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "STS.role-key")
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "role-secret")
    monkeypatch.setenv("ALIBABA_CLOUD_SECURITY_TOKEN", "role-token")
    summary = json.loads(backup.handler(b'{"kind":"manual"}', fc_context("req-312")))
    assert summary["backups"][0]["bytes"] > 0


def test_wrong_sts_token_fails_the_invocation_and_leaves_nothing(fc_env, bucket):
    context = fc_context("req-bad", "STS.role-key", "role-secret", "expired-token")
    with pytest.raises(UploadFailed, match="403"):
        backup.handler(b'{"kind":"manual"}', context)
    assert list(oss2.ObjectIteratorV2(bucket, prefix="db-backups/")) == []


@pytest.mark.parametrize("event, field", [
    (b'{"kind":"hourly"}', "kind"),
    (b'{}', "kind"),
    (b'{"kind":"manual","extra":1}', "additionalProperties"),
    (b'not json', "not JSON"),
    (b'[1]', "JSON object"),
    (timer_event('{"kind":"yearly"}'), "kind"),
    (timer_event('nope'), "timer payload is not JSON"),
    (json.dumps({"triggerTime": "yesterday", "triggerName": "t", "payload": "{}"}).encode(),
     "triggerTime"),
])
def test_bad_events_are_rejected_naming_the_field(fc_env, event, field):
    with pytest.raises(EventInvalid, match=field):
        backup.handler(event, fc_context())


def test_missing_bucket_setting_is_named(fc_env, monkeypatch):
    monkeypatch.delenv("OSS_BACKUP_BUCKET")
    with pytest.raises(ConfigInvalid, match="OSS_BACKUP_BUCKET"):
        backup.handler(b'{"kind":"manual"}', fc_context("r", "STS.role-key", "role-secret", "role-token"))


def test_a_backup_reports_success_as_info_and_a_slow_one_also_as_notice(fc_env, alerts_sent, monkeypatch):
    from l2c_backup import backup as backup_lib
    monkeypatch.setattr(backup_lib, "SLOW_SECONDS", 0)
    backup.handler(b'{"kind":"manual"}', fc_context("r", "STS.role-key", "role-secret", "role-token"))
    assert [(a.severity, a.title) for a in alerts_sent] == [("notice", "backup slow"), ("info", "backup done")]
    assert alerts_sent[1].details["bytes"] > 0 and alerts_sent[1].details["key"].endswith(".sql.gz")


def test_failures_alert_once_urgent_for_the_database_and_as_a_warning_for_oss(fc_env, alerts_sent,
                                                                             monkeypatch, oss_server):
    from l2c_local.oss import Fault
    oss_server.inject(Fault(query="partNumber", status=403, code="AccessDenied", times=None))
    with pytest.raises(UploadFailed):
        backup.handler(b'{"kind":"manual"}', fc_context("r", "STS.role-key", "role-secret", "role-token"))
    assert [(a.severity, a.title) for a in alerts_sent] == [("warning", "OSS upload failed")]

    alerts_sent.clear()
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres:pw@127.0.0.1:1/app")
    with pytest.raises(L2CError):
        backup.handler(b'{"kind":"manual"}', fc_context("r", "STS.role-key", "role-secret", "role-token"))
    assert [(a.severity, a.title) for a in alerts_sent] == [("urgent", "backup failed")]

    alerts_sent.clear()
    with pytest.raises(EventInvalid):
        backup.handler(b'{"kind":"hourly"}', fc_context())
    assert [(a.severity, a.title) for a in alerts_sent] == [("urgent", "backup failed")]


def test_an_alert_channel_that_fails_never_fails_the_backup(fc_env, capfd):
    import tenacity
    from l2c_backup import alerts
    alerts.configure({"ALERT_DINGTALK_WEBHOOK": "http://127.0.0.1:9/robot/send?access_token=t0ken",
                      "ALERT_SUCCESS": "true"}, wait=tenacity.wait_none())
    try:
        summary = json.loads(backup.handler(b'{"kind":"manual"}',
                                            fc_context("r", "STS.role-key", "role-secret", "role-token")))
    finally:
        alerts.configure({})
    assert summary["backups"][0]["bytes"] > 0
    assert "alert to dingtalk not delivered after 3 attempts" in capfd.readouterr().err  # FC's log
