"""What the local OSS server does not implement, it refuses: an explicit error, never a
plain object or bucket operation that succeeds (or destroys data) in its place."""

import oss2
import pytest

from oss_fixtures import PART_SIZE

KEY = "db-backups/daily/backup_2026-01-01.sql.gz"
BODY = b"backup bytes that must survive"


def refused(call):
    with pytest.raises(oss2.exceptions.ServerError) as error:
        call()
    assert error.value.code == "NotImplemented", error.value
    return error.value


def test_put_object_acl_is_refused_and_leaves_the_object_whole(bucket):
    bucket.put_object(KEY, BODY)

    assert refused(lambda: bucket.put_object_acl(KEY, oss2.OBJECT_ACL_PRIVATE)).status == 501

    assert bucket.get_object(KEY).read() == BODY


def test_get_object_acl_is_refused_not_answered_with_the_bytes(bucket):
    bucket.put_object(KEY, BODY)

    refused(lambda: bucket.get_object_acl(KEY))


def test_put_symlink_is_refused_and_creates_nothing(bucket):
    bucket.put_object(KEY, BODY)

    refused(lambda: bucket.put_symlink(KEY, "db-backups/link"))

    assert not bucket.object_exists("db-backups/link")


def test_delete_bucket_cors_is_refused_and_the_bucket_stays(oss_server, bucket):
    refused(bucket.delete_bucket_cors)

    assert bucket.get_bucket_info().name == bucket.bucket_name


def test_unimplemented_bucket_sub_resources_are_refused(bucket):
    for call in (bucket.get_bucket_cors, bucket.get_bucket_logging, bucket.get_bucket_acl,
                 bucket.get_bucket_website, bucket.get_bucket_referer):
        refused(call)


def test_upload_part_copy_is_refused_and_stores_no_part(bucket):
    bucket.put_object(KEY, BODY)
    upload_id = bucket.init_multipart_upload("db-backups/copy").upload_id

    refused(lambda: bucket.upload_part_copy(bucket.bucket_name, KEY, (0, len(BODY) - 1),
                                            "db-backups/copy", upload_id, 1))

    assert bucket.list_parts("db-backups/copy", upload_id).parts == []


def test_an_unknown_x_oss_header_on_put_is_refused_and_stores_nothing(bucket):
    error = refused(lambda: bucket.put_object(KEY, BODY, headers={"x-oss-object-acl": "public-read"}))

    assert error.status == 400
    assert error.details["Header"] == "x-oss-object-acl"
    assert not bucket.object_exists(KEY)


def test_image_processing_on_get_is_refused_not_answered_with_the_plain_bytes(bucket):
    bucket.put_object(KEY, BODY)

    refused(lambda: bucket.get_object(KEY, process="image/resize,w_100"))


def test_getting_one_part_of_an_object_is_refused(bucket):
    bucket.put_object(KEY, BODY)

    refused(lambda: bucket.get_object(KEY, params={"partNumber": "1"}))


def test_conditional_headers_on_put_are_refused_as_oss_refuses_them(bucket):
    error = refused(lambda: bucket.put_object(KEY, BODY, headers={"If-None-Match": "*"}))

    assert error.status == 400
    assert not bucket.object_exists(KEY)


def test_append_object_is_refused(bucket):
    refused(lambda: bucket.append_object("db-backups/log", 0, b"line"))

    assert not bucket.object_exists("db-backups/log")


def test_a_multipart_copy_source_header_is_refused_on_initiate(bucket):
    bucket.put_object(KEY, b"x" * PART_SIZE)

    refused(lambda: bucket.init_multipart_upload("db-backups/m", headers={
        "x-oss-copy-source": "/{}/{}".format(bucket.bucket_name, KEY)}))
