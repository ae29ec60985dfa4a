"""`l2c-backup status`: the newest backups, their ages against the RPO, the 3-2-1 view, and
which encrypted backups each configured age identity opens."""
import json
import time

from pathlib import Path

from .. import config, fc_cost, status_page
from ..errors import ConfigInvalid, NotCompliant, PageNotFound
from ..status import full_report, locations
from ..storage import open_storage

URL_SECONDS = 3600  # --url's default lifetime


def add_parser(subparsers):
    p = subparsers.add_parser(
        "status", help="backups per kind, ages against the RPO, 3-2-1 compliance, monthly cost",
        description="Per kind: the newest backup, its age against the RPO, its verdict, the "
                    "count against retention and sizes. The 3-2-1 view: the newest backups' "
                    "copies in the primary bucket, the DR bucket (OSS_DR_BUCKET) and the local "
                    "mirror (--mirror / MIRROR_DIR), their media and whether one is off-site. "
                    "Encrypted backups (.sql.gz.age) are marked, and for each identity in "
                    "BACKUP_AGE_IDENTITY_FILE or BACKUP_AGE_IDENTITY the backups it opens are "
                    "listed by its public key. "
                    "Exits non-zero when not compliant (for cron and monitoring).")
    p.add_argument("--from", dest="source", metavar="TARGET", help="the primary: oss://BUCKET/PREFIX or DIR")
    p.add_argument("--mirror", metavar="DIR", help="the local mirror (default MIRROR_DIR)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--html", metavar="FILE",
                   help="also write the report as one self-contained web page to FILE "
                        "(what the watchdog writes hourly to <prefix>status/index.html)")
    p.add_argument("--url", nargs="?", const=URL_SECONDS, type=int, metavar="SECONDS",
                   help="print a signed URL to the status page the watchdog wrote, valid for "
                        f"SECONDS (default {URL_SECONDS}); nothing else is done")
    p.set_defaults(run=run)


def run(args):
    environ = config.environment()  # an empty variable is an unset one (README)
    for check in (config.prices, config.grace_seconds, fc_cost.prices):
        check(environ)  # a bad setting stops here, named, before any OSS call
    source = args.source or None
    if args.url is not None:
        return print_url(environ, source, args.url)
    identities = config.load_identities(environ)  # a bad key file stops here, named
    locs = locations(environ, source, args.mirror or environ.get("MIRROR_DIR"), identities)
    target, oss = config.storage_target(environ, source, flag="--from")
    result = full_report(environ, open_storage(target, oss), locs, time.time(),
                         identities=[i.recipient for i in identities] if identities else None)
    if args.html:
        write_page(args.html, result, status_page.private_scrub(environ, oss))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)
    if not result["compliant"]:
        problems = result["rpo_problems"] + [
            f"the {loc['name']} copy ({loc['url']}) cannot be read: {loc['error']}"
            for loc in result["locations"] if loc["error"]]
        raise NotCompliant("backups are not 3-2-1 compliant" + (": " + "; ".join(problems) if problems else ""),
                           "see the report above: missing copies, media or an off-site copy")
    return 0


def write_page(path, result, scrub):
    """The page to `path`, whole or not at all (a temporary file renamed over it)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ConfigInvalid(f"--html {path}: the folder {path.parent} does not exist",
                            "create it, or give a path in a folder that exists")
    partial = path.with_name(f".{path.name}.partial")  # a SIGKILL's is replaced next time
    try:
        partial.write_text(status_page.render(result, scrub), encoding="utf-8")
        partial.replace(path)
    except OSError as exc:
        raise ConfigInvalid(f"--html {path}: cannot write it: {exc.strerror or exc}",
                            "give a writable path with free space") from None
    finally:
        partial.unlink(missing_ok=True)  # gone once renamed; else a failed or stopped write


def print_url(environ, source, seconds):
    """A signed URL of the page the watchdog wrote (`status --url`)."""
    target, oss = config.storage_target(environ, source, flag="--from")
    storage = open_storage(target, oss)
    key = status_page.page_key(storage.prefix)
    url = storage.signed_url(key, seconds)  # signed here: a bad SECONDS is named first
    if storage.head(key) is None:
        raise PageNotFound(f"no status page at {target}{status_page.PAGE} yet",
                           "the hourly watchdog writes it; or run `l2c-backup status --html FILE` "
                           "to make one here")
    print(url)
    return 0


def print_report(r):
    for kind, k in r["kinds"].items():
        age = f"{k['age_hours']:.1f} h old" if k["age_hours"] is not None else "none"
        rpo = f" (RPO {k['rpo_hours']:.0f} h)" if k["rpo_hours"] else ""
        sealed = f" ({k['encrypted']} encrypted)" if k.get("encrypted") else ""
        mark = " [encrypted]" if k.get("newest_encrypted") else ""
        print(f"{kind:7} {k['count']:3}/{k['keep']} kept{sealed}, {k['bytes'] / 1e6:10.1f} MB; newest: "
              f"{k['newest'] or '-'}{mark} {age}{rpo}, {k['newest_verdict'] or '-'}")
        for database, d in k.get("databases", {}).items():
            age = f"{d['age_hours']:.1f} h old" if d["age_hours"] is not None else "none"
            run = d.get("last_run") or {}
            last = (f"; last run {run['run']}: {run['outcome']}"
                    + (f" ({run['error']})" if run.get("error") else "")) if run else ""
            print(f"  {database}: {d['count']} kept; newest: {d['newest'] or '-'} {age}, "
                  f"{d['newest_verdict'] or '-'}{last}")
    print("3-2-1:")
    for c in r["three_two_one"]:
        print(f"  {c['key']}{' [encrypted]' if c.get('encrypted') else ''}: {len(c['copies'])} copies ({', '.join(c['copies'])}), "
              f"{len(c['media'])} media ({', '.join(c['media'])}), off-site: {'yes' if c['offsite'] else 'no'}")
    for loc in r["locations"]:
        if loc["error"]:
            print(f"  {loc['name']} ({loc['url']}) unreadable: {loc['error']}")
    for problem in r["rpo_problems"]:
        print(f"RPO: {problem}")
    for cold in r.get("needs_restore", []):
        print(f"needs a restore from OSS before it can be read: {cold['key']} ({cold['state']}; "
              "restore, verify and mirror request it themselves)")
    print_encryption(r.get("encryption"))
    cost = r["monthly_cost_cny"]
    print(f"estimated OSS cost: CNY {cost['total']:.2f}/month (standard {cost['standard']:.2f}, "
          f"IA {cost['ia']:.2f}, archive {cost['archive']:.2f}, replication {cost['crr_traffic']:.2f})")
    fc = r["monthly_fc_cost_cny"]
    print(f"estimated FC cost of the scheduled backups: CNY {fc['total']:.2f}/month (daily {fc['daily']:.2f}, "
          f"weekly {fc['weekly']:.2f}; {fc['memory_mb']} MB, {fc['vcpu']:g} vCPU, at the durations "
          "in the manifests)")
    print(f"compliant: {'yes' if r['compliant'] else 'NO'}")


def print_encryption(e):
    """Which encrypted backups each configured identity opens (public keys only)."""
    if not e or not (e["encrypted"] or e["identities"]):
        return
    print(f"encryption: {e['encrypted']} of {e['encrypted'] + e['plain']} backups encrypted (age)")
    for recipient, count in e["recipients"].items():
        print(f"  {count} encrypted to {recipient}")
    if e["identities"] is None:
        print("  no identity configured (BACKUP_AGE_IDENTITY_FILE or BACKUP_AGE_IDENTITY): "
              "set one to see which backups it opens")
    else:
        for identity in e["identities"]:
            print(f"  identity {identity['recipient']} opens {len(identity['opens'])} of "
                  f"{e['encrypted']}" + (":" if identity["opens"] else ""))
            for key in identity["opens"]:
                print(f"    {key}")
        if e["opened_by_none"]:
            print(f"  no configured identity opens {len(e['opened_by_none'])}:")
            for key in e["opened_by_none"]:
                print(f"    {key}")
    for key in e["unknown_recipients"]:
        print(f"  {key}: recipients unknown: its manifest was not read (archived or unreadable)")
    for problem in e["unreadable_headers"] + e["mismatches"]:
        print(f"  {problem}")
