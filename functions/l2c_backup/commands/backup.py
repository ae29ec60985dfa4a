"""`l2c-backup backup`: one backup now, the same code the FC timer runs."""
import json
import sys
import time

from .. import config, fanout, history
from ..backup import run_backup
from ..errors import L2CError
from ..names import KINDS


def add_parser(subparsers):
    p = subparsers.add_parser(
        "backup", help="back up the database now (pg_dump -> gzip -> OSS or a directory)",
        description="Dump the database with pg_dump, compress it on all cores and stream it to "
                    "OSS (multipart) or a directory, then write its manifest. Settings come from "
                    "the environment (DATABASE_URL or PG*, OSS_ENDPOINT, OSS_BACKUP_BUCKET, "
                    "OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET, ...); flags override them.")
    p.add_argument("--kind", choices=KINDS, default="manual",
                   help="daily / weekly are one per day / ISO week; manual never overwrites (default)")
    p.add_argument("--database-url", metavar="URL", help="postgresql://user:password@host:port/db "
                   "(default: DATABASE_URL, then PG* variables)")
    p.add_argument("--to", metavar="TARGET", help="oss://BUCKET/PREFIX or a directory "
                   "(default: BACKUP_TARGET, then oss://$OSS_BACKUP_BUCKET/db-backups/)")
    p.add_argument("--concurrency", type=int, metavar="N", choices=range(1, 17),
                   help="with several databases (BACKUP_DATABASES): how many to back up at once, "
                        "1 to 16 (default: BACKUP_CONCURRENCY, then 2; each one compresses on "
                        "every core already)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(run=run)


def run(args):
    cfg = config.load(database_url=args.database_url, target=args.to)
    try:
        return _run(cfg, args)
    except L2CError as err:  # before the config loaded there was no target to record it in
        history.record_failed_run(cfg, args.kind, "", err)
        raise


def _run(cfg, args):
    if fanout.wanted(cfg):
        return _run_several(cfg, args)
    progress = _Progress() if sys.stderr.isatty() and not args.json else None
    summary = run_backup(cfg, args.kind, progress=progress)
    if progress:
        progress.done()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    _print_backups(summary["backups"])
    return 0


def _run_several(cfg, args):
    """Every database at once, up to the concurrency; every outcome printed, then the
    first failure (in database order) raised for its exit code: each was alerted once."""
    concurrency = args.concurrency or config.setting(None, "BACKUP_CONCURRENCY",
                                                     fanout.DEFAULT_CONCURRENCY, int)
    summary, failures = fanout.run_local(cfg, args.kind, concurrency)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_backups(summary["backups"])
        for f in summary["failed"]:
            print(f"{f['database']}: FAILED ({f['error_type']}): {f['error']}")
    if failures:
        raise failures[0]
    return 0


def _print_backups(backups):
    for b in backups:
        if b.get("skipped"):
            print(f"skipped: {b['skipped']}")
        else:
            where = b.get("location") or b["key"]
            sha = f", sha256 {b['sha256']}" if b.get("sha256") else ""
            print(f"{where}: {b['bytes']:,} bytes ({b['sql_bytes']:,} of SQL) in "
                  f"{b['seconds']:.1f}s{sha}")


class _Progress:
    """One self-rewriting line on a terminal: SQL read, bytes written, rate."""

    def __init__(self):
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, sql_bytes, written):
        now = time.monotonic()
        if now - self.last < 0.5:
            return
        self.last = now
        rate = sql_bytes / max(now - self.started, 1e-6) / 1e6
        sys.stderr.write(f"\r  {sql_bytes / 1e6:9.1f} MB of SQL -> {written / 1e6:8.1f} MB written, "
                         f"{rate:6.1f} MB/s ")
        sys.stderr.flush()

    def done(self):
        sys.stderr.write("\n")
