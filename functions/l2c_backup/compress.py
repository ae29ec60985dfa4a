"""Parallel gzip for the dump stream: pg_dump's stdout in, a multi-member .gz out.

gzip -6 manages ~27 MB/s per core, well below pg_dump's ~146 MB/s, so compression is the
bottleneck of a backup. The stream is cut into fixed blocks and each block becomes a
complete gzip member of its own (header, deflate, CRC32 and ISIZE trailer), compressed on
a thread pool by the deflate engine (libdeflate, else zlib: deflate_engine.py), which
releases the GIL while it deflates, so threads really run in parallel.
gunzip, zcat and Python's gzip module (the restore side) read the concatenated members
as one file. Members are independent, so the output costs a little ratio (each block starts
with an empty dictionary) and depends only on the input, the level, the engine and
`block_size`, never on `workers` or timing: the same input always gives the same bytes
(mtime is 0).
"""
import collections
import math
import os
from concurrent.futures import ThreadPoolExecutor

from . import deflate_engine
from .sections import CUT

BLOCK_SIZE = 4 * 1024 * 1024


def gzip_members(chunks, level=6, workers=None, block_size=BLOCK_SIZE):
    """Compress an iterable of byte chunks into gzip members, yielded in input order.

    Chunks may be any size; they are re-blocked into `block_size` blocks, one member each.
    A `sections.CUT` among the chunks ends the block being filled early, so that the
    next chunk starts a member (the table index: sections.py).
    At most 2 * `workers` blocks are in flight (read but not yet yielded), plus the
    partial block being filled, whatever the size of the input.

    An empty input yields one empty member, so the object written is still a valid .gz
    (gunzip rejects a zero-byte file). If the input raises, work not yet started is
    cancelled, running blocks finish, the pool's threads exit and the exception reaches the
    consumer; closing the generator early shuts the pool down the same way.
    """
    if not 0 <= level <= deflate_engine.MAX_LEVEL:
        raise ValueError(f"level must be 0..{deflate_engine.MAX_LEVEL}, got {level!r}")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers!r}")
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size!r}")
    # Here, not in a pool thread: the warning carries the run's log keys (contextvars).
    deflate_engine.warn_if_slow()
    # Validate now, not at the first next(): the body below runs lazily.
    return _compress_in_order(_blocks(chunks, block_size), level, workers)


def _compress_in_order(blocks, level, workers):
    pending = collections.deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="l2c-gzip")
    try:
        for block in blocks:
            pending.append(pool.submit(deflate_engine.gzip_member, block, level))
            # Twice the workers keeps every thread busy while the consumer (an upload)
            # catches up, and bounds memory: wait for the oldest before reading more.
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        # Reached on normal end, on an input error and on close(): never leak threads.
        pool.shutdown(wait=True, cancel_futures=True)


def _blocks(chunks, block_size):
    buffer = bytearray()
    produced = False
    for chunk in chunks:
        if chunk is CUT:
            if buffer:
                yield buffer
                buffer = bytearray()
                produced = True
            continue
        view = memoryview(chunk)
        # Slice big chunks rather than appending them whole: one huge chunk must not
        # double in memory or be shifted block by block.
        while len(buffer) + len(view) >= block_size:
            take = block_size - len(buffer)
            buffer += view[:take]
            view = view[take:]
            yield buffer
            buffer = bytearray()
            produced = True
        buffer += view
    if buffer or not produced:
        yield buffer


def default_workers():
    """CPUs this process can really use: its affinity mask, capped by a cgroup CPU quota.

    os.cpu_count() reports the host's CPUs inside a container; too many threads would only
    be throttled and would raise memory use (2 blocks per worker).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def _cgroup_cpu_quota():
    """CPUs allowed by the cgroup (v2 `cpu.max`, else v1 cfs files), or None if unlimited."""
    for quota_file, period_file in (("/sys/fs/cgroup/cpu.max", None),
                                    ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
                                     "/sys/fs/cgroup/cpu/cpu.cfs_period_us")):
        try:
            with open(quota_file) as f:
                fields = f.read().split()
            if period_file:
                with open(period_file) as f:
                    fields.append(f.read().strip())
            quota, period = fields[0], int(fields[1])
        except (OSError, ValueError, IndexError):
            continue
        if quota in ("max", "-1") or period <= 0:
            return None
        return int(quota) / period
    return None
