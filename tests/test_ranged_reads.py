"""Ranged reads at the storage seam: `open(key, offset=, length=)` hands on exactly the
bytes [offset, offset + length), on OSS (a Range GET with its end, also when a dropped
read resumes) and in a directory (stops at the end). A single-table restore reads one
section of a backup this way, so only that section may cross the network."""
import pytest

from l2c_backup.storage import open_storage
from l2c_backup.storage.oss import OSSSettings
from l2c_local.oss import Fault

BUCKET = "l2c-backups"
KEY = "db-backups/daily/backup_2026-01-20.sql.gz"
DATA = bytes(range(256)) * 12_000  # 3,072,000 bytes, every offset distinct mod 256
CHUNK = 64 * 1024

pytestmark = pytest.mark.usefixtures("oss_without_backoff")


def oss_settings(server):
    return OSSSettings(server.endpoint, server.access_key_id, server.access_key_secret,
                       min_part_size=1024 * 1024)


@pytest.fixture(params=["oss", "directory"])
def storage(request, tmp_path):
    if request.param == "directory":
        storage = open_storage(str(tmp_path / "backups"))
    else:
        server = request.getfixturevalue("oss_server")
        storage = open_storage(f"oss://{BUCKET}/db-backups", oss_settings(server))
    storage.put_bytes(KEY, DATA)
    return storage


@pytest.fixture
def oss(oss_server, bucket):
    bucket.put_object(KEY, DATA)
    return open_storage(f"oss://{BUCKET}/db-backups", oss_settings(oss_server))


class KeyGet(Fault):
    """A fault on the plain GETs of exactly KEY (not its ?tagging, not other keys)."""

    def matches(self, method, bucket, key, params):
        return super().matches(method, bucket, key, params) and key == KEY and not params


class Counted:
    """Every GET the OSS backend sends, and the bytes read from each real oss2 answer."""

    def __init__(self, storage, ignore_range=False):
        self.calls = []  # (byte_range asked, headers, status, Content-Range, bytes read)
        real = storage.reader.get_object

        def get_object(key, byte_range=None, headers=None, **kw):
            # ignore_range: the request goes out without its Range, and the server answers
            # 200 with the whole object, as OSS does with a range it does not accept
            result = real(key, byte_range=None if ignore_range else byte_range,
                          headers=headers, **kw)
            call = {"range": byte_range, "headers": dict(headers or {}), "status": result.status,
                    "content_range": result.headers.get("Content-Range", ""), "read": 0}
            self.calls.append(call)
            read = result.read

            def counting_read(amt=None):
                data = read(amt)
                call["read"] += len(data)
                return data
            result.read = counting_read
            return result
        storage.reader.get_object = get_object

    @property
    def read(self):
        return sum(call["read"] for call in self.calls)


RANGES = [(0, 1), (0, CHUNK), (1, CHUNK), (1_000_000, 5), (1_000_000, 3 * CHUNK + 7),
          (len(DATA) - 1, 1), (0, len(DATA))]


@pytest.mark.parametrize("offset,length", RANGES)
def test_a_range_is_exactly_its_bytes(storage, offset, length):
    with storage.open(KEY, CHUNK, offset=offset, length=length) as reading:
        assert reading.start == offset
        chunks = list(reading)
    assert b"".join(chunks) == DATA[offset:offset + length]
    assert all(len(c) <= CHUNK for c in chunks)


def test_a_range_past_the_end_of_the_object_brings_only_what_is_there(storage):
    # The caller counts: a section whose bytes run short is found by its length check.
    assert b"".join(storage.open(KEY, CHUNK, offset=len(DATA) - 10, length=100)) == DATA[-10:]
    past = storage.open(KEY, CHUNK, offset=len(DATA) + 10, length=100)
    assert past.start == len(DATA) + 10 and b"".join(past) == b""


def test_a_range_of_nothing_or_before_the_start_is_refused(storage):
    for offset, length in ((0, 0), (10, -1), (-1, 10), (-1, None)):
        with pytest.raises(ValueError):
            storage.open(KEY, CHUNK, offset=offset, length=length)


def test_a_missing_object_is_file_not_found_for_a_range_too(storage):
    with pytest.raises(FileNotFoundError):
        storage.open("db-backups/daily/none.sql.gz", CHUNK, offset=10, length=10)


def test_a_range_read_stopped_early_lets_go(storage):
    reading = storage.open(KEY, CHUNK, offset=100, length=len(DATA) - 100)
    assert next(reading) == DATA[100:100 + CHUNK]
    reading.close()


def test_reads_without_a_length_are_as_before(storage):
    assert b"".join(storage.open(KEY, CHUNK)) == DATA
    assert b"".join(storage.open(KEY, CHUNK, offset=1_000_000)) == DATA[1_000_000:]


# -- OSS: only the range crosses the network ------------------------------------------

def test_oss_sends_a_range_get_with_its_end_and_only_those_bytes_come(oss):
    counted = Counted(oss)
    offset, length = 1_000_000, 300_001
    assert b"".join(oss.open(KEY, CHUNK, offset=offset, length=length)) == \
        DATA[offset:offset + length]
    [call] = counted.calls
    assert call["range"] == (offset, offset + length - 1)
    assert call["status"] == 206
    assert call["content_range"] == f"bytes {offset}-{offset + length - 1}/{len(DATA)}"
    assert counted.read == length


def test_a_range_cut_short_on_oss_resumes_to_the_same_end_on_the_same_object(oss_server, oss):
    counted = Counted(oss)
    offset, length = 500_000, 2_000_000
    gets = oss_server.inject(KeyGet(method="GET", skip=10**9, times=None))  # counts only
    drop = oss_server.inject(KeyGet(method="GET", drop_response_after=700_000))

    data = b"".join(oss.open(KEY, CHUNK, offset=offset, length=length))

    assert data == DATA[offset:offset + length]
    assert drop.hits == 1 and gets.seen == 2
    first, resumed = counted.calls
    end = offset + length - 1
    assert first["range"] == (offset, end) and "If-Match" not in first["headers"]
    have = 700_000 // CHUNK * CHUNK  # whole chunks only: urllib3 drops the rest
    assert resumed["range"] == (offset + have, end)
    assert resumed["headers"]["If-Match"] == f'"{oss.head(KEY).etag}"'
    assert resumed["status"] == 206
    assert resumed["content_range"] == f"bytes {offset + have}-{end}/{len(DATA)}"
    assert counted.read == length  # nothing past the end, nothing twice


def test_a_range_resumes_as_often_as_bytes_keep_arriving(oss_server, oss):
    cut = oss_server.inject(KeyGet(method="GET", drop_response_after=300_000, times=None))
    counted = Counted(oss)
    offset, length = 123_457, 2_500_000
    assert b"".join(oss.open(KEY, CHUNK, offset=offset, length=length)) == \
        DATA[offset:offset + length]
    assert cut.hits >= 8 and len(counted.calls) == cut.hits
    assert {call["range"][1] for call in counted.calls} == {offset + length - 1}
    assert counted.read == length


def test_when_oss_ignores_the_range_the_reader_skips_to_it_and_stops_at_its_end(oss):
    counted = Counted(oss, ignore_range=True)
    offset, length = 1_000_000, 200_000
    assert b"".join(oss.open(KEY, CHUNK, offset=offset, length=length)) == \
        DATA[offset:offset + length]
    [call] = counted.calls
    assert call["status"] == 200
    # what it read: up to the range's end, not the rest of the object
    assert call["read"] == offset + length


def test_a_whole_object_answer_cut_short_resumes_and_still_stops_at_the_end(oss_server, oss):
    counted = Counted(oss, ignore_range=True)
    oss_server.inject(KeyGet(method="GET", drop_response_after=1_300_000))
    offset, length = 1_000_000, 700_000
    assert b"".join(oss.open(KEY, CHUNK, offset=offset, length=length)) == \
        DATA[offset:offset + length]
    first, resumed = counted.calls
    assert first["status"] == resumed["status"] == 200
    assert resumed["headers"]["If-Match"]
    # whole chunks only (urllib3 drops the rest), counted from the range's start
    have = offset + (1_300_000 - offset) // CHUNK * CHUNK
    assert first["read"] == have
    assert resumed["read"] == offset + length  # skipped to where it was, stopped at the end


def test_an_object_replaced_during_a_range_read_is_not_stitched_together(oss_server, bucket, oss):
    from l2c_backup.errors import StorageFailed
    oss_server.inject(KeyGet(method="GET", drop_response_after=200_000))
    reading = oss.open(KEY, CHUNK, offset=100_000, length=1_000_000)
    first = next(reading)
    bucket.put_object(KEY, b"z" * len(DATA))
    with pytest.raises(StorageFailed, match="changed while it was read"):
        for _ in reading:
            pass
    assert first == DATA[100_000:100_000 + CHUNK]
