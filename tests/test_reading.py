"""The reader behind verify, restore and mirror (reading.py): whole members through the
fast engine give the same SQL, in the same order, and the same verdicts as the zlib stream;
memory stays bounded (a gzip bomb, a huge member, a consumer that does not keep up); and no
thread outlives it, whatever stops it (an error, close(), a consumer that stops early, a
signal)."""
import os
import signal
import subprocess
import sys
import threading
import time
import zlib

import pytest

from l2c_backup import reading
from l2c_backup.compress import gzip_members
from l2c_backup.reading import Broken, ObjectReader, member_cap, member_sizes
from l2c_backup.signals import Stopped, stop_on_signals
from l2c_backup.storage import open_storage

BLOCK = 64 * 1024
HEADER = b"--\n-- PostgreSQL database dump\n--\n\nSET statement_timeout = 0;\n"
FOOTER = b"\n--\n-- PostgreSQL database dump complete\n--\n\n"


def sql_text(size):
    """pg_dump-like SQL of about `size` bytes that compresses a few times, not 100 times."""
    rows, n = [HEADER, b"COPY public.t (id, note) FROM stdin;\n"], 0
    total = 0
    while total < size:
        row = f"{n}\t{n * 7919 % 100003} note {n * n % 9973} {os.urandom(6).hex()}\n".encode()
        rows.append(row)
        total += len(row)
        n += 1
    rows += [b"\\.\n", FOOTER]
    return b"".join(rows)


def gz_members(sql, block=BLOCK):
    """(the object's bytes, the size of each member) as a backup writes them."""
    members = list(gzip_members([sql], 6, 2, block))
    return b"".join(members), [len(m) for m in members]


@pytest.fixture(scope="module")
def backup():
    sql = sql_text(3 * 1024 * 1024)
    data, sizes = gz_members(sql)
    assert len(sizes) > 20
    return sql, data, sizes


def chunks_of(data, size=100_000):
    return [data[i:i + size] for i in range(0, len(data), size)]


def l2c_threads():
    return [t for t in threading.enumerate() if t.name.startswith("l2c-")]


@pytest.fixture(autouse=True)
def no_thread_left_behind():
    yield
    deadline = time.monotonic() + 2  # a pool thread may still be on its way out
    while l2c_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert l2c_threads() == []


def read_all(data, sizes, cap=2 * BLOCK, workers=2, chunk=100_000):
    with ObjectReader(chunks_of(data, chunk), sizes, cap, workers=workers) as reader:
        sql = b"".join(reader)
        reader.finish()
    return reader, sql


@pytest.mark.parametrize("workers", [1, 2, 4])
@pytest.mark.parametrize("chunk", [1, 4096, 1 << 20], ids=["1 byte", "4 KiB", "1 MiB"])
def test_whole_members_give_the_sql_in_order_with_the_hash_of_the_bytes(backup, workers, chunk):
    sql, data, sizes = backup
    if chunk == 1:
        data, sizes = gz_members(sql[:200_000] + FOOTER, 4096)
        sql = sql[:200_000] + FOOTER
    reader, out = read_all(data, sizes, workers=workers, chunk=chunk)
    assert out == sql
    assert (reader.members, reader.sql_bytes, reader.bytes) == (len(sizes), len(sql), len(data))
    import hashlib
    assert reader.sha256 == hashlib.sha256(data).hexdigest()


def test_the_stream_path_gives_the_same_as_whole_members(backup):
    sql, data, sizes = backup
    whole, out_whole = read_all(data, sizes)
    stream, out_stream = read_all(data, None)
    assert out_whole == out_stream == sql
    assert (whole.members, whole.sha256, whole.bytes) == (stream.members, stream.sha256, stream.bytes)


def test_crc64_is_that_of_oss(backup, tmp_path):
    from oss2.utils import Crc64
    _, data, sizes = backup
    crc = Crc64(0)
    crc.update(data)
    with ObjectReader(chunks_of(data), sizes, 2 * BLOCK, crc64=True) as reader:
        reader.run()
    assert reader.crc64 == str(crc.crc)


def damaged(data, sizes, how):
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    bad = bytearray(data)
    if how == "flipped byte":
        bad[len(bad) // 2] ^= 0x55
    elif how == "first magic":
        bad[0] = 0x00
    elif how == "third magic":
        bad[starts[2]] = 0x00
    elif how == "trailer crc":
        bad[starts[5] - 6] ^= 0x01  # CRC32 of member 5
    return bytes(bad)


@pytest.mark.parametrize("how, reason", [
    ("flipped byte", "gzip-corrupt"), ("first magic", "not-gzip"),
    ("third magic", "trailing-garbage"), ("trailer crc", "gzip-corrupt")])
@pytest.mark.parametrize("path", ["whole members", "stream"])
def test_damage_is_named_alike_on_both_paths(backup, how, reason, path):
    sql, data, sizes = backup
    bad = damaged(data, sizes, how)
    with pytest.raises(Broken) as caught:
        read_all(bad, sizes if path == "whole members" else None)
    assert caught.value.reason == reason


def test_an_object_that_ends_before_its_listed_members_is_truncated(backup):
    _, data, sizes = backup
    with pytest.raises(Broken) as caught:
        read_all(data[:len(data) - 10], sizes)
    assert caught.value.reason == "truncated" and f"member {len(sizes)}" in caught.value.detail


def test_bytes_after_the_listed_members_are_trailing_garbage(backup):
    _, data, sizes = backup
    with pytest.raises(Broken) as caught:
        read_all(data + b"\x1f\x8bmore", sizes)
    assert caught.value.reason == "trailing-garbage"


def test_no_members_at_all_is_empty():
    with pytest.raises(Broken) as caught:
        read_all(b"", [])
    assert caught.value.reason == "empty"


def test_a_member_recorded_larger_than_the_cap_is_refused_before_a_byte_is_read(backup, tmp_path):
    _, data, sizes = backup
    storage = open_storage(str(tmp_path))
    storage.put_bytes("db-backups/x.sql.gz", data)
    opened = storage.open("db-backups/x.sql.gz")
    with pytest.raises(Broken) as caught:
        ObjectReader(opened, sizes[:3] + [10 * BLOCK] + sizes[3:], 2 * BLOCK)
    assert caught.value.reason == "member-too-large" and "member 4" in caught.value.detail
    with pytest.raises(StopIteration):  # the reading it was given is closed
        next(opened)


def test_a_member_that_says_it_holds_more_than_the_cap_is_refused():
    sql = HEADER + b"x" * (3 * BLOCK) + FOOTER  # one member, 3 blocks of SQL
    data, sizes = gz_members(sql, block=len(sql))
    with pytest.raises(Broken) as caught:
        read_all(data, sizes, cap=2 * BLOCK)
    assert caught.value.reason == "member-too-large"
    assert read_all(data, sizes, cap=4 * BLOCK)[1] == sql


BOMB_RUN = r"""
import sys
from l2c_backup.reading import Broken, ObjectReader
path, cap = sys.argv[1], int(sys.argv[2])
size = __import__("os").path.getsize(path)
def chunks():
    with open(path, "rb") as f:
        while data := f.read(1 << 20):
            yield data
try:
    with ObjectReader(chunks(), [size], cap) as reader:
        reader.run()
    print("read", reader.sql_bytes)
except Broken as broken:
    print(broken.reason)
# VmHWM, not ru_maxrss: that one keeps the forking parent's peak (pytest's) across exec
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print(int(hwm.split()[1]) // 1024)
"""


@pytest.mark.parametrize("isize", ["honest", "lying"])
def test_a_gzip_bomb_in_one_member_never_blows_memory(tmp_path, isize):
    # 1 GiB of zeros in one ~1 MB member. Its trailer says 1 GiB (refused at once), or,
    # patched, 1,000 bytes: then the engine must stop at the cap, not trust the trailer.
    bomb = zlib.compressobj(9, zlib.DEFLATED, 31)
    path = tmp_path / "bomb.gz"
    with open(path, "wb") as f:
        for _ in range(1024):
            f.write(bomb.compress(bytes(1 << 20)))
        f.write(bomb.flush())
    if isize == "lying":
        with open(path, "r+b") as f:
            f.seek(-4, os.SEEK_END)
            f.write((1000).to_bytes(4, "little"))
    cap = 8 << 20
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", BOMB_RUN, str(path), str(cap)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    verdict, peak_mb = done.stdout.split()
    assert verdict == ("member-too-large" if isize == "honest" else "gzip-corrupt")
    assert int(peak_mb) < 150, f"peak RSS {peak_mb} MB inflating a 1 GiB bomb"


# -- threads ------------------------------------------------------------------------------

class Failing:
    """A chunk source that fails after `good` chunks, as a storage read can (OSError)."""

    def __init__(self, data, good):
        self.chunks, self.good, self.closed = chunks_of(data), good, False

    def __iter__(self):
        for n, chunk in enumerate(self.chunks):
            if n == self.good:
                raise OSError("the connection dropped")
            yield chunk

    def close(self):
        self.closed = True


@pytest.mark.parametrize("path", ["whole members", "stream"])
def test_a_read_that_fails_midway_raises_after_the_sql_before_it_and_stops_every_thread(
        backup, path):
    sql, data, sizes = backup
    source = Failing(data, good=10)
    got = []
    with pytest.raises(OSError, match="dropped"):
        with ObjectReader(source, sizes if path == "whole members" else None, 2 * BLOCK) as r:
            for out in r:
                got.append(out)
    assert 0 < len(b"".join(got)) < len(sql) and sql.startswith(b"".join(got))
    assert source.closed


@pytest.mark.parametrize("path", ["whole members", "stream"])
def test_a_consumer_that_stops_early_stops_every_thread(backup, path):
    _, data, sizes = backup
    source = Failing(data, good=10**9)
    with ObjectReader(source, sizes if path == "whole members" else None, 2 * BLOCK) as reader:
        for _ in reader:
            break
    assert source.closed
    reader = ObjectReader(Failing(data, good=10**9), sizes, 2 * BLOCK)
    next(iter(reader))
    reader.close()  # without `with`
    assert l2c_threads() == []


def test_a_sink_that_fails_stops_every_thread(backup):
    _, data, sizes = backup

    def sink(sql):
        raise BrokenPipeError("psql went away")
    with pytest.raises(BrokenPipeError):
        with ObjectReader(chunks_of(data), sizes, 2 * BLOCK) as reader:
            reader.run(sink)


@pytest.mark.parametrize("path", ["whole members", "stream"])
def test_reading_ahead_is_bounded_when_the_consumer_does_not_keep_up(path):
    member = gz_members(HEADER + b"y" * 1000, 1 << 20)[0]
    pulled = [0]

    def endless():
        while True:
            pulled[0] += 1
            yield member
    workers = 2
    with ObjectReader(endless(), [len(member)] * 10**6 if path == "whole members" else None,
                      2 * BLOCK, workers=workers) as reader:
        next(iter(reader))
        time.sleep(0.5)
    # the read queue, the out queue, one chunk in each thread's hands
    assert pulled[0] <= reading.QUEUED_CHUNKS + max(2 * workers, reading.QUEUED_CHUNKS) + 3


def test_a_signal_while_waiting_for_bytes_stops_the_read_and_every_thread(backup):
    _, data, sizes = backup

    def slow():
        for chunk in chunks_of(data, 10_000):
            time.sleep(0.01)
            yield chunk
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    with pytest.raises(Stopped):
        with stop_on_signals():
            timer.start()
            with ObjectReader(slow(), sizes, 2 * BLOCK) as reader:
                reader.run()
    timer.join()


def test_a_signal_while_the_consumer_works_stops_every_thread(backup):
    _, data, sizes = backup
    with pytest.raises(Stopped):
        with stop_on_signals():
            with ObjectReader(chunks_of(data), sizes, 2 * BLOCK) as reader:
                for n, _ in enumerate(reader):
                    if n == 2:
                        os.kill(os.getpid(), signal.SIGINT)
                        time.sleep(5)  # the handler raises Stopped here


# -- what the manifest says ---------------------------------------------------------------

def test_member_sizes_are_used_only_when_they_add_up_to_the_object():
    doc = {"compression": {"format": "gzip", "level": 6, "member_sizes": [10, 20, 5]}}
    assert member_sizes(doc, 35) == [10, 20, 5]
    assert member_sizes(doc, 36) is None and member_sizes(doc, 34) is None
    assert member_sizes({"compression": {"format": "gzip", "level": 6}}, 35) is None
    assert member_sizes(None, 35) is None


def test_the_member_cap_is_twice_the_block_size_and_never_huge():
    assert member_cap({"compression": {"block_size": 4 << 20}}) == 8 << 20
    assert member_cap({}) == 2 * (4 << 20)
    assert member_cap({"compression": {"block_size": 1 << 40}}) == reading.MEMBER_CAP_CEILING
