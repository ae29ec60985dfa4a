"""Restore drills end to end through the FC drill handler: scratch database, checks,
always dropped, RTO reported, result alerted."""
import json

import pytest

from fc_handlers import fc_context, load_handler
from l2c_backup import alerts, config
from l2c_backup.backup import run_backup
from l2c_backup.errors import BackupNotFound, ConfigInvalid, RestoreFailed
from l2c_backup.fc import ALERTED_MARK
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
    # FC records the real cause, not a generic "drill failed"
    with pytest.raises(BackupNotFound, match="no verified backup") as raised:
        drill_fn.handler(b'{"kind": "weekly"}', fc_context(name="drill"))
    assert str(raised.value).startswith(ALERTED_MARK) and str(raised.value).count("what to do") == 1
    assert databases(pg_cluster) == before and alerts_sent[-1].severity == "urgent"


def test_a_drill_reads_the_dr_bucket_when_asked(drill_env, oss_server, pg_cluster, monkeypatch):
    oss_server.create_bucket("l2c-backups-dr")
    _, key = verified_backup(drill_env, "manual", target="oss://l2c-backups-dr/db-backups/")
    monkeypatch.setenv("OSS_DR_BUCKET", "l2c-backups-dr")
    report = json.loads(drill_fn.handler(b'{"kind": "manual", "source": "dr"}', fc_context(name="drill")))
    assert report["ok"] and report["source"] == "oss://l2c-backups-dr/db-backups/"


def test_a_drill_restores_over_drill_restore_jobs_and_reports_the_one_stream_estimate(
        drill_env, pg_cluster, alerts_sent, monkeypatch):
    from l2c_backup import drill
    _, key = verified_backup(drill_env)
    monkeypatch.setenv("DRILL_RESTORE_JOBS", "2")
    monkeypatch.setattr(drill, "ONE_STREAM_OVER_JOBS", {1: 1.0, 2: 1.6, 4: 2.2})
    before = databases(pg_cluster)

    report = json.loads(drill_fn.handler(b'{"kind": "daily"}', fc_context(name="drill")))

    assert report["ok"] and report["key"] == key
    assert report["restore_mode"] == "parallel" and report["restore_jobs"] == 2
    assert report["one_stream_seconds"] == round(report["restore_seconds"] * 1.6, 3)
    assert databases(pg_cluster) == before
    (alert,) = alerts_sent
    assert alert.details["restore_jobs"] == 2
    assert alert.details["one_stream_seconds"] == report["one_stream_seconds"]
    assert "over 2 sessions (one stream: about" in alert.text()


def test_a_drill_of_a_backup_without_index_restores_in_one_stream_and_says_so(
        drill_env, pg_cluster, alerts_sent, monkeypatch, capsys):
    _, key = verified_backup(dict(drill_env, BACKUP_TABLE_INDEX="false"))
    monkeypatch.setenv("DRILL_RESTORE_JOBS", "2")
    report = json.loads(drill_fn.handler(b'{"kind": "daily"}', fc_context(name="drill")))
    assert report["ok"] and report["key"] == key
    assert report["restore_mode"] == "one stream: the backup has no table index"
    assert report["restore_jobs"] == 1
    assert report["one_stream_seconds"] == report["restore_seconds"]  # measured, not estimated
    assert "the backup has no table index" in alerts_sent[-1].text()
    assert "the drill restores it in one stream" in capsys.readouterr().err


def test_one_stream_estimate_takes_the_ratio_of_the_largest_measured_jobs_not_above():
    from l2c_backup import drill
    ratios = {1: 1.0, 2: 1.5, 4: 2.0}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(drill, "ONE_STREAM_OVER_JOBS", ratios)
        assert drill.one_stream_estimate(10, 2) == 15.0
        assert drill.one_stream_estimate(10, 3) == 15.0
        assert drill.one_stream_estimate(10, 16) == 20.0


@pytest.mark.parametrize("name, value", [("DRILL_CHECKS", "not json"), ("DRILL_CHECKS", "[1]"),
                                         ("DRILL_RESTORE_JOBS", "0"), ("DRILL_RESTORE_JOBS", "33")])
def test_bad_drill_settings_are_named(drill_env, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigInvalid, match=name):
        drill_fn.handler(b'{"kind": "daily"}', fc_context(name="drill"))


def test_two_drills_of_one_kind_in_the_same_second_each_restore_and_drop_their_own(
        drill_env, pg_cluster, alerts_sent, monkeypatch):
    import threading
    from datetime import datetime, timezone

    from l2c_backup import drill
    verified_backup(drill_env)
    same_second = datetime(2026, 11, 27, 3, 0, 0, tzinfo=timezone.utc)
    monkeypatch.setattr(drill.names, "now", lambda: same_second)  # a timer delivered twice
    before = databases(pg_cluster)
    start, reports = threading.Barrier(2), {}

    def one_drill(n):
        start.wait()
        try:
            reports[n] = json.loads(drill_fn.handler(b'{"kind": "daily"}', fc_context(name="drill")))
        except Exception as err:  # the assertion below names it
            reports[n] = err

    threads = [threading.Thread(target=one_drill, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert all(isinstance(r, dict) and r["ok"] for r in reports.values()), reports
    names_used = {r["scratch_database"] for r in reports.values()}
    assert len(names_used) == 2 and all(len(n.encode()) <= 63 for n in names_used), names_used
    assert databases(pg_cluster) == before
    assert [a.severity for a in alerts_sent] == ["info", "info"]


def test_a_drill_drops_scratch_databases_left_by_drills_killed_long_ago(drill_env, pg_cluster):
    verified_backup(drill_env)
    old = pg_cluster.create_database("l2c_drill_daily_20200101020000_0a1b2c")
    older = pg_cluster.create_database("l2c_drill_weekly_20200101020000")  # before suffixes
    recent = pg_cluster.create_database("l2c_drill_daily_" + datetime_now_stamp() + "_0a1b2c")
    held = pg_cluster.create_database("l2c_drill_manual_20200101020000_0a1b2c")
    import pg8000.native
    holder = pg8000.native.Connection(pg_cluster.superuser, password=pg_cluster.password,
                                      host=pg_cluster.host, port=pg_cluster.port, database=held)
    try:
        report = json.loads(drill_fn.handler(b'{"kind": "daily"}', fc_context(name="drill")))
    finally:
        holder.close()
    assert report["ok"]
    left = databases(pg_cluster)
    assert old not in left and older not in left  # killed drills, long gone
    assert recent in left and held in left  # may be a drill still running
    assert sorted(report["stale_dropped"]) == [old, older]
    for db in (recent, held):
        pg_cluster.psql(f"DROP DATABASE {db}")


def datetime_now_stamp():
    from datetime import datetime, timezone
    return datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
