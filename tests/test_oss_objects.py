"""Objects on the local OSS server: bytes in and out, ranges, metadata, checksums, tags."""

import oss2
import pytest
from oss2.models import Tagging, TaggingRule

from oss_fixtures import BUCKET, bucket_for, crc64, md5_etag

DUMP = bytes(range(256)) * 40  # 10 KiB that is not text, like a pg_dump custom-format file


def chunks_of(data, size):
    """A generator of byte chunks: oss2 cannot know its length, so it sends it chunked."""
    for start in range(0, len(data), size):
        yield data[start:start + size]


def tags(**pairs):
    rule = TaggingRule()
    for key, value in pairs.items():
        rule.add(key, value)
    return Tagging(rule)


def test_put_bytes_then_get_returns_the_same_bytes(bucket):
    bucket.put_object("db-backups/orders/daily.dump", DUMP)

    assert bucket.get_object("db-backups/orders/daily.dump").read() == DUMP


def test_put_from_a_generator_is_sent_chunked_and_stored_whole(bucket):
    result = bucket.put_object("db-backups/orders/streamed.dump", chunks_of(DUMP, 1000))

    assert bucket.get_object("db-backups/orders/streamed.dump").read() == DUMP
    assert result.etag == md5_etag(DUMP)
    assert bucket.head_object("db-backups/orders/streamed.dump").content_length == len(DUMP)


def test_put_of_an_empty_body_stores_an_empty_object(bucket):
    bucket.put_object("db-backups/empty", b"")

    assert bucket.get_object("db-backups/empty").read() == b""
    assert bucket.head_object("db-backups/empty").content_length == 0


def test_put_overwrites_an_existing_key(bucket):
    bucket.put_object("db-backups/latest", b"first")
    bucket.put_object("db-backups/latest", b"second")

    assert bucket.get_object("db-backups/latest").read() == b"second"


def test_get_with_a_byte_range_returns_only_that_slice(bucket):
    bucket.put_object("db-backups/orders/daily.dump", DUMP)

    part = bucket.get_object("db-backups/orders/daily.dump", byte_range=(100, 199))

    assert part.status == 206
    assert part.read() == DUMP[100:200]
    assert part.content_range == "bytes 100-199/{}".format(len(DUMP))


def test_get_with_an_open_ended_range_returns_the_rest_of_the_object(bucket):
    bucket.put_object("db-backups/orders/daily.dump", DUMP)

    tail = bucket.get_object("db-backups/orders/daily.dump", byte_range=(len(DUMP) - 10, None))

    assert tail.read() == DUMP[-10:]


def test_head_reports_length_etag_and_user_metadata(bucket):
    put = bucket.put_object(
        "db-backups/orders/daily.dump",
        DUMP,
        headers={"x-oss-meta-kind": "daily", "x-oss-meta-database": "orders"},
    )

    head = bucket.head_object("db-backups/orders/daily.dump")

    assert head.content_length == len(DUMP)
    assert head.etag == put.etag
    assert head.headers["x-oss-meta-kind"] == "daily"
    assert head.headers["x-oss-meta-database"] == "orders"


def test_get_returns_the_user_metadata_too(bucket):
    bucket.put_object("db-backups/x.dump", b"x", headers={"x-oss-meta-verified": "true"})

    assert bucket.get_object("db-backups/x.dump").headers["x-oss-meta-verified"] == "true"


def test_head_of_a_missing_key_is_not_found(bucket):
    with pytest.raises(oss2.exceptions.NotFound) as missing:
        bucket.head_object("db-backups/never-written.dump")

    assert missing.value.status == 404
    assert not bucket.object_exists("db-backups/never-written.dump")


def test_etag_of_a_simple_put_is_the_upper_case_md5_hex_of_the_body(bucket):
    put = bucket.put_object("db-backups/x.dump", DUMP)

    assert put.etag == md5_etag(DUMP)
    assert bucket.head_object("db-backups/x.dump").etag == md5_etag(DUMP)


def test_crc64_header_matches_oss2s_crc64_of_the_body(bucket):
    put = bucket.put_object("db-backups/x.dump", DUMP)

    assert put.crc == crc64(DUMP)
    assert bucket.head_object("db-backups/x.dump").server_crc == crc64(DUMP)


def test_oss2_with_crc_checking_accepts_the_servers_crc64_on_put_and_get(oss_server):
    checked = bucket_for(oss_server, enable_crc=True)

    checked.put_object("db-backups/x.dump", DUMP)  # oss2 raises InconsistentError on a mismatch
    got = checked.get_object("db-backups/x.dump")
    body = got.read()

    assert body == DUMP
    assert got.client_crc == got.server_crc == crc64(DUMP)


def test_server_side_encryption_header_is_echoed_on_put_and_head(bucket):
    put = bucket.put_object(
        "db-backups/x.dump", DUMP, headers={"x-oss-server-side-encryption": "AES256"}
    )

    assert put.headers["x-oss-server-side-encryption"] == "AES256"
    head = bucket.head_object("db-backups/x.dump")
    assert head.headers["x-oss-server-side-encryption"] == "AES256"


def test_copy_object_duplicates_bytes_and_metadata_under_the_new_key(bucket):
    bucket.put_object("db-backups/daily.dump", DUMP, headers={"x-oss-meta-kind": "daily"})

    copied = bucket.copy_object(BUCKET, "db-backups/daily.dump", "db-backups/weekly.dump")

    assert bucket.get_object("db-backups/weekly.dump").read() == DUMP
    assert bucket.head_object("db-backups/weekly.dump").headers["x-oss-meta-kind"] == "daily"
    assert copied.etag == md5_etag(DUMP)
    assert bucket.get_object("db-backups/daily.dump").read() == DUMP


def test_copy_object_into_another_bucket_of_the_same_server(oss_server, bucket):
    oss_server.create_bucket("l2c-backups-archive")
    archive = bucket_for(oss_server, name="l2c-backups-archive")
    bucket.put_object("db-backups/daily.dump", DUMP)

    archive.copy_object(BUCKET, "db-backups/daily.dump", "db-backups/daily.dump")

    assert archive.get_object("db-backups/daily.dump").read() == DUMP


def test_copy_of_a_missing_source_raises_no_such_key(bucket):
    with pytest.raises(oss2.exceptions.NoSuchKey):
        bucket.copy_object(BUCKET, "db-backups/never-written.dump", "db-backups/copy.dump")


def test_delete_object_makes_the_key_disappear(bucket):
    bucket.put_object("db-backups/x.dump", b"x")

    bucket.delete_object("db-backups/x.dump")

    with pytest.raises(oss2.exceptions.NoSuchKey):
        bucket.get_object("db-backups/x.dump")


def test_delete_of_a_missing_key_succeeds_as_oss_does(bucket):
    result = bucket.delete_object("db-backups/never-written.dump")

    assert result.status == 204


def test_batch_delete_removes_every_listed_key_and_reports_each(bucket):
    # oss2 writes a control character as a character reference that XML 1.0 forbids; OSS reads it
    keys = ["db-backups/a.dump", "db-backups/b c.dump", "db-backups/备份.dump", "db-backups/f\x0c<x>.dump"]
    for key in keys:
        bucket.put_object(key, b"x")
    bucket.put_object("db-backups/kept.dump", b"x")

    result = bucket.batch_delete_objects(keys)

    assert sorted(result.deleted_keys) == sorted(keys)
    remaining = [o.key for o in bucket.list_objects_v2(prefix="db-backups/").object_list]
    assert remaining == ["db-backups/kept.dump"]


@pytest.mark.parametrize(
    "key",
    [
        "db-backups/orders db/daily 2024-01-01.dump",
        "db-backups/订单库/每日备份.dump",
        "db-backups/a+b=c.dump",
        "db-backups/100%/x%2F.dump",
        "db-backups/what?.dump",
        "db-backups/hash#tag.dump",
        "db-backups/all ?#+%&=;,@ 备份 at once.dump",
    ],
    ids=["spaces", "chinese", "plus", "percent", "question-mark", "hash", "everything"],
)
def test_keys_with_characters_that_need_escaping_round_trip(bucket, key):
    bucket.put_object(key, b"payload of " + key.encode())

    assert bucket.get_object(key).read() == b"payload of " + key.encode()
    assert bucket.head_object(key).content_length == len(b"payload of " + key.encode())
    assert [o.key for o in bucket.list_objects_v2(prefix="db-backups/").object_list] == [key]
    bucket.delete_object(key)
    assert not bucket.object_exists(key)


def test_object_tagging_can_be_put_read_and_deleted(bucket):
    bucket.put_object("db-backups/x.dump", b"x")

    bucket.put_object_tagging("db-backups/x.dump", tags(kind="daily", verified="true"))
    assert bucket.get_object_tagging("db-backups/x.dump").tag_set.tagging_rule == {
        "kind": "daily",
        "verified": "true",
    }

    bucket.delete_object_tagging("db-backups/x.dump")
    assert bucket.get_object_tagging("db-backups/x.dump").tag_set.tagging_rule == {}


def test_put_object_tagging_replaces_the_whole_tag_set(bucket):
    bucket.put_object("db-backups/x.dump", b"x")
    bucket.put_object_tagging("db-backups/x.dump", tags(kind="daily", verified="false"))

    bucket.put_object_tagging("db-backups/x.dump", tags(verified="true"))

    assert bucket.get_object_tagging("db-backups/x.dump").tag_set.tagging_rule == {
        "verified": "true"
    }


def test_tagging_header_on_put_object_sets_the_tags(bucket):
    bucket.put_object("db-backups/x.dump", b"x", headers={"x-oss-tagging": "a=1&b=2"})

    assert bucket.get_object_tagging("db-backups/x.dump").tag_set.tagging_rule == {
        "a": "1",
        "b": "2",
    }


def test_object_tags_with_spaces_and_chinese_round_trip(bucket):
    bucket.put_object("db-backups/x.dump", b"x")

    bucket.put_object_tagging("db-backups/x.dump", tags(database="订单 库"))

    assert bucket.get_object_tagging("db-backups/x.dump").tag_set.tagging_rule == {
        "database": "订单 库"
    }


def test_tagging_a_missing_key_raises_no_such_key(bucket):
    with pytest.raises(oss2.exceptions.NoSuchKey):
        bucket.put_object_tagging("db-backups/never-written.dump", tags(kind="daily"))


def test_overwriting_an_object_drops_its_old_tags(bucket):
    bucket.put_object("db-backups/x.dump", b"x", headers={"x-oss-tagging": "verified=true"})

    bucket.put_object("db-backups/x.dump", b"y")

    assert bucket.get_object_tagging("db-backups/x.dump").tag_set.tagging_rule == {}
