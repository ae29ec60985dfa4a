"""`l2c-backup prune`: apply retention now (it also runs after every backup)."""
import json
import os

from .. import config, leftovers, names
from ..errors import ConfigInvalid
from ..prune import prune, summary
from ..storage import open_storage


def add_parser(subparsers):
    p = subparsers.add_parser(
        "prune", help="delete backups beyond retention (keeps the newest N per kind)",
        description="Keep the newest N backups per kind (KEEP_DAILY 30, KEEP_WEEKLY 12, "
                    "KEEP_MANUAL 10; 10 each in a directory), and always the newest verified "
                    "one. Prints each object with keep/delete/wait and the reason. An object "
                    "without its manifest is never a backup: it waits while a run may still "
                    "write the manifest (26 h, or while its run's claim holds) and is deleted "
                    "after. Objects under WORM retention, sidecars included, are skipped and "
                    "reported.")
    p.add_argument("--kind", choices=names.KINDS, action="append",
                   help="the kind to prune (repeatable; default: all kinds)")
    p.add_argument("--keep", type=int, metavar="N", help="keep N backups of the kind(s) given")
    p.add_argument("--from", dest="source", metavar="TARGET",
                   help="oss://BUCKET/PREFIX or a directory (default: as for backup)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, delete nothing")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(run=run)


def run(args):
    target, oss = config.storage_target(target=args.source, flag="--from")
    keep = config.keep_counts(os.environ, target)
    kinds = args.kind or list(names.KINDS)
    if args.keep is not None:
        if args.keep < 1:
            raise ConfigInvalid("--keep must be at least 1", "a kind always keeps a backup")
        keep.update(dict.fromkeys(kinds, args.keep))
    storage = open_storage(target, oss)
    report = summary(prune(storage, kinds, keep, dry_run=args.dry_run), args.dry_run)
    # what killed backups left (open multipart uploads, .partial-* files), as a backup does
    report["unfinished_removed"] = ([] if args.dry_run else
                                    leftovers.clean(storage, leftovers.safe_age()))
    if args.json:
        print(json.dumps(dict(report, target=storage.url, keep=keep), indent=2))
        return 0
    for obj in report["objects"]:
        outcome = f"  -> {obj['outcome']}" if obj["outcome"] not in ("", "kept", "left: waiting") else ""
        extra = f" (+{len(obj['sidecars'])} sidecar(s))" if obj["sidecars"] else ""
        print(f"{obj['action']:6} {obj['key']}{extra}: {obj['reason']}{outcome}")
    verb = "would delete" if args.dry_run else "deleted"
    line = (f"{report['kept']} kept, {verb} "
            f"{sum(o['action'] == 'delete' for o in report['objects']) if args.dry_run else report['deleted']}"
            f", {report['skipped']} skipped under WORM")
    if report["incomplete"] or report["waiting"]:
        line += (f", {report['incomplete']} without manifest "
                 f"{'to delete' if args.dry_run else 'deleted'}, "
                 f"{report['waiting']} waiting for manifest")
    for removed in report["unfinished_removed"]:
        print(f"removed {removed}")
    print(line)
    return 0
