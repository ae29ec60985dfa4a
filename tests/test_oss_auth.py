"""The local OSS server checks signatures, keys, tokens and clocks the way OSS does."""

import time
from email.utils import formatdate

import oss2
import pytest

from oss_fixtures import BUCKET, bucket_for


def skew_client_clock(monkeypatch, seconds):
    """Makes oss2 stamp its V1 `Date` header `seconds` away from now (the server is untouched)."""
    monkeypatch.setattr(
        oss2.utils, "http_date", lambda timeval=None: formatdate(time.time() + seconds, usegmt=True)
    )


def v4_bucket(server, secret=None):
    auth = oss2.AuthV4(server.access_key_id, secret or server.access_key_secret)
    return bucket_for(server, auth=auth, region=server.region)


def test_request_signed_v1_with_the_test_key_pair_is_served(bucket):
    bucket.put_object("db-backups/signed.dump", b"signed")

    assert bucket.get_object("db-backups/signed.dump").read() == b"signed"


def test_put_with_wrong_secret_is_rejected_as_signature_does_not_match(oss_server):
    bucket = bucket_for(oss_server, auth=oss2.Auth(oss_server.access_key_id, "not-the-secret"))

    with pytest.raises(oss2.exceptions.SignatureDoesNotMatch) as rejected:
        bucket.put_object("db-backups/x.dump", b"x")

    assert rejected.value.status == 403


def test_get_with_wrong_secret_is_rejected_as_signature_does_not_match(oss_server, bucket):
    bucket.put_object("db-backups/x.dump", b"x")
    forger = bucket_for(oss_server, auth=oss2.Auth(oss_server.access_key_id, "not-the-secret"))

    with pytest.raises(oss2.exceptions.SignatureDoesNotMatch):
        forger.get_object("db-backups/x.dump")


def test_unknown_access_key_is_rejected_as_invalid_access_key_id(oss_server):
    stranger = bucket_for(oss_server, auth=oss2.Auth("LTAI-nobody", "whatever"))

    with pytest.raises(oss2.exceptions.ServerError) as rejected:
        stranger.put_object("db-backups/x.dump", b"x")

    assert (rejected.value.status, rejected.value.code) == (403, "InvalidAccessKeyId")


def test_rejected_put_stores_nothing(oss_server, bucket):
    forger = bucket_for(oss_server, auth=oss2.Auth(oss_server.access_key_id, "not-the-secret"))

    with pytest.raises(oss2.exceptions.SignatureDoesNotMatch):
        forger.put_object("db-backups/forged.dump", b"forged")

    assert not bucket.object_exists("db-backups/forged.dump")


def test_client_clock_twenty_minutes_behind_is_rejected_as_request_time_too_skewed(
    monkeypatch, bucket
):
    skew_client_clock(monkeypatch, -20 * 60)

    with pytest.raises(oss2.exceptions.ServerError) as rejected:
        bucket.put_object("db-backups/x.dump", b"x")

    assert (rejected.value.status, rejected.value.code) == (403, "RequestTimeTooSkewed")


def test_client_clock_twenty_minutes_ahead_is_rejected_as_request_time_too_skewed(
    monkeypatch, bucket
):
    skew_client_clock(monkeypatch, +20 * 60)

    with pytest.raises(oss2.exceptions.ServerError) as rejected:
        bucket.get_bucket_info()

    assert rejected.value.code == "RequestTimeTooSkewed"


def test_client_clock_ten_minutes_off_is_within_the_fifteen_minute_limit(monkeypatch, bucket):
    skew_client_clock(monkeypatch, -10 * 60)

    bucket.put_object("db-backups/x.dump", b"x")

    assert bucket.get_object("db-backups/x.dump").read() == b"x"


def test_v4_signed_put_get_and_list_are_served(oss_server):
    bucket = v4_bucket(oss_server)

    bucket.put_object("db-backups/v4 signed.dump", b"four")

    assert bucket.get_object("db-backups/v4 signed.dump").read() == b"four"
    listed = bucket.list_objects_v2(prefix="db-backups/")
    assert [o.key for o in listed.object_list] == ["db-backups/v4 signed.dump"]


def test_v4_signed_request_with_wrong_secret_is_rejected_as_signature_does_not_match(oss_server):
    bucket = v4_bucket(oss_server, secret="not-the-secret")

    with pytest.raises(oss2.exceptions.SignatureDoesNotMatch) as rejected:
        bucket.put_object("db-backups/x.dump", b"x")

    assert rejected.value.status == 403


def test_sts_key_with_its_security_token_is_served(oss_server):
    oss_server.add_credentials("STS.l2c-fc-role", "sts-secret", security_token="tok")
    bucket = bucket_for(oss_server, auth=oss2.StsAuth("STS.l2c-fc-role", "sts-secret", "tok"))

    bucket.put_object("db-backups/sts.dump", b"sts")

    assert bucket.get_object("db-backups/sts.dump").read() == b"sts"


def test_sts_key_with_a_wrong_security_token_is_rejected_with_403(oss_server):
    oss_server.add_credentials("STS.l2c-fc-role", "sts-secret", security_token="tok")
    bucket = bucket_for(oss_server, auth=oss2.StsAuth("STS.l2c-fc-role", "sts-secret", "stale"))

    with pytest.raises(oss2.exceptions.ServerError) as rejected:
        bucket.put_object("db-backups/sts.dump", b"sts")

    assert rejected.value.status == 403


def test_sts_key_without_its_security_token_is_rejected_with_403(oss_server):
    oss_server.add_credentials("STS.l2c-fc-role", "sts-secret", security_token="tok")
    bucket = bucket_for(oss_server, auth=oss2.Auth("STS.l2c-fc-role", "sts-secret"))

    with pytest.raises(oss2.exceptions.ServerError) as rejected:
        bucket.put_object("db-backups/sts.dump", b"sts")

    assert rejected.value.status == 403


def test_v4_signed_sts_key_with_its_security_token_is_served(oss_server):
    oss_server.add_credentials("STS.l2c-fc-role", "sts-secret", security_token="tok")
    auth = oss2.StsAuth("STS.l2c-fc-role", "sts-secret", "tok", auth_version=oss2.AUTH_VERSION_4)
    bucket = bucket_for(oss_server, auth=auth, region=oss_server.region)

    bucket.put_object("db-backups/sts-v4.dump", b"sts")

    assert bucket.get_object("db-backups/sts-v4.dump").read() == b"sts"


def test_added_plain_key_pair_is_served(oss_server):
    oss_server.add_credentials("LTAI-operator", "operator-secret")
    bucket = bucket_for(oss_server, auth=oss2.Auth("LTAI-operator", "operator-secret"))

    bucket.put_object("db-backups/op.dump", b"op")

    assert bucket.get_object("db-backups/op.dump").read() == b"op"


def test_request_to_a_missing_bucket_raises_no_such_bucket(oss_server):
    missing = bucket_for(oss_server, name="no-such-bucket")

    with pytest.raises(oss2.exceptions.NoSuchBucket) as rejected:
        missing.put_object("db-backups/x.dump", b"x")

    assert rejected.value.status == 404


def test_get_of_a_missing_key_raises_no_such_key(bucket):
    with pytest.raises(oss2.exceptions.NoSuchKey) as rejected:
        bucket.get_object("db-backups/never-written.dump")

    assert rejected.value.status == 404


def test_part_upload_to_an_unknown_upload_id_raises_no_such_upload(bucket):
    with pytest.raises(oss2.exceptions.NoSuchUpload) as rejected:
        bucket.upload_part("db-backups/x.dump", "0123456789ABCDEF0123456789ABCDEF", 1, b"x")

    assert rejected.value.status == 404


def test_service_lists_the_servers_buckets(oss_server):
    oss_server.create_bucket("l2c-backups-dr")
    service = oss2.Service(
        oss2.Auth(oss_server.access_key_id, oss_server.access_key_secret), oss_server.endpoint
    )

    names = [b.name for b in service.list_buckets().buckets]

    assert names == sorted([BUCKET, "l2c-backups-dr"])
