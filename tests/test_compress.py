"""gzip_members: pg_dump's stream in, independent gzip members out, in order, bounded memory."""
import functools
import gzip
import itertools
import math
import os
import random
import shutil
import string
import subprocess
import threading
import tracemalloc
import zlib

import pytest

from l2c_backup.compress import default_workers, gzip_members

KB = 1024
MB = 1024 * KB
needs_gunzip = pytest.mark.skipif(shutil.which("gunzip") is None, reason="gunzip not installed")


@functools.lru_cache(maxsize=None)
def dump_text(size, seed=0):
    """Rows shaped like a plain pg_dump COPY block, from a Zipf-weighted vocabulary (gzips ~3:1)."""
    rng = random.Random(seed)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 11)))
             for _ in range(3000)]
    zipf = list(itertools.accumulate(1 / rank for rank in range(1, len(words) + 1)))
    rows, total, row_id = [], 0, 0
    while total < size:
        row_id += 1
        row = (f"{row_id}\t{' '.join(rng.choices(words, cum_weights=zipf, k=rng.randint(2, 12)))}\t"
               f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}\t"
               f"{rng.random() * 1000:.2f}\n").encode()
        rows.append(row)
        total += len(row)
    return b"".join(rows)[:size]


def chunked(data, size):
    return (data[i:i + size] for i in range(0, len(data), size))


def split_members(compressed):
    """Decompress member by member; fails if any member is incomplete."""
    members = []
    while compressed:
        member = zlib.decompressobj(31)
        members.append(member.decompress(compressed))
        assert member.eof, "truncated gzip member"
        compressed = member.unused_data
    return members


def gzip_threads():
    return [t for t in threading.enumerate() if t.name.startswith("l2c-gzip")]


def check_bounded_read_ahead(source, workers, block_size, chunk_size, level=6,
                             keep_output=True):
    """Each time a member reaches the consumer, count blocks read but not yet handed over."""
    read = 0

    def counted(chunks):
        nonlocal read
        for chunk in chunks:
            assert len(chunk) == chunk_size  # whole chunks per block keep the count exact
            read += len(chunk)
            yield chunk

    handed_over, max_in_flight, output = 0, 0, []
    for member in gzip_members(counted(source), level=level, workers=workers,
                               block_size=block_size):
        in_flight = math.ceil(read / block_size) - handed_over  # includes `member`
        max_in_flight = max(max_in_flight, in_flight)
        handed_over += 1
        if keep_output:
            output.append(member)
    assert handed_over == math.ceil(read / block_size)
    assert max_in_flight <= 2 * workers + 1
    if keep_output:
        assert len(split_members(b"".join(output))) == handed_over


def test_round_trip_across_block_boundaries():
    data = dump_text(5 * MB + 12345)
    compressed = b"".join(gzip_members(chunked(data, 64 * KB), block_size=1 * MB))
    assert gzip.decompress(compressed) == data
    assert len(compressed) < len(data) / 2.5


@needs_gunzip
def test_gunzip_reads_the_joined_members_as_one_file(tmp_path):
    data = dump_text(5 * MB + 12345)
    path = tmp_path / "dump.sql.gz"
    path.write_bytes(b"".join(gzip_members(chunked(data, 64 * KB), block_size=1 * MB)))
    subprocess.run(["gunzip", "-t", str(path)], check=True)
    assert subprocess.run(["gunzip", "-c", str(path)], check=True,
                          stdout=subprocess.PIPE).stdout == data


def test_each_block_becomes_one_complete_member_with_mtime_zero():
    data = dump_text(3 * MB + 100)
    members = list(gzip_members(chunked(data, 50_000), block_size=1 * MB))
    assert len(members) == 4
    for member in members:
        assert member[:4] == b"\x1f\x8b\x08\x00"  # magic, deflate, no flags
        assert member[4:8] == b"\0\0\0\0"  # mtime 0: same input, same bytes
    assert [len(m) for m in split_members(b"".join(members))] == [MB, MB, MB, 100]


def test_order_is_kept_with_four_workers_and_tiny_blocks():
    data = b"".join(b"row %06d\n" % i for i in range(20_000))
    members = list(gzip_members(chunked(data, 777), workers=4, block_size=1000))
    assert len(members) == math.ceil(len(data) / 1000)
    assert split_members(b"".join(members)) == list(chunked(data, 1000))


def test_output_depends_only_on_input_not_on_workers():
    data = dump_text(2 * MB)
    one = b"".join(gzip_members(chunked(data, 64 * KB), workers=1, block_size=256 * KB))
    four = b"".join(gzip_members(chunked(data, 64 * KB), workers=4, block_size=256 * KB))
    again = b"".join(gzip_members(chunked(data, 64 * KB), workers=4, block_size=256 * KB))
    assert one == four == again


@needs_gunzip
def test_empty_input_gives_one_valid_empty_member(tmp_path):
    members = list(gzip_members(iter([])))
    assert len(members) == 1
    assert gzip.decompress(members[0]) == b""
    path = tmp_path / "empty.sql.gz"
    path.write_bytes(members[0])
    subprocess.run(["gunzip", "-t", str(path)], check=True)


def test_empty_chunks_are_ignored():
    assert list(gzip_members([b"", b""])) == list(gzip_members([]))
    assert gzip.decompress(b"".join(gzip_members([b"", b"abc", b""]))) == b"abc"


def test_one_byte_chunks_are_reblocked():
    data = dump_text(10_000, seed=1)
    members = list(gzip_members((data[i:i + 1] for i in range(len(data))), block_size=1024))
    assert len(members) == 10
    assert gzip.decompress(b"".join(members)) == data


def test_one_huge_chunk_is_split_into_blocks():
    data = dump_text(9 * MB + 1)
    members = list(gzip_members([data], block_size=1 * MB))
    assert [len(m) for m in split_members(b"".join(members))] == [MB] * 9 + [1]


def test_input_of_exact_blocks_has_no_empty_trailing_member():
    data = dump_text(2 * MB)
    members = list(gzip_members([bytearray(data[:MB]), memoryview(data)[MB:]], block_size=MB))
    assert len(members) == 2
    assert gzip.decompress(b"".join(members)) == data


def test_each_member_is_the_deflate_engines_member_of_its_block():
    """The members come from deflate_engine (libdeflate here), block by block."""
    from l2c_backup import deflate_engine
    data = dump_text(2 * MB + 100)
    members = list(gzip_members(chunked(data, 64 * KB), level=5, workers=2, block_size=MB))
    assert members == [deflate_engine.gzip_member(block, 5) for block in chunked(data, MB)]


@pytest.mark.parametrize("level", [0, 1, 9, 12])
def test_any_level_from_0_to_12_gives_a_valid_stream(level):
    # 10-12 are libdeflate's slowest levels; zlib (the fallback) treats them as 9
    data = dump_text(2 * MB)
    compressed = b"".join(gzip_members(chunked(data, 64 * KB), level=level, block_size=MB))
    assert gzip.decompress(compressed) == data


def test_level_9_is_no_larger_than_level_1():
    data = dump_text(2 * MB)
    fast = b"".join(gzip_members([data], level=1, block_size=MB))
    best = b"".join(gzip_members([data], level=9, block_size=MB))
    assert len(best) <= len(fast)


@pytest.mark.parametrize("level", [-1, 13])
def test_level_out_of_range_is_refused_at_the_call(level):
    with pytest.raises(ValueError, match="level"):
        gzip_members([b"x"], level=level)  # not iterated: refused before any work


def test_input_error_reaches_the_consumer_and_the_threads_exit():

    def dying_dump():
        for chunk in chunked(dump_text(2 * MB), 64 * KB):
            yield chunk
        raise RuntimeError("pg_dump exited with status 1")

    received = []
    with pytest.raises(RuntimeError, match="pg_dump exited"):
        for member in gzip_members(dying_dump(), workers=2, block_size=64 * KB):
            received.append(member)
    # Members already compressed for blocks in flight are dropped, never yielded.
    assert len(received) < 2 * MB // (64 * KB)
    assert gzip_threads() == []  # (not active_count: other tests' threads come and go)


def test_closing_the_generator_early_stops_the_pool():
    data = dump_text(256 * KB)
    read = 0

    def endless_dump():
        nonlocal read
        while True:
            read += 1
            yield data

    members = gzip_members(endless_dump(), workers=2, block_size=64 * KB)
    for _ in range(5):
        next(members)
    assert gzip_threads()
    members.close()
    assert gzip_threads() == []  # (not active_count: other tests' threads come and go)
    assert next(members, None) is None
    # Only the bounded read-ahead was pulled from the source, never the endless rest.
    assert read * len(data) <= (5 + 2 * 2 + 1) * 64 * KB + len(data)


@pytest.mark.parametrize("workers", [1, 3])
def test_reads_at_most_two_blocks_per_worker_ahead(workers):
    check_bounded_read_ahead(chunked(dump_text(2 * MB), 8 * KB), workers, block_size=32 * KB,
                             chunk_size=8 * KB)


def test_memory_stays_bounded_on_a_200_mb_stream():
    base, chunk_size, total = dump_text(1 * MB, seed=2), 256 * KB, 200 * MB

    def big_dump():  # generated per chunk; the 200 MB never exist at once
        for n in range(total // chunk_size):
            offset = (n * 104_729) % (len(base) - chunk_size)
            yield base[offset:offset + chunk_size]

    tracemalloc.start()
    try:
        check_bounded_read_ahead(big_dump(), workers=2, block_size=MB, chunk_size=chunk_size,
                                 level=1, keep_output=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * MB  # ~2 blocks per worker in and out, plus one block being filled



def test_default_workers_fit_the_cpus_this_process_may_use():
    assert 1 <= default_workers() <= (os.cpu_count() or 1)
