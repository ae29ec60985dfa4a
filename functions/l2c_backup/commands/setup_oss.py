"""`l2c-backup setup-oss`: create and configure the OSS buckets, idempotently, plan first."""
import json

from .. import oss_setup


def add_parser(subparsers):
    p = subparsers.add_parser(
        "setup-oss", help="create/configure the backup, DR and uploads buckets (plan first, idempotent)",
        description="Reads the buckets' current state, prints the plan (each change: resource, "
                    "what changes, why), then applies it. The backup bucket (OSS_BACKUP_BUCKET, "
                    "OSS_REGION): versioning, AES256 default encryption, lifecycle on "
                    "OSS_BACKUP_PREFIX (IA at 30 days, Archive at 90, noncurrent versions expire "
                    "after NONCURRENT_VERSION_DAYS, orphan parts aborted after 7), the bucket "
                    "policy (the one `l2c-backup policies --kind bucket` prints for these settings, "
                    "or BUCKET_POLICY_FILE's; ${NAME} filled from the environment), WORM "
                    "retention of WORM_DAYS. The DR bucket (OSS_DR_BUCKET via OSS_DR_ENDPOINT, "
                    "OSS_DR_REGION): versioning, encryption, lifecycle, replication of the prefix "
                    "from the primary (PUT only). With OSS_UPLOADS_BUCKET: versioning and "
                    "replication to OSS_UPLOADS_DR_BUCKET. A second run changes nothing.")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--yes-lock-worm", action="store_true",
                   help="lock (or extend) the WORM retention policy: IRREVERSIBLE, objects cannot "
                        "be deleted before their retention ends and the policy cannot be removed")
    p.add_argument("--json", action="store_true", help="print the plan and outcome as JSON")
    p.set_defaults(run=run)


def run(args, environ=None):
    desired = oss_setup.desired_from_env(environ)
    buckets = oss_setup.Buckets.from_env(desired, environ)
    plan = oss_setup.plan(buckets, desired, lock_worm=args.yes_lock_worm)
    say = (lambda *a: None) if args.json else print
    if not args.json:
        print_plan(plan, desired, buckets, args)
    outcomes, remaining = [], []
    if plan.changes and not args.dry_run:
        say(f"applying {len(plan.changes)} change(s):")

        def report(step, outcome):
            outcomes.append({"resource": step.resource, "action": step.action, "outcome": outcome})
            if not step.blocked:
                say(f"  {outcome}: {step.resource}: {step.action}")

        try:
            oss_setup.apply(plan.steps, report)
        except oss_setup.SetupFailed:
            if args.json:
                print(json.dumps(_result(plan, desired, args, outcomes, None), indent=2))
            raise
        # Read everything again: what is left is what OSS did not take (or what is blocked).
        remaining = oss_setup.plan(buckets, desired, lock_worm=args.yes_lock_worm).changes
        if remaining:
            say("after applying, a fresh read still finds changes to make:")
            for step in remaining:
                say(f"  {step.resource}: {step.action}: {step.detail}")
        else:
            say("applied; a fresh read finds nothing left to change")
    if args.json:
        print(json.dumps(_result(plan, desired, args, outcomes, remaining), indent=2))
    return 0


def _result(plan, desired, args, outcomes, remaining):
    return {"dry_run": args.dry_run, "lock_worm": args.yes_lock_worm,
            "desired": desired.summary(),
            "steps": [s.to_dict() for s in plan.steps],
            "notes": [vars(n) for n in plan.notes],
            "changes": len(plan.changes), "applied": outcomes,
            "remaining": None if remaining is None else [s.to_dict() for s in remaining]}


def print_plan(plan, desired, buckets, args):
    d = desired
    print(f"setup-oss: backup bucket {d.backup_bucket} ({d.region}, {buckets.endpoint(d.backup_bucket)}), "
          f"DR bucket {d.dr_bucket} ({d.dr_region}, {buckets.endpoint(d.dr_bucket)})"
          + (f", uploads {d.uploads_bucket} -> {d.uploads_dr_bucket}" if d.uploads_bucket else ""))
    if plan.changes:
        print(f"plan: {len(plan.changes)} change(s)" + (" (dry run: nothing is applied)" if args.dry_run else ""))
    else:
        print("plan: nothing to change")
    number = 0
    for step in plan.steps:
        if step.blocked:
            print(f"   -  {step.resource}: {step.action}: SKIPPED: {step.detail}\n"
                  f"        why skipped: {step.blocked}")
            continue
        number += 1
        print(f"  {number:2}. {step.resource}: {step.action}: {step.detail}\n        why: {step.why}")
    for note in plan.notes:
        print(f"  {note.level}: {note.resource}: {note.message}")
