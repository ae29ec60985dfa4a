"""`l2c-backup demo`: the main job on the embedded defaults, end to end.

It starts the local OSS server, checks the real oss2 client against it, backs up a
throwaway PostgreSQL cluster loaded with the seeded dataset (or DATABASE_URL when set)
into it, shows the object and its manifest, and gives the one-line restore. For the
throwaway cluster it also runs that restore into a new database and compares every
table with the source. Everything it starts, it stops.
"""
import contextlib
import hashlib
import json
import os
import subprocess
import time

from .. import config, names
from ..backup import run_backup
from ..errors import L2CError, LocalServiceFailed

BUCKET = "l2c-backups"
PROBE_PREFIX = "db-backups/.demo/"


def add_parser(subparsers):
    p = subparsers.add_parser(
        "demo", help="run a backup end to end on the embedded defaults (local OSS + throwaway PostgreSQL)",
        description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("--kind", choices=names.KINDS, default="manual", help="backup kind (default manual)")
    p.set_defaults(run=run)


def run(args):
    from l2c_local import resolve
    from l2c_local.oss import LocalOSS

    # oss2 reaches the server's named endpoint virtual-hosted, as it reaches Aliyun:
    # l2c-backups.oss-local.test resolves to 127.0.0.1 inside this process only.
    resolve.install()
    started = time.monotonic()
    with LocalOSS(buckets=[BUCKET]) as server, _database() as (url, cluster):
        print(f"local OSS server: {server.endpoint} (bucket {BUCKET}, virtual-hosted: "
              f"{BUCKET}.{server.hostname} resolves to 127.0.0.1 in this process)")
        for line in check_oss(server):
            print(f"  ok  {line}")
        print(f"database: {_redacted(url)}" + (" (throwaway cluster, seeded)" if cluster else ""))
        env = dict(os.environ, DATABASE_URL=url, OSS_ENDPOINT=server.endpoint,
                   OSS_BACKUP_BUCKET=BUCKET, OSS_ACCESS_KEY_ID=server.access_key_id,
                   OSS_ACCESS_KEY_SECRET=server.access_key_secret)
        env.pop("BACKUP_TARGET", None)
        summary = run_backup(config.load(env), args.kind, request_id="demo")
        bucket = _bucket(server)
        for done in summary["backups"]:
            show_backup(bucket, done)
            if cluster and done["database"] != "(globals)":
                restore_and_compare(bucket, done, cluster)
    print(f"demo finished in {time.monotonic() - started:.1f}s")
    return 0


@contextlib.contextmanager
def _database():
    """(DATABASE_URL, None) when set; else a throwaway seeded cluster (url, cluster)."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"], None
        return
    from l2c_local.pgcluster import PgCluster, PgClusterError, seed

    try:
        with PgCluster() as pg:
            pg.create_database("l2c_demo")
            seed(pg, "l2c_demo")
            yield pg.url("l2c_demo"), pg
    except PgClusterError as err:
        raise L2CError(f"throwaway PostgreSQL cluster failed: {err}",
                       "install the PostgreSQL server (apt-get install postgresql) or set "
                       "DATABASE_URL to a database you own") from None


def _redacted(url):
    from ..database import DatabaseSettings
    return DatabaseSettings.from_url(url, {}).redacted_url()


def _bucket(server):
    import oss2
    auth = oss2.Auth(server.access_key_id, server.access_key_secret)
    return oss2.Bucket(auth, server.endpoint, BUCKET, enable_crc=True)


def check_oss(server):
    """Round trips through oss2 with CRC checks on; yields what was proven."""
    import oss2

    bucket = _bucket(server)
    try:
        body = os.urandom(256 * 1024)
        key = PROBE_PREFIX + "probe.bin"
        put = bucket.put_object(key, body, headers={"x-oss-tagging": "demo=1"})
        if put.etag != hashlib.md5(body).hexdigest().upper() or bucket.get_object(key).read() != body:
            raise LocalServiceFailed(f"{key} did not round-trip")
        tags = bucket.get_object_tagging(key).tag_set.tagging_rule
        if tags != {"demo": "1"}:
            raise LocalServiceFailed(f"tags did not round-trip: {tags}")
        bucket.delete_object(key)
        yield "oss2 put + get + tags, ETag and CRC64 checked (V1 signatures)"
    except oss2.exceptions.OssError as err:
        raise LocalServiceFailed(f"local OSS server answered {err.status} {err.code}: {err.message}",
                                 "run with -v and look at the server log lines") from None


def show_backup(bucket, done):
    if done.get("skipped"):
        print(f"backup: skipped, {done['skipped']}")
        return
    key = done["key"]
    doc = json.loads(bucket.get_object(names.manifest_key(key)).read())
    print(f"backup: oss://{BUCKET}/{key}\n"
          f"  {done['bytes']:,} bytes gzip ({done['sql_bytes']:,} of SQL, "
          f"{done['sql_bytes'] / max(done['bytes'], 1):.1f}:1) in {done['seconds']:.1f}s, "
          f"{doc['object']['parts']} part(s)\n"
          f"  sha256 {done['sha256']}\n"
          f"manifest: oss://{BUCKET}/{names.manifest_key(key)}")
    shown = {k: doc[k] for k in ("kind", "database", "sql_bytes", "started_at", "duration_seconds",
                                 "pg_dump_version", "table_rows")}
    shown["server"], shown["object"] = doc["server"]["version"], doc["object"]
    print("  " + json.dumps(shown, indent=2, ensure_ascii=False).replace("\n", "\n  "))
    print("restore it with one line (ossutil on a real bucket; TARGET_URL an empty database):\n"
          f"  ossutil cat oss://{BUCKET}/{key} | gunzip | psql -X -v ON_ERROR_STOP=1 \"$TARGET_URL\"")


def restore_and_compare(bucket, done, cluster):
    """That one line, run for real: object -> gunzip -> psql into a new database."""
    from l2c_local.pgcluster import table_digests

    if done.get("skipped"):
        return
    target = "l2c_demo_restored"
    cluster.create_database(target)
    started = time.monotonic()
    obj = bucket.get_object(done["key"])
    gunzip = subprocess.Popen(["gunzip", "-c"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    psql = subprocess.Popen([str(cluster.bin("psql")), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", target],
                            stdin=gunzip.stdout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=cluster.env())
    gunzip.stdout.close()
    with contextlib.suppress(BrokenPipeError):
        for chunk in iter(lambda: obj.read(1 << 20), b""):
            gunzip.stdin.write(chunk)
    gunzip.stdin.close()
    errors = psql.stderr.read().decode(errors="replace")
    if psql.wait() or gunzip.wait():
        raise L2CError(f"restore into {target} failed: {errors[-500:]}")
    source, restored = table_digests(cluster, "l2c_demo"), table_digests(cluster, target)
    if source != restored:
        raise L2CError(f"restored {target} differs from the source in "
                       f"{sorted(k for k in source if source[k] != restored.get(k))}")
    print(f"restored (object -> gunzip -> psql) into {target} in {time.monotonic() - started:.1f}s: "
          f"all {len(source) - 1} tables and the large objects equal the source")
