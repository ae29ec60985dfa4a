"""Injected faults, the HTTP control API and on-disk persistence of the local OSS server."""

import json
import time

import oss2
import pytest
import requests
from oss2.models import BucketVersioningConfig, Tagging, TaggingRule

from l2c_local.oss import Fault, LocalOSS
from oss_fixtures import BUCKET, TRANSPORT_ERRORS, bucket_for, retry_transient

KEY = "db-backups/orders/daily.dump"
BODY = bytes(range(256)) * 64  # 16 KiB


def read_whole(bucket, key):
    return bucket.get_object(key).read()


def test_response_dropped_mid_body_makes_oss2_raise_and_the_next_get_works(oss_server, bucket):
    bucket.put_object(KEY, BODY)
    fault = oss_server.inject(Fault(method="GET", drop_response_after=1000, times=1))

    with pytest.raises(TRANSPORT_ERRORS):
        read_whole(bucket, KEY)

    assert fault.hits == 1
    assert read_whole(bucket, KEY) == BODY


def test_request_dropped_mid_body_makes_oss2_raise_and_stores_nothing(oss_server, bucket):
    fault = oss_server.inject(Fault(method="PUT", drop_request_after=1000, times=1))

    with pytest.raises(TRANSPORT_ERRORS):
        bucket.put_object(KEY, BODY)

    assert fault.hits == 1
    assert not bucket.object_exists(KEY)
    bucket.put_object(KEY, BODY)
    assert read_whole(bucket, KEY) == BODY


def test_dropped_part_upload_is_retried_with_its_own_bytes(oss_server, bucket):
    fault = oss_server.inject(
        Fault(method="PUT", query="partNumber", drop_request_after=10, times=1)
    )
    upload_id = bucket.init_multipart_upload(KEY).upload_id

    part = retry_transient(lambda: bucket.upload_part(KEY, upload_id, 1, BODY))
    bucket.complete_multipart_upload(KEY, upload_id, [oss2.models.PartInfo(1, part.etag)])

    assert fault.hits == 1
    assert read_whole(bucket, KEY) == BODY


def test_access_denied_fault_on_a_prefix_denies_every_request_under_it_only(oss_server, bucket):
    bucket.put_object("secret/keys.json", b"{}")
    fault = oss_server.inject(
        Fault(status=403, code="AccessDenied", key_prefix="secret/", times=None)
    )

    for attempt in [
        lambda: bucket.get_object("secret/keys.json"),
        lambda: bucket.put_object("secret/other.json", b"{}"),
        lambda: bucket.delete_object("secret/keys.json"),
        lambda: bucket.get_object("secret/keys.json"),
    ]:
        with pytest.raises(oss2.exceptions.AccessDenied) as denied:
            attempt()
        assert denied.value.status == 403

    bucket.put_object("db-backups/open.dump", b"open")
    assert read_whole(bucket, "db-backups/open.dump") == b"open"
    assert fault.hits == 4


def test_fault_with_times_stops_after_that_many_requests(oss_server, bucket):
    bucket.put_object(KEY, BODY)
    fault = oss_server.inject(Fault(method="GET", status=503, times=2))

    for _ in range(2):
        with pytest.raises(oss2.exceptions.ServerError) as failed:
            read_whole(bucket, KEY)
        assert failed.value.status == 503

    assert read_whole(bucket, KEY) == BODY
    assert fault.hits == 2


def test_fault_with_skip_lets_the_first_matches_through(oss_server, bucket):
    bucket.put_object(KEY, BODY)
    fault = oss_server.inject(Fault(method="GET", status=503, skip=2, times=1))

    assert read_whole(bucket, KEY) == BODY
    assert read_whole(bucket, KEY) == BODY
    with pytest.raises(oss2.exceptions.ServerError):
        read_whole(bucket, KEY)
    assert read_whole(bucket, KEY) == BODY
    assert fault.hits == 1


def test_fault_matches_only_its_method(oss_server, bucket):
    fault = oss_server.inject(Fault(method="DELETE", status=503, times=None))

    bucket.put_object(KEY, BODY)
    assert read_whole(bucket, KEY) == BODY
    with pytest.raises(oss2.exceptions.ServerError):
        bucket.delete_object(KEY)

    assert fault.hits == 1


def test_fault_matches_only_its_bucket(oss_server, bucket):
    oss_server.create_bucket("l2c-scratch")
    scratch = bucket_for(oss_server, name="l2c-scratch")
    oss_server.inject(Fault(bucket="l2c-scratch", status=503, times=None))

    bucket.put_object(KEY, BODY)
    with pytest.raises(oss2.exceptions.ServerError):
        scratch.put_object(KEY, BODY)


def test_fault_matches_only_requests_carrying_its_sub_resource(oss_server, bucket):
    oss_server.inject(Fault(query="uploads", status=503, times=None))

    bucket.put_object(KEY, BODY)
    with pytest.raises(oss2.exceptions.ServerError):
        bucket.init_multipart_upload("db-backups/big.dump")


def test_injected_status_carries_the_injected_code(oss_server, bucket):
    oss_server.inject(Fault(method="PUT", status=500, code="InternalError", times=1))

    with pytest.raises(oss2.exceptions.ServerError) as failed:
        bucket.put_object(KEY, BODY)

    assert (failed.value.status, failed.value.code) == (500, "InternalError")


def test_cleared_faults_no_longer_apply(oss_server, bucket):
    oss_server.inject(Fault(status=503, times=None))

    oss_server.clear_faults()

    bucket.put_object(KEY, BODY)
    assert read_whole(bucket, KEY) == BODY


def test_delayed_request_still_succeeds_after_the_delay(oss_server, bucket):
    bucket.put_object(KEY, BODY)
    fault = oss_server.inject(Fault(method="GET", delay=0.3, times=1))

    started = time.monotonic()
    body = read_whole(bucket, KEY)

    assert body == BODY
    assert time.monotonic() - started >= 0.3
    assert fault.hits == 1


def test_health_endpoint_answers_200_without_a_signature(oss_server):
    assert requests.get(oss_server.endpoint + "/-/health", timeout=5).status_code == 200


def test_fault_posted_to_the_control_api_applies_to_the_next_request(oss_server, bucket):
    bucket.put_object(KEY, BODY)

    posted = requests.post(
        oss_server.endpoint + "/-/faults",
        json={"method": "GET", "key_prefix": "db-backups/", "status": 503, "times": 1},
        timeout=5,
    )

    assert posted.ok
    with pytest.raises(oss2.exceptions.ServerError) as failed:
        read_whole(bucket, KEY)
    assert failed.value.status == 503
    assert read_whole(bucket, KEY) == BODY


def test_access_denied_posted_to_the_control_api_carries_its_code(oss_server, bucket):
    requests.post(
        oss_server.endpoint + "/-/faults",
        json={"status": 403, "code": "AccessDenied", "key_prefix": "secret/", "times": None},
        timeout=5,
    ).raise_for_status()

    with pytest.raises(oss2.exceptions.AccessDenied):
        bucket.put_object("secret/x", b"x")
    bucket.put_object("db-backups/x", b"x")


def test_faults_deleted_through_the_control_api_no_longer_apply(oss_server, bucket):
    requests.post(
        oss_server.endpoint + "/-/faults", json={"status": 503, "times": None}, timeout=5
    ).raise_for_status()

    requests.delete(oss_server.endpoint + "/-/faults", timeout=5).raise_for_status()

    bucket.put_object(KEY, BODY)
    assert read_whole(bucket, KEY) == BODY


def test_subscription_posted_to_the_control_api_delivers_events(
    oss_server, bucket, event_receiver
):
    requests.post(
        oss_server.endpoint + "/-/subscriptions",
        json={"bucket": BUCKET, "url": event_receiver.url, "prefix": "db-backups/", "suffix": ""},
        timeout=5,
    ).raise_for_status()

    bucket.put_object(KEY, BODY)
    oss_server.wait_idle()

    record = json.loads(event_receiver.next_body())["events"][0]
    assert (record["eventName"], record["oss"]["object"]["key"]) == ("ObjectCreated:PutObject", KEY)


def test_unsigned_request_for_a_bucket_is_still_refused(oss_server):
    answer = requests.get("{}/{}/{}".format(oss_server.endpoint, BUCKET, KEY), timeout=5)

    assert answer.status_code == 403


def test_data_dir_keeps_buckets_objects_versions_and_tags_across_a_restart(tmp_path):
    with LocalOSS(data_dir=tmp_path, buckets=[BUCKET]) as first:
        bucket = bucket_for(first)
        bucket.put_bucket_versioning(BucketVersioningConfig(status="Enabled"))
        v1 = bucket.put_object(KEY, b"first").versionid
        v2 = bucket.put_object(KEY, BODY, headers={"x-oss-meta-kind": "daily"}).versionid
        rule = TaggingRule()
        rule.add("verified", "true")
        bucket.put_object_tagging(KEY, Tagging(rule))
        bucket.put_object("db-backups/订单 库.dump", b"unicode")

    with LocalOSS(data_dir=tmp_path) as second:
        bucket = bucket_for(second)

        assert [b.name for b in oss2.Service(bucket.auth, second.endpoint).list_buckets().buckets] == [
            BUCKET
        ]
        assert read_whole(bucket, KEY) == BODY
        assert bucket.head_object(KEY).headers["x-oss-meta-kind"] == "daily"
        assert bucket.get_object(KEY, params={"versionId": v1}).read() == b"first"
        assert [v.versionid for v in bucket.list_object_versions(prefix=KEY).versions] == [v2, v1]
        assert bucket.get_bucket_versioning().status == "Enabled"
        assert bucket.get_object_tagging(KEY).tag_set.tagging_rule == {"verified": "true"}
        assert read_whole(bucket, "db-backups/订单 库.dump") == b"unicode"


def test_data_dir_keeps_multipart_uploads_in_progress_across_a_restart(tmp_path):
    with LocalOSS(data_dir=tmp_path, buckets=[BUCKET]) as first:
        bucket = bucket_for(first)
        upload_id = bucket.init_multipart_upload(KEY).upload_id
        part = bucket.upload_part(KEY, upload_id, 1, BODY)

    with LocalOSS(data_dir=tmp_path) as second:
        bucket = bucket_for(second)
        bucket.complete_multipart_upload(KEY, upload_id, [oss2.models.PartInfo(1, part.etag)])

        assert read_whole(bucket, KEY) == BODY


def test_data_dir_keeps_a_locked_worm_policy_across_a_restart(tmp_path):
    with LocalOSS(data_dir=tmp_path, buckets=[BUCKET]) as first:
        bucket = bucket_for(first)
        bucket.put_object(KEY, BODY)
        bucket.complete_bucket_worm(bucket.init_bucket_worm(1).worm_id)

    with LocalOSS(data_dir=tmp_path) as second:
        bucket = bucket_for(second)

        assert bucket.get_bucket_worm().state == "Locked"
        with pytest.raises(oss2.exceptions.ServerError) as refused:
            bucket.delete_object(KEY)
        assert refused.value.code == "FileImmutable"


def test_in_memory_server_forgets_everything_when_stopped():
    with LocalOSS(buckets=[BUCKET]) as first:
        bucket_for(first).put_object(KEY, BODY)

    with LocalOSS(buckets=[BUCKET]) as second:
        assert not bucket_for(second).object_exists(KEY)
