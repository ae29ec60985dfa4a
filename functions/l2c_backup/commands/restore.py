"""`l2c-backup restore`: bring a backup back into a database, checked on the way."""
import json
import os
import re
import sys
import time
from datetime import date

from .. import config, names
from ..database import DatabaseSettings
from ..errors import ConfigInvalid
from ..logs import register_secret
from ..parallel_restore import MAX_JOBS, restore_parallel
from ..restore import find_backup, restore
from ..storage import open_storage
from ..table_restore import restore_tables


def add_parser(subparsers):
    p = subparsers.add_parser(
        "restore", help="restore a backup: object -> gunzip -> psql, all or nothing",
        description="Stream a backup into psql (ON_ERROR_STOP, one transaction), checking "
                    "SHA-256 and length against its manifest on the way; on any failure the "
                    "transaction rolls back (or the new --create-db database is dropped). "
                    "Refuses a target that already holds tables unless --force. An encrypted "
                    "backup (.sql.gz.age) is opened with the age key file of "
                    "BACKUP_AGE_IDENTITY_FILE (or the key text of BACKUP_AGE_IDENTITY).")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("key", nargs="?", help="object key, e.g. db-backups/daily/backup_2026-11-27.sql.gz")
    which.add_argument("--latest", action="store_true", help="the newest backup (of --kind)")
    which.add_argument("--date", metavar="YYYY-MM-DD", help="the backup of that day (Asia/Shanghai)")
    p.add_argument("--kind", choices=names.KINDS, help="with --latest / --date: only this kind")
    p.add_argument("--from", dest="source", metavar="TARGET",
                   help="oss://BUCKET/PREFIX (the DR bucket too) or a directory (default: as for backup)")
    p.add_argument("--endpoint", metavar="URL", help="OSS endpoint of --from (another region's, for DR)")
    p.add_argument("--target-url", required=True, metavar="URL",
                   help="postgresql://user:password@host:port/db to restore into")
    p.add_argument("--create-db", metavar="NAME", help="create database NAME on that server and "
                   "restore into it; it is dropped again if the restore fails or is stopped "
                   "(one left by a killed restore is replaced by the next run)")
    p.add_argument("--force", action="store_true", help="restore into a database that holds tables")
    p.add_argument("--jobs", type=int, metavar="N", help="with --create-db: restore over N psql "
                   f"sessions at once (1-{MAX_JOBS}; the data, then index builds), all or "
                   "nothing; needs a backup with a table index")
    p.add_argument("--table", action="append", metavar="SCHEMA.NAME",
                   help="restore only this table (repeat for more): its definition, data, "
                        "sequences, indexes, constraints, triggers, and the types/functions it "
                        "needs that the target lacks; reads only those parts of the backup")
    p.add_argument("--into-schema", metavar="SCHEMA", help="with --table: create the tables "
                   "and their sequences in SCHEMA (made if missing), beside the live ones")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-wait-archive", action="store_true",
                   help="when the backup is in OSS Archive storage, request its restore and exit "
                        "(code 23) instead of waiting for it (Archive: about a minute)")
    p.set_defaults(run=run)


def run(args):
    if args.kind and not (args.latest or args.date):
        raise ConfigInvalid("--kind goes with --latest or --date", "give a KEY, or --latest --kind KIND")
    if args.date is not None:
        check_date(args.date)
    check_jobs(args)
    check_tables(args)
    environ = dict(os.environ, **({"OSS_ENDPOINT": args.endpoint} if args.endpoint else {}))
    target_store, oss = config.storage_target(environ, target=args.source, flag="--from")
    storage = open_storage(target_store, oss)
    target = DatabaseSettings.from_url(args.target_url, {}, origin="--target-url")
    register_secret(target.password)
    key = find_backup(storage, args.key, args.latest, args.kind, args.date)
    progress = _Bar() if sys.stderr.isatty() and not args.json else None
    if args.table:
        summary = restore_tables(storage, key, target, args.table, args.into_schema,
                                 args.force, progress, wait_archive=not args.no_wait_archive)
    elif args.jobs is not None:
        summary = restore_parallel(storage, key, target, args.create_db, args.jobs, progress,
                                   force=args.force, wait_archive=not args.no_wait_archive)
    else:
        summary = restore(storage, key, target, args.create_db, args.force, progress,
                          wait_archive=not args.no_wait_archive)
    if progress:
        progress.done()
    if args.json:
        print(json.dumps(summary, indent=2))
    elif args.table:
        print(f"restored {', '.join(summary['tables'])} ({summary['rows']:,} rows) of {key} "
              f"into {summary['database']}, reading {summary['bytes_read']:,} of its "
              f"{summary['object_bytes']:,} bytes in {summary['restore_seconds']:.1f}s")
    else:
        print(f"restored {key} into {summary['database']} ({summary['bytes']:,} bytes, "
              f"{summary['sql_bytes']:,} of SQL) in {summary['restore_seconds']:.1f}s")
    return 0


def check_jobs(args):
    """--jobs N goes into a new database only: all or nothing there is dropping it."""
    if args.jobs is None:
        return
    if not 1 <= args.jobs <= MAX_JOBS:
        raise ConfigInvalid(f"--jobs {args.jobs} is out of range", f"give 1 to {MAX_JOBS}")
    if not args.create_db:
        raise ConfigInvalid("--jobs needs --create-db NAME",
                            "a parallel restore runs in many transactions, so it only goes into "
                            "a new database, dropped on failure: add --create-db NAME")


def check_tables(args):
    """--table restores into the database of --target-url; --into-schema goes with it."""
    if args.into_schema is not None and not args.table:
        raise ConfigInvalid("--into-schema goes with --table", "add --table SCHEMA.NAME")
    if args.table and (args.create_db or args.jobs is not None):
        raise ConfigInvalid(f"--table does not go with {'--create-db' if args.create_db else '--jobs'}",
                            "create the database first, and give it in --target-url")
    if args.into_schema is not None and not args.into_schema.strip():
        raise ConfigInvalid("--into-schema is empty", "give a schema name, e.g. --into-schema restored")


def check_date(text):
    """--date is a real day written YYYY-MM-DD (not 2020-02-30, not 01/02/2020)."""
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            date.fromisoformat(text)
            return
    except ValueError:
        pass
    raise ConfigInvalid(f"--date {text} is not a day in the form YYYY-MM-DD",
                        "e.g. --date 2026-11-27 (the day of the backup, Asia/Shanghai)")


class _Bar:
    """A progress bar on the terminal: share of the object read, elapsed, rate."""

    def __init__(self):
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, done, total):
        now = time.monotonic()
        if now - self.last < 0.3 and done < total:
            return
        self.last = now
        share = done / total if total else 1
        elapsed = now - self.started
        bar = "#" * int(share * 30)
        sys.stderr.write(f"\r  [{bar:<30}] {share:6.1%}  {done / 1e6:8.1f} MB  {elapsed:6.1f}s ")
        sys.stderr.flush()

    def done(self):
        sys.stderr.write("\n")
