"""Object-created notifications and replication on the local OSS server.

A notification is what FC's OSS trigger hands the verify function, so its bytes must decode
to the event FC delivers; replication is what copies backups to the disaster-recovery bucket.
"""

import json
import queue

import oss2
import pytest
import requests
from oss2.models import ReplicationRule

from l2c_local.oss import Fault
from oss_fixtures import BUCKET, PART_SIZE, bucket_for, md5_etag, upload_in_parts

KEY = "db-backups/orders/2024-05-01T0300Z.dump"
BODY = b"pg_dump custom format" * 100


@pytest.fixture
def events(oss_server):
    """Every event the server delivers for `l2c-backups`, decoded from the bytes it hands over."""
    delivered = []
    oss_server.subscribe(BUCKET, callback=lambda event: delivered.append(json.loads(event)))
    return delivered


def only_record(delivered):
    (event,) = delivered
    (record,) = event["events"]
    return record


def replicate_to(oss_server, bucket, target, **rule):
    oss_server.create_bucket(target)
    bucket.put_bucket_replication(
        ReplicationRule(
            rule_id="to-" + target,
            target_bucket_name=target,
            target_bucket_location="oss-" + oss_server.region,
            **rule,
        )
    )
    return bucket_for(oss_server, name=target)


def test_put_object_delivers_fcs_oss_trigger_event(oss_server, bucket, events):
    put = bucket.put_object(KEY, BODY)
    oss_server.wait_idle()

    record = only_record(events)

    assert record["eventName"] == "ObjectCreated:PutObject"
    assert record["eventSource"] == "acs:oss"
    assert record["eventVersion"] == "1.0"
    assert record["eventTime"]
    assert record["region"] == oss_server.region
    assert record["oss"]["ossSchemaVersion"] == "1.0"
    assert "ruleId" in record["oss"]
    assert record["oss"]["bucket"]["name"] == BUCKET
    assert record["oss"]["bucket"]["arn"].startswith("acs:oss:" + oss_server.region + ":")
    assert record["oss"]["bucket"]["arn"].endswith(":" + BUCKET)
    assert record["oss"]["bucket"]["ownerIdentity"]
    assert record["oss"]["object"]["key"] == KEY
    assert record["oss"]["object"]["size"] == len(BODY)
    assert record["oss"]["object"]["deltaSize"] == len(BODY)
    assert record["oss"]["object"]["eTag"] == put.etag
    assert record["requestParameters"]["sourceIPAddress"] == "127.0.0.1"
    assert record["responseElements"]["requestId"] == put.request_id
    assert record["userIdentity"]["principalId"]


def names_of(delivered):
    return [e["events"][0]["eventName"] for e in delivered]


def test_a_multipart_upload_delivers_initiate_every_part_and_complete_as_an_oss_trigger_counts_them(
    oss_server, bucket, events
):
    # FC's OSS trigger: every successful call is an ObjectCreated event, one invocation each
    # (a 12 MB upload in 5 MB parts: InitiateMultipartUpload, UploadPart x3, Complete...).
    parts = [b"a" * PART_SIZE, b"b" * 10]
    completed = upload_in_parts(bucket, KEY, parts)
    oss_server.wait_idle()

    assert names_of(events) == ["ObjectCreated:InitiateMultipartUpload", "ObjectCreated:UploadPart",
                                "ObjectCreated:UploadPart", "ObjectCreated:CompleteMultipartUpload"]
    initiate, first, second, complete = (e["events"][0]["oss"]["object"] for e in events)
    assert {o["key"] for o in (initiate, first, second, complete)} == {KEY}
    assert (initiate["size"], initiate["eTag"]) == (0, "")  # nothing exists yet
    assert (first["size"], first["eTag"]) == (PART_SIZE, md5_etag(parts[0]))
    assert (second["size"], second["eTag"]) == (10, md5_etag(parts[1]))
    assert complete["size"] == PART_SIZE + 10
    assert complete["eTag"] == completed.etag


def test_an_aborted_upload_delivers_its_initiate_and_part_events_only(oss_server, bucket, events):
    upload_id = bucket.init_multipart_upload(KEY).upload_id
    bucket.upload_part(KEY, upload_id, 1, b"a" * PART_SIZE)
    bucket.abort_multipart_upload(KEY, upload_id)
    oss_server.wait_idle()

    assert names_of(events) == ["ObjectCreated:InitiateMultipartUpload", "ObjectCreated:UploadPart"]


COMPLETING = ["oss:ObjectCreated:PutObject", "oss:ObjectCreated:PostObject",
              "oss:ObjectCreated:CopyObject", "oss:ObjectCreated:CompleteMultipartUpload"]


def test_a_subscription_to_the_completing_events_gets_one_event_per_object(oss_server, bucket):
    delivered = []
    oss_server.subscribe(BUCKET, callback=lambda e: delivered.append(json.loads(e)), events=COMPLETING)

    bucket.put_object(KEY, BODY)
    bucket.copy_object(BUCKET, KEY, KEY + ".copy")
    upload_in_parts(bucket, KEY + ".big", [b"a" * PART_SIZE, b"b" * PART_SIZE, b"c"])
    upload_id = bucket.init_multipart_upload(KEY + ".aborted").upload_id
    bucket.upload_part(KEY + ".aborted", upload_id, 1, b"a" * PART_SIZE)
    bucket.abort_multipart_upload(KEY + ".aborted", upload_id)
    oss_server.wait_idle()

    assert [(e["events"][0]["eventName"], e["events"][0]["oss"]["object"]["key"]) for e in delivered] == [
        ("ObjectCreated:PutObject", KEY), ("ObjectCreated:CopyObject", KEY + ".copy"),
        ("ObjectCreated:CompleteMultipartUpload", KEY + ".big")]


def test_a_subscription_to_one_event_name_gets_only_that_event(oss_server, bucket):
    delivered = []
    oss_server.subscribe(BUCKET, callback=lambda e: delivered.append(json.loads(e)),
                         events=["oss:ObjectCreated:UploadPart"])

    bucket.put_object(KEY, BODY)
    upload_in_parts(bucket, KEY + ".big", [b"a" * PART_SIZE, b"b"])
    oss_server.wait_idle()

    assert names_of(delivered) == ["ObjectCreated:UploadPart"] * 2


@pytest.mark.parametrize("events, says", [
    (["oss:ObjectCreated:Put"], "not an OSS trigger event"),
    (["ObjectCreated:PutObject"], "emits only oss:ObjectCreated"),
    (["oss:ObjectRemoved:DeleteObject"], "emits only oss:ObjectCreated"),
    ([], "non-empty list"),
    ("oss:ObjectCreated:*", "non-empty list"),
])
def test_event_names_a_trigger_would_refuse_or_the_server_never_emits_are_refused(
    oss_server, events, says
):
    with pytest.raises(ValueError, match=says):
        oss_server.subscribe(BUCKET, callback=print, events=events)
    assert oss_server.subscriptions == []


def test_the_control_endpoint_subscribes_with_an_events_filter(oss_server, bucket, event_receiver):
    def control(body):
        return requests.post(oss_server.endpoint + "/-/subscriptions", json=body, timeout=5)

    refused = control({"bucket": BUCKET, "url": event_receiver.url, "events": ["oss:ObjectCreated:Nope"]})
    assert refused.status_code == 400 and "not an OSS trigger event" in refused.json()["error"]
    ok = control({"bucket": BUCKET, "url": event_receiver.url,
                  "events": ["oss:ObjectCreated:CompleteMultipartUpload"]})
    assert ok.status_code == 200

    bucket.put_object(KEY, BODY)
    upload_in_parts(bucket, KEY, [b"a" * PART_SIZE, b"b"])
    oss_server.wait_idle()

    bodies = [json.loads(b) for b in event_receiver.drained()]
    assert names_of(bodies) == ["ObjectCreated:CompleteMultipartUpload"]


def test_a_subscription_without_events_gets_every_object_created_event_as_the_wildcard_does(
    oss_server, bucket, event_receiver
):
    requests.post(oss_server.endpoint + "/-/subscriptions",
                  json={"bucket": BUCKET, "url": event_receiver.url}, timeout=5).raise_for_status()

    upload_in_parts(bucket, KEY, [b"a" * PART_SIZE, b"b"])
    oss_server.wait_idle()

    assert len(event_receiver.drained()) == 4  # initiate, two parts, complete


def test_copy_object_delivers_a_copy_object_event(oss_server, bucket, events):
    bucket.put_object(KEY, BODY)
    bucket.copy_object(BUCKET, KEY, "db-backups/orders/weekly.dump")
    oss_server.wait_idle()

    names = [(e["events"][0]["eventName"], e["events"][0]["oss"]["object"]["key"]) for e in events]

    assert names == [
        ("ObjectCreated:PutObject", KEY),
        ("ObjectCreated:CopyObject", "db-backups/orders/weekly.dump"),
    ]


def test_delete_delivers_no_object_created_event(oss_server, bucket, events):
    bucket.put_object(KEY, BODY)
    bucket.delete_object(KEY)
    oss_server.wait_idle()

    assert [e["events"][0]["eventName"] for e in events] == ["ObjectCreated:PutObject"]


def test_subscription_honours_its_prefix_and_suffix(oss_server, bucket):
    delivered = []
    oss_server.subscribe(
        BUCKET, callback=delivered.append, prefix="db-backups/", suffix=".dump"
    )

    for key in ["db-backups/a.dump", "db-backups/a.json", "other/a.dump", "db-backups/x/b.dump"]:
        bucket.put_object(key, b"x")
    oss_server.wait_idle()

    keys = [json.loads(e)["events"][0]["oss"]["object"]["key"] for e in delivered]
    assert sorted(keys) == ["db-backups/a.dump", "db-backups/x/b.dump"]


def test_subscription_sees_only_its_own_bucket(oss_server, bucket, events):
    oss_server.create_bucket("l2c-scratch")
    bucket_for(oss_server, name="l2c-scratch").put_object(KEY, b"x")
    oss_server.wait_idle()

    assert events == []


def test_failed_put_delivers_nothing(oss_server, bucket, events):
    oss_server.inject(Fault(method="PUT", status=503, times=1))

    with pytest.raises(oss2.exceptions.ServerError):
        bucket.put_object(KEY, BODY)
    oss_server.wait_idle()

    assert events == []


def test_subscription_to_a_url_posts_the_event_json(oss_server, bucket, event_receiver):
    oss_server.subscribe(BUCKET, url=event_receiver.url)

    bucket.put_object(KEY, BODY)
    oss_server.wait_idle()

    record = json.loads(event_receiver.next_body())["events"][0]
    assert record["eventName"] == "ObjectCreated:PutObject"
    assert record["oss"]["object"]["key"] == KEY
    assert record["oss"]["object"]["size"] == len(BODY)


def test_url_subscription_with_prefix_posts_only_matching_keys(oss_server, bucket, event_receiver):
    oss_server.subscribe(BUCKET, url=event_receiver.url, prefix="db-backups/")

    bucket.put_object("tmp/a.dump", b"x")
    bucket.put_object(KEY, b"x")
    oss_server.wait_idle()

    first = json.loads(event_receiver.next_body())
    assert first["events"][0]["oss"]["object"]["key"] == KEY
    with pytest.raises(queue.Empty):
        event_receiver.next_body(timeout=0.2)


def test_replication_copies_a_new_object_to_the_target_bucket(oss_server, bucket):
    target = replicate_to(oss_server, bucket, "l2c-backups-dr")

    bucket.put_object(KEY, BODY, headers={"x-oss-meta-kind": "daily"})
    oss_server.wait_idle()

    assert target.get_object(KEY).read() == BODY
    assert target.head_object(KEY).headers["x-oss-meta-kind"] == "daily"


def test_replication_copies_a_completed_multipart_upload(oss_server, bucket):
    target = replicate_to(oss_server, bucket, "l2c-backups-dr")
    parts = [b"a" * PART_SIZE, b"b" * 10]

    upload_in_parts(bucket, KEY, parts)
    oss_server.wait_idle()

    assert target.get_object(KEY).read() == b"".join(parts)


def test_replication_honours_its_prefix_list(oss_server, bucket):
    target = replicate_to(oss_server, bucket, "l2c-backups-dr", prefix_list=["db-backups/"])

    bucket.put_object(KEY, BODY)
    bucket.put_object("tmp/scratch", b"x")
    oss_server.wait_idle()

    assert [o.key for o in target.list_objects_v2().object_list] == [KEY]


def test_replication_does_not_copy_objects_written_before_the_rule_when_history_is_off(
    oss_server, bucket
):
    bucket.put_object("db-backups/old.dump", b"old")
    target = replicate_to(
        oss_server, bucket, "l2c-backups-dr", is_enable_historical_object_replication=False
    )

    bucket.put_object(KEY, BODY)
    oss_server.wait_idle()

    assert [o.key for o in target.list_objects_v2().object_list] == [KEY]
