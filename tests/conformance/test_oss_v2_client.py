"""The local OSS server driven by a second official client: alibabacloud-oss-v2.

oss2 is the client L2C backup ships with, and the one the server was built against. OSS's
V2 Python SDK is a separate code base by the OSS team: V4 signatures by default
(`OSS4-HMAC-SHA256`, region-scoped), its own XML parsing, CRC-64 checked on every upload
and download, its own uploader. It addresses buckets virtual-hosted under the server's
named endpoint. Each test is a data-path operation L2C backup performs through oss2.
"""
import hashlib
import io
import os

import alibabacloud_oss_v2 as oss
import pytest
from alibabacloud_oss_v2.models import object_basic

from l2c_local import resolve
from l2c_local.oss import LocalOSS

PART_SIZE = 100 * 1024  # the smallest part OSS accepts for a non-final part


@pytest.fixture(scope="module")
def server():
    resolve.install()
    with LocalOSS() as server:
        yield server


@pytest.fixture
def bucket(server, request):
    name = "v2-" + hashlib.md5(request.node.name.encode()).hexdigest()[:16]
    server.create_bucket(name)
    return name


@pytest.fixture
def client(server):
    cfg = oss.config.load_default()
    cfg.credentials_provider = oss.credentials.StaticCredentialsProvider(
        server.access_key_id, server.access_key_secret)
    cfg.region = server.region
    cfg.endpoint = server.endpoint
    return oss.Client(cfg)


def test_client_signs_with_v4_and_addresses_buckets_virtual_hosted(server, client, bucket):
    assert server.endpoint.startswith(f"http://{resolve.TEST_DOMAIN}:")
    assert client.put_object(oss.PutObjectRequest(bucket=bucket, key="k", body=b"x")).status_code == 200
    # A V4 signature is scoped to a region: the same key signing for another region is refused.
    cfg = oss.config.load_default()
    cfg.credentials_provider = oss.credentials.StaticCredentialsProvider(
        server.access_key_id, server.access_key_secret)
    cfg.region, cfg.endpoint = "cn-shanghai", server.endpoint
    with pytest.raises(oss.exceptions.OperationError) as caught:
        oss.Client(cfg).put_object(oss.PutObjectRequest(bucket=bucket, key="k", body=b"x"))
    assert caught.value.unwrap().status_code == 403


def test_put_then_get_returns_the_bytes_with_their_crc64_checked(client, bucket):
    data = os.urandom(300_000)
    put = client.put_object(oss.PutObjectRequest(bucket=bucket, key="db/a.gz", body=data))
    assert put.etag.strip('"') == hashlib.md5(data).hexdigest().upper()
    got = client.get_object(oss.GetObjectRequest(bucket=bucket, key="db/a.gz"))
    assert got.body.read() == data
    assert got.hash_crc64 == put.hash_crc64


def test_ranged_get_returns_exactly_the_range(client, bucket):
    data = bytes(range(256)) * 1000
    client.put_object(oss.PutObjectRequest(bucket=bucket, key="r", body=data))
    got = client.get_object(oss.GetObjectRequest(bucket=bucket, key="r",
                                                 range_header="bytes=1000-2999"))
    assert got.status_code == 206
    assert got.content_range == f"bytes 1000-2999/{len(data)}"
    assert got.body.read() == data[1000:3000]


def test_head_reports_size_etag_and_user_meta(client, bucket):
    client.put_object(oss.PutObjectRequest(bucket=bucket, key="h", body=b"hello",
                                           metadata={"kind": "daily"}))
    head = client.head_object(oss.HeadObjectRequest(bucket=bucket, key="h"))
    assert head.content_length == 5
    assert head.etag.strip('"') == hashlib.md5(b"hello").hexdigest().upper()
    assert head.metadata == {"kind": "daily"}


def test_head_of_a_missing_key_is_a_no_such_key_error(client, bucket):
    with pytest.raises(oss.exceptions.OperationError) as caught:
        client.head_object(oss.HeadObjectRequest(bucket=bucket, key="missing"))
    error = caught.value.unwrap()
    assert error.status_code == 404
    assert error.code == "NoSuchKey"
    assert client.is_object_exist(bucket, "missing") is False


def test_multipart_upload_by_hand_assembles_the_parts(client, bucket):
    data = os.urandom(2 * PART_SIZE + 1234)
    init = client.initiate_multipart_upload(
        oss.InitiateMultipartUploadRequest(bucket=bucket, key="mp"))
    parts = []
    for number, start in enumerate(range(0, len(data), PART_SIZE), 1):
        part = client.upload_part(oss.UploadPartRequest(
            bucket=bucket, key="mp", upload_id=init.upload_id, part_number=number,
            body=data[start:start + PART_SIZE]))
        parts.append(oss.UploadPart(part_number=number, etag=part.etag))
    client.complete_multipart_upload(oss.CompleteMultipartUploadRequest(
        bucket=bucket, key="mp", upload_id=init.upload_id,
        complete_multipart_upload=oss.CompleteMultipartUpload(parts=parts)))
    got = client.get_object(oss.GetObjectRequest(bucket=bucket, key="mp"))
    assert got.body.read() == data
    assert got.etag.strip('"').endswith("-3")


def test_uploader_splits_a_stream_into_parallel_parts(client, bucket):
    data = os.urandom(5 * PART_SIZE + 77)
    uploader = client.uploader(part_size=PART_SIZE, parallel_num=3,
                               leave_parts_on_error=False)
    result = uploader.upload_from(oss.PutObjectRequest(bucket=bucket, key="up"), io.BytesIO(data))
    assert result.upload_id  # it went multipart
    got = client.get_object(oss.GetObjectRequest(bucket=bucket, key="up"))
    assert got.body.read() == data
    assert got.hash_crc64 == result.hash_crc64
    uploads = client.list_multipart_uploads(oss.ListMultipartUploadsRequest(bucket=bucket))
    assert not uploads.uploads


def test_list_v2_pages_with_a_delimiter(client, bucket):
    for key in ("db/a/1", "db/a/2", "db/b", "db/c", "other"):
        client.put_object(oss.PutObjectRequest(bucket=bucket, key=key, body=b"."))
    paginator = client.list_objects_v2_paginator()
    keys, prefixes = [], []
    for page in paginator.iter_page(oss.ListObjectsV2Request(
            bucket=bucket, prefix="db/", delimiter="/", max_keys=1)):
        keys += [o.key for o in page.contents or []]
        prefixes += [p.prefix for p in page.common_prefixes or []]
    assert keys == ["db/b", "db/c"]
    assert prefixes == ["db/a/"]


def test_tagging_round_trips_and_counts_on_head(client, bucket):
    client.put_object(oss.PutObjectRequest(bucket=bucket, key="t", body=b"x",
                                           tagging="verified=false"))
    tags = object_basic.Tagging(tag_set=object_basic.TagSet(tags=[
        object_basic.Tag(key="verified", value="true"), object_basic.Tag(key="kind", value="daily")]))
    client.put_object_tagging(oss.PutObjectTaggingRequest(bucket=bucket, key="t", tagging=tags))
    got = client.get_object_tagging(oss.GetObjectTaggingRequest(bucket=bucket, key="t"))
    assert {t.key: t.value for t in got.tag_set.tags} == {"verified": "true", "kind": "daily"}
    assert client.head_object(oss.HeadObjectRequest(bucket=bucket, key="t")).tagging_count == 2


def test_delete_removes_the_object(client, bucket):
    client.put_object(oss.PutObjectRequest(bucket=bucket, key="d", body=b"x"))
    assert client.delete_object(oss.DeleteObjectRequest(bucket=bucket, key="d")).status_code == 204
    assert client.is_object_exist(bucket, "d") is False


def test_versioned_get_reads_an_overwritten_version(client, bucket):
    client.put_bucket_versioning(oss.PutBucketVersioningRequest(
        bucket=bucket, versioning_configuration=oss.VersioningConfiguration(status="Enabled")))
    first = client.put_object(oss.PutObjectRequest(bucket=bucket, key="v", body=b"first"))
    second = client.put_object(oss.PutObjectRequest(bucket=bucket, key="v", body=b"second"))
    assert first.version_id and second.version_id and first.version_id != second.version_id
    deleted = client.delete_object(oss.DeleteObjectRequest(bucket=bucket, key="v"))
    assert deleted.delete_marker
    old = client.get_object(oss.GetObjectRequest(bucket=bucket, key="v", version_id=first.version_id))
    assert old.body.read() == b"first"
    assert old.version_id == first.version_id
    with pytest.raises(oss.exceptions.OperationError) as caught:
        client.get_object(oss.GetObjectRequest(bucket=bucket, key="v"))
    assert caught.value.unwrap().code == "NoSuchKey"
