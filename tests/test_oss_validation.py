"""The local OSS server refuses what OSS refuses: bad tags, keys, version ids and
lifecycle rules; and it honours conditional GET and HEAD headers."""

import oss2
import pytest
from oss2.models import (BucketLifecycle, LifecycleExpiration, LifecycleRule, StorageTransition,
                         Tagging, TaggingRule)

from oss_fixtures import BUCKET, bucket_for

KEY = "db-backups/daily/backup_2026-01-01.sql.gz"


def tagging(pairs):
    rule = TaggingRule()
    rule.tagging_rule.update(pairs)  # not rule.add(): oss2 checks lengths before sending
    return Tagging(rule)


def header(pairs):
    return {"x-oss-tagging": "&".join("{}={}".format(oss2.urlquote(k, ""), oss2.urlquote(v, ""))
                                      for k, v in pairs)}


GOOD_TAGS = [("verified", "true"), ("k" * 128, "v" * 256), ("a-b_c.d:e/f+g=h i", ""),
             ("n", "0")]
BAD_TAGS = {
    "key over 128 characters": [("k" * 129, "v")],
    "value over 256 characters": [("k", "v" * 257)],
    "empty key": [("", "v")],
    "character outside the allowed set": [("owner", "ops@example.com")],
    "eleven tags": [("t{}".format(n), "v") for n in range(11)],
}


def test_tags_within_the_documented_limits_are_kept(bucket):
    bucket.put_object(KEY, b"x", headers=header(GOOD_TAGS))

    assert bucket.get_object_tagging(KEY).tag_set.tagging_rule == dict(GOOD_TAGS)


@pytest.mark.parametrize("case", sorted(BAD_TAGS))
def test_bad_tags_in_x_oss_tagging_are_refused_and_nothing_is_stored(bucket, case):
    with pytest.raises(oss2.exceptions.ServerError) as refused:
        bucket.put_object(KEY, b"x", headers=header(BAD_TAGS[case]))

    assert (refused.value.status, refused.value.code) == (400, "InvalidTag")
    assert not bucket.object_exists(KEY)


@pytest.mark.parametrize("case", sorted(BAD_TAGS))
def test_bad_tags_in_put_tagging_are_refused_and_the_old_tags_stay(bucket, case):
    bucket.put_object(KEY, b"x", headers=header([("verified", "true")]))

    with pytest.raises(oss2.exceptions.ServerError) as refused:
        bucket.put_object_tagging(KEY, tagging(BAD_TAGS[case]))

    assert (refused.value.status, refused.value.code) == (400, "InvalidTag")
    assert bucket.get_object_tagging(KEY).tag_set.tagging_rule == {"verified": "true"}


def test_bad_tags_on_initiate_multipart_are_refused(bucket):
    with pytest.raises(oss2.exceptions.ServerError) as refused:
        bucket.init_multipart_upload(KEY, headers=header(BAD_TAGS["eleven tags"]))

    assert refused.value.code == "InvalidTag"
    assert bucket.list_multipart_uploads().upload_list == []


def test_a_key_of_1023_bytes_is_stored_and_one_of_1024_is_refused(bucket):
    longest = "db-backups/" + "é" * 506  # 11 + 1012 bytes of UTF-8
    assert len(longest.encode()) == 1023
    bucket.put_object(longest, b"x")

    with pytest.raises(oss2.exceptions.ServerError) as refused:
        bucket.put_object(longest + "x", b"x")

    assert bucket.get_object(longest).read() == b"x"
    assert (refused.value.status, refused.value.code) == (400, "InvalidObjectName")


@pytest.mark.parametrize("key", ["\\db-backups/x", "/db-backups/x"])
def test_a_key_starting_with_a_slash_or_backslash_is_refused(bucket, key):
    with pytest.raises(oss2.exceptions.ServerError) as refused:
        bucket.put_object(key, b"x")

    assert refused.value.code == "InvalidObjectName"


@pytest.fixture
def versioned(bucket):
    bucket.put_bucket_versioning(oss2.models.BucketVersioningConfig("Enabled"))
    return bucket


def test_an_unknown_version_id_is_no_such_version_everywhere(versioned):
    versioned.put_object(KEY, b"x")
    unknown = "CAEQMxiBgICA" + "A" * 20

    for call in (lambda: versioned.get_object(KEY, params={"versionId": unknown}),
                 lambda: versioned.get_object_tagging(KEY, params={"versionId": unknown}),
                 lambda: versioned.copy_object(BUCKET, KEY, "db-backups/copy",
                                               params={"versionId": unknown})):
        with pytest.raises(oss2.exceptions.ServerError) as missing:
            call()
        assert (missing.value.status, missing.value.code) == (404, "NoSuchVersion")
    with pytest.raises(oss2.exceptions.ServerError) as head:
        versioned.head_object(KEY, params={"versionId": unknown})
    assert (head.value.status, head.value.code) == (404, "NoSuchVersion")


@pytest.mark.parametrize("version_id", ["", "%%%QNRiBg", "not a version", "234"])
def test_a_malformed_version_id_is_invalid_argument(versioned, version_id):
    versioned.put_object(KEY, b"x")

    with pytest.raises(oss2.exceptions.ServerError) as refused:
        versioned.get_object(KEY, params={"versionId": version_id})

    assert (refused.value.status, refused.value.code) == (400, "InvalidArgument")


def lifecycle(*rules):
    return BucketLifecycle(list(rules))


BAD_RULES = {
    "zero days": LifecycleRule("r", "db-backups/", expiration=LifecycleExpiration(days=0)),
    "negative days": LifecycleRule("r", "db-backups/", expiration=LifecycleExpiration(days=-3)),
    "archive before ia": LifecycleRule("r", "db-backups/", storage_transitions=[
        StorageTransition(days=60, storage_class=oss2.BUCKET_STORAGE_CLASS_IA),
        StorageTransition(days=30, storage_class=oss2.BUCKET_STORAGE_CLASS_ARCHIVE)]),
    "expiry before transition": LifecycleRule(
        "r", "db-backups/", expiration=LifecycleExpiration(days=10),
        storage_transitions=[StorageTransition(days=30, storage_class=oss2.BUCKET_STORAGE_CLASS_IA)]),
    "unknown storage class": LifecycleRule("r", "db-backups/", storage_transitions=[
        StorageTransition(days=30, storage_class="Glacier")]),
}


def test_a_documented_lifecycle_rule_is_stored(bucket):
    rule = LifecycleRule("backups", "db-backups/", expiration=LifecycleExpiration(days=400),
                         storage_transitions=[
                             StorageTransition(days=30, storage_class=oss2.BUCKET_STORAGE_CLASS_IA),
                             StorageTransition(days=90, storage_class=oss2.BUCKET_STORAGE_CLASS_ARCHIVE)])

    bucket.put_bucket_lifecycle(lifecycle(rule))

    assert bucket.get_bucket_lifecycle().rules[0].expiration.days == 400


@pytest.mark.parametrize("case", sorted(BAD_RULES))
def test_lifecycle_rules_oss_rejects_are_refused(bucket, case):
    with pytest.raises(oss2.exceptions.ServerError) as refused:
        bucket.put_bucket_lifecycle(lifecycle(BAD_RULES[case]))

    assert (refused.value.status, refused.value.code) in ((400, "InvalidArgument"), (400, "MalformedXML"))
    with pytest.raises(oss2.exceptions.NoSuchLifecycle):
        bucket.get_bucket_lifecycle()


def test_days_and_created_before_date_together_are_refused(bucket):
    body = ("<LifecycleConfiguration><Rule><ID>r</ID><Prefix>db-backups/</Prefix>"
            "<Status>Enabled</Status><Expiration><Days>200</Days>"
            "<CreatedBeforeDate>2021-12-30T00:00:00.000Z</CreatedBeforeDate></Expiration>"
            "</Rule></LifecycleConfiguration>")

    with pytest.raises(oss2.exceptions.ServerError) as refused:
        bucket.put_bucket_lifecycle(body)

    assert (refused.value.status, refused.value.code) == (400, "InvalidArgument")


# -- conditional GET and HEAD -------------------------------------------------------

@pytest.fixture
def stored(bucket):
    result = bucket.put_object(KEY, b"conditional")
    meta = bucket.head_object(KEY)
    return bucket, '"{}"'.format(result.etag), meta.last_modified


def http_date(seconds):
    return oss2.utils.http_date(seconds)


def test_if_match_with_the_etag_serves_and_with_another_fails_412(stored):
    bucket, etag, _ = stored

    assert bucket.get_object(KEY, headers={"If-Match": etag}).read() == b"conditional"
    with pytest.raises(oss2.exceptions.PreconditionFailed):
        bucket.get_object(KEY, headers={"If-Match": '"0123456789ABCDEF0123456789ABCDEF"'})
    with pytest.raises(oss2.exceptions.PreconditionFailed):
        bucket.head_object(KEY, headers={"If-Match": '"0123456789ABCDEF0123456789ABCDEF"'})


def test_if_none_match_with_the_etag_is_304(stored):
    bucket, etag, _ = stored

    with pytest.raises(oss2.exceptions.NotModified):
        bucket.get_object(KEY, headers={"If-None-Match": etag})
    with pytest.raises(oss2.exceptions.NotModified):
        bucket.head_object(KEY, headers={"If-None-Match": etag})
    assert bucket.get_object(KEY, headers={"If-None-Match": '"other"'}).read() == b"conditional"


def test_if_modified_since_is_304_unless_modified_after(stored):
    bucket, _, modified = stored

    with pytest.raises(oss2.exceptions.NotModified):
        bucket.get_object(KEY, headers={"If-Modified-Since": http_date(modified)})
    got = bucket.get_object(KEY, headers={"If-Modified-Since": http_date(modified - 60)})
    assert got.read() == b"conditional"


def test_if_unmodified_since_is_412_when_modified_after(stored):
    bucket, _, modified = stored

    with pytest.raises(oss2.exceptions.PreconditionFailed):
        bucket.get_object(KEY, headers={"If-Unmodified-Since": http_date(modified - 60)})
    got = bucket.get_object(KEY, headers={"If-Unmodified-Since": http_date(modified)})
    assert got.read() == b"conditional"
