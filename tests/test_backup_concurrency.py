"""One run per backup slot. Two daily backups at once (a timer delivered twice, a person
re-running it) must not end with one run's object and the other's manifest: a claim
beside the backup, made with what OSS guarantees, lets one run make it and the other
skip. A claim whose run died is taken over once it lapses, by one run only.

Runs go against the local OSS server (with and without versioning, which changes what
OSS guarantees) and a directory; the claim race is run with real threads against them.
"""
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import oss2
import pytest

from l2c_backup import alerts, claims, config, names
from l2c_backup.backup import run_backup
from l2c_backup.storage import open_storage
from l2c_backup.storage.oss import OSSSettings
from l2c_backup.verify import check_object
from l2c_local.oss import Fault
from l2c_local.resolve import child_env
from oss_fixtures import bucket_for

PREFIX = "db-backups/"
WHEN = datetime(2025, 3, 14, 2, 0, tzinfo=timezone.utc)
KEY = PREFIX + "daily/backup_2025-03-14.sql.gz"
CLI = [sys.executable, "-m", "l2c_backup.cli"]


def backup_env(pg_cluster, dbname, oss_server, bucket="l2c-backups", **extra):
    env = {"DATABASE_URL": pg_cluster.url(dbname), "OSS_ENDPOINT": oss_server.endpoint,
           "OSS_BACKUP_BUCKET": bucket, "OSS_ACCESS_KEY_ID": oss_server.access_key_id,
           "OSS_ACCESS_KEY_SECRET": oss_server.access_key_secret, "PATH": os.environ["PATH"],
           "UPLOAD_MIN_PART_MB": "1"}
    env.update({name: str(value) for name, value in extra.items()})
    return env


@pytest.fixture
def versioned(oss_server):
    """A second bucket with versioning enabled, as setup-oss leaves the backup bucket:
    there OSS ignores x-oss-forbid-overwrite."""
    oss_server.create_bucket("l2c-versioned")
    bucket = bucket_for(oss_server, "l2c-versioned")
    bucket.put_bucket_versioning(oss2.models.BucketVersioningConfig("Enabled"))
    return bucket


def storage_for(oss_server, bucket_name="l2c-backups"):
    settings = OSSSettings(oss_server.endpoint, oss_server.access_key_id,
                           oss_server.access_key_secret)
    return open_storage(f"oss://{bucket_name}/db-backups/", settings)


def at_once(calls):
    """Runs the callables in threads released together; returns results (or exceptions)."""
    start = threading.Barrier(len(calls))
    results = [None] * len(calls)

    def run(i, call):
        start.wait()
        try:
            results[i] = call()
        except BaseException as exc:  # reported by the test thread
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
        assert not thread.is_alive(), "a concurrent run hung"
    return results


def stored_keys(bucket):
    return sorted(obj.key for obj in oss2.ObjectIteratorV2(bucket, prefix=PREFIX))


def assert_one_whole_backup(storage, bucket, key=KEY):
    data = bucket.get_object(key).read()
    doc = json.loads(bucket.get_object(key + ".manifest.json").read())
    assert doc["object"]["sha256"] == hashlib.sha256(data).hexdigest(), \
        "the object and the manifest come from different runs"
    verdict = check_object(storage, key, manifest_wait_seconds=0)
    assert verdict.ok, f"verify: {verdict.reason} {verdict.detail}"
    assert stored_keys(bucket) == [key, key + ".manifest.json"], "a claim was left behind"
    assert list(oss2.MultipartUploadIterator(bucket)) == []


def one_made_one_skipped(results, key=KEY):
    for result in results:
        assert isinstance(result, dict), f"a run failed: {result!r}"
    backups = [result["backups"][0] for result in results]
    skipped = [b for b in backups if b.get("skipped")]
    assert len(skipped) == 1, backups
    assert skipped[0]["skipped"].startswith(f"another run is making {key} since ")
    made = [b for b in backups if not b.get("skipped")]
    assert made[0]["key"] == key
    return made[0], skipped[0]["skipped"]


# -- two daily runs at once ---------------------------------------------------------------

@pytest.mark.parametrize("bucket_name", ["l2c-backups", "l2c-versioned"])
def test_two_daily_runs_at_once_make_one_backup_whose_manifest_matches_its_object(
        bucket_name, pg_cluster, seeded_db, oss_server, versioned):
    """The first manifest PUT waits 10 s at the server: without one run per slot the
    other run's object lands in between, and the late manifest describes the wrong one."""
    bucket = bucket_for(oss_server, bucket_name)
    oss_server.inject(Fault(method="PUT", bucket=bucket_name, key_prefix=KEY + ".manifest.json",
                            delay=10, times=1))
    failures = []
    sink = alerts.add_sink(lambda alert: failures.append(alert) if alert.severity != "info" else None)
    try:
        cfg = config.load(backup_env(pg_cluster, seeded_db, oss_server, bucket_name))
        results = at_once([lambda: run_backup(cfg, "daily", when=WHEN)] * 2)
    finally:
        alerts.remove_sink(sink)

    for result in results:
        assert isinstance(result, dict), f"a run failed: {result!r}"
    assert_one_whole_backup(storage_for(oss_server, bucket_name), bucket)
    one_made_one_skipped(results)
    assert failures == [], "a skipped run is no failure"


def test_two_daily_cli_runs_at_once_one_reports_the_other(pg_cluster, seeded_db, oss_server,
                                                          bucket):
    """As cron or a person runs them: two `l2c-backup backup --kind daily` processes."""
    env = child_env(backup_env(pg_cluster, seeded_db, oss_server))
    key = names.backup_key(PREFIX, "daily", names.now())
    oss_server.inject(Fault(method="PUT", key_prefix=key + ".manifest.json", delay=10, times=1))
    procs = [subprocess.Popen(CLI + ["backup", "--kind", "daily", "--json"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [proc.communicate(timeout=300) for proc in procs]

    assert [proc.returncode for proc in procs] == [0, 0], [err for _, err in outputs]
    made, skipped = one_made_one_skipped([json.loads(out) for out, _ in outputs], key)
    assert made["key"] == key
    assert_one_whole_backup(storage_for(oss_server), bucket, key)


# -- claims whose run is gone -------------------------------------------------------------

def dead_claim(expires_in=-60, **fields):
    started = datetime.now(timezone.utc) - timedelta(hours=3)
    return json.dumps({"key": KEY, "run_id": "run-that-died", "host": "elsewhere", "pid": 4242,
                       "started": started.isoformat(timespec="seconds"),
                       "expires_at": (datetime.now(timezone.utc) + timedelta(seconds=expires_in))
                       .isoformat(timespec="seconds"), "ttl_seconds": 3600, **fields}).encode()


def test_an_expired_claim_is_taken_over_and_the_backup_made(env_daily, bucket, oss_server):
    bucket.put_object(KEY + ".claim", dead_claim())

    (done,) = run_backup(config.load(env_daily), "daily", when=WHEN)["backups"]

    assert not done.get("skipped"), done
    assert_one_whole_backup(storage_for(oss_server), bucket)


def test_a_live_claim_of_another_run_skips_naming_it_and_when_it_lapses(env_daily, bucket):
    bucket.put_object(KEY + ".claim", dead_claim(expires_in=3600))
    requests_before = stored_keys(bucket)

    (done,) = run_backup(config.load(env_daily), "daily", when=WHEN)["backups"]

    reason = done["skipped"]
    assert reason.startswith(f"another run is making {KEY} since ")
    assert "run run-that-died on elsewhere, pid 4242" in reason
    assert "its claim lapses at " in reason and f"delete {KEY}.claim" in reason
    assert stored_keys(bucket) == requests_before, "the skipped run wrote something"


@pytest.fixture
def env_daily(pg_cluster, seeded_db, oss_server):
    return backup_env(pg_cluster, seeded_db, oss_server)


@pytest.mark.parametrize("where", ["oss", "oss-versioned", "directory"])
def test_of_many_runs_taking_over_one_expired_claim_exactly_one_wins(
        where, oss_server, versioned, tmp_path):
    storage = {"oss": lambda: storage_for(oss_server),
               "oss-versioned": lambda: storage_for(oss_server, "l2c-versioned"),
               "directory": lambda: open_storage(str(tmp_path))}[where]()
    storage.put_bytes(KEY + ".claim", dead_claim())

    results = at_once([lambda i=i: claims.take(storage, KEY, 600, f"run-{i}")
                       for i in range(8)])

    for result in results:
        assert isinstance(result, tuple), f"a run failed: {result!r}"
    winners = [claim for claim, _ in results if claim is not None]
    assert len(winners) == 1, f"{len(winners)} runs hold the slot"
    holders = {holder["run_id"] for claim, holder in results if claim is None}
    assert holders == {winners[0].document["run_id"]}, "a loser names another holder"


# -- what SIGKILL leaves between the object and its manifest ------------------------------

def test_an_object_without_manifest_is_replaced_by_the_next_daily_run(env_daily, bucket,
                                                                        oss_server):
    bucket.put_object(KEY, b"the object of a run killed before its manifest")

    (done,) = run_backup(config.load(env_daily), "daily", when=WHEN)["backups"]

    assert not done.get("skipped"), done
    assert_one_whole_backup(storage_for(oss_server), bucket)


def test_a_run_killed_before_its_manifest_is_replaced_by_the_next_run(
        pg_cluster, seeded_db, oss_server, bucket):
    """A real SIGKILL while the manifest PUT is held at the server (it then fails): the
    object stays without manifest, and the killed run's claim with it. Its process is
    gone, so the next run on this machine takes the claim over and replaces the object."""
    env = backup_env(pg_cluster, seeded_db, oss_server)
    key = names.backup_key(PREFIX, "daily", names.now())
    held = oss_server.inject(Fault(method="PUT", key_prefix=key + ".manifest.json", delay=5,
                                   status=503, times=None))
    proc = subprocess.Popen(CLI + ["backup", "--kind", "daily"], env=child_env(env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = time.monotonic()
        while held.hits == 0 and time.monotonic() - started < 120 and proc.poll() is None:
            time.sleep(0.01)
        assert held.hits, f"the manifest PUT never came: {proc.communicate(timeout=60)}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    finally:
        proc.kill()
    oss_server.clear_faults()
    assert bucket.object_exists(key) and not bucket.object_exists(key + ".manifest.json")
    assert bucket.object_exists(key + ".claim")

    (done,) = run_backup(config.load(env), "daily")["backups"]

    assert not done.get("skipped"), done
    assert_one_whole_backup(storage_for(oss_server), bucket, key)
