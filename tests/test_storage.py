"""One suite, both storage backends: the contract in l2c_backup.storage.Storage."""
import pytest

from l2c_backup.storage import open_storage
from l2c_backup.storage.oss import OSSSettings


@pytest.fixture(params=["oss", "directory"])
def storage(request, tmp_path):
    if request.param == "directory":
        return open_storage(str(tmp_path / "backups"))
    server = request.getfixturevalue("oss_server")
    settings = OSSSettings(server.endpoint, server.access_key_id, server.access_key_secret,
                           min_part_size=1024 * 1024)
    return open_storage("oss://l2c-backups/db-backups", settings)


def test_a_stream_is_stored_whole_and_reads_back(storage):
    chunks = [bytes([i]) * 300_000 for i in range(10)]  # 3 MB: several 1 MiB parts on OSS
    stored = storage.put_stream("db-backups/manual/a.sql.gz", iter(chunks), 3_000_000)

    assert stored.size == 3_000_000 and stored.crc64
    assert b"".join(storage.open("db-backups/manual/a.sql.gz")) == b"".join(chunks)
    assert storage.head("db-backups/manual/a.sql.gz").size == 3_000_000


def test_a_failing_stream_leaves_nothing_behind(storage):
    def broken():
        yield b"x" * 2_500_000
        raise RuntimeError("pg_dump died")

    with pytest.raises(RuntimeError, match="pg_dump died"):
        storage.put_stream("db-backups/manual/b.sql.gz", broken())
    assert storage.head("db-backups/manual/b.sql.gz") is None
    assert [o.key for o in storage.list("db-backups/")] == []


def test_overwrite_false_never_replaces_an_existing_object(storage):
    storage.put_bytes("db-backups/manual/c.sql.gz", b"first")
    with pytest.raises(FileExistsError):
        storage.put_stream("db-backups/manual/c.sql.gz", iter([b"second"]), overwrite=False)
    with pytest.raises(FileExistsError):
        storage.put_bytes("db-backups/manual/c.sql.gz", b"third", overwrite=False)
    assert b"".join(storage.open("db-backups/manual/c.sql.gz")) == b"first"


def test_missing_objects_answer_none_or_file_not_found(storage):
    assert storage.head("db-backups/nope") is None
    with pytest.raises(FileNotFoundError):
        storage.open("db-backups/nope")


def test_list_is_in_key_order_under_the_prefix_and_delete_is_idempotent(storage):
    for key in ("db-backups/daily/b", "db-backups/daily/a", "db-backups/weekly/c", "other/d"):
        storage.put_bytes(key, key.encode())
    assert [o.key for o in storage.list("db-backups/daily/")] == ["db-backups/daily/a",
                                                                   "db-backups/daily/b"]
    storage.delete("db-backups/daily/a")
    storage.delete("db-backups/daily/a")
    assert [o.key for o in storage.list("db-backups/")] == ["db-backups/daily/b",
                                                             "db-backups/weekly/c"]


def test_an_empty_stream_is_a_stored_empty_object(storage):
    stored = storage.put_stream("db-backups/manual/empty", iter([]))
    assert stored.size == 0
    assert b"".join(storage.open("db-backups/manual/empty")) == b""


def test_tags_are_set_read_and_replaced(storage):
    storage.put_bytes("db-backups/daily/t.sql.gz", b"x")
    assert storage.get_tags("db-backups/daily/t.sql.gz") == {}
    storage.set_tags("db-backups/daily/t.sql.gz", {"verify": "ok", "verify-reason": "ok"})
    storage.set_tags("db-backups/daily/t.sql.gz", {"verify": "failed", "verify-reason": "truncated"})
    assert storage.get_tags("db-backups/daily/t.sql.gz") == {"verify": "failed",
                                                             "verify-reason": "truncated"}
    assert [o.key for o in storage.list("db-backups/")] == ["db-backups/daily/t.sql.gz"]
    with pytest.raises(FileNotFoundError):
        storage.set_tags("db-backups/daily/none.sql.gz", {"verify": "ok"})


def test_a_read_from_an_offset_starts_there_and_says_so(storage):
    data = bytes(range(256)) * 4000
    storage.put_bytes("db-backups/manual/r.sql.gz", data)
    etag = storage.head("db-backups/manual/r.sql.gz").etag.strip('"')

    with storage.open("db-backups/manual/r.sql.gz", 64 * 1024, offset=700_000) as reading:
        assert (reading.start, reading.etag) == (700_000, etag)
        assert b"".join(reading) == data[700_000:]
    # past the end (the object shrank since): all of it, and `start` says so
    reading = storage.open("db-backups/manual/r.sql.gz", offset=len(data) + 1)
    assert reading.start == 0 and b"".join(reading) == data


def test_tags_of_a_missing_object_are_file_not_found(storage):
    with pytest.raises(FileNotFoundError):
        storage.get_tags("db-backups/daily/none.sql.gz")
