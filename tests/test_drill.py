"""Restore drills end to end through the FC drill handler: scratch database, checks,
always dropped, RTO reported, result alerted."""
import json

import pytest

from fc_handlers import fc_context, load_handler
from l2c_backup import alerts, config
from l2c_backup.backup import run_backup
from l2c_backup.errors import ConfigInvalid, RestoreFailed
from l2c_backup.storage import open_storage
from l2c_backup.verify import verify

drill_fn = load_handler("drill")


@pytest.fixture
def alerts_sent():
    sent = []  # what this test is about: the backups' own "backup done" are left out
    sink = alerts.add_sink(lambda a: a.title != "backup done" and sent.append(a))
    yield sent
    alerts.remove_sink(sink)


@pytest.fixture
def drill_env(monkeypatch, oss_server, pg_cluster, seeded_db):
    env = {"DATABASE_URL": pg_cluster.url(seeded_db), "OSS_ENDPOINT": oss_server.endpoint,
           "OSS_BACKUP_BUCKET": "l2c-backups", "OSS_ACCESS_KEY_ID": oss_server.access_key_id,
           "OSS_ACCESS_KEY_SECRET": oss_server.access_key_secret}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("BACKUP_TARGET", raising=False)
    return env


def verified_backup(env, kind="daily", target=None):
    cfg = config.load(dict(env, **({"BACKUP_TARGET": target} if target else {})))
    (done,) = run_backup(cfg, kind)["backups"]
    target, settings = config.storage_target(env, cfg.target)
    storage = open_storage(target, settings)
    assert verify(storage, done["key"], 5).ok
    return storage, done["key"]


def databases(pg):
    return pg.psql("SELECT datname FROM pg_database ORDER BY 1").split()


def test_a_drill_restores_the_newest_verified_backup_checks_it_and_drops_it(
        drill_env, pg_cluster, alerts_sent, monkeypatch):
    _, key = verified_backup(drill_env)
    monkeypatch.setenv("DRILL_CHECKS", json.dumps(["SELECT count(*) > 100000 FROM sales.orders"]))
    before = databases(pg_cluster)

    report = json.loads(drill_fn.handler(b'{"kind": "daily"}', fc_context(name="drill")))

    assert report["ok"] and report["key"] == key and report["failures"] == []
    assert 0 < report["restore_seconds"] <= report["rto_seconds"] == 7200 and report["within_rto"]
    assert report["scratch_database"].startswith("l2c_drill_daily_")
    assert databases(pg_cluster) == before
    assert [a.severity for a in alerts_sent] == ["info"]


def test_a_failing_check_fails_the_drill_alerts_urgently_and_still_drops_the_scratch_db(
        drill_env, pg_cluster, alerts_sent, monkeypatch):
    verified_backup(drill_env)
    monkeypatch.setenv("DRILL_CHECKS", json.dumps(["SELECT count(*) = 0 FROM sales.orders",
                                                   "SELECT * FROM no_such_table"]))
    before = databases(pg_cluster)
    with pytest.raises(RestoreFailed, match="returned"):
        drill_fn.handler(b'{"kind": "daily"}', fc_context(name="drill"))
    assert databases(pg_cluster) == before
    assert [a.severity for a in alerts_sent] == ["urgent"]
    assert "no_such_table" in alerts_sent[0].text()


def test_a_kind_without_a_verified_backup_fails_the_drill(drill_env, pg_cluster, alerts_sent):
    run_backup(config.load(drill_env), "weekly")  # made, never verified
    before = databases(pg_cluster)
    with pytest.raises(RestoreFailed, match="no verified backup"):
        drill_fn.handler(b'{"kind": "weekly"}', fc_context(name="drill"))
    assert databases(pg_cluster) == before and alerts_sent[-1].severity == "urgent"


def test_a_drill_reads_the_dr_bucket_when_asked(drill_env, oss_server, pg_cluster, monkeypatch):
    oss_server.create_bucket("l2c-backups-dr")
    _, key = verified_backup(drill_env, "manual", target="oss://l2c-backups-dr/db-backups/")
    monkeypatch.setenv("OSS_DR_BUCKET", "l2c-backups-dr")
    report = json.loads(drill_fn.handler(b'{"kind": "manual", "source": "dr"}', fc_context(name="drill")))
    assert report["ok"] and report["source"] == "oss://l2c-backups-dr/db-backups/"


@pytest.mark.parametrize("name, value", [("DRILL_CHECKS", "not json"), ("DRILL_CHECKS", "[1]")])
def test_bad_drill_settings_are_named(drill_env, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigInvalid, match=name):
        drill_fn.handler(b'{"kind": "daily"}', fc_context(name="drill"))
