"""What age encryption adds to a backup and a restore, measured apart from the noise.

    python bench/age_cost.py                    # build a 0.3 GB database, dump, measure
    python bench/age_cost.py --sql dump.sql     # an existing plain dump instead

backup.py's (g) row compares whole backups with and without BACKUP_AGE_RECIPIENTS, but
on this 2-core box one backup's wall spreads over +-15% from run to run, more than the
5% target. So the two steps encryption adds are timed here on their own, against the
step each sits behind, in the same process on the same bytes:

    baseline: compressing the dump as the backup does (compress.gzip_members: 4 MiB
              blocks, the manifest's level, every core), CPU seconds of all its threads
    (enc)     sealing the gzip stream with age.Encryptor (ChaCha20-Poly1305 chunks and
              the SHA-256 of the ciphertext the manifest records), CPU seconds
    baseline: inflating the members (deflate_engine.inflate_member), as restore does
    (dec)     opening the sealed stream with age.Decryptor, fed 1 MiB at a time

CPU is what counts: the backup keeps every core busy compressing, so a CPU second spent
sealing is at most a second of wall, and the share of the compression's CPU is an upper
bound of encryption's share of the backup's (pg_dump, the upload and the server add
CPU that is not counted in the baseline). The output is checked: the sealed stream opens
back to the same gzip bytes.
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent / "functions"))

from deflate_engines import make_dump  # noqa: E402
from l2c_backup import age, config, deflate_engine  # noqa: E402
from l2c_backup.compress import gzip_members  # noqa: E402

MB = 1e6
READ = 1 << 20
TARGET = 0.05  # issue 15: a backup with encryption within 5% of one without


def cpu():
    """CPU seconds of this process, every thread."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn):
    """(result, CPU s, wall s) of fn()."""
    c, w = cpu(), time.perf_counter()
    out = fn()
    return out, cpu() - c, time.perf_counter() - w


def chunks_of(path):
    with open(path, "rb") as f:
        while data := f.read(READ):
            yield data


def measure(sql_path, log):
    sql_mb = sql_path.stat().st_size / MB
    members, c_cpu, c_wall = timed(lambda: list(gzip_members(
        chunks_of(sql_path), config.DEFAULT_GZIP_LEVEL, None, 4 << 20)))
    gz = sum(len(m) for m in members)
    _, recipient = age.generate()
    sealer = age.Encryptor([recipient])
    sealed, e_cpu, e_wall = timed(lambda: list(sealer.wrap(members)))

    cap = 8 << 20
    _, i_cpu, i_wall = timed(lambda: [deflate_engine.inflate_member(m, cap) for m in members])
    secret, recipient2 = age.generate()  # a key of our own: opening needs the secret
    sealer2 = age.Encryptor([recipient2])
    sealed2 = b"".join(sealer2.wrap(members))
    opener = age.Decryptor(age.parse_identities(secret, "bench key"), size=len(sealed2))

    def open_all():
        out = [opener.feed(sealed2[i:i + READ]) for i in range(0, len(sealed2), READ)]
        out.append(opener.finish())
        return b"".join(out)
    plain, d_cpu, d_wall = timed(open_all)
    if plain != b"".join(members):
        raise RuntimeError("the sealed stream did not open back to the same gzip bytes")

    rows = [("compress (gzip_members, level %d, all cores)" % config.DEFAULT_GZIP_LEVEL,
             sql_mb, c_cpu, c_wall, None),
            ("(enc) age.Encryptor.wrap, SHA-256 included", gz / MB, e_cpu, e_wall, e_cpu / c_cpu),
            ("inflate members (%s)" % deflate_engine.ENGINE, gz / MB, i_cpu, i_wall, None),
            ("(dec) age.Decryptor.feed", len(sealed2) / MB, d_cpu, d_wall, d_cpu / i_cpu)]
    log(f"\n{sql_mb:,.0f} MB of SQL -> {gz / MB:,.1f} MB of gzip -> "
        f"{sum(len(s) for s in sealed) / MB:,.1f} MB sealed (+{sum(len(s) for s in sealed) - gz:,d} bytes)\n")
    log(f"| {'step':<46} | {'MB in':>8} | {'cpu s':>6} | {'wall s':>6} | {'MB/cpu-s':>8} | {'cpu vs baseline':>15} |")
    log(f"|{'-' * 48}|{'-' * 9}:|{'-' * 7}:|{'-' * 7}:|{'-' * 9}:|{'-' * 16}:|")
    for name, mb, c, w, share in rows:
        ratio = f"{share:+.1%}" if share is not None else "baseline"
        log(f"| {name:<46} | {mb:>8,.0f} | {c:>6.2f} | {w:>6.2f} | {mb / c:>8,.0f} | {ratio:>15} |")
    verdict = "met" if e_cpu / c_cpu <= TARGET else "NOT met"
    log(f"\n- encryption costs {e_cpu / c_cpu:.1%} of the compression's CPU, an upper bound "
        f"of its share of a backup's (target within {TARGET:.0%}): {verdict}")
    log(f"- decryption costs {d_cpu / i_cpu:.1%} of inflating the same members")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sql", type=Path, help="a plain pg_dump to use (else one is built)")
    parser.add_argument("--size-gb", type=float, default=0.3, help="the database to build (0.3)")
    args = parser.parse_args(argv)
    log = print
    if args.sql:
        measure(args.sql, log)
        return
    with tempfile.TemporaryDirectory(prefix="l2c-age-bench-") as work:
        path = Path(work) / "dump.sql"
        make_dump(args.size_gb, path, log)
        measure(path, log)


if __name__ == "__main__":
    main()
