"""`l2c-backup verify`: re-check stored backups (audits, drills), as the trigger does."""
import json

from .. import archive, config, names
from ..errors import BackupCorrupt, ConfigInvalid
from ..storage import open_storage
from ..verify import verify

# Off FC the manifest is normally long written: a short wait (FC's verify waits 60 s).
DEFAULT_MANIFEST_WAIT_SECONDS = 5


def add_parser(subparsers):
    p = subparsers.add_parser(
        "verify", help="check stored backups end to end (gzip, dump completeness, checksums)",
        description="Stream each backup and check every gzip member, the dump's header and "
                    "completion marker, size and CRC64 against storage and SHA-256 against "
                    "the manifest; record the verdict (tags and <key>.verify.json). An "
                    "encrypted backup (.sql.gz.age) is decrypted and checked whole with "
                    "the age identity of BACKUP_AGE_IDENTITY_FILE or BACKUP_AGE_IDENTITY; "
                    "without one, its size, SHA-256 and age header only (the output says "
                    "so). Exits non-zero when any backup fails.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("key", nargs="?", help="object key, e.g. db-backups/daily/backup_2026-11-27.sql.gz")
    what.add_argument("--all", action="store_true", help="every backup (of --kind)")
    p.add_argument("--kind", choices=names.KINDS, help="with --all: only this kind")
    p.add_argument("--from", dest="source", metavar="TARGET",
                   help="oss://BUCKET/PREFIX or a directory (default: as for backup)")
    p.add_argument("--manifest-wait", type=int, metavar="SECONDS",
                   help="how long to wait for a missing manifest "
                        "(default VERIFY_MANIFEST_WAIT_SECONDS, else 5)")
    p.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    p.add_argument("--no-wait-archive", action="store_true",
                   help="when backups are in OSS Archive storage, request their restore and exit "
                        "(code 23) instead of waiting for it (Archive: about a minute)")
    p.set_defaults(run=run)


def run(args):
    if args.kind and not args.all:
        raise ConfigInvalid("--kind goes with --all", "give a KEY, or --all --kind KIND")
    target, oss = config.storage_target(target=args.source, flag="--from")
    wait = args.manifest_wait
    if wait is None:
        wait = config.manifest_wait(config.environment(), DEFAULT_MANIFEST_WAIT_SECONDS)
    identities = config.load_identities()  # [] when none is set: encrypted ones checked as stored
    storage = open_storage(target, oss)
    if args.all:
        prefix = storage.prefix + (f"{args.kind}/" if args.kind else "")
        listed = list(storage.list(prefix))
        keys = [o.key for o in listed if names.parse_backup_key(storage.prefix, o.key)
                or names.is_globals_key(storage.prefix, o.key)]
        # Every archived backup, manifest and sidecar restored at once, not one by one.
        archive.ensure_readable(storage, sorted(archive.needing_restore(listed)),
                                wait=not args.no_wait_archive, command="`l2c-backup verify`")
    else:
        keys = [args.key]
    verdicts = [verify(storage, key, wait, recheck=True, wait_archive=not args.no_wait_archive,
                       identities=identities).summary() for key in keys]
    if args.json:
        print(json.dumps({"target": storage.url, "results": verdicts}, indent=2))
    else:
        for v in verdicts:
            print(f"{'ok  ' if v['verdict'] == 'ok' else 'FAIL'} {v['key']}  {v['reason']}"
                  + (f": {v['detail']}" if v["detail"] else "")
                  + f"  ({v['bytes']:,} bytes, {v['seconds']:.1f}s)")
        print(f"{len(verdicts)} checked, {sum(v['verdict'] != 'ok' for v in verdicts)} failed")
    failed = [v["key"] for v in verdicts if v["verdict"] != "ok"]
    if failed:
        err = BackupCorrupt(f"{len(failed)} of {len(verdicts)} backups failed verification",
                            "take a manual backup now and look at each <key>.verify.json")
        err.alerted = True  # verify() alerted each failed backup as it found it
        raise err
    return 0
