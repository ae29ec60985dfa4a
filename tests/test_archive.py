"""The Archive tier: storage classes and RestoreObject on the local OSS server, and what
L2C does when a backup has gone cold (ensure_readable, the commands, status).

OSS's lifecycle rule (setup-oss) moves objects under the prefix to Archive after 90 days,
so manual backups (kept by count) and old weekly backups end up there, manifests and
sidecars with them; an Archive object cannot be read until a RestoreObject completes.
The server side is driven with the real oss2 client over HTTP, as everything else here.
"""
import json
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone

import oss2
import pytest
from oss2.models import (BucketCreateConfig, BucketLifecycle, LifecycleRule, RestoreConfiguration,
                         RestoreJobParameters, StorageTransition)

from l2c_backup import archive, config
from l2c_backup.backup import run_backup
from l2c_backup.database import DatabaseSettings
from l2c_backup.drill import run_drill
from l2c_backup.errors import ArchiveNotReadable, StorageFailed
from l2c_backup.storage import open_storage
from l2c_backup.storage.oss import OSSSettings
from l2c_backup.verify import verify
from l2c_local import resolve
from l2c_local.oss import LocalOSS
from l2c_local.pgcluster import table_digests
from oss_fixtures import BUCKET, PART_SIZE, bucket_for, upload_in_parts

DAY = 86400
KEY = "db-backups/manual/backup_2026-01-20T02-00-00.sql.gz"


def storage_class_of(bucket, key):
    return bucket.head_object(key).resp.headers.get("x-oss-storage-class")


def restore_header(bucket, key):
    return bucket.head_object(key).resp.headers.get("x-oss-restore")


def wait_until(condition, timeout=30, step=0.1):
    """Polls `condition` until it is true (a timeout, never a timed assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return False


def refused(call):
    """The OSS error a call raised (fails the test when it succeeded)."""
    with pytest.raises(oss2.exceptions.OssError) as error:
        call()
    return error.value


# -- the local OSS server ------------------------------------------------------------

@pytest.mark.parametrize("storage_class", ["Standard", "IA", "Archive", "ColdArchive", "DeepColdArchive"])
def test_put_with_a_storage_class_is_reported_by_head_and_listings(bucket, storage_class):
    bucket.put_object(KEY, b"dump", headers={"x-oss-storage-class": storage_class})

    assert storage_class_of(bucket, KEY) == storage_class
    [listed] = bucket.list_objects_v2(prefix="db-backups/").object_list
    assert listed.storage_class == storage_class
    [listed_v1] = bucket.list_objects(prefix="db-backups/").object_list
    assert listed_v1.storage_class == storage_class


def test_an_object_put_without_a_class_is_standard_and_readable(bucket):
    bucket.put_object(KEY, b"dump")

    assert storage_class_of(bucket, KEY) == "Standard"
    assert bucket.get_object(KEY).read() == b"dump"
    assert restore_header(bucket, KEY) is None


@pytest.mark.parametrize("value, ec", [("Glacier", "0017-00000132"), ("archive", "0017-00000132"),
                                       ("", "0017-00000131")])
def test_an_unknown_or_empty_storage_class_is_refused_as_oss_does(bucket, value, ec):
    put = refused(lambda: bucket.put_object(KEY, b"x", headers={"x-oss-storage-class": value}))
    initiate = refused(lambda: bucket.init_multipart_upload(KEY, headers={"x-oss-storage-class": value}))

    for error in (put, initiate):
        assert (error.status, error.code, error.ec) == (400, "InvalidArgument", ec)
    bucket.put_object("db-backups/source", b"x")
    copy = refused(lambda: bucket.copy_object(BUCKET, "db-backups/source", KEY,
                                              headers={"x-oss-storage-class": value}))
    assert (copy.status, copy.code) == (400, "InvalidArgument")
    assert not bucket.object_exists(KEY)
    assert list(bucket.list_multipart_uploads().upload_list) == []


def test_an_archive_object_cannot_be_read_until_restored(bucket):
    bucket.put_object(KEY, b"cold dump", headers={"x-oss-storage-class": "Archive"})

    whole = refused(lambda: bucket.get_object(KEY))
    ranged = refused(lambda: bucket.get_object(KEY, byte_range=(0, 3)))
    copied = refused(lambda: bucket.copy_object(BUCKET, KEY, "db-backups/copy",
                                                headers={"x-oss-storage-class": "Standard"}))

    for error in (whole, ranged, copied):
        assert (error.status, error.code, error.ec) == (403, "InvalidObjectState", "0016-00000404")
    assert bucket.head_object(KEY).content_length == len(b"cold dump")  # HEAD still answers
    assert restore_header(bucket, KEY) is None  # no restore asked for yet


def test_restore_object_runs_through_its_states_then_the_object_reads(oss_server, bucket):
    oss_server.restore_delay_seconds = 1.0
    bucket.put_object(KEY, b"cold dump", headers={"x-oss-storage-class": "Archive"})

    assert bucket.restore_object(KEY).status == 202
    assert restore_header(bucket, KEY) == 'ongoing-request="true"'
    [listed] = bucket.list_objects_v2(prefix="db-backups/").object_list
    assert listed.restore_info == 'ongoing-request="true"'
    again = refused(lambda: bucket.restore_object(KEY))
    assert (again.status, again.code, again.ec) == (409, "RestoreAlreadyInProgress", "0016-00000701")
    assert refused(lambda: bucket.get_object(KEY)).code == "InvalidObjectState"  # still restoring

    assert wait_until(lambda: restore_header(bucket, KEY) != 'ongoing-request="true"')
    header = restore_header(bucket, KEY)
    assert header.startswith('ongoing-request="false", expiry-date="') and header.endswith(' GMT"')
    assert bucket.get_object(KEY).read() == b"cold dump"
    assert bucket.get_object(KEY).headers["x-oss-restore"] == header
    assert bucket.restore_object(KEY).status == 200  # restored: 200, the copy kept longer
    assert storage_class_of(bucket, KEY) == "Archive"  # a restore does not change the class


def test_the_restored_copy_expires_after_its_days(oss_server, bucket):
    oss_server.restore_delay_seconds = 0
    bucket.put_object(KEY, b"cold dump", headers={"x-oss-storage-class": "Archive"})
    bucket.restore_object(KEY, input=RestoreConfiguration(days=2))
    assert bucket.get_object(KEY).read() == b"cold dump"

    oss_server.advance_time(DAY)
    assert bucket.get_object(KEY).read() == b"cold dump"
    oss_server.advance_time(DAY + 60)

    assert refused(lambda: bucket.get_object(KEY)).code == "InvalidObjectState"
    assert restore_header(bucket, KEY) is None
    assert bucket.restore_object(KEY).status == 202  # frozen again: a new restore


def test_restore_of_a_standard_or_ia_object_is_not_supported(bucket):
    for storage_class in ("Standard", "IA"):
        bucket.put_object(KEY, b"x", headers={"x-oss-storage-class": storage_class})
        error = refused(lambda: bucket.restore_object(KEY))
        assert (error.status, error.code, error.ec) == (400, "OperationNotSupported", "0016-00000702")
    assert refused(lambda: bucket.restore_object("db-backups/none")).code == "NoSuchKey"


def test_restore_days_and_priorities_are_checked_per_class(bucket):
    bucket.put_object("db-backups/a", b"x", headers={"x-oss-storage-class": "Archive"})
    bucket.put_object("db-backups/c", b"x", headers={"x-oss-storage-class": "ColdArchive"})
    bucket.put_object("db-backups/d", b"x", headers={"x-oss-storage-class": "DeepColdArchive"})

    too_long = refused(lambda: bucket.restore_object("db-backups/a", input=RestoreConfiguration(days=8)))
    assert (too_long.status, too_long.code) == (400, "InvalidArgument")
    with pytest.raises(oss2.exceptions.MalformedXml):  # Archive takes no priority
        bucket.restore_object("db-backups/a", input=RestoreConfiguration(
            days=1, job_parameters=RestoreJobParameters("Bulk")))
    wrong_tier = refused(lambda: bucket.restore_object("db-backups/c", input=RestoreConfiguration(
        days=5, job_parameters=RestoreJobParameters("Fastest"))))
    assert (wrong_tier.code, wrong_tier.ec) == ("InvalidArgument", "0016-00000703")
    no_bulk = refused(lambda: bucket.restore_object("db-backups/d", input=RestoreConfiguration(
        days=5, job_parameters=RestoreJobParameters("Bulk"))))
    assert no_bulk.code == "InvalidArgument"

    result = bucket.restore_object("db-backups/c", input=RestoreConfiguration(
        days=365, job_parameters=RestoreJobParameters("Expedited")))
    assert result.status == 202
    assert result.headers["x-oss-object-restore-priority"] == "Expedited"
    assert bucket.restore_object("db-backups/a", input=RestoreConfiguration(days=7)).status == 202


def test_copy_object_moves_an_object_between_classes(oss_server, bucket):
    oss_server.restore_delay_seconds = 0
    bucket.put_object(KEY, b"dump")

    bucket.copy_object(BUCKET, KEY, KEY, headers={"x-oss-storage-class": "Archive"})
    assert storage_class_of(bucket, KEY) == "Archive"
    assert refused(lambda: bucket.get_object(KEY)).code == "InvalidObjectState"

    bucket.restore_object(KEY)
    bucket.copy_object(BUCKET, KEY, KEY, headers={"x-oss-storage-class": "Standard"})
    oss_server.advance_time(30 * DAY)  # long past the restored copy's day: Standard for good
    assert storage_class_of(bucket, KEY) == "Standard"
    assert bucket.get_object(KEY).read() == b"dump"


def test_a_multipart_upload_takes_its_storage_class(bucket):
    parts = [b"a" * PART_SIZE, b"b" * 10]
    upload_id = bucket.init_multipart_upload(KEY, headers={"x-oss-storage-class": "Archive"}).upload_id
    infos = [oss2.models.PartInfo(n, bucket.upload_part(KEY, upload_id, n, data).etag)
             for n, data in enumerate(parts, start=1)]
    bucket.complete_multipart_upload(KEY, upload_id, infos)

    assert storage_class_of(bucket, KEY) == "Archive"
    assert refused(lambda: bucket.get_object(KEY)).code == "InvalidObjectState"
    upload_in_parts(bucket, "db-backups/standard", parts)
    assert storage_class_of(bucket, "db-backups/standard") == "Standard"


def test_a_bucket_storage_class_is_what_its_objects_get(oss_server):
    cold = bucket_for(oss_server, "l2c-cold")
    cold.create_bucket(oss2.BUCKET_ACL_PRIVATE, BucketCreateConfig(oss2.BUCKET_STORAGE_CLASS_ARCHIVE))
    cold.put_object("x", b"x")

    assert cold.get_bucket_info().storage_class == "Archive"
    assert storage_class_of(cold, "x") == "Archive"
    cold.put_object("y", b"y", headers={"x-oss-storage-class": "Standard"})
    assert cold.get_object("y").read() == b"y"


def test_the_lifecycle_rule_moves_old_backups_to_ia_then_archive(oss_server, bucket):
    """setup-oss's rule shape: IA at 30 days, Archive at 90, on the backup prefix."""
    bucket.put_bucket_lifecycle(BucketLifecycle([LifecycleRule(
        "l2c-db-backups", "db-backups/", status=LifecycleRule.ENABLED, storage_transitions=[
            StorageTransition(days=30, storage_class=oss2.BUCKET_STORAGE_CLASS_IA),
            StorageTransition(days=90, storage_class=oss2.BUCKET_STORAGE_CLASS_ARCHIVE)])]))
    bucket.put_object(KEY, b"old")
    bucket.put_object(KEY + ".manifest.json", b"{}")
    bucket.put_object("elsewhere/x", b"not under the prefix")

    oss_server.advance_time(31 * DAY)
    bucket.put_object("db-backups/daily/backup_new.sql.gz", b"new")
    assert oss_server.run_lifecycle() == [(BUCKET, KEY, "IA"), (BUCKET, KEY + ".manifest.json", "IA")]
    assert bucket.get_object(KEY).read() == b"old"  # IA reads as ever

    oss_server.advance_time(60 * DAY)
    oss_server.run_lifecycle()

    assert storage_class_of(bucket, KEY) == "Archive"
    assert storage_class_of(bucket, KEY + ".manifest.json") == "Archive"  # sidecars go too
    assert storage_class_of(bucket, "db-backups/daily/backup_new.sql.gz") == "IA"
    assert storage_class_of(bucket, "elsewhere/x") == "Standard"
    assert refused(lambda: bucket.get_object(KEY)).code == "InvalidObjectState"


def test_restore_state_survives_a_server_restart(tmp_path):
    with LocalOSS(data_dir=str(tmp_path), buckets=[BUCKET], restore_delay_seconds=3600) as server:
        bucket = bucket_for(server)
        bucket.put_object(KEY, b"x", headers={"x-oss-storage-class": "ColdArchive"})
        bucket.restore_object(KEY)
    with LocalOSS(data_dir=str(tmp_path), buckets=[BUCKET]) as server:
        bucket = bucket_for(server)
        assert storage_class_of(bucket, KEY) == "ColdArchive"
        assert restore_header(bucket, KEY) == 'ongoing-request="true"'


def test_the_restore_delay_is_a_server_setting_over_http(oss_server):
    def post(path, body):
        request = urllib.request.Request(f"{oss_server.endpoint_ip}/-/{path}", method="POST",
                                         data=json.dumps(body).encode())
        try:
            with urllib.request.urlopen(request) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    assert post("settings", {"restore_delay_seconds": 7.5}) == (200, {"restore_delay_seconds": 7.5})
    assert oss_server.restore_delay_seconds == 7.5
    assert post("settings", {"restore_delay": 1})[0] == 400
    assert post("settings", {"restore_delay_seconds": -1})[0] == 400
    assert post("run-lifecycle", {}) == (200, {"transitioned": []})


# -- archive.py: what L2C does before it reads ------------------------------------------

def oss_storage(server):
    return open_storage("oss://l2c-backups/db-backups", OSSSettings(
        server.endpoint, server.access_key_id, server.access_key_secret))


def put_backup(bucket, key, storage_class):
    for k in (key, key + ".manifest.json"):
        bucket.put_object(k, b"x", headers={"x-oss-storage-class": storage_class})


def test_standard_ia_and_directory_backups_need_nothing(oss_server, bucket, tmp_path):
    put_backup(bucket, KEY, "Standard")
    bucket.put_object("db-backups/ia", b"x", headers={"x-oss-storage-class": "IA"})
    storage = oss_storage(oss_server)

    assert archive.ensure_readable(storage, [KEY, KEY + ".manifest.json", "db-backups/ia",
                                             "db-backups/missing"], wait=False) == []
    assert restore_header(bucket, KEY) is None and restore_header(bucket, "db-backups/ia") is None
    directory = open_storage(str(tmp_path))
    directory.put_bytes(KEY, b"x")
    assert archive.ensure_readable(directory, KEY, wait=False) == []


def test_without_waiting_the_restore_is_requested_and_the_error_says_what_to_do(oss_server, bucket):
    oss_server.restore_delay_seconds = 3600
    put_backup(bucket, KEY, "Archive")
    storage = oss_storage(oss_server)

    with pytest.raises(ArchiveNotReadable) as error:
        archive.ensure_readable(storage, [KEY, KEY + ".manifest.json"], wait=False,
                                command="`l2c-backup restore`")

    message = str(error.value)
    assert error.value.exit_code == 23
    assert f"2 objects are ({KEY}, {KEY}.manifest.json) in OSS Archive storage" in message
    assert "a restore was requested" in message and "about 1 minute" in message
    assert "run `l2c-backup restore` again once it is restored" in message
    assert "without --no-wait-archive to wait" in message
    assert restore_header(bucket, KEY) == 'ongoing-request="true"'
    assert restore_header(bucket, KEY + ".manifest.json") == 'ongoing-request="true"'
    # Asked again while OSS is restoring (409 RestoreAlreadyInProgress): the same answer.
    with pytest.raises(ArchiveNotReadable):
        archive.ensure_readable(storage, KEY, wait=False)


def test_waiting_requests_every_restore_then_returns_once_all_read(oss_server, bucket, caplog):
    oss_server.restore_delay_seconds = 1.5
    put_backup(bucket, KEY, "Archive")
    storage = oss_storage(oss_server)

    with caplog.at_level("WARNING", logger="l2c_backup.archive"):
        found = archive.ensure_readable(storage, [KEY, KEY + ".manifest.json"], wait=True, timeout=60)

    assert sorted(c.key for c in found) == [KEY, KEY + ".manifest.json"]
    assert b"".join(storage.open(KEY)) == b"x"
    assert b"".join(storage.open(KEY + ".manifest.json")) == b"x"
    assert f"{KEY} is in OSS Archive storage: restore requested (OSS takes about 1 minute" in caplog.text
    assert archive.ensure_readable(storage, KEY, wait=False)[0].readable  # restored: no error


def test_the_wait_is_bounded(oss_server, bucket):
    oss_server.restore_delay_seconds = 3600
    bucket.put_object(KEY, b"x", headers={"x-oss-storage-class": "ColdArchive"})

    with pytest.raises(ArchiveNotReadable) as error:
        archive.ensure_readable(oss_storage(oss_server), KEY, wait=True, timeout=1.5)

    assert "still being restored after 2 s of waiting" in str(error.value)
    assert "2 to 5 hours at the Standard priority" in str(error.value)
    assert "the restore goes on without us" in str(error.value)


def test_listing_tells_which_objects_need_a_restore(oss_server, bucket):
    oss_server.restore_delay_seconds = 0
    put_backup(bucket, KEY, "Archive")
    bucket.put_object("db-backups/manual/restored", b"x", headers={"x-oss-storage-class": "Archive"})
    bucket.restore_object("db-backups/manual/restored")
    bucket.put_object("db-backups/daily/standard", b"x")

    cold = archive.needing_restore(oss_storage(oss_server).list("db-backups/"))

    assert sorted(cold) == [KEY, KEY + ".manifest.json"]
    assert cold[KEY].describe() == "Archive, not restored"


def test_reading_an_archived_object_unrestored_says_so_in_one_line(oss_server, bucket):
    bucket.put_object(KEY, b"x", headers={"x-oss-storage-class": "Archive"})

    with pytest.raises(StorageFailed) as error:
        b"".join(oss_storage(oss_server).open(KEY))

    assert "OSS 403 InvalidObjectState" in str(error.value)
    assert "Archive / Cold Archive storage and not restored" in str(error.value)


# -- through the commands: a backup that has gone to Archive -------------------------------

WHEN = datetime(2026, 1, 20, 2, 0, tzinfo=timezone.utc)


def backup_env(server, pg, db):
    return {"DATABASE_URL": pg.url(db), "OSS_ENDPOINT": server.endpoint,
            "OSS_BACKUP_BUCKET": BUCKET, "OSS_ACCESS_KEY_ID": server.access_key_id,
            "OSS_ACCESS_KEY_SECRET": server.access_key_secret}


def cli(env, *argv):
    env = resolve.child_env(dict(env, PATH="/usr/bin:/bin"))
    return subprocess.run([sys.executable, "-m", "l2c_backup.cli", *argv], capture_output=True,
                          text=True, env=env, timeout=600)


@pytest.fixture
def manual_backup(oss_server, pg_cluster, seeded_db):
    """A manual backup in OSS (kept by count, so the one that reaches Archive)."""
    oss_server.restore_delay_seconds = 2
    env = backup_env(oss_server, pg_cluster, seeded_db)
    (done,) = run_backup(config.load(env), "manual", when=WHEN)["backups"]
    return env, done["key"]


def to_archive(bucket, key):
    """What the lifecycle does at 90 days, done now with CopyObject onto itself."""
    for k in (key, key + ".manifest.json", key + ".verify.json"):
        if bucket.object_exists(k):
            bucket.copy_object(BUCKET, k, k, headers={"x-oss-storage-class": "Archive"})
            assert storage_class_of(bucket, k) == "Archive"


def databases(pg):
    return pg.psql("SELECT datname FROM pg_database").split()


def assert_one_line_failure(result, command, code):
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"l2c-backup {command}:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_restore_of_an_archived_backup_waits_for_oss_then_restores(
        oss_server, bucket, pg_cluster, seeded_db, manual_backup):
    """The lifecycle rule as setup-oss writes it, 91 days on: backup and manifest in Archive."""
    env, key = manual_backup
    bucket.put_bucket_lifecycle(BucketLifecycle([LifecycleRule(
        "l2c-db-backups", "db-backups/", status=LifecycleRule.ENABLED, storage_transitions=[
            StorageTransition(days=30, storage_class=oss2.BUCKET_STORAGE_CLASS_IA),
            StorageTransition(days=90, storage_class=oss2.BUCKET_STORAGE_CLASS_ARCHIVE)])]))
    oss_server.advance_time(91 * DAY)
    assert (BUCKET, key, "Archive") in oss_server.run_lifecycle()
    assert storage_class_of(bucket, key + ".manifest.json") == "Archive"

    result = cli(env, "restore", "--latest", "--kind", "manual", "--target-url",
                 pg_cluster.url("postgres"), "--create-db", "arc_waited")

    assert result.returncode == 0, result.stderr
    assert f"{key} is in OSS Archive storage: restore requested (OSS takes about 1 minute" in result.stderr
    assert f"restored {key} into arc_waited" in result.stdout
    assert table_digests(pg_cluster, "arc_waited") == table_digests(pg_cluster, seeded_db)


def test_restore_with_no_wait_archive_requests_the_restore_and_says_what_to_run(
        oss_server, bucket, pg_cluster, seeded_db, manual_backup):
    env, key = manual_backup
    to_archive(bucket, key)
    target = pg_cluster.url("postgres")

    result = cli(env, "restore", key, "--target-url", target, "--create-db", "arc_nowait",
                 "--no-wait-archive")

    line = assert_one_line_failure(result, "restore", 23)
    assert key in line and "in OSS Archive storage and cannot be read yet" in line
    assert "a restore was requested" in line and "about 1 minute" in line
    assert "run `l2c-backup restore` again once it is restored" in result.stderr
    assert restore_header(bucket, key) == 'ongoing-request="true"'
    assert "arc_nowait" not in databases(pg_cluster)  # nothing was touched

    # What it said to do: once OSS has restored it, the same command restores.
    assert wait_until(lambda: restore_header(bucket, key + ".manifest.json") not in (
        None, 'ongoing-request="true"'))
    again = cli(env, "restore", key, "--target-url", target, "--create-db", "arc_nowait",
                "--no-wait-archive")
    assert again.returncode == 0, again.stderr
    assert table_digests(pg_cluster, "arc_nowait") == table_digests(pg_cluster, seeded_db)


def test_verify_of_an_archived_backup_waits_or_exits_with_the_archive_code(
        oss_server, bucket, manual_backup):
    env, key = manual_backup
    assert cli(env, "verify", key).returncode == 0  # writes <key>.verify.json: it goes too
    to_archive(bucket, key)

    no_wait = cli(env, "verify", key, "--no-wait-archive")
    line = assert_one_line_failure(no_wait, "verify", 23)
    assert "3 objects are" in line and key + ".verify.json" in line

    waited = cli(env, "verify", "--all", "--kind", "manual")
    assert waited.returncode == 0, waited.stderr
    assert f"ok   {key}  ok" in waited.stdout
    assert bucket.get_object_tagging(key).tag_set.tagging_rule["verify"] == "ok"


def test_mirror_of_an_archived_backup_waits_or_exits_with_the_archive_code(
        oss_server, bucket, manual_backup, tmp_path):
    env, key = manual_backup
    to_archive(bucket, key)

    no_wait = cli(env, "mirror", "--to", str(tmp_path), "--no-wait-archive")
    assert_one_line_failure(no_wait, "mirror", 23)
    assert not (tmp_path / key).exists()

    waited = cli(env, "mirror", "--to", str(tmp_path), "--json")
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["copied"] == 1
    assert (tmp_path / key).read_bytes() == bucket.get_object(key).read()


def test_status_shows_which_backups_need_a_restore(oss_server, bucket, manual_backup):
    env, key = manual_backup
    to_archive(bucket, key)

    result = cli(env, "status", "--json")

    report = json.loads(result.stdout)
    assert report["needs_restore"] == [{"key": key, "state": "Archive, not restored"}]
    assert [loc["error"] for loc in report["locations"]] == [""]  # read, not "unreadable"
    assert report["kinds"]["manual"]["newest"] == key
    plain = cli(env, "status")
    assert (f"needs a restore from OSS before it can be read: {key} (Archive, not restored"
            in plain.stdout)


def test_a_drill_of_an_archived_backup_fails_saying_the_restore_was_requested(
        oss_server, bucket, pg_cluster, manual_backup):
    env, key = manual_backup
    storage = oss_storage(oss_server)
    assert verify(storage, key).ok  # a drill takes verified backups only
    to_archive(bucket, key)

    report = run_drill(storage, "manual", DatabaseSettings.from_url(pg_cluster.url("postgres"), {}),
                       "production", wait_archive=False)

    assert not report["ok"] and report["key"] == key
    assert "a restore was requested" in report["failures"][0]
    assert report["scratch_database"] not in databases(pg_cluster)


def test_a_repeated_verify_event_for_an_archived_checked_backup_restores_nothing(
        oss_server, bucket, manual_backup):
    """A CopyObject into Archive fires ObjectCreated:CopyObject, and so the verify trigger."""
    env, key = manual_backup
    storage = oss_storage(oss_server)
    assert verify(storage, key).ok
    for k in (key, key + ".manifest.json"):
        bucket.copy_object(BUCKET, k, k, headers={"x-oss-storage-class": "Archive"})

    again = verify(storage, key, wait_archive=False)

    assert again.ok and again.repeated
    assert restore_header(bucket, key) is None  # no restore asked for, none paid for


def test_oss_server_command_takes_the_restore_delay(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "l2c_backup.cli", "oss-server", "--restore-delay",
                          "-1"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--restore-delay -1 is negative" in bad.stderr

    proc = subprocess.Popen([sys.executable, "-m", "l2c_backup.cli", "oss-server", "--port", "0",
                             "--restore-delay", "0", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        details = json.loads(proc.stdout.readline())
        bucket = oss2.Bucket(oss2.Auth(details["access_key_id"], details["access_key_secret"]),
                             details["endpoint"], BUCKET)
        bucket.put_object(KEY, b"x", headers={"x-oss-storage-class": "Archive"})
        bucket.restore_object(KEY)
        assert bucket.get_object(KEY).read() == b"x"  # no delay: restored at once
    finally:
        proc.terminate()
        proc.wait(timeout=20)
