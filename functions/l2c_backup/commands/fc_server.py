"""`l2c-backup fc-server`: run the local FC endpoint until interrupted."""
import json
from pathlib import Path

from ..errors import ConfigInvalid, LocalServiceFailed
from .local_service import serve_until_stopped

# functions/ of a source checkout: the handler files sit beside the l2c_backup package.
DEFAULT_FUNCTIONS = Path(__file__).resolve().parent.parent.parent


def add_parser(subparsers):
    p = subparsers.add_parser(
        "fc-server", help="run the local Function Compute endpoint (tests, demos)",
        description="Run a local endpoint that speaks the FC 2.0 invoke API as aliyun-fc2 uses "
                    "it and runs the real handlers of --functions (backup.py, verify.py, "
                    "drill.py, watchdog.py). It checks request signatures like FC, prints its "
                    "endpoint and test credentials, then serves until interrupted (Ctrl-C or "
                    "SIGTERM). Point `l2c-backup invoke` at it with FC_ENDPOINT.")
    p.add_argument("--port", type=int, default=9100, help="TCP port (0 picks a free one; default 9100)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--functions", metavar="DIR", default=None,
                   help="the FC code directory holding the handler modules "
                        f"(default: {DEFAULT_FUNCTIONS})")
    p.add_argument("--service", default="l2c-backup", help="service name (default l2c-backup)")
    p.add_argument("--region", default="cn-hangzhou", help="region in the context (default cn-hangzhou)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="an environment variable of the functions (repeatable), e.g. "
                        "DATABASE_URL=..., OSS_ENDPOINT=http://127.0.0.1:9000, OSS_BACKUP_BUCKET=...")
    p.add_argument("--inherit-env", action="store_true",
                   help="give the functions this shell's whole environment (default: only PATH, "
                        "HOME, locale, PG_BIN_DIR and --env, as on FC)")
    p.add_argument("--role-key-id", metavar="ID",
                   help="access key id the handlers get as their role credentials (default: the "
                        "local OSS server's test key, so `oss-server` + `fc-server` work together)")
    p.add_argument("--role-key-secret", metavar="SECRET", help="its secret")
    p.add_argument("--role-security-token", metavar="TOKEN", default="", help="its STS token, if any")
    p.add_argument("--json", action="store_true", help="print the connection details as JSON")
    p.set_defaults(run=run)


def run(args):
    from l2c_local.fc import LocalFC, RUNTIME_VARIABLES  # only the local tooling needs these
    from l2c_local.oss.server import TEST_ACCESS_KEY_ID, TEST_ACCESS_KEY_SECRET

    functions = Path(args.functions or DEFAULT_FUNCTIONS)
    if not functions.is_dir() or not any(functions.glob("*.py")):
        raise ConfigInvalid(f"--functions {functions} holds no handler modules (*.py)",
                            "point it at the functions/ directory of the repository")
    env = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigInvalid(f"--env {item!r} is not NAME=VALUE",
                                "e.g. --env OSS_BACKUP_BUCKET=l2c-backups")
        env[name] = value
    if bool(args.role_key_id) != bool(args.role_key_secret):
        raise ConfigInvalid("--role-key-id and --role-key-secret go together", "give both or neither")
    role = ((args.role_key_id, args.role_key_secret, args.role_security_token)
            if args.role_key_id else (TEST_ACCESS_KEY_ID, TEST_ACCESS_KEY_SECRET, ""))
    server = LocalFC(functions, service=args.service, env=env, host=args.host, port=args.port,
                     region=args.region, role_credentials=role,
                     inherit_env=None if args.inherit_env else RUNTIME_VARIABLES)
    try:
        server.start()
    except OSError as err:
        raise LocalServiceFailed(f"cannot listen on {args.host} port {args.port}: {err.strerror}",
                                 "pick another --port, or --port 0 for a free one") from None
    details = {"endpoint": server.endpoint, "service": server.service, "region": server.region,
               "functions": sorted(server.functions), "access_key_id": server.access_key_id,
               "access_key_secret": server.access_key_secret, "role_access_key_id": role[0],
               "code": str(server.functions_dir)}
    if args.json:
        print(json.dumps(details), flush=True)
    else:
        print(f"local FC endpoint listening on {details['endpoint']}\n"
              f"  service:           {details['service']} ({details['region']})\n"
              f"  functions:         {', '.join(details['functions'])} from {details['code']}\n"
              f"  access key id:     {details['access_key_id']}\n"
              f"  access key secret: {details['access_key_secret']}  (test credentials)\n"
              f"  role credentials:  {details['role_access_key_id']} (what handlers get)\n"
              f"Invoke with: FC_ENDPOINT={details['endpoint']} FC_SERVICE={details['service']} "
              f"ALIBABA_CLOUD_ACCESS_KEY_ID={details['access_key_id']} "
              f"ALIBABA_CLOUD_ACCESS_KEY_SECRET={details['access_key_secret']} "
              "l2c-backup invoke backup\n"
              "Ctrl-C stops it.", flush=True)
    return serve_until_stopped(server)
