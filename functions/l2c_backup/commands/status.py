"""`l2c-backup status`: the newest backups, their ages against the RPO, the 3-2-1 view, and
which encrypted backups each configured age identity opens."""
import json
import time

from .. import config, fc_cost, names
from ..errors import L2CError, NotCompliant
from ..status import Location, newest_runs, report, survey
from ..storage import open_storage


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
    p.set_defaults(run=run)


def locations(environ, source, mirror, identities=()):
    target, oss = config.storage_target(environ, source, flag="--from")
    found = [("primary", target, oss, False)]
    if environ.get("OSS_DR_BUCKET"):
        dr_env = dict(environ, OSS_ENDPOINT=environ.get("OSS_DR_ENDPOINT") or environ.get("OSS_ENDPOINT", ""))
        prefix = environ.get("OSS_BACKUP_PREFIX", "db-backups/")
        dr_target, dr_oss = config.storage_target(dr_env, f"oss://{environ['OSS_DR_BUCKET']}/{prefix}")
        found.append(("dr", dr_target, dr_oss, True))  # another region: the off-site copy
    if mirror:
        found.append(("mirror", mirror, None, False))
    result = []
    for name, url, settings, offsite in found:
        loc = Location(name, url, "OSS" if url.startswith("oss://") else "local disk", offsite)
        try:
            # the headers are read on the primary only: the copies hold the same objects
            loc.backups = survey(open_storage(url, settings), identities if name == "primary" else ())
        except (L2CError, OSError) as exc:
            if name == "primary":
                raise  # nothing to report on: say why (StorageFailed names endpoint and bucket)
            # an unreachable copy is a finding, not a crash
            loc.error = str(exc.args[0]) if isinstance(exc, L2CError) else f"{type(exc).__name__}: {exc}"
        result.append(loc)
    return result


def run(args):
    environ = config.environment()  # an empty variable is an unset one (README)
    prices, grace = config.prices(environ), config.grace_seconds(environ)  # before any OSS call
    fc_prices = fc_cost.prices(environ)
    source = args.source or None
    identities = config.load_identities(environ)  # a bad key file stops here, named
    locs = locations(environ, source, args.mirror or environ.get("MIRROR_DIR"), identities)
    keep = config.keep_counts(environ, locs[0].url)
    configured = [d for d in environ.get("BACKUP_DATABASES", "").split(",") if d]
    target, oss = config.storage_target(environ, source, flag="--from")
    result = report(locs, names.KINDS, keep, time.time(), grace=grace, prices=prices,
                    fc_prices=fc_prices, configured=configured,
                    runs=newest_runs(open_storage(target, oss), names.KINDS),
                    identities=[i.recipient for i in identities] if identities else None)
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
