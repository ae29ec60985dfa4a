"""End to end: backup -> the local OSS server's object-created notification -> the FC
verify handler -> verdict tags on the object. And the CLI re-check."""
import json
import pathlib
import subprocess
import sys

import pytest
import yaml

from fc_handlers import fc_context, load_handler
from oss_fixtures import bucket_for
from l2c_backup import alerts, config
from l2c_backup.backup import run_backup
from l2c_backup.errors import BackupCorrupt, EventInvalid
from l2c_backup.events import OBJECT_COMPLETING_EVENTS

verify_fn = load_handler("verify")
S_YAML = pathlib.Path(__file__).resolve().parent.parent / "s.yaml"
COMPLETING = ["oss:" + name for name in OBJECT_COMPLETING_EVENTS]


def verify_trigger_events():
    """The events the verify function's OSS trigger subscribes, as s.yaml deploys it."""
    return yaml.safe_load(S_YAML.read_text())["services"]["verify"]["props"]["triggers"][0][
        "config"]["events"]


@pytest.fixture
def fc_env(monkeypatch, oss_server):
    for name in ("OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET", "BACKUP_TARGET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OSS_ENDPOINT", oss_server.endpoint)
    monkeypatch.setenv("OSS_BACKUP_BUCKET", "l2c-backups")
    monkeypatch.setenv("VERIFY_MANIFEST_WAIT_SECONDS", "10")
    return oss_server


@pytest.fixture
def alerts_sent():
    sent = []  # what this test is about: the backups' own "backup done" are left out
    sink = alerts.add_sink(lambda a: a.title != "backup done" and sent.append(a))
    yield sent
    alerts.remove_sink(sink)


def context(server):
    return fc_context("req-verify", server.access_key_id, server.access_key_secret, name="verify")


def backup_env(pg_cluster, seeded_db, server):
    return {"DATABASE_URL": pg_cluster.url(seeded_db), "OSS_ENDPOINT": server.endpoint,
            "OSS_BACKUP_BUCKET": "l2c-backups", "OSS_ACCESS_KEY_ID": server.access_key_id,
            "OSS_ACCESS_KEY_SECRET": server.access_key_secret}


def test_a_new_backup_is_verified_through_the_oss_trigger_and_a_repeat_changes_nothing(
        fc_env, pg_cluster, seeded_db, bucket, alerts_sent):
    events, results = [], []
    fc_env.subscribe("l2c-backups", callback=events.append, prefix="db-backups/", suffix=".sql.gz",
                     events=COMPLETING)

    (done,) = run_backup(config.load(backup_env(pg_cluster, seeded_db, fc_env)), "daily")["backups"]
    fc_env.wait_idle()
    assert len(events) == 1  # the manifest does not match the suffix filter
    event = events[0]
    assert json.loads(event)["events"][0]["eventName"] == "ObjectCreated:CompleteMultipartUpload"

    for _ in range(2):  # OSS delivers at least once
        results.append(json.loads(verify_fn.handler(event, context(fc_env))))

    assert [r["results"][0]["verdict"] for r in results] == ["ok", "ok"]
    assert results[1]["results"][0].get("repeated") is True
    tags = bucket.get_object_tagging(done["key"]).tag_set.tagging_rule
    assert tags == {"verify": "ok", "verify-reason": "ok"}
    assert json.loads(bucket.get_object(done["key"] + ".verify.json").read())["reason"] == "ok"
    assert alerts_sent == []


def run_multipart_backup_through_the_trigger(server, pg_cluster, seeded_db, bucket, trigger_events):
    """A backup in 1 MiB parts; every event the trigger sends, each handed to the verify
    handler as one FC invocation. Returns (events, handler results, parts, verify.json writes)."""
    events, verify_writes = [], []
    server.subscribe("l2c-backups", callback=events.append, prefix="db-backups/", suffix=".sql.gz",
                     events=trigger_events)
    server.subscribe("l2c-backups", callback=verify_writes.append, prefix="db-backups/",
                     suffix=".verify.json", events=COMPLETING)
    env = dict(backup_env(pg_cluster, seeded_db, server), UPLOAD_MIN_PART_MB="1")
    (done,) = run_backup(config.load(env), "daily")["backups"]
    server.wait_idle()
    parts = json.loads(bucket.get_object(done["key"] + ".manifest.json").read())["object"]["parts"]
    assert parts >= 3, "the seeded database should make several 1 MiB parts"

    results = [json.loads(verify_fn.handler(event, context(server))) for event in events]
    server.wait_idle()
    verifications = [r for result in results for r in result["results"]]
    assert [(v["key"], v["verdict"]) for v in verifications] == [(done["key"], "ok")]
    assert "repeated" not in verifications[0]
    assert len(verify_writes) == 1  # one <key>.verify.json written, once
    return events, results, parts


def test_verify_runs_once_per_multipart_backup_with_the_trigger_events_of_s_yaml(
        fc_env, pg_cluster, seeded_db, bucket, alerts_sent):
    trigger_events = verify_trigger_events()
    events, results, parts = run_multipart_backup_through_the_trigger(
        fc_env, pg_cluster, seeded_db, bucket, trigger_events)
    if trigger_events == ["oss:ObjectCreated:*"]:
        assert len(events) == parts + 2
    else:
        assert [json.loads(e)["events"][0]["eventName"] for e in events] == [
            "ObjectCreated:CompleteMultipartUpload"]
    assert alerts_sent == []


def test_verify_runs_once_per_multipart_backup_even_when_the_trigger_sends_every_part(
        fc_env, pg_cluster, seeded_db, bucket, alerts_sent):
    events, results, parts = run_multipart_backup_through_the_trigger(
        fc_env, pg_cluster, seeded_db, bucket, ["oss:ObjectCreated:*"])

    names = [json.loads(e)["events"][0]["eventName"] for e in events]
    assert names[0] == "ObjectCreated:InitiateMultipartUpload"
    assert names[1:-1] == ["ObjectCreated:UploadPart"] * parts
    assert names[-1] == "ObjectCreated:CompleteMultipartUpload"
    assert sum(len(r["ignored"]) for r in results) == parts + 1  # initiate and every part
    assert alerts_sent == []


def test_events_that_do_not_complete_an_object_are_ignored(fc_env, bucket):
    bucket.put_object("db-backups/daily/backup_2026-11-27.sql.gz", b"not yet whole")
    key = "db-backups/daily/backup_2026-11-27.sql.gz"
    event = {"events": [{"eventName": name, "oss": {"bucket": {"name": "l2c-backups"},
                                                     "object": {"key": key}}}
                        for name in ("ObjectCreated:InitiateMultipartUpload", "ObjectCreated:UploadPart",
                                     "ObjectCreated:UploadPartCopy", "ObjectCreated:AppendObject",
                                     "ObjectCreated:PutSymlink", "ObjectRemoved:DeleteObject")]}
    result = json.loads(verify_fn.handler(json.dumps(event).encode(), context(fc_env)))
    assert result == {"results": [], "ignored": [key] * 6}
    assert not bucket.object_exists(key + ".verify.json")


def test_a_corrupt_backup_fails_the_invocation_with_one_urgent_alert(fc_env, pg_cluster,
                                                                    seeded_db, bucket, alerts_sent):
    (done,) = run_backup(config.load(backup_env(pg_cluster, seeded_db, fc_env)), "manual")["backups"]
    events = []
    fc_env.subscribe("l2c-backups", callback=events.append, suffix=".sql.gz")
    data = bucket.get_object(done["key"]).read()
    bucket.put_object(done["key"], data[: len(data) // 3])  # damaged after the fact
    fc_env.wait_idle()

    for _ in range(2):
        with pytest.raises(BackupCorrupt, match="truncated"):
            verify_fn.handler(events[-1], context(fc_env))
    assert bucket.get_object_tagging(done["key"]).tag_set.tagging_rule["verify"] == "failed"
    assert len([a for a in alerts_sent if a.severity == "urgent"]) == 1


def test_objects_other_than_backups_are_ignored_even_with_a_wide_filter(fc_env, bucket):
    bucket.put_object("db-backups/daily/backup_2026-11-27.sql.gz.manifest.json", b"{}")
    bucket.put_object("uploads/avatar.png", b"png")
    event = {"events": [
        {"eventName": "ObjectCreated:PutObject",
         "oss": {"bucket": {"name": "l2c-backups"}, "object": {"key": key}}}
        for key in ("db-backups/daily/backup_2026-11-27.sql.gz.manifest.json", "uploads/avatar.png")]}
    result = json.loads(verify_fn.handler(json.dumps(event).encode(), context(fc_env)))
    assert result == {"results": [], "ignored": [e["oss"]["object"]["key"] for e in event["events"]]}


@pytest.mark.parametrize("event, field", [
    (b'{"events": []}', "events"),
    (b'{"events": [{"eventName": "ObjectCreated:PutObject"}]}', "oss"),
    (b'{"events": [{"eventName": "x", "oss": {"bucket": {"name": "bkt"}, "object": {}}}]}', "key"),
    (b'{"kind": "daily"}', "events"),
])
def test_bad_oss_events_are_rejected_naming_the_field(fc_env, event, field):
    with pytest.raises(EventInvalid, match=field):
        verify_fn.handler(event, context(fc_env))


def test_cli_verify_all_rechecks_every_backup_of_a_kind_and_exits_nonzero_on_a_bad_one(
        pg_cluster, seeded_db, tmp_path):
    env = {"DATABASE_URL": pg_cluster.url(seeded_db), "BACKUP_TARGET": str(tmp_path)}
    first = run_backup(config.load(env), "manual")["backups"][0]["key"]
    second = run_backup(config.load(env), "manual")["backups"][0]["key"]
    cli = [sys.executable, "-m", "l2c_backup.cli", "verify", "--from", str(tmp_path), "--json"]

    good = subprocess.run(cli + ["--all", "--kind", "manual"], capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    assert [r["verdict"] for r in json.loads(good.stdout)["results"]] == ["ok", "ok"]

    path = tmp_path / second
    path.write_bytes(path.read_bytes()[:-10])
    bad = subprocess.run(cli + ["--all"], capture_output=True, text=True)
    assert bad.returncode == 15  # BackupCorrupt
    verdicts = {r["key"]: r["reason"] for r in json.loads(bad.stdout)["results"]}
    assert verdicts == {first: "ok", second: "truncated"}
    one = subprocess.run(cli[:-1] + [first], capture_output=True, text=True)
    assert one.returncode == 0 and "ok" in one.stdout


def test_an_event_for_another_bucket_is_ignored_and_nothing_is_written_there(fc_env, bucket, capfd):
    """A trigger wired to the DR bucket (or a replicated copy's event) must not make the
    verify function write tags and verify files into a bucket it does not own."""
    fc_env.create_bucket("l2c-backups-dr")
    dr = bucket_for(fc_env, "l2c-backups-dr")
    events = []
    fc_env.subscribe("l2c-backups-dr", callback=events.append, prefix="db-backups/",
                     suffix=".sql.gz", events=COMPLETING)
    key = "db-backups/daily/backup_2026-11-27.sql.gz"
    dr.put_object(key + ".manifest.json", b"{}")
    dr.put_object(key, b"a replicated copy")
    fc_env.wait_idle()
    assert len(events) == 1

    result = json.loads(verify_fn.handler(events[0], context(fc_env)))

    assert result == {"results": [], "ignored": [f"oss://l2c-backups-dr/{key}"]}
    assert dr.get_object_tagging(key).tag_set.tagging_rule == {}
    assert not dr.object_exists(key + ".verify.json")
    assert not bucket.object_exists(key) and not bucket.object_exists(key + ".verify.json")
    log_line = [line for line in capfd.readouterr().err.splitlines() if "l2c-backups-dr" in line]
    assert len(log_line) == 1 and "oss://l2c-backups/db-backups/" in log_line[0]
