"""Retention against the local OSS server (versioning and WORM on) and a directory."""
import json
import subprocess
import sys

import oss2
import pytest

from l2c_backup import alerts, config
from l2c_backup.backup import run_backup
from l2c_backup.prune import DEFAULT_KEEP, prune, summary
from l2c_backup.storage import open_storage
from l2c_local import resolve
from l2c_local.oss import Fault

DAY = 86400


def oss_env(server):
    return {"OSS_ENDPOINT": server.endpoint, "OSS_BACKUP_BUCKET": "l2c-backups",
            "OSS_ACCESS_KEY_ID": server.access_key_id,
            "OSS_ACCESS_KEY_SECRET": server.access_key_secret}


def oss_storage(server):
    target, settings = config.storage_target(oss_env(server))
    return open_storage(target, settings)


def daily_key(n):
    return f"db-backups/daily/backup_2026-{1 + n // 28:02d}-{1 + n % 28:02d}.sql.gz"


def put_daily(storage, numbers, verified=()):
    for n in numbers:
        key = daily_key(n)
        storage.put_bytes(key, b"backup %d" % n)
        storage.put_bytes(key + ".manifest.json", b"{}")
        if n in verified:
            storage.set_tags(key, {"verify": "ok", "verify-reason": "ok"})


def live_backups(storage):
    return [o.key for o in storage.list("db-backups/daily/") if o.key.endswith(".sql.gz")]


def test_35_daily_backups_become_30_on_a_versioned_bucket_leaving_delete_markers(oss_server, bucket):
    bucket.put_bucket_versioning(oss2.models.BucketVersioningConfig("Enabled"))
    storage = oss_storage(oss_server)
    put_daily(storage, range(35))
    old = daily_key(0)
    old_version = bucket.head_object(old).versionid

    decisions = prune(storage, ["daily"], DEFAULT_KEEP)

    assert live_backups(storage) == [daily_key(n) for n in range(5, 35)]
    deleted = [d for d in decisions if d.action == "delete"]
    assert [d.key for d in deleted] == [daily_key(n) for n in range(5)]
    assert all("delete marker" in d.outcome for d in deleted)
    assert not bucket.object_exists(old + ".manifest.json")  # the sidecar went with it
    with pytest.raises(oss2.exceptions.NoSuchKey):
        bucket.get_object(old)
    assert bucket.get_object(old, params={"versionId": old_version}).read() == b"backup 0"


def test_objects_inside_worm_retention_are_skipped_and_reported_not_errors(oss_server, bucket):
    bucket.put_bucket_versioning(oss2.models.BucketVersioningConfig("Enabled"))
    storage = oss_storage(oss_server)
    put_daily(storage, range(10))
    oss_server.advance_time(2 * DAY)  # these ten are now past a one-day retention
    worm = bucket.init_bucket_worm(1).worm_id
    bucket.complete_bucket_worm(worm)
    put_daily(storage, range(10, 35))

    report = summary(prune(storage, ["daily"], {"daily": 3}), dry_run=False)

    assert report["deleted"] == 10 and report["skipped"] == 22 and report["kept"] == 3
    skipped = [o for o in report["objects"] if o["outcome"].startswith("skipped")]
    assert all("WORM" in o["outcome"] for o in skipped)
    for o in skipped:  # a protected backup keeps its manifest
        assert bucket.object_exists(o["key"]) and bucket.object_exists(o["key"] + ".manifest.json")


def test_the_newest_verified_backup_survives_outside_keep(oss_server):
    storage = oss_storage(oss_server)
    put_daily(storage, range(6), verified={1})
    prune(storage, ["daily"], {"daily": 2})
    assert live_backups(storage) == [daily_key(1), daily_key(4), daily_key(5)]


def test_orphaned_sidecars_are_cleaned_and_foreign_objects_left_alone(oss_server, bucket):
    storage = oss_storage(oss_server)
    put_daily(storage, range(2))
    bucket.put_object(daily_key(9) + ".manifest.json", b"{}")  # its backup is gone
    bucket.put_object(daily_key(9) + ".verify.json", b"{}")
    bucket.put_object("db-backups/daily/README.txt", b"not a backup")
    bucket.put_object("db-backups/daily/README.txt.manifest.json", b"not ours either")
    prune(storage, ["daily"], {"daily": 5})
    keys = [o.key for o in oss2.ObjectIteratorV2(bucket, prefix="db-backups/daily/")]
    assert daily_key(9) + ".manifest.json" not in keys and daily_key(9) + ".verify.json" not in keys
    assert "db-backups/daily/README.txt" in keys and "db-backups/daily/README.txt.manifest.json" in keys


def test_a_directory_target_keeps_ten_of_each_kind_by_default(tmp_path):
    storage = open_storage(str(tmp_path))
    put_daily(storage, range(14))
    keep = config.keep_counts({}, str(tmp_path))
    assert keep == {"daily": 10, "weekly": 10, "manual": 10}
    prune(storage, ["daily"], keep)
    assert live_backups(storage) == [daily_key(n) for n in range(4, 14)]
    assert sorted(p.name for p in (tmp_path / "db-backups/daily").iterdir())[0] == \
        daily_key(4).rsplit("/", 1)[1]


def test_cli_dry_run_prints_the_plan_and_deletes_nothing(oss_server):
    storage = oss_storage(oss_server)
    put_daily(storage, range(4))
    cli = [sys.executable, "-m", "l2c_backup.cli", "prune", "--kind", "daily", "--keep", "2"]
    env = resolve.child_env(dict(oss_env(oss_server), PATH="/usr/bin:/bin"))
    dry = subprocess.run(cli + ["--dry-run", "--json"], capture_output=True, text=True, env=env)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)["objects"]
    assert [(o["key"], o["action"]) for o in plan] == [
        (daily_key(0), "delete"), (daily_key(1), "delete"), (daily_key(2), "keep"), (daily_key(3), "keep")]
    assert len(live_backups(storage)) == 4
    text = subprocess.run(cli, capture_output=True, text=True, env=env)
    assert "delete db-backups/daily/backup_2026-01-01.sql.gz (+1 sidecar(s)): older than the newest 2" in text.stdout
    assert live_backups(storage) == [daily_key(2), daily_key(3)]


def test_each_backup_prunes_its_kind_and_a_failing_prune_only_warns(oss_server, bucket, pg_cluster,
                                                                    seeded_db):
    env = dict(oss_env(oss_server), DATABASE_URL=pg_cluster.url(seeded_db), KEEP_MANUAL="1")
    sent = []
    sink = alerts.add_sink(lambda a: a.title != "backup done" and sent.append(a))
    try:
        run_backup(config.load(env), "manual")
        run_backup(config.load(env), "manual")
        manual = [o.key for o in oss2.ObjectIteratorV2(bucket, prefix="db-backups/manual/")
                  if o.key.endswith(".sql.gz")]
        assert len(manual) == 1

        oss_server.inject(Fault(method="GET", key_prefix=None, query="list-type", status=500, times=None))
        summary_ = run_backup(config.load(env), "manual")  # its prune cannot even list
        assert summary_["backups"][0]["bytes"] > 0
        assert [a.severity for a in sent] == ["warning"] and "prune failed" in sent[0].text()
    finally:
        alerts.remove_sink(sink)
