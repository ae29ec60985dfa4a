"""The OSS backend's failures at the storage seam, against the local OSS server over HTTP:
every expected failure (wrong credentials, a dead endpoint, a missing bucket, 5xx and
dropped connections that outlast the retries) is one StorageFailed that names the
endpoint, the bucket and the key (or prefix) and says what to do, never a secret; the
seam's own contracts (None / FileNotFoundError / FileExistsError) are kept; a read cut
short resumes with a ranged GET from the last byte received."""
import socket

import pytest

from l2c_backup import retry
from l2c_backup.errors import ConfigInvalid, StorageFailed
from l2c_backup.storage import open_storage
from l2c_backup.storage.oss import OSSSettings
from l2c_local.oss import Fault

BUCKET = "l2c-backups"
PREFIX = "db-backups/"
KEY = "db-backups/daily/backup_2026-01-20.sql.gz"
NEW_KEY = "db-backups/daily/backup_2026-01-21.sql.gz"
WRONG_SECRET = "wrong-secret-Zx9QvT3mKp"


pytestmark = pytest.mark.usefixtures("oss_without_backoff")


def settings(server, endpoint=None, key_id=None, secret=None):
    return OSSSettings(endpoint or server.endpoint, key_id or server.access_key_id,
                       secret or server.access_key_secret, min_part_size=1024 * 1024)


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def stored(oss_server, bucket):
    """KEY (300 kB, tagged) in the bucket, read back through a working storage."""
    bucket.put_object(KEY, b"x" * 300_000)
    bucket.put_object_tagging(KEY, _tagging({"verify": "ok"}))
    return oss_server


def _tagging(tags):
    import oss2
    rule = oss2.models.TaggingRule()
    for k, v in tags.items():
        rule.add(k, v)
    return oss2.models.Tagging(rule)


# Each failure: (how to reach it, what the line must say beyond endpoint/bucket/key).
def wrong_secret(server):
    return open_storage(f"oss://{BUCKET}/{PREFIX}", settings(server, secret=WRONG_SECRET)), None


def wrong_key_id(server):
    return open_storage(f"oss://{BUCKET}/{PREFIX}", settings(server, key_id="LTAI5tUnknownKeyId")), None


def dead_endpoint(server):
    endpoint = f"http://{server.hostname}:{closed_port()}"
    return open_storage(f"oss://{BUCKET}/{PREFIX}", settings(server, endpoint=endpoint)), endpoint


def missing_bucket(server):
    return open_storage(f"oss://no-such-bucket/{PREFIX}", settings(server)), None


def unavailable_forever(server):
    server.inject(Fault(status=503, times=None))
    return open_storage(f"oss://{BUCKET}/{PREFIX}", settings(server)), None


def dropped_forever(server):
    server.inject(Fault(drop_request_after=0, times=None))
    return open_storage(f"oss://{BUCKET}/{PREFIX}", settings(server)), None


FAILURES = {
    wrong_secret: ("SignatureDoesNotMatch", "OSS_ACCESS_KEY_SECRET"),
    wrong_key_id: ("InvalidAccessKeyId", "OSS_ACCESS_KEY_ID"),
    dead_endpoint: ("connection refused", "OSS_ENDPOINT"),
    missing_bucket: ("NoSuchBucket", "OSS_BACKUP_BUCKET"),
    unavailable_forever: ("503", "again"),
    dropped_forever: ("dropped", "network"),
}

OPERATIONS = {
    "head": (KEY, lambda s: s.head(KEY)),
    "open": (KEY, lambda s: b"".join(s.open(KEY))),
    "list": (PREFIX, lambda s: list(s.list(PREFIX))),
    "put_bytes": (NEW_KEY, lambda s: s.put_bytes(NEW_KEY, b"manifest")),
    "put_stream": (NEW_KEY, lambda s: s.put_stream(NEW_KEY, iter([b"y" * 2_500_000]))),
    "put_bytes_no_overwrite": (NEW_KEY, lambda s: s.put_bytes(NEW_KEY, b"m", overwrite=False)),
    "delete": (KEY, lambda s: s.delete(KEY)),
    "get_tags": (KEY, lambda s: s.get_tags(KEY)),
    "set_tags": (KEY, lambda s: s.set_tags(KEY, {"verify": "failed"})),
}


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("failure", FAILURES, ids=lambda f: f.__name__)
def test_every_oss_failure_is_one_storage_failed_line_naming_endpoint_bucket_and_key(
        stored, failure, operation):
    storage, endpoint = failure(stored)
    subject, call = OPERATIONS[operation]
    cause, what_to_do = FAILURES[failure]

    with pytest.raises(StorageFailed) as caught:
        call(storage)

    err = caught.value
    text = str(err)
    message, _, hint = text.partition("\n  what to do: ")
    assert "\n" not in message and "\n" not in hint, text
    assert (endpoint or stored.endpoint) in message, text
    bucket = "no-such-bucket" if failure is missing_bucket else BUCKET
    assert bucket in message and subject in message, text
    assert cause in text and what_to_do in hint, text
    assert stored.access_key_secret not in text and WRONG_SECRET not in text
    assert err.exit_code == 21 and err.severity == "warning"
    assert err.__cause__ is None  # no oss2 chain to print under the line


def test_a_5xx_is_retried_by_the_policy_before_it_is_reported(stored):
    fault = stored.inject(Fault(method="HEAD", status=503, times=None))
    storage = open_storage(f"oss://{BUCKET}/{PREFIX}", settings(stored))
    with pytest.raises(StorageFailed, match="503"):
        storage.head(KEY)
    assert fault.hits == retry.ATTEMPTS


def test_a_permanent_refusal_is_not_retried(stored):
    fault = stored.inject(Fault(method="HEAD", status=403, code="AccessDenied", times=None))
    storage = open_storage(f"oss://{BUCKET}/{PREFIX}", settings(stored))
    with pytest.raises(StorageFailed, match="AccessDenied") as caught:
        storage.head(KEY)
    assert fault.hits == 1
    assert "bucket policy" in str(caught.value)


def test_a_passing_5xx_is_cured_by_the_retries(stored):
    stored.inject(Fault(status=503, times=2))
    storage = open_storage(f"oss://{BUCKET}/{PREFIX}", settings(stored))
    assert storage.head(KEY).size == 300_000
    assert [o.key for o in storage.list(PREFIX)] == [KEY]


def test_an_unresolvable_endpoint_says_the_name_does_not_resolve(stored):
    storage = open_storage(f"oss://{BUCKET}/{PREFIX}",
                           settings(stored, endpoint="http://oss-nowhere.invalid"))
    with pytest.raises(StorageFailed) as caught:
        storage.head(KEY)
    assert "oss-nowhere.invalid" in str(caught.value) and "resolve" in str(caught.value)
    assert "OSS_ENDPOINT" in str(caught.value)


# -- the contracts stay ------------------------------------------------------------------

def test_the_contracts_for_missing_objects_and_overwrites_stay(stored):
    storage = open_storage(f"oss://{BUCKET}/{PREFIX}", settings(stored))
    missing = "db-backups/daily/backup_2020-01-01.sql.gz"
    assert storage.head(missing) is None
    with pytest.raises(FileNotFoundError, match=missing):
        storage.open(missing)
    with pytest.raises(FileNotFoundError, match=missing):
        storage.get_tags(missing)
    with pytest.raises(FileNotFoundError, match=missing):
        storage.set_tags(missing, {"verify": "ok"})
    with pytest.raises(FileExistsError):
        storage.put_bytes(KEY, b"other", overwrite=False)
    with pytest.raises(FileExistsError):
        storage.put_stream(KEY, iter([b"other"]), overwrite=False)
    assert storage.delete(missing).key == missing


def test_a_delete_under_worm_is_object_locked_not_a_storage_failure(stored, bucket):
    from l2c_backup.storage import ObjectLocked
    bucket.complete_bucket_worm(bucket.init_bucket_worm(1).worm_id)
    storage = open_storage(f"oss://{BUCKET}/{PREFIX}", settings(stored))
    with pytest.raises(ObjectLocked):
        storage.delete(KEY)
    assert storage.head(KEY).size == 300_000


def test_a_missing_bucket_is_not_a_missing_object(stored):
    """HEAD of a key in a bucket that does not exist is a 404 too: not None."""
    storage = open_storage(f"oss://no-such-bucket/{PREFIX}", settings(stored))
    with pytest.raises(StorageFailed, match="NoSuchBucket"):
        storage.head(KEY)


# -- bucket names in targets -------------------------------------------------------------

@pytest.mark.parametrize("target", ["oss://", "oss:///x", "oss://Bad_Bucket/x", "oss://ab/x",
                                    "oss://-bucket/x", "oss://bucket-/x", "oss://" + "a" * 64 + "/x"])
def test_a_target_with_a_bad_bucket_name_is_refused_naming_the_value_and_the_rule(stored, target):
    with pytest.raises(ConfigInvalid) as caught:
        open_storage(target, settings(stored), origin="--to")
    text = str(caught.value)
    assert "--to" in text and target in text
    assert "3-63" in text and "lowercase letters, digits and hyphens" in text
    assert caught.value.exit_code == 2


def test_a_good_bucket_name_is_accepted():
    storage = open_storage("oss://l2c-backups-dr1/x", OSSSettings("http://oss.invalid", "id", "s"))
    assert storage.url == "oss://l2c-backups-dr1/x/"


# -- reads resume ------------------------------------------------------------------------

class KeyGet(Fault):
    """A fault on the plain GETs of exactly KEY (not its ?tagging, not other keys)."""

    def matches(self, method, bucket, key, params):
        return super().matches(method, bucket, key, params) and key == KEY and not params


DATA = bytes(range(256)) * 12_000  # 3,072,000 bytes, every offset distinct mod 256
CHUNK = 64 * 1024


@pytest.fixture
def big(oss_server, bucket):
    bucket.put_object(KEY, DATA)
    return open_storage(f"oss://{BUCKET}/{PREFIX}", settings(oss_server))


def test_a_read_cut_short_resumes_from_the_last_byte_received_with_a_ranged_get(oss_server, big):
    gets = oss_server.inject(KeyGet(method="GET", skip=10**9, times=None))  # counts only
    drop = oss_server.inject(KeyGet(method="GET", drop_response_after=1_500_000))
    # What the first GET delivered before the drop: whole chunks only (urllib3 drops the rest).
    have = 1_500_000 // CHUNK * CHUNK
    # A second GET of the whole object would be cut here and need a third: only the rest fits.
    oss_server.inject(KeyGet(method="GET", skip=1, times=None, drop_response_after=len(DATA) - have))

    assert b"".join(big.open(KEY, CHUNK)) == DATA
    assert drop.hits == 1 and gets.seen == 2


def test_a_read_resumes_as_often_as_bytes_keep_arriving(oss_server, big):
    cut = oss_server.inject(KeyGet(method="GET", drop_response_after=400_000, times=None))
    assert b"".join(big.open(KEY, CHUNK)) == DATA
    assert cut.hits > retry.READ_ATTEMPTS  # each drop brought bytes: the count started again


def test_drops_that_outlast_the_retries_end_in_one_storage_failed_line(oss_server, big):
    oss_server.inject(KeyGet(method="GET", drop_response_after=1_000_000))
    again = oss_server.inject(KeyGet(method="GET", drop_response_after=0, times=None))

    with pytest.raises(StorageFailed) as caught:
        b"".join(big.open(KEY, CHUNK))

    assert again.hits == retry.READ_ATTEMPTS
    text = str(caught.value)
    assert KEY in text and BUCKET in text and oss_server.endpoint in text and "dropped" in text
    assert oss_server.access_key_secret not in text


def test_an_object_replaced_between_attempts_is_not_stitched_together(oss_server, bucket, big):
    oss_server.inject(KeyGet(method="GET", drop_response_after=1_000_000))
    reading = big.open(KEY, CHUNK)
    first = next(reading)
    bucket.put_object(KEY, b"z" * len(DATA))  # a new object under the key, same size

    with pytest.raises(StorageFailed, match="changed while it was read"):
        for _ in reading:
            pass
    assert first == DATA[:CHUNK]


def test_a_read_from_an_offset_says_where_its_bytes_begin(oss_server, big):
    reading = big.open(KEY, CHUNK, offset=1_000_000)
    assert reading.start == 1_000_000 and reading.etag == big.head(KEY).etag.strip('"')
    assert b"".join(reading) == DATA[1_000_000:]
    past_the_end = big.open(KEY, CHUNK, offset=len(DATA) + 10)
    assert past_the_end.start == 0 and b"".join(past_the_end) == DATA


def test_a_first_answer_that_drops_every_time_is_one_storage_failed_line(oss_server, big):
    cut = oss_server.inject(KeyGet(method="GET", drop_response_after=100, times=None))
    with pytest.raises(StorageFailed) as caught:
        big.open(KEY, CHUNK)
    assert cut.hits == retry.READ_ATTEMPTS
    assert "dropped" in str(caught.value) and KEY in str(caught.value)


def test_a_request_oss2_refuses_to_send_is_named_as_such(stored):
    storage = open_storage(f"oss://{BUCKET}/{PREFIX}", settings(stored))
    with pytest.raises(StorageFailed) as caught:
        storage.head("")  # oss2: "The key is invalid" (a ClientError), nothing was sent
    assert "ClientError" in str(caught.value) and "cannot be reached" not in str(caught.value)
