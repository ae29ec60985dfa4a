"""`l2c-backup invoke`: run a deployed FC function now (backup, drill, watchdog)."""
import json
import sys

from .. import invoke
from ..names import KINDS


def add_parser(subparsers):
    p = subparsers.add_parser(
        "invoke", help="run a deployed FC function now (backup, drill, watchdog)",
        description="Invoke a function of the deployed FC service through the FC API, as the "
                    "console does. FC_ENDPOINT (https://<account id>.<region>.fc.aliyuncs.com), "
                    "FC_SERVICE (default l2c-backup) and ALIBABA_CLOUD_ACCESS_KEY_ID / _SECRET "
                    "(or OSS_ACCESS_KEY_ID / _SECRET) say where and as whom; FC_API_VERSION "
                    "(or --api) says which API: fc2 for the service s.yaml deploys, fc3 for the "
                    "FC 3.0 functions template.yml deploys (named <FC_SERVICE>-<function>). "
                    "By default the "
                    "invocation is synchronous and prints the function's JSON summary; a "
                    "function error exits non-zero, naming the remote error.")
    p.add_argument("function", choices=invoke.FUNCTIONS, help="the function to run")
    p.add_argument("--kind", choices=KINDS,
                   help="backup: daily / weekly / manual (default manual); drill: the kind "
                        "to restore (default daily)")
    p.add_argument("--source", choices=("primary", "dr"),
                   help="drill only: restore from the primary bucket (default) or the DR copy")
    p.add_argument("--event", metavar="JSON", help="send this event instead of the one built "
                   "from --kind / --source")
    p.add_argument("--async", dest="async_", action="store_true",
                   help="queue the invocation and print its FC request id at once")
    p.add_argument("--wait", action="store_true",
                   help="run it as an FC async task and poll until it ends, then print the "
                        "summary (implies --async; needs the function's asynchronous task "
                        "feature, statefulInvocation)")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="how long to wait for the result (default: the function's timeout "
                        "plus 5 minutes)")
    p.add_argument("--poll", type=float, default=10.0, metavar="SECONDS",
                   help="with --wait: seconds between status checks (default 10)")
    p.add_argument("--endpoint", metavar="URL", help="FC endpoint (default: FC_ENDPOINT)")
    p.add_argument("--service", help="FC service (default: FC_SERVICE, then l2c-backup); "
                   "with --api fc3 the prefix of the function names")
    p.add_argument("--api", choices=invoke.API_CHOICES,
                   help="fc2: FC 2.0 API, functions deployed by s.yaml; fc3: FC 3.0 API, "
                        "functions deployed by template.yml (default: FC_API_VERSION, then fc2)")
    p.set_defaults(run=run)


def run(args):
    settings = invoke.settings_from_env(endpoint=args.endpoint, service=args.service,
                                        api=getattr(args, "api", None))
    payload = invoke.event_for(args.function, args.kind, args.source, args.event)
    invoker = invoke.invoker_for(settings)
    with invoke.quiet_fc2_logs():
        if args.wait:
            task_id = invoke.new_task_id(args.function)
            request_id, task_id = invoker.invoke_async(args.function, payload, task_id)
            print(f"{args.function}: queued on FC as async task {task_id} (request id "
                  f"{request_id}); waiting for it to end", file=sys.stderr, flush=True)
            body = invoker.wait(args.function, task_id, args.timeout, args.poll)
            if body is None:  # FC did not hand back the return value
                body = json.dumps({"function": args.function, "status": "Succeeded",
                                   "task_id": task_id, "request_id": request_id}).encode()
        elif args.async_:
            request_id, _ = invoker.invoke_async(args.function, payload)
            print(f"{args.function}: accepted by FC, running in the background; follow request "
                  f"{request_id} in the function's log", file=sys.stderr, flush=True)
            print(request_id)
            return 0
        else:
            _, body = invoker.invoke_sync(args.function, payload, args.timeout)
    _print_body(body)
    return 0


def _print_body(body):
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    try:
        print(json.dumps(json.loads(text), indent=2))
    except ValueError:
        print(text)
