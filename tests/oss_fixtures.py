"""Fixtures and helpers for proving the local OSS server against the real oss2 client.

Every test talks to a `LocalOSS` over HTTP through oss2 2.19, exactly as L2C backup does
against Aliyun (virtual-hosted, on a named endpoint); nothing on the server side is faked
or patched, and on the client side only the test domain's name lookup is answered locally.
"""

import hashlib
import http.client
import os
import http.server
import queue
import threading

import oss2
import pytest
import requests
import urllib3

from l2c_local import resolve
from l2c_local.oss import LocalOSS

# oss2 addresses the server's named endpoint virtual-hosted (`l2c-backups.oss-local.test`),
# as it addresses Aliyun: the name resolves to 127.0.0.1 in this process, and in every
# Python subprocess that inherits this environment (resolve_hook/ on PYTHONPATH). Tests
# that build a subprocess environment from scratch pass it through resolve.child_env().
resolve.install()
os.environ.update(resolve.child_env())

BUCKET = "l2c-backups"

# A part size every OSS accepts for a non-final part (OSS refuses parts under 100 KiB).
PART_SIZE = 100 * 1024

# What a dropped connection surfaces as: oss2 wraps errors raised while sending, but a body
# cut short is noticed later, by requests/urllib3, while the caller reads the stream.
TRANSPORT_ERRORS = (
    oss2.exceptions.RequestError,
    requests.exceptions.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    ConnectionError,
)


@pytest.fixture
def oss_server():
    """A fresh in-memory server with the `l2c-backups` bucket, stopped after the test."""
    with LocalOSS(buckets=[BUCKET]) as server:
        yield server


@pytest.fixture
def bucket(oss_server):
    """An oss2.Bucket on `l2c-backups`, signed with V1 by the server's test key pair."""
    return bucket_for(oss_server)


def bucket_for(server, name=BUCKET, auth=None, **bucket_options):
    """An oss2.Bucket on `name` of `server`; V1 auth with the test key pair unless given."""
    auth = auth or oss2.Auth(server.access_key_id, server.access_key_secret)
    return oss2.Bucket(auth, server.endpoint, name, **bucket_options)


def md5_etag(data):
    """OSS's ETag for a simple put: the MD5 of the body as upper-case hex."""
    return hashlib.md5(data).hexdigest().upper()


def crc64(data):
    """The CRC-64/ECMA OSS reports in x-oss-hash-crc64ecma, computed the way oss2 does."""
    checksum = oss2.utils.Crc64()
    checksum.update(data)
    return checksum.crc


def multipart_etag(parts):
    """OSS's ETag for a completed multipart upload: MD5 of the parts' binary MD5s, dash, count."""
    digests = b"".join(hashlib.md5(part).digest() for part in parts)
    return "{}-{}".format(md5_etag(digests), len(parts))


def retry_transient(call, attempts=3):
    """Calls `call` until it returns, retrying 5xx answers and dropped connections.

    This is the shape of L2C's own storage retries: 4xx answers are permanent and raise at
    once; anything else is tried again, up to `attempts` times in all.
    """
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except oss2.exceptions.ServerError as error:
            if error.status < 500 or attempt == attempts:
                raise
        except TRANSPORT_ERRORS:
            if attempt == attempts:
                raise


def upload_in_parts(bucket, key, parts):
    """Runs a whole multipart upload of `parts` (a list of bytes) and returns its result."""
    upload_id = bucket.init_multipart_upload(key).upload_id
    infos = []
    for number, data in enumerate(parts, start=1):
        result = bucket.upload_part(key, upload_id, number, data)
        infos.append(oss2.models.PartInfo(number, result.etag, size=len(data), part_crc=result.crc))
    return bucket.complete_multipart_upload(key, upload_id, infos)


class EventReceiver:
    """A tiny HTTP server that records the body of every POST it is sent, like an FC trigger URL."""

    def __init__(self):
        self.bodies = queue.Queue()
        received = self.bodies

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                received.put(self.rfile.read(length))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:{}/oss-events".format(self._httpd.server_address[1])
        # A short poll interval: shutdown() waits for the serving loop to notice it.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()

    def next_body(self, timeout=5):
        return self.bodies.get(timeout=timeout)

    def drained(self):
        bodies = []
        while not self.bodies.empty():
            bodies.append(self.bodies.get_nowait())
        return bodies


@pytest.fixture
def event_receiver():
    with EventReceiver() as receiver:
        yield receiver


@pytest.fixture
def oss_without_backoff(monkeypatch):
    """The OSS backend's real retry policies (attempt caps, what counts as transient)
    without the jittered sleeps between attempts, so a test with many retries stays fast."""
    import tenacity
    from l2c_backup import retry
    from l2c_backup.storage import oss as oss_backend
    for name in ("oss_policy", "read_policy"):
        real = getattr(retry, name)
        monkeypatch.setattr(oss_backend, name,
                            lambda *a, _real=real, **k: {**_real(*a, **k), "wait": tenacity.wait_none()})
