"""`l2c-backup mirror`: keep the newest backups of OSS in a local directory (PLAN's
local / host tier), checked against their manifests, resumable, pruned to --keep."""
import json

from .. import config, names
from ..errors import L2CError
from ..mirror import mirror
from ..prune import LOCAL_KEEP
from ..storage import open_storage


def add_parser(subparsers):
    p = subparsers.add_parser(
        "mirror", help="copy the newest backups (with manifests) into a local directory",
        description="Copy the newest N backups of each kind (and of the globals), with their "
                    "manifests, into DIR in the same key layout; keep a file only when its "
                    "SHA-256 and size match its manifest; skip what is already there and "
                    "intact, replace what is damaged, resume an interrupted copy; then delete "
                    "backups beyond N from DIR (nothing is deleted when a copy failed). "
                    "Encrypted backups (.sql.gz.age) are copied as they are; with the age "
                    "identity of BACKUP_AGE_IDENTITY_FILE (or BACKUP_AGE_IDENTITY) their "
                    "content is checked too, without it their size, SHA-256 and age header.")
    p.add_argument("--from", dest="source", metavar="TARGET",
                   help="oss://BUCKET/PREFIX (default: OSS_BACKUP_BUCKET / OSS_BACKUP_PREFIX)")
    p.add_argument("--to", dest="dest", metavar="DIR", required=True,
                   help="the local directory, e.g. /app/backups")
    p.add_argument("--keep", type=int, default=LOCAL_KEEP, metavar="N",
                   help=f"backups kept per kind (default {LOCAL_KEEP}, PLAN's local tier)")
    p.add_argument("--kind", choices=names.KINDS, action="append",
                   help="the kind to mirror (repeatable; default: all kinds)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-wait-archive", action="store_true",
                   help="when backups are in OSS Archive storage, request their restore and exit "
                        "(code 23) instead of waiting for it (Archive: about a minute)")
    p.set_defaults(run=run)


def run(args):
    target, oss = config.storage_target(target=args.source, flag="--from")
    identities = config.load_identities()  # [] when none is set
    source = open_storage(target, oss)
    try:
        report = mirror(source, args.dest, args.keep, args.kind,
                        wait_archive=not args.no_wait_archive, identities=identities)
    except L2CError as err:
        if getattr(err, "report", None) is not None:
            _print(err.report.summary(), args.json)
        raise
    _print(report.summary(), args.json)
    return 0


def _print(summary, as_json):
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    for obj in summary["objects"]:
        extra = f", resumed after {obj['resumed_from']:,}" if obj["resumed_from"] else ""
        detail = f": {obj['detail']}" if obj["detail"] else ""
        print(f"{obj['action']:8} {obj['key']}  ({obj['bytes']:,} bytes read{extra}){detail}")
    for key in summary["pruned_keys"]:
        print(f"{'pruned':8} {key}")
    for key in summary["without_manifest"]:
        print(f"{'waiting':8} {key}  (no manifest yet: not complete, not copied)")
    print(f"{summary['copied']} copied, {summary['skipped']} intact, {summary['resumed']} resumed, "
          f"{summary['replaced']} replaced, {summary['failed']} failed, {summary['pruned']} pruned; "
          f"{summary['bytes']:,} bytes in {summary['seconds']:.1f}s -> {summary['target']}")
