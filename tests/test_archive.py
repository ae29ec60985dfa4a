"""The Archive tier: storage classes and RestoreObject on the local OSS server, and what
L2C does when a backup has gone cold (ensure_readable, the commands, status).

OSS's lifecycle rule (setup-oss) moves objects under the prefix to Archive after 90 days,
so manual backups (kept by count) and old weekly backups end up there, manifests and
sidecars with them; an Archive object cannot be read until a RestoreObject completes.
The server side is driven with the real oss2 client over HTTP, as everything else here.
"""
import json
import time
import urllib.request

import oss2
import pytest
from oss2.models import (BucketCreateConfig, BucketLifecycle, LifecycleRule, RestoreConfiguration,
                         RestoreJobParameters, StorageTransition)

from l2c_local.oss import LocalOSS
from oss_fixtures import BUCKET, bucket_for, upload_in_parts, PART_SIZE

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
