"""`l2c-backup check-egress`: can the alert channels and the DR endpoint be reached from here?"""
import json
import os

from .. import egress


def add_parser(subparsers):
    p = subparsers.add_parser(
        "check-egress", help="check that the alert channels and OSS_DR_ENDPOINT can be reached",
        description="Connects (TCP, and TLS for https) to every configured alert channel "
                    "(ALERT_*_WEBHOOK, ALERT_WEBHOOK_URL, ALERT_SMS_WEBHOOK_URL) and to "
                    "OSS_DR_ENDPOINT, and names each unreachable setting with its host and "
                    "the fix. Run it where the functions run (an FC service with internet "
                    "access off needs a NAT gateway). Exits 1 when any is unreachable.")
    p.add_argument("--timeout", type=float, default=egress.TIMEOUT_SECONDS, metavar="SECONDS",
                   help=f"per connection (default {egress.TIMEOUT_SECONDS:g})")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=run)


def run(args):
    routes = egress.check(dict(os.environ), args.timeout)
    if args.json:
        print(json.dumps({"routes": [r.summary() for r in routes]}, indent=2))
    elif not routes:
        print("no alert channel and no OSS_DR_ENDPOINT is set: nothing to check")
    for route in routes if not args.json else ():
        print(route.line())
    return 0 if all(r.reachable for r in routes) else 1
