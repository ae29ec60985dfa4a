"""Verify against real backups made by the backup code, then damaged in each way that
matters: each damage fails with its own reason, and the good one passes."""
import gzip
import json
import zlib

import pytest

from l2c_backup import config, reading, retry, verify as verify_mod
from l2c_backup.backup import run_backup
from l2c_backup.errors import BackupNotFound, StorageFailed
from l2c_backup.storage import open_storage
from l2c_backup.verify import check_object, verify
from l2c_local.oss import Fault


@pytest.fixture(scope="module")
def good_backup(pg_cluster, seeded_db, tmp_path_factory):
    """One real backup in a directory: its bytes and manifest, reused by every test."""
    root = tmp_path_factory.mktemp("verify-src")
    env = {"DATABASE_URL": pg_cluster.url(seeded_db), "BACKUP_TARGET": str(root)}
    (done,) = run_backup(config.load(env), "daily")["backups"]
    data = (root / done["key"]).read_bytes()
    doc = json.loads((root / (done["key"] + ".manifest.json")).read_bytes())
    return done["key"], data, doc


def store(storage, key, data, doc, manifest=True):
    storage.put_bytes(key, data)
    if manifest:
        storage.put_bytes(key + ".manifest.json", json.dumps(doc).encode())


def with_size(doc, data, sha=None):
    """The manifest a backup of exactly these bytes would have had."""
    import hashlib
    doc = json.loads(json.dumps(doc))
    doc["object"].update(size=len(data), sha256=sha or hashlib.sha256(data).hexdigest())
    return doc


def gz(text):
    return gzip.compress(text, mtime=0)


@pytest.fixture(params=["oss", "directory"])
def storage(request, tmp_path):
    if request.param == "directory":
        return open_storage(str(tmp_path / "dir"))
    server = request.getfixturevalue("oss_server")
    _, settings = config.storage_target({"OSS_ENDPOINT": server.endpoint,
                                         "OSS_BACKUP_BUCKET": "l2c-backups",
                                         "OSS_ACCESS_KEY_ID": server.access_key_id,
                                         "OSS_ACCESS_KEY_SECRET": server.access_key_secret})
    return open_storage("oss://l2c-backups/db-backups/", settings)


def test_a_good_backup_passes(storage, good_backup):
    key, data, doc = good_backup
    store(storage, key, data, doc)
    verdict = check_object(storage, key, 1)
    assert verdict.reason == "ok", verdict.detail
    assert verdict.members == doc["compression"]["members"] > 1
    assert verdict.sql_bytes == doc["sql_bytes"]


@pytest.mark.parametrize("fraction", [0.001, 0.37, 0.5, 0.93, 0.99999])
def test_a_truncated_backup_fails_as_truncated(storage, good_backup, fraction):
    key, data, doc = good_backup
    cut = data[:int(len(data) * fraction)]
    store(storage, key, cut, with_size(doc, cut))
    verdict = check_object(storage, key, 1)
    assert verdict.reason == "truncated", verdict.detail


def test_a_flipped_byte_in_the_middle_fails_the_gzip_check(storage, good_backup):
    key, data, doc = good_backup
    middle = len(data) // 2
    bad = data[:middle] + bytes([data[middle] ^ 0x55]) + data[middle + 1:]
    store(storage, key, bad, with_size(doc, bad))
    assert check_object(storage, key, 1).reason == "gzip-corrupt"


def test_valid_gzip_of_a_dump_cut_before_its_completion_marker_fails_as_incomplete(storage, good_backup):
    key, data, doc = good_backup
    sql = gzip.decompress(data)
    cut = gz(sql[:sql.rindex(b"-- PostgreSQL database dump complete")])
    store(storage, key, cut, with_size(doc, cut))
    assert check_object(storage, key, 1).reason == "incomplete-dump"


def test_a_checksum_differing_from_the_manifest_fails_as_sha256_mismatch(storage, good_backup):
    key, data, doc = good_backup
    store(storage, key, data, with_size(doc, data, sha="0" * 64))
    assert check_object(storage, key, 1).reason == "sha256-mismatch"


def test_trailing_garbage_after_the_gzip_fails(storage, good_backup):
    key, data, doc = good_backup
    bad = data + b"\x00\x00garbage"
    store(storage, key, bad, with_size(doc, bad))
    assert check_object(storage, key, 1).reason == "trailing-garbage"


def test_an_empty_object_fails_as_empty(storage, good_backup):
    key, _, doc = good_backup
    store(storage, key, b"", with_size(doc, b""))
    assert check_object(storage, key, 1).reason == "empty"


def test_a_non_gzip_object_fails_as_not_gzip(storage, good_backup):
    key, data, doc = good_backup
    plain = gzip.decompress(data)[:100_000]
    store(storage, key, plain, with_size(doc, plain))
    assert check_object(storage, key, 1).reason == "not-gzip"


def test_gzip_that_is_not_a_pg_dump_fails_as_not_a_dump(storage, good_backup):
    key, _, doc = good_backup
    other = gz(b"hello, this is not SQL\n" * 1000)
    store(storage, key, other, with_size(doc, other))
    assert check_object(storage, key, 1).reason == "not-a-dump"


def test_a_missing_manifest_is_waited_for_then_named(storage, good_backup):
    key, data, doc = good_backup
    store(storage, key, data, doc, manifest=False)
    assert check_object(storage, key, 1).reason == "manifest-missing"


def test_a_zip_bomb_is_inflated_with_bounded_memory():
    # 1 GiB of zeros deflates to ~1 MB: fed in one piece, output stays in MAX_OUT steps.
    bomb = zlib.compressobj(9, zlib.DEFLATED, 31)
    data = bomb.compress(b"\0" * (1 << 30)) + bomb.flush()
    check = reading.GzipStreamCheck()
    check.feed(data)
    assert check.sql_bytes == 1 << 30 and len(check.tail) <= reading.TAIL_KEEP


def test_verdicts_are_recorded_as_tags_and_a_verify_file_and_failures_alert_once(
        storage, good_backup, alerts_sent):
    key, data, doc = good_backup
    bad = data[:len(data) // 2]
    store(storage, key, bad, with_size(doc, bad))

    first = verify(storage, key, 1)
    again = verify(storage, key, 1)  # the same event delivered twice

    assert first.reason == again.reason == "truncated" and again.repeated
    assert storage.get_tags(key) == {"verify": "failed", "verify-reason": "truncated"}
    recorded = json.loads(b"".join(storage.open(key + ".verify.json")))
    assert recorded["reason"] == "truncated" and recorded["seconds"] >= 0
    assert [a.severity for a in alerts_sent] == ["urgent"]
    assert "truncated" in alerts_sent[0].text() and key in alerts_sent[0].text()


def test_a_new_object_under_the_same_key_is_checked_again(storage, good_backup, alerts_sent):
    key, data, doc = good_backup
    bad = data[:1000]
    store(storage, key, bad, with_size(doc, bad))
    assert verify(storage, key, 1).reason == "truncated"
    store(storage, key, data, doc)  # a later run replaced it (daily without manifest)
    assert verify(storage, key, 1).reason == "ok"
    assert storage.get_tags(key)["verify"] == "ok"


def test_verifying_a_key_that_does_not_exist_says_no_object_key_in_target(storage, alerts_sent):
    key = "db-backups/daily/backup_2020-01-01.sql.gz"

    with pytest.raises(BackupNotFound) as caught:
        verify(storage, key, 0)

    assert str(caught.value).splitlines()[0] == f"no object {key} in {storage.url}"
    assert caught.value.exit_code == 22
    assert storage.head(key + ".verify.json") is None and alerts_sent == []
    with pytest.raises(BackupNotFound):
        check_object(storage, key, 0)


# -- a connection dropped while verify reads (OSS) -------------------------------------

class KeyGet(Fault):
    """A fault on the plain GETs of one key (not its ?tagging, not its manifest)."""

    def __init__(self, key, **kwargs):
        super().__init__(method="GET", **kwargs)
        self.key = key

    def matches(self, method, bucket, key, params):
        return super().matches(method, bucket, key, params) and key == self.key and not params


@pytest.fixture
def oss(oss_server, oss_without_backoff):
    """The OSS storage, with the real retry policies minus their sleeps."""
    _, settings = config.storage_target({"OSS_ENDPOINT": oss_server.endpoint,
                                         "OSS_BACKUP_BUCKET": "l2c-backups",
                                         "OSS_ACCESS_KEY_ID": oss_server.access_key_id,
                                         "OSS_ACCESS_KEY_SECRET": oss_server.access_key_secret})
    return open_storage("oss://l2c-backups/db-backups/", settings)


def test_a_connection_dropped_mid_object_is_resumed_and_the_verdict_is_ok(
        oss, oss_server, good_backup, alerts_sent):
    key, data, doc = good_backup
    store(oss, key, data, doc)
    assert len(data) > 2 * reading.READ_SIZE, "the drop must fall mid-object"
    gets = oss_server.inject(KeyGet(key, skip=10**9, times=None))  # counts only
    drop = oss_server.inject(KeyGet(key, drop_response_after=len(data) // 2))
    have = len(data) // 2 // reading.READ_SIZE * reading.READ_SIZE  # whole chunks only
    # a second GET of the whole object would be cut again: only the rest fits
    oss_server.inject(KeyGet(key, skip=1, times=None, drop_response_after=len(data) - have))

    verdict = verify(oss, key, 1)

    assert verdict.reason == "ok", verdict.detail
    assert verdict.bytes == len(data) and verdict.sha256 == doc["object"]["sha256"]
    assert drop.hits == 1 and gets.seen == 2, "one drop, one ranged GET for the rest"
    assert oss.get_tags(key) == {"verify": "ok", "verify-reason": "ok"} and alerts_sent == []


def test_a_damaged_backup_read_through_a_dropped_connection_is_still_named_damaged(
        oss, oss_server, good_backup):
    key, data, doc = good_backup
    bad = data[:len(data) * 3 // 4]
    store(oss, key, bad, with_size(doc, bad))
    drop = oss_server.inject(KeyGet(key, drop_response_after=len(bad) // 3))

    assert check_object(oss, key, 1).reason == "truncated"
    assert drop.hits == 1


def test_drops_that_outlast_the_retries_are_one_storage_failed_line_and_no_verdict(
        oss, oss_server, good_backup, alerts_sent):
    key, data, doc = good_backup
    store(oss, key, data, doc)
    oss_server.inject(KeyGet(key, drop_response_after=len(data) // 2))
    again = oss_server.inject(KeyGet(key, drop_response_after=0, times=None))

    with pytest.raises(StorageFailed) as caught:
        verify(oss, key, 1)

    assert again.hits == retry.READ_ATTEMPTS
    message = str(caught.value).splitlines()[0]
    assert key in message and "l2c-backups" in message and oss_server.endpoint in message
    assert "dropped" in message and oss_server.access_key_secret not in str(caught.value)
    # a read that failed is no verdict: nothing recorded, no "verify failed" alert
    assert oss.get_tags(key) == {} and oss.head(key + ".verify.json") is None
    assert alerts_sent == []


# -- whole members through the fast engine (reading.py) -----------------------------------

def member_sizes_of(data):
    """The compressed size of each gzip member of `data`, found by zlib itself."""
    sizes, rest = [], data
    while rest:
        inflater = zlib.decompressobj(31)
        inflater.decompress(rest)
        sizes.append(len(rest) - len(inflater.unused_data))
        rest = inflater.unused_data
    return sizes


def with_members(doc, data, sizes=None):
    doc = json.loads(json.dumps(doc))
    doc["compression"]["member_sizes"] = member_sizes_of(data) if sizes is None else sizes
    return doc


def l2c_threads():
    import threading
    return [t for t in threading.enumerate() if t.name.startswith("l2c-")]


def test_a_manifest_that_lists_its_members_is_read_by_whole_members_with_the_same_verdict(
        storage, good_backup):
    key, data, doc = good_backup
    store(storage, key, data, with_members(doc, data))

    whole = check_object(storage, key, 1)
    stream = check_object(storage, key, 1, whole_members=False)

    assert whole.reason == stream.reason == "ok", whole.detail
    assert whole.extra["inflate"].startswith("whole members") and stream.extra["inflate"] == "zlib stream"
    assert (whole.members, whole.sql_bytes, whole.sha256, whole.crc64) == \
        (stream.members, stream.sql_bytes, stream.sha256, stream.crc64)
    assert whole.members == doc["compression"]["members"] and l2c_threads() == []


@pytest.mark.parametrize("damage, reason", [("flipped byte", "gzip-corrupt"),
                                            ("second member's magic", "trailing-garbage")])
def test_damage_read_by_whole_members_gets_the_streams_reason(storage, good_backup, damage, reason):
    key, data, doc = good_backup
    sizes = member_sizes_of(data)
    bad = bytearray(data)
    bad[len(data) // 2 if damage == "flipped byte" else sizes[0]] ^= 0x55
    store(storage, key, bytes(bad), with_members(with_size(doc, bytes(bad)), data))

    verdict = check_object(storage, key, 1)

    assert verdict.extra["inflate"].startswith("whole members")
    assert verdict.reason == reason == check_object(storage, key, 1, whole_members=False).reason


def test_member_sizes_that_do_not_fit_the_object_leave_the_verdict_to_the_stream(storage, good_backup):
    key, data, doc = good_backup
    cut = data[:len(data) * 2 // 3]
    store(storage, key, cut, with_members(with_size(doc, cut), data))  # the old list

    verdict = check_object(storage, key, 1)

    assert verdict.extra["inflate"] == "zlib stream" and verdict.reason == "truncated"


def test_an_intact_object_whose_manifest_lists_members_that_do_not_add_up_is_manifest_invalid(
        storage, good_backup):
    key, data, doc = good_backup
    store(storage, key, data, with_members(doc, data, member_sizes_of(data) + [100]))

    verdict = check_object(storage, key, 1)

    assert verdict.reason == "manifest-invalid" and "member_sizes" in verdict.detail
    assert verdict.extra["inflate"] == "zlib stream"


def test_a_member_larger_than_the_manifests_block_size_allows_is_refused(storage, good_backup):
    key, data, doc = good_backup
    small = with_members(doc, data)
    small["compression"]["block_size"] = 64 * 1024  # members hold 4 MiB: over twice that

    store(storage, key, data, small)
    verdict = check_object(storage, key, 1)

    assert verdict.reason == "member-too-large" and verdict.reason in verify_mod.REASONS
    assert l2c_threads() == []


def test_the_manifest_is_waited_for_before_reading_and_its_members_used(storage, good_backup):
    import threading
    key, data, doc = good_backup
    store(storage, key, data, doc, manifest=False)
    late = threading.Timer(1.5, store_manifest, (storage, key, with_members(doc, data)))
    late.start()
    try:
        verdict = check_object(storage, key, 10)
    finally:
        late.join()
    assert verdict.reason == "ok" and verdict.extra["inflate"].startswith("whole members")


def store_manifest(storage, key, doc):
    storage.put_bytes(key + ".manifest.json", json.dumps(doc).encode())


def test_a_read_that_fails_midway_leaves_no_thread_behind(oss, oss_server, good_backup):
    key, data, doc = good_backup
    store(oss, key, data, with_members(doc, data))
    oss_server.inject(KeyGet(key, drop_response_after=len(data) // 2))
    oss_server.inject(KeyGet(key, drop_response_after=0, times=None))

    with pytest.raises(StorageFailed):
        check_object(oss, key, 1)

    assert l2c_threads() == []
