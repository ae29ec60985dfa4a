"""Deflate engines on a realistic dump: which one, at which level, compresses the backup.

    python bench/deflate_engines.py                       # build a 0.3 GB database, dump, measure
    python bench/deflate_engines.py --sql dump.sql        # an existing plain dump instead
    python bench/deflate_engines.py --sql dump.sql --repeat 5 --only zlib:6 libdeflate:4,5,6,7
    PYTHONPATH=/tmp/extra python bench/deflate_engines.py # with isal / zlib-ng installed there

The backup cuts pg_dump's stream into 4 MiB blocks and makes each a whole gzip member
(functions/l2c_backup/compress.py), so that is what is measured: `--blocks` 4 MiB blocks
taken at even steps through the dump (every table is in the sample, not only the first),
compressed and inflated whole by each candidate at the levels that matter:

    zlib 1/5/6/9 (the fallback; 6 is gzip -6)      libdeflate 1/4/5/6/7/9 (package `deflate`)
    ISA-L 0-3 (package `isal`)                     zlib-ng 1/4/6 (package `zlib-ng`)

A candidate whose package is not installed is reported as such; only `deflate` is a
dependency. Per engine and level: MB/s of input per CPU-second of the compressing thread
(time.thread_time, so other work on the machine does not count against it), the same for
inflating, the ratio, the size against zlib-6 (gzip -6's own size on the same blocks is
printed too), and whether it releases the GIL: two threads over the same blocks against
one, as wall throughput and as CPU seconds per wall second (1.0 with the GIL held, up to
2.0 when both threads deflate at once). Every member is checked to be gzip that zlib
reads back, and every engine's own inflate to return the block.

The dump is kept (`--keep-sql PATH`) so later runs can pass it with --sql; the throwaway
cluster is always stopped.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(REPO / "functions"))
sys.path.insert(2, str(REPO / "scripts"))

MB = 1e6
MIB = 1 << 20
BLOCK = 4 * MIB


# -- candidates: (engine, level) -> compress(block) -> member, and inflate(member) ----------

def candidates():
    """[(name, levels, compress(block, level), inflate(member, size), note)]."""
    out = [("zlib", (1, 5, 6, 9), _zlib_compress, lambda m, n: zlib.decompress(m, 31),
            f"zlib {zlib.ZLIB_RUNTIME_VERSION}")]
    try:
        import deflate
        out.append(("libdeflate", (1, 4, 5, 6, 7, 9),
                    lambda b, level: deflate.gzip_compress(b, level),
                    lambda m, n: deflate.gzip_decompress(m, n),
                    f"deflate {deflate.__version__}"))
    except ImportError as e:
        out.append(("libdeflate", (), None, None, f"not installed ({e})"))
    try:
        from isal import isal_zlib
        import isal
        out.append(("isal", (0, 1, 2, 3),
                    lambda b, level: isal_zlib.compress(b, level, wbits=31),
                    lambda m, n: isal_zlib.decompress(m, wbits=31),
                    f"isal {isal.__version__}"))
    except ImportError as e:
        out.append(("isal", (), None, None, f"not installed ({e})"))
    try:
        from zlib_ng import zlib_ng
        import zlib_ng as zng
        out.append(("zlib-ng", (1, 4, 6),
                    lambda b, level: zlib_ng.compress(b, level, wbits=31),
                    lambda m, n: zlib_ng.decompress(m, wbits=31),
                    f"zlib-ng {getattr(zng, '__version__', '?')} "
                    f"(library {zlib_ng.ZLIBNG_RUNTIME_VERSION})"))
    except ImportError as e:
        out.append(("zlib-ng", (), None, None, f"not installed ({e})"))
    return out


def _zlib_compress(block, level):
    c = zlib.compressobj(level, zlib.DEFLATED, 31)
    return c.compress(block) + c.flush()


# -- the dump ------------------------------------------------------------------------------

def make_dump(size_gb, path, log):
    """A plain pg_dump of a realistic database (bench/realistic_db.py) built in a
    throwaway cluster, written to `path`."""
    from l2c_local.pgcluster import PgCluster
    from realistic_db import Psql, build, report_lines
    cluster = PgCluster().start()
    try:
        cluster.create_database("realistic")
        log(f"building a {size_gb:g} GB realistic database in a throwaway cluster ...")
        report = build(Psql(cluster.bin("psql"), cluster.env(), "realistic"),
                       int(size_gb * (1 << 30)), workers=os.cpu_count() or 2, log=log)
        for line in report_lines(report):
            log("  " + line)
        tmp = path.with_suffix(".partial")
        subprocess.run([str(cluster.bin("pg_dump")), "-d", cluster.url("realistic"),
                        "-f", str(tmp)], check=True, env=cluster.env())
        tmp.rename(path)
        log(f"dump: {path.stat().st_size / MB:,.0f} MB in {path}")
    finally:
        cluster.stop()


def sample_blocks(path, count):
    """`count` 4 MiB blocks at even steps through the file (all of it if it is smaller)."""
    size = path.stat().st_size
    whole = size // BLOCK
    if whole <= count:
        starts = [i * BLOCK for i in range(max(whole, 1))]
    else:
        step = whole / count
        starts = [int(i * step) * BLOCK for i in range(count)]
    blocks = []
    with open(path, "rb") as f:
        for start in starts:
            f.seek(start)
            blocks.append(f.read(BLOCK))
    return blocks


# -- measuring -----------------------------------------------------------------------------

def cpu_timed(fn, items):
    """(outputs, CPU seconds of this thread, wall seconds) of fn over items."""
    wall, cpu = time.perf_counter(), time.thread_time()
    out = [fn(item) for item in items]
    return out, time.thread_time() - cpu, time.perf_counter() - wall


def two_threads(fn, items):
    """Both halves of `items` at once: (wall s, summed thread CPU s)."""
    cpu = [0.0, 0.0]
    start = threading.Barrier(3)

    def run(i):
        start.wait()
        t = time.thread_time()
        for item in items[i::2]:
            fn(item)
        cpu[i] = time.thread_time() - t

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    start.wait()
    wall = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - wall, sum(cpu)


def python_share(fn, items):
    """Share of the wall time a pure-Python thread gets CPU while `fn` runs over `items`
    on another thread: low when fn holds the GIL (the spinner runs only between calls),
    near 1 (less on a busy machine) when fn releases it. Compared with the same share
    beside a C call known to hold the GIL (gil_reference), measured in the same run: more
    telling than 2 threads vs 1, which needs two idle cores."""
    done = threading.Event()
    worker = threading.Thread(target=lambda: ([fn(item) for item in items], done.set()))
    wall, cpu = time.perf_counter(), time.thread_time()
    worker.start()
    while not done.is_set():
        for _ in range(2000):
            pass
    share = (time.thread_time() - cpu) / (time.perf_counter() - wall)
    worker.join()
    return share


def gil_reference():
    """python_share beside list.sort of 1M random floats, C code that holds the GIL."""
    import random
    rng = random.Random(1)
    floats = [rng.random() for _ in range(1_000_000)]
    return python_share(lambda _: sorted(floats), range(4))


def measure(name, level, compress, inflate, blocks, gil_test):
    members, c_cpu, c_wall = cpu_timed(lambda b: bytes(compress(b, level)), blocks)
    for block, member in zip(blocks, members):
        # standard gzip, whole: zlib (what gunzip does) reads it back to the same block
        d = zlib.decompressobj(31)
        assert d.decompress(member) == block and d.eof and not d.unused_data, (name, level)
    pairs = list(zip(members, (len(b) for b in blocks)))
    inflated, i_cpu, i_wall = cpu_timed(lambda p: inflate(*p), pairs)
    assert all(bytes(x) == b for x, b in zip(inflated, blocks)), (name, level)
    del inflated
    raw = sum(len(b) for b in blocks)
    out = sum(len(m) for m in members)
    row = dict(engine=name, level=level, raw=raw, out=out,
               c_rate=raw / MB / c_cpu, c_wall=raw / MB / c_wall,
               i_rate=raw / MB / i_cpu, i_wall=raw / MB / i_wall)
    if gil_test:
        # the 1-thread pass above is the baseline; the same blocks on two threads
        wall2, cpu2 = two_threads(lambda b: compress(b, level), blocks)
        row.update(par_speedup=c_wall / wall2, par_cpu=cpu2 / wall2,
                   py_share=python_share(lambda b: compress(b, level), blocks[:8]))
    return row


def table(rows, gzip6, reference):
    base = next(r for r in rows if r["engine"] == "zlib" and r["level"] == 6)
    lines = [f"{'engine':<11}{'level':>5} {'compress MB/s':>14} {'inflate MB/s':>13} "
             f"{'ratio':>6} {'size vs zlib-6':>15} {'2 threads vs 1':>15} {'cpu/wall':>9} "
             f"{'py thread':>10} {'GIL':>9}",
             "-" * 115]
    for r in rows:
        gil = (f"{r['par_speedup']:>14.2f}x {r['par_cpu']:>9.2f} {r['py_share']:>10.2f} "
               f"{'released' if r['py_share'] > max(5 * reference, 0.1) else 'held?':>9}"
               if "par_speedup" in r
               else f"{'-':>15} {'-':>9} {'-':>10} {'-':>9}")
        lines.append(f"{r['engine']:<11}{r['level']:>5} {r['c_rate']:>14.1f} {r['i_rate']:>13.1f} "
                     f"{r['raw'] / r['out']:>6.3f} {100 * (r['out'] / base['out'] - 1):>+14.1f}% "
                     f"{gil}")
    if gzip6:
        lines.append(f"(gzip -6 on the same blocks as one stream: ratio {base['raw'] / gzip6:.3f},"
                     f" {100 * (gzip6 / base['out'] - 1):+.1f}% vs zlib-6; the 2% target is "
                     f"{1.02 * gzip6 / base['out'] * 100 - 100:+.1f}% vs zlib-6)")
    lines.append("MB/s: MB of SQL per CPU-second of the working thread (time.thread_time); "
                 "2 threads vs 1: wall throughput; cpu/wall: CPU s per wall s with 2 threads "
                 "(~1 = GIL held, ~2 = released, on idle cores); py thread: CPU share a "
                 f"pure-Python thread gets meanwhile; beside list.sort, which holds the GIL: "
                 f"{reference:.2f}")
    return "\n".join(lines)


def gzip_size(blocks):
    """gzip -6's output for the blocks as one stream, as `pg_dump | gzip -6` writes them."""
    if not shutil.which("gzip"):
        return None
    return len(subprocess.run(["gzip", "-6", "-n", "-c"], input=b"".join(blocks),
                              capture_output=True, check=True).stdout)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sql", type=Path, help="a plain pg_dump file to sample (else one is built)")
    parser.add_argument("--size-gb", type=float, default=0.3, help="database to build (default 0.3)")
    parser.add_argument("--keep-sql", type=Path, help="keep the dump built here at this path")
    parser.add_argument("--blocks", type=int, default=24, help="4 MiB blocks to sample (default 24)")
    parser.add_argument("--no-gil-test", action="store_true", help="skip the two-thread pass")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds over every engine and level; the best round counts "
                             "(the least disturbed by others on the machine)")
    parser.add_argument("--only", nargs="*", metavar="ENGINE[:LEVELS]",
                        help="e.g. zlib:6 libdeflate:4,5,6,7 (default: all)")
    args = parser.parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    workdir = None
    try:
        path = args.sql
        if path is None:
            path = args.keep_sql
            if path is None:
                workdir = Path(tempfile.mkdtemp(prefix="l2c-deflate-bench-"))
                path = workdir / "dump.sql"
            make_dump(args.size_gb, path, log)
        blocks = sample_blocks(path, args.blocks)
        raw = sum(len(b) for b in blocks)
        log(f"sample: {len(blocks)} blocks, {raw / MB:,.0f} MB of {path.stat().st_size / MB:,.0f} MB "
            f"({path}); {os.cpu_count()} CPUs")
        reference = 0.0 if args.no_gil_test else gil_reference()
        only = dict((o.split(":") + [""])[:2] for o in args.only or [])
        runs, notes = [], []
        for name, levels, compress, inflate, note in candidates():
            notes.append(f"{name}: {note}")
            if only and name not in only:
                continue
            wanted = {int(x) for x in only.get(name, "").split(",") if x}
            runs += [(name, level, compress, inflate) for level in levels
                     if not wanted or level in wanted]
        best = {}
        for round_ in range(args.repeat):
            for name, level, compress, inflate in runs:
                row = measure(name, level, compress, inflate, blocks, not args.no_gil_test)
                log(f"  round {round_ + 1}: {name} {level}: {row['c_rate']:.1f} MB/s, "
                    f"inflate {row['i_rate']:.1f} MB/s, ratio {raw / row['out']:.3f}")
                kept = best.setdefault((name, level), row)
                for key in ("c_rate", "i_rate", "c_wall", "i_wall", "par_speedup", "par_cpu",
                            "py_share"):
                    if key in row:
                        kept[key] = max(kept[key], row[key])
        rows = list(best.values())
        print(table(rows, gzip_size(blocks), reference))
        print("engines: " + "; ".join(notes))
        return 0
    finally:
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
