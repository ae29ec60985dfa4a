"""Multipart uploads on the local OSS server: the path every large dump takes."""

import os

import oss2
import pytest
from oss2.models import PartInfo

from l2c_local.oss import Fault
from oss_fixtures import (
    PART_SIZE,
    crc64,
    md5_etag,
    multipart_etag,
    retry_transient,
    upload_in_parts,
)

KEY = "db-backups/orders/2024-05-01T0300Z.dump"
PARTS = [os.urandom(PART_SIZE), os.urandom(PART_SIZE), os.urandom(1234)]
WHOLE = b"".join(PARTS)


def test_multipart_upload_completes_into_one_readable_object(bucket):
    upload_id = bucket.init_multipart_upload(KEY).upload_id
    infos = []
    for number, data in enumerate(PARTS, start=1):
        result = bucket.upload_part(KEY, upload_id, number, data)
        infos.append(PartInfo(number, result.etag, size=len(data), part_crc=result.crc))

    bucket.complete_multipart_upload(KEY, upload_id, infos)

    assert bucket.get_object(KEY).read() == WHOLE
    assert bucket.head_object(KEY).content_length == len(WHOLE)


def test_object_is_invisible_until_its_upload_completes(bucket):
    upload_id = bucket.init_multipart_upload(KEY).upload_id
    bucket.upload_part(KEY, upload_id, 1, PARTS[0])

    assert not bucket.object_exists(KEY)
    assert bucket.list_objects_v2(prefix="db-backups/").object_list == []


def test_list_parts_shows_each_uploaded_part_with_its_etag_and_size(bucket):
    upload_id = bucket.init_multipart_upload(KEY).upload_id
    etags = [bucket.upload_part(KEY, upload_id, n, d).etag for n, d in enumerate(PARTS, start=1)]

    parts = bucket.list_parts(KEY, upload_id).parts

    assert [p.part_number for p in parts] == [1, 2, 3]
    assert [p.size for p in parts] == [len(d) for d in PARTS]
    assert [p.etag for p in parts] == etags
    assert all(e == md5_etag(d) for e, d in zip(etags, PARTS))


def test_reuploading_a_part_number_replaces_that_part(bucket):
    upload_id = bucket.init_multipart_upload(KEY).upload_id
    bucket.upload_part(KEY, upload_id, 1, b"stale" * 1000)
    first = bucket.upload_part(KEY, upload_id, 1, PARTS[0])
    last = bucket.upload_part(KEY, upload_id, 2, PARTS[2])

    bucket.complete_multipart_upload(
        KEY, upload_id, [PartInfo(1, first.etag), PartInfo(2, last.etag)]
    )

    assert bucket.get_object(KEY).read() == PARTS[0] + PARTS[2]


def test_list_multipart_uploads_shows_uploads_in_progress_only(bucket):
    in_progress = bucket.init_multipart_upload(KEY).upload_id
    upload_in_parts(bucket, "db-backups/finished.dump", PARTS)

    uploads = bucket.list_multipart_uploads().upload_list

    assert [(u.key, u.upload_id) for u in uploads] == [(KEY, in_progress)]


def test_completed_multipart_etag_is_md5_of_part_md5s_dash_part_count(bucket):
    completed = upload_in_parts(bucket, KEY, PARTS)

    assert completed.etag == multipart_etag(PARTS)
    assert bucket.head_object(KEY).etag == multipart_etag(PARTS)
    listed = bucket.list_objects_v2(prefix="db-backups/").object_list
    assert listed[0].etag == multipart_etag(PARTS)


def test_completed_multipart_object_is_typed_multipart(bucket):
    upload_in_parts(bucket, KEY, PARTS)

    assert bucket.head_object(KEY).object_type == "Multipart"


def test_completed_multipart_crc64_is_the_crc64_of_the_whole_body(bucket):
    # upload_in_parts hands oss2 each part's CRC, so oss2 itself checks the combined CRC.
    completed = upload_in_parts(bucket, KEY, PARTS)

    assert completed.crc == crc64(WHOLE)
    assert bucket.head_object(KEY).server_crc == crc64(WHOLE)


def test_complete_naming_a_part_that_was_never_uploaded_is_rejected(bucket):
    upload_id = bucket.init_multipart_upload(KEY).upload_id
    first = bucket.upload_part(KEY, upload_id, 1, PARTS[0])

    with pytest.raises(oss2.exceptions.ServerError) as rejected:
        bucket.complete_multipart_upload(
            KEY, upload_id, [PartInfo(1, first.etag), PartInfo(2, md5_etag(b"never"))]
        )

    assert (rejected.value.status, rejected.value.code) == (400, "InvalidPart")
    assert not bucket.object_exists(KEY)


def test_aborted_upload_is_gone_and_its_id_answers_no_such_upload(bucket):
    upload_id = bucket.init_multipart_upload(KEY).upload_id
    bucket.upload_part(KEY, upload_id, 1, PARTS[0])

    bucket.abort_multipart_upload(KEY, upload_id)

    assert bucket.list_multipart_uploads().upload_list == []
    with pytest.raises(oss2.exceptions.NoSuchUpload):
        bucket.list_parts(KEY, upload_id)
    with pytest.raises(oss2.exceptions.NoSuchUpload):
        bucket.upload_part(KEY, upload_id, 2, PARTS[1])
    with pytest.raises(oss2.exceptions.NoSuchUpload):
        bucket.complete_multipart_upload(KEY, upload_id, [PartInfo(1, md5_etag(PARTS[0]))])
    assert not bucket.object_exists(KEY)


def test_part_failing_once_with_503_is_retried_and_the_upload_completes(oss_server, bucket):
    fault = oss_server.inject(Fault(method="PUT", query="partNumber", status=503, times=1))
    upload_id = bucket.init_multipart_upload(KEY).upload_id
    infos = []
    for number, data in enumerate(PARTS, start=1):
        result = retry_transient(lambda: bucket.upload_part(KEY, upload_id, number, data))
        infos.append(PartInfo(number, result.etag, size=len(data), part_crc=result.crc))

    bucket.complete_multipart_upload(KEY, upload_id, infos)

    assert fault.hits == 1
    assert bucket.get_object(KEY).read() == WHOLE


def test_injected_503_reaches_oss2_as_a_server_error_with_status_503(oss_server, bucket):
    oss_server.inject(Fault(method="PUT", query="partNumber", status=503, times=1))
    upload_id = bucket.init_multipart_upload(KEY).upload_id

    with pytest.raises(oss2.exceptions.ServerError) as failed:
        bucket.upload_part(KEY, upload_id, 1, PARTS[0])

    assert failed.value.status == 503
    assert bucket.list_parts(KEY, upload_id).parts == []
