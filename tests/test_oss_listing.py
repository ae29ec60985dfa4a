"""Listing on the local OSS server: how prune, status and verify find backups."""

import oss2
import pytest

from oss_fixtures import md5_etag

DAILY = ["db-backups/orders/daily/2024-01-{:02d}.dump".format(day) for day in range(1, 26)]


@pytest.fixture
def daily_backups(bucket):
    for key in DAILY:
        bucket.put_object(key, key.encode())
    return DAILY


def every_page(bucket, **options):
    """Every ListObjectsV2 page, following continuation tokens until the listing ends."""
    pages = [bucket.list_objects_v2(**options)]
    while pages[-1].is_truncated:
        pages.append(
            bucket.list_objects_v2(continuation_token=pages[-1].next_continuation_token, **options)
        )
    return pages


def test_list_v2_returns_only_keys_under_the_prefix(bucket):
    for key in ["db-backups/orders/a.dump", "db-backups/users/b.dump", "db-backups-old/c.dump"]:
        bucket.put_object(key, b"x")

    listed = bucket.list_objects_v2(prefix="db-backups/orders/")

    assert [o.key for o in listed.object_list] == ["db-backups/orders/a.dump"]
    assert not listed.is_truncated


def test_list_v2_reports_each_objects_size_and_etag(bucket):
    bucket.put_object("db-backups/orders/a.dump", b"12345")

    (entry,) = bucket.list_objects_v2(prefix="db-backups/").object_list

    assert entry.size == 5
    assert entry.etag == md5_etag(b"12345")
    assert entry.last_modified > 0


def test_list_v2_of_an_empty_prefix_is_empty_not_an_error(bucket):
    listed = bucket.list_objects_v2(prefix="db-backups/nothing-here/")

    assert listed.object_list == [] and listed.prefix_list == []


def test_list_v2_with_delimiter_folds_subfolders_into_common_prefixes(bucket):
    for key in [
        "db-backups/manifest.json",
        "db-backups/orders/daily/1.dump",
        "db-backups/orders/weekly/1.dump",
        "db-backups/users/daily/1.dump",
    ]:
        bucket.put_object(key, b"x")

    listed = bucket.list_objects_v2(prefix="db-backups/", delimiter="/")

    assert [o.key for o in listed.object_list] == ["db-backups/manifest.json"]
    assert listed.prefix_list == ["db-backups/orders/", "db-backups/users/"]


def test_list_v2_pages_25_keys_as_10_10_5_following_continuation_tokens(bucket, daily_backups):
    pages = every_page(bucket, prefix="db-backups/", max_keys=10)

    assert [len(page.object_list) for page in pages] == [10, 10, 5]
    assert [page.is_truncated for page in pages] == [True, True, False]
    assert [o.key for page in pages for o in page.object_list] == daily_backups


def test_list_v2_counts_common_prefixes_against_max_keys(bucket):
    for database in ["a", "b", "c"]:
        bucket.put_object("db-backups/{}/1.dump".format(database), b"x")

    pages = every_page(bucket, prefix="db-backups/", delimiter="/", max_keys=2)

    assert [page.prefix_list for page in pages] == [
        ["db-backups/a/", "db-backups/b/"],
        ["db-backups/c/"],
    ]


def test_list_v2_start_after_skips_keys_up_to_and_including_it(bucket, daily_backups):
    listed = bucket.list_objects_v2(prefix="db-backups/", start_after=daily_backups[19])

    assert [o.key for o in listed.object_list] == daily_backups[20:]


def test_object_iterator_v2_yields_every_key_in_order(bucket, daily_backups):
    keys = [o.key for o in oss2.ObjectIteratorV2(bucket, prefix="db-backups/", max_keys=10)]

    assert keys == daily_backups


def test_object_iterator_v1_with_markers_yields_every_key_in_order(bucket, daily_backups):
    keys = [o.key for o in oss2.ObjectIterator(bucket, prefix="db-backups/", max_keys=7)]

    assert keys == daily_backups


def test_keys_are_listed_in_byte_order_of_their_utf8(bucket):
    keys = ["db-backups/Z", "db-backups/a", "db-backups/é", "db-backups/备份", "db-backups/0"]
    for key in keys:
        bucket.put_object(key, b"x")

    listed = [o.key for o in bucket.list_objects_v2(prefix="db-backups/").object_list]

    assert listed == sorted(keys, key=lambda k: k.encode("utf-8"))


def test_listing_returns_keys_with_url_special_characters_intact(bucket):
    # oss2 asks for encoding-type=url and decodes: a server that flags the encoding but does
    # not apply it turns "%41" into "A"; one that applies it twice leaves "%25" behind.
    keys = sorted(
        [
            "db-backups/a b.dump",
            "db-backups/a+b.dump",
            "db-backups/100%41.dump",
            "db-backups/q?.dump",
            "db-backups/h#.dump",
            "db-backups/amp&lt<gt>.dump",
            "db-backups/订单.dump",
        ],
        key=lambda k: k.encode("utf-8"),
    )
    for key in keys:
        bucket.put_object(key, b"x")

    listed = [o.key for o in oss2.ObjectIteratorV2(bucket, prefix="db-backups/", max_keys=3)]

    assert listed == keys


def test_listing_returns_a_key_holding_a_control_character_xml_cannot_carry(bucket):
    key = "db-backups/tab\tand\x01ctrl.dump"
    bucket.put_object(key, b"x")

    assert [o.key for o in bucket.list_objects_v2(prefix="db-backups/").object_list] == [key]


def test_common_prefixes_with_special_characters_are_decoded(bucket):
    bucket.put_object("db-backups/订单 库/1.dump", b"x")
    bucket.put_object("db-backups/a+b%/1.dump", b"x")

    listed = bucket.list_objects_v2(prefix="db-backups/", delimiter="/")

    assert sorted(listed.prefix_list) == sorted(["db-backups/订单 库/", "db-backups/a+b%/"])
