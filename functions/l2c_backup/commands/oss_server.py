"""`l2c-backup oss-server`: run the local OSS endpoint until interrupted."""
import json
import os

from ..errors import ConfigInvalid, LocalServiceFailed
from .local_service import serve_until_stopped


def add_parser(subparsers):
    p = subparsers.add_parser(
        "oss-server", help="run the local OSS server (tests, demos)",
        description="Run the local OSS endpoint that speaks the OSS REST API as oss2 uses it. "
                    "It prints its endpoint, buckets and test credentials, then serves until "
                    "interrupted (Ctrl-C or SIGTERM).")
    p.add_argument("--port", type=int, default=9000, help="TCP port (0 picks a free one; default 9000)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--data", metavar="DIR", help="keep state in DIR so it survives a restart "
                   "(default: a temporary directory removed at exit)")
    p.add_argument("--bucket", action="append", dest="buckets", metavar="NAME",
                   help="bucket to create at start (repeatable; default l2c-backups and l2c-backups-dr)")
    p.add_argument("--region", default="cn-hangzhou", help="region for V4 signatures (default cn-hangzhou)")
    p.add_argument("--restore-delay", type=float, default=2.0, metavar="SECONDS",
                   help="how long a RestoreObject of an Archive object takes here (default 2; "
                        "OSS takes about 60 for Archive)")
    p.add_argument("--cname", action="append", default=[], metavar="HOST=BUCKET",
                   help="bind custom domain HOST to BUCKET, as OSS's CNAME binding does: "
                        "requests with that Host address the bucket and get web pages shown, "
                        "not downloaded (repeatable; e.g. status.example.oss-local.test=l2c-backups)")
    p.add_argument("--json", action="store_true", help="print the connection details as JSON")
    p.set_defaults(run=run)


def run(args):
    from l2c_local.oss import LocalOSS  # only the local tooling needs the server

    if not 0 <= args.port <= 65535:
        raise ConfigInvalid(f"--port {args.port} is out of range (0-65535)",
                            "give a port from 1 to 65535, or --port 0 for a free one")
    if args.restore_delay < 0:
        raise ConfigInvalid(f"--restore-delay {args.restore_delay:g} is negative",
                            "give the seconds a restore takes, 0 or more")
    if args.data:
        if os.path.exists(args.data) and not os.path.isdir(args.data):
            raise ConfigInvalid(f"--data {args.data} is not a directory",
                                "give a directory (it is created when missing)")
        try:
            os.makedirs(args.data, exist_ok=True)
        except OSError as err:  # a file further up the path, or no permission
            raise ConfigInvalid(f"--data {args.data} cannot be used: {err.strerror}",
                                "give a directory you may write to") from None
    cnames = {}
    for binding in args.cname:
        domain, _, bucket = binding.partition("=")
        if not domain.strip() or not bucket.strip():
            raise ConfigInvalid(f"--cname {binding!r} is not HOST=BUCKET",
                                "give a host name and a bucket, e.g. "
                                "--cname status.example.oss-local.test=l2c-backups")
        cnames[domain.strip()] = bucket.strip()
    try:
        server = LocalOSS(data_dir=args.data, host=args.host, port=args.port, region=args.region,
                          buckets=args.buckets or ["l2c-backups", "l2c-backups-dr"],
                          restore_delay_seconds=args.restore_delay, cnames=cnames)
    except ValueError as err:  # a --cname that names no host, or the endpoint itself
        raise ConfigInvalid(f"--cname: {err}", "give a host name of its own, e.g. "
                            "--cname status.example.oss-local.test=l2c-backups") from None
    try:
        server.start()
    except OSError as err:
        raise LocalServiceFailed(f"cannot listen on {args.host} port {args.port}: {err.strerror}",
                                 "pick another --port, or --port 0 for a free one") from None
    # The IP endpoint works from any shell (oss2 uses path style for it); the named one
    # is virtual-hosted, as on Aliyun, where *.oss-local.test resolves (l2c_local.resolve).
    details = {"endpoint": server.endpoint_ip, "virtual_hosted_endpoint": server.endpoint,
               "region": server.region,
               "buckets": server.bucket_names(), "cnames": dict(server.cnames),
               "access_key_id": server.access_key_id,
               "access_key_secret": server.access_key_secret,
               "data": args.data or "(temporary)"}
    if args.json:
        print(json.dumps(details), flush=True)
    else:
        print(f"local OSS server listening on {details['endpoint']}\n"
              f"  virtual-hosted:    {details['virtual_hosted_endpoint']}  (where *.oss-local.test "
              "resolves to 127.0.0.1; see scripts/l2c_local/oss/README.md)\n"
              f"  region:            {details['region']}\n"
              f"  buckets:           {', '.join(details['buckets'])}\n"
              + "".join(f"  custom domain:     {domain} -> {bucket}\n"
                        for domain, bucket in details["cnames"].items()) +
              f"  access key id:     {details['access_key_id']}\n"
              f"  access key secret: {details['access_key_secret']}  (test credentials)\n"
              f"  state:             {details['data']}\n"
              "Ctrl-C stops it.", flush=True)
    return serve_until_stopped(server)
