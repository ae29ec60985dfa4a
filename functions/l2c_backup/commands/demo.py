"""`l2c-backup demo`: the whole local set-up on the embedded defaults, checked end to end.

It starts the local OSS server and proves the real oss2 client works against it (simple
and multipart upload, CRC64 and ETag checks, listing, tags), then brings up the database:
`DATABASE_URL` when set, else a throwaway PostgreSQL cluster loaded with the seeded
dataset. Everything it starts, it stops.
"""
import hashlib
import os
import time

from ..errors import L2CError, LocalServiceFailed

PROBE_PREFIX = "db-backups/.demo/"


def add_parser(subparsers):
    p = subparsers.add_parser(
        "demo", help="run the local set-up end to end (local OSS + throwaway PostgreSQL)",
        description=__doc__.split("\n\n")[0] + " Uses DATABASE_URL when it is set.")
    p.add_argument("--bucket", default="l2c-backups", help="bucket to use (default l2c-backups)")
    p.set_defaults(run=run)


def run(args):
    from l2c_local.oss import LocalOSS

    started = time.monotonic()
    with LocalOSS(buckets=[args.bucket]) as server:
        print(f"local OSS server: {server.endpoint} (bucket {args.bucket})")
        for line in check_oss(server, args.bucket):
            print(f"  ok  {line}")
        for line in check_database():
            print(f"  ok  {line}")
    print(f"demo finished in {time.monotonic() - started:.1f}s: local OSS and PostgreSQL answer")
    return 0


def check_oss(server, bucket_name):
    """Round trips through oss2 with CRC checks on; yields what was proven."""
    import oss2

    auth = oss2.Auth(server.access_key_id, server.access_key_secret)
    bucket = oss2.Bucket(auth, server.endpoint, bucket_name, enable_crc=True)
    try:
        body = os.urandom(256 * 1024)
        key = PROBE_PREFIX + "probe.bin"
        put = bucket.put_object(key, body, headers={"x-oss-tagging": "demo=1"})
        if put.etag != hashlib.md5(body).hexdigest().upper():
            raise LocalServiceFailed(f"ETag mismatch for {key}: {put.etag}")
        if bucket.get_object(key).read() != body:
            raise LocalServiceFailed(f"{key} came back different")
        yield f"put + get {len(body)} bytes, ETag and CRC64 checked by oss2"

        key = PROBE_PREFIX + "multipart.bin"
        upload_id = bucket.init_multipart_upload(key).upload_id
        parts = []
        for number in (1, 2, 3):
            result = bucket.upload_part(key, upload_id, number, body)
            parts.append(oss2.models.PartInfo(number, result.etag))
        bucket.complete_multipart_upload(key, upload_id, parts)
        if bucket.get_object(key).read() != body * 3:
            raise LocalServiceFailed(f"{key} came back different after multipart upload")
        yield "multipart upload of 3 parts completed and read back"

        keys = [o.key for o in oss2.ObjectIteratorV2(bucket, prefix=PROBE_PREFIX)]
        tags = bucket.get_object_tagging(PROBE_PREFIX + "probe.bin").tag_set.tagging_rule
        if len(keys) != 2 or tags != {"demo": "1"}:
            raise LocalServiceFailed(f"listing or tags wrong: {keys}, {tags}")
        yield f"listed {len(keys)} objects under {PROBE_PREFIX}, tags read back"
        bucket.batch_delete_objects(keys)
    except oss2.exceptions.OssError as err:
        raise LocalServiceFailed(f"local OSS server answered {err.status} {err.code}: {err.message}",
                                 "run with -v and look at the server log lines") from None


def check_database():
    url = os.environ.get("DATABASE_URL")
    if url:
        yield from check_url(url)
        return
    from l2c_local.pgcluster import PgCluster, PgClusterError, seed, table_counts

    try:
        with PgCluster() as pg:
            yield f"throwaway PostgreSQL cluster on {pg.host}:{pg.port} ({pg.bin_dir})"
            started = time.monotonic()
            pg.create_database("l2c_demo")
            seed(pg, "l2c_demo")
            counts = table_counts(pg, "l2c_demo")
            yield (f"seeded database l2c_demo in {time.monotonic() - started:.1f}s: "
                   f"{len(counts)} tables, {sum(counts.values())} rows")
    except PgClusterError as err:
        raise L2CError(f"throwaway PostgreSQL cluster failed: {err}",
                       "install the PostgreSQL server (apt-get install postgresql) or set "
                       "DATABASE_URL to a database you own") from None


def check_url(url):
    import urllib.parse

    import pg8000.native

    parts = urllib.parse.urlsplit(url)
    try:
        conn = pg8000.native.Connection(
            user=urllib.parse.unquote(parts.username or "postgres"),
            password=urllib.parse.unquote(parts.password) if parts.password else None,
            host=parts.hostname or "127.0.0.1", port=parts.port or 5432,
            database=parts.path.lstrip("/") or "postgres")
    except Exception as err:  # pg8000 raises several types; the message names the cause
        where = f"{parts.hostname}:{parts.port or 5432}{parts.path}"
        raise L2CError(f"cannot connect to DATABASE_URL ({where}): {type(err).__name__}",
                       "check the host, port, database name and password in DATABASE_URL") from None
    try:
        version = conn.run("SHOW server_version")[0][0]
    finally:
        conn.close()
    yield f"DATABASE_URL answers: PostgreSQL {version} at {parts.hostname}:{parts.port or 5432}"
