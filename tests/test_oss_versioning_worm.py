"""Versioning and WORM retention on the local OSS server: what keeps backups from being lost."""

import oss2
import pytest
from oss2.models import BucketVersioningConfig

KEY = "db-backups/orders/daily.dump"
DAY = 24 * 60 * 60


@pytest.fixture
def versioned(bucket):
    bucket.put_bucket_versioning(BucketVersioningConfig(status="Enabled"))
    return bucket


@pytest.fixture
def locked_one_day(bucket):
    """The bucket under a locked WORM policy that retains every object for one day."""
    worm_id = bucket.init_bucket_worm(1).worm_id
    bucket.complete_bucket_worm(worm_id)
    return bucket


def versions_of(bucket, key):
    return bucket.list_object_versions(prefix=key)


def assert_file_immutable(call):
    with pytest.raises(oss2.exceptions.ServerError) as refused:
        call()
    assert (refused.value.status, refused.value.code) == (409, "FileImmutable")


def test_new_bucket_has_no_versioning_status(bucket):
    assert bucket.get_bucket_versioning().status is None


def test_enabled_versioning_reads_back_as_enabled(versioned):
    assert versioned.get_bucket_versioning().status == "Enabled"


def test_put_into_a_versioned_bucket_returns_a_version_id(versioned):
    put = versioned.put_object(KEY, b"v1")

    assert put.versionid
    assert versioned.head_object(KEY).versionid == put.versionid


def test_overwrite_in_a_versioned_bucket_keeps_the_old_version(versioned):
    v1 = versioned.put_object(KEY, b"first").versionid
    v2 = versioned.put_object(KEY, b"second").versionid

    listed = versions_of(versioned, KEY).versions

    assert v1 != v2
    assert [(v.versionid, v.is_latest) for v in listed] == [(v2, True), (v1, False)]
    assert versioned.get_object(KEY).read() == b"second"
    assert versioned.get_object(KEY, params={"versionId": v1}).read() == b"first"


def test_head_by_version_id_reports_that_versions_size(versioned):
    v1 = versioned.put_object(KEY, b"first, longer").versionid
    versioned.put_object(KEY, b"second")

    assert versioned.head_object(KEY, params={"versionId": v1}).content_length == 13


def test_delete_without_version_id_leaves_a_delete_marker_and_keeps_the_data(versioned):
    v1 = versioned.put_object(KEY, b"first").versionid

    deleted = versioned.delete_object(KEY)

    assert deleted.delete_marker is True
    with pytest.raises(oss2.exceptions.NoSuchKey):
        versioned.get_object(KEY)
    listed = versions_of(versioned, KEY)
    assert [(m.key, m.versionid, m.is_latest) for m in listed.delete_marker] == [
        (KEY, deleted.versionid, True)
    ]
    assert [v.versionid for v in listed.versions] == [v1]
    assert versioned.get_object(KEY, params={"versionId": v1}).read() == b"first"


def test_deleted_key_is_not_listed_by_list_objects(versioned):
    versioned.put_object(KEY, b"first")

    versioned.delete_object(KEY)

    assert versioned.list_objects_v2(prefix="db-backups/").object_list == []


def test_deleting_the_delete_marker_by_version_id_restores_the_object(versioned):
    versioned.put_object(KEY, b"first")
    marker = versioned.delete_object(KEY).versionid

    versioned.delete_object(KEY, params={"versionId": marker})

    assert versioned.get_object(KEY).read() == b"first"


def test_delete_by_version_id_removes_that_version_permanently(versioned):
    v1 = versioned.put_object(KEY, b"first").versionid
    v2 = versioned.put_object(KEY, b"second").versionid

    versioned.delete_object(KEY, params={"versionId": v1})

    listed = versions_of(versioned, KEY)
    assert [v.versionid for v in listed.versions] == [v2]
    assert listed.delete_marker == []
    with pytest.raises(oss2.exceptions.ServerError) as missing:
        versioned.get_object(KEY, params={"versionId": v1})
    assert (missing.value.status, missing.value.code) == (404, "NoSuchVersion")
    assert versioned.get_object(KEY).read() == b"second"


def test_deleting_the_latest_version_by_id_makes_the_previous_one_current(versioned):
    versioned.put_object(KEY, b"first")
    v2 = versioned.put_object(KEY, b"second").versionid

    versioned.delete_object(KEY, params={"versionId": v2})

    assert versioned.get_object(KEY).read() == b"first"


def test_suspended_versioning_keeps_old_versions_and_overwrites_one_null_version(versioned):
    v1 = versioned.put_object(KEY, b"first").versionid
    versioned.put_bucket_versioning(BucketVersioningConfig(status="Suspended"))

    versioned.put_object(KEY, b"second")
    versioned.put_object(KEY, b"third")

    assert versioned.get_bucket_versioning().status == "Suspended"
    listed = versions_of(versioned, KEY).versions
    assert [v.versionid for v in listed] == ["null", v1]
    assert versioned.get_object(KEY).read() == b"third"
    assert versioned.get_object(KEY, params={"versionId": v1}).read() == b"first"


def test_list_object_versions_in_an_unversioned_bucket_lists_each_object_once(bucket):
    bucket.put_object(KEY, b"first")
    bucket.put_object(KEY, b"second")

    listed = versions_of(bucket, KEY)

    assert [(v.key, v.versionid, v.size) for v in listed.versions] == [(KEY, "null", 6)]


def test_initiated_worm_policy_is_in_progress_with_its_retention(bucket):
    worm_id = bucket.init_bucket_worm(3).worm_id

    policy = bucket.get_bucket_worm()

    assert worm_id
    assert (policy.worm_id, policy.state, policy.retention_period_days) == (
        worm_id,
        "InProgress",
        3,
    )


def test_completed_worm_policy_is_locked(bucket):
    worm_id = bucket.init_bucket_worm(1).worm_id

    bucket.complete_bucket_worm(worm_id)

    policy = bucket.get_bucket_worm()
    assert (policy.worm_id, policy.state) == (worm_id, "Locked")


def test_extend_bucket_worm_lengthens_the_locked_retention(locked_one_day):
    worm_id = locked_one_day.get_bucket_worm().worm_id

    locked_one_day.extend_bucket_worm(worm_id, 7)

    assert locked_one_day.get_bucket_worm().retention_period_days == 7


def test_abort_bucket_worm_while_in_progress_removes_the_policy(bucket):
    bucket.init_bucket_worm(1)

    bucket.abort_bucket_worm()

    with pytest.raises(oss2.exceptions.NoSuchWORMConfiguration):
        bucket.get_bucket_worm()


def test_bucket_without_worm_policy_answers_no_such_worm_configuration(bucket):
    with pytest.raises(oss2.exceptions.NoSuchWORMConfiguration):
        bucket.get_bucket_worm()


def test_in_progress_worm_policy_already_protects_objects(bucket):
    # As on OSS: the 24 hours a policy waits in InProgress already hold the data.
    bucket.put_object(KEY, b"backup")
    bucket.init_bucket_worm(1)

    assert_file_immutable(lambda: bucket.delete_object(KEY))


def test_aborting_an_in_progress_worm_policy_releases_the_objects(bucket):
    bucket.put_object(KEY, b"backup")
    bucket.init_bucket_worm(1)

    bucket.abort_bucket_worm()

    bucket.delete_object(KEY)
    assert not bucket.object_exists(KEY)


def test_delete_inside_locked_retention_fails_as_file_immutable(locked_one_day):
    locked_one_day.put_object(KEY, b"backup")

    assert_file_immutable(lambda: locked_one_day.delete_object(KEY))
    assert locked_one_day.get_object(KEY).read() == b"backup"


def test_overwrite_inside_locked_retention_fails_as_file_immutable(locked_one_day):
    locked_one_day.put_object(KEY, b"backup")

    assert_file_immutable(lambda: locked_one_day.put_object(KEY, b"tampered"))
    assert locked_one_day.get_object(KEY).read() == b"backup"


def test_batch_delete_inside_locked_retention_deletes_nothing(locked_one_day):
    locked_one_day.put_object(KEY, b"backup")

    try:
        locked_one_day.batch_delete_objects([KEY])
    except oss2.exceptions.ServerError:
        pass

    assert locked_one_day.get_object(KEY).read() == b"backup"


def test_locked_retention_protects_objects_written_before_the_lock(bucket):
    bucket.put_object(KEY, b"backup")
    worm_id = bucket.init_bucket_worm(1).worm_id
    bucket.complete_bucket_worm(worm_id)

    assert_file_immutable(lambda: bucket.delete_object(KEY))


def test_delete_succeeds_once_the_retention_has_passed(oss_server, locked_one_day):
    locked_one_day.put_object(KEY, b"backup")

    oss_server.advance_time(2 * DAY)

    locked_one_day.delete_object(KEY)
    assert not locked_one_day.object_exists(KEY)


def test_retention_still_holds_before_it_has_passed(oss_server, locked_one_day):
    locked_one_day.put_object(KEY, b"backup")

    oss_server.advance_time(DAY // 2)

    assert_file_immutable(lambda: locked_one_day.delete_object(KEY))


def test_extended_retention_holds_past_the_original_one(oss_server, locked_one_day):
    locked_one_day.extend_bucket_worm(locked_one_day.get_bucket_worm().worm_id, 5)
    locked_one_day.put_object(KEY, b"backup")

    oss_server.advance_time(2 * DAY)

    assert_file_immutable(lambda: locked_one_day.delete_object(KEY))


def test_new_keys_can_still_be_written_under_a_locked_policy(locked_one_day):
    locked_one_day.put_object("db-backups/orders/new.dump", b"new")

    assert locked_one_day.get_object("db-backups/orders/new.dump").read() == b"new"
