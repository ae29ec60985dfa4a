"""`l2c-backup policies`: the RAM documents for the settings in force."""
import json
import sys

from .. import policies

ALL = "all"


def add_parser(subparsers):
    p = subparsers.add_parser(
        "policies", help="print the function role's RAM policy, its trust policy and the bucket policy",
        description="Prints, for the current settings, the RAM policy of the function role "
                    "(OSS on OSS_BACKUP_BUCKET/OSS_BACKUP_PREFIX*, reads of OSS_DR_BUCKET, the "
                    "alert destination, the log store L2C_LOG_PROJECT/L2C_LOG_STORE, FC's VPC "
                    "checks, KMS when OSS_SERVER_SIDE_ENCRYPTION=KMS, on OSS_SSE_KMS_KEY_ID), "
                    "the trust policy (fc.aliyuncs.com) and the backup bucket's policy (the "
                    "role, from L2C_VPC_ID or SERVER_IP). ACCOUNT_ID, ROLE_NAME (l2c-backup-fc) "
                    "or ROLE_PRINCIPAL name the role. An unset value is printed as ${NAME} to "
                    "fill in. deploy/*.json are this output with nothing set.")
    p.add_argument("--kind", choices=(*policies.KINDS, ALL), default=ALL,
                   help="which document (default: all)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object {ram, trust, bucket} (with --kind: that document alone)")
    p.set_defaults(run=run)


def render(document):
    """The text deploy/*.json hold: stable, diff-friendly."""
    return json.dumps(document, indent=2) + "\n"


def run(args, environ=None):
    settings = policies.settings_from_env(environ)
    kinds = policies.KINDS if args.kind == ALL else (args.kind,)
    documents = policies.policies(settings, kinds)
    if args.kind != ALL:
        sys.stdout.write(render(documents[args.kind]))
    elif args.json:
        sys.stdout.write(render(documents))
    else:
        for kind in kinds:
            print(f"# {kind}: deploy/{policies.FILES[kind]} for these settings")
            sys.stdout.write(render(documents[kind]))
    missing = policies.placeholders(documents)
    if missing:
        print("l2c-backup policies: placeholders left: " + ", ".join(
            f"${{{m}}} (set {policies.SET_BY.get(m, m)})" for m in missing)
            + "; or fill them in by hand", file=sys.stderr)
    return 0
