"""Backups in Aliyun OSS through oss2: streamed multipart uploads with bounded memory.

Memory is at most (concurrency + 1) parts: one filling, the rest uploading. Every part
is retried from its own bytes; any failure aborts the upload, so OSS keeps neither a
partial object nor orphan parts (which are billed and invisible in listings).
"""
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import oss2
from oss2.utils import Crc64
from tenacity import Retrying

from ..retry import describe, oss_policy
from . import Deleted, ObjectLocked, StoredObject, read_chunks

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MIN_PART_SIZE = 8 * MIB
MAX_PARTS = 10_000
MAX_PART_SIZE = 5 * 1024 * MIB
PART_HEADROOM = 9_000  # plan for fewer parts than the limit: the size is only an estimate


@dataclass(frozen=True)
class OSSSettings:
    endpoint: str
    access_key_id: str
    access_key_secret: str
    security_token: str = ""
    region: str = ""  # set to sign with V4 (needs the bucket's region)
    server_side_encryption: str = ""  # "", "AES256" or "KMS"
    kms_key_id: str = ""
    concurrency: int = 2
    min_part_size: int = MIN_PART_SIZE
    connect_timeout: float = 30

    def __repr__(self):  # the secret and the token never reach a log line
        return (f"OSSSettings(endpoint={self.endpoint!r}, access_key_id={self.access_key_id!r}, "
                f"region={self.region!r}, sse={self.server_side_encryption!r})")

    def auth(self):
        if self.security_token:
            return oss2.StsAuth(self.access_key_id, self.access_key_secret, self.security_token,
                                auth_version=oss2.AUTH_VERSION_4 if self.region else oss2.AUTH_VERSION_1)
        if self.region:
            return oss2.AuthV4(self.access_key_id, self.access_key_secret)
        return oss2.Auth(self.access_key_id, self.access_key_secret)


def part_size_for(expected_size, min_part_size=MIN_PART_SIZE):
    """Big enough that `expected_size` fits in PART_HEADROOM parts, in whole MiB."""
    needed = -(-max(expected_size, 0) // PART_HEADROOM)
    return max(min_part_size, -(-needed // MIB) * MIB)


class OSSStorage:
    def __init__(self, settings: OSSSettings, bucket: str, prefix: str = ""):
        self.settings = settings
        self.prefix = prefix or "db-backups/"
        self.url = f"oss://{bucket}/{self.prefix}"
        self.bucket = oss2.Bucket(settings.auth(), settings.endpoint, bucket,
                                  connect_timeout=settings.connect_timeout,
                                  region=settings.region or None, enable_crc=True)
        # Reads skip oss2's own CRC64: every reader checks the bytes itself (verify its
        # CRC64, restore and mirror the manifest's SHA-256), and twice costs ~3 s a GB.
        self.reader = oss2.Bucket(settings.auth(), settings.endpoint, bucket,
                                  connect_timeout=settings.connect_timeout,
                                  region=settings.region or None, enable_crc=False)

    def _call(self, fn, *args, **kwargs):
        for attempt in Retrying(**oss_policy()):
            with attempt:
                return fn(*args, **kwargs)

    def _sse_headers(self):
        s = self.settings
        if not s.server_side_encryption:
            return {}
        headers = {"x-oss-server-side-encryption": s.server_side_encryption}
        if s.kms_key_id:
            headers["x-oss-server-side-encryption-key-id"] = s.kms_key_id
        return headers

    def put_stream(self, key, chunks, expected_size=0, overwrite=True):
        headers = self._sse_headers()
        if not overwrite:
            headers["x-oss-forbid-overwrite"] = "true"
        upload = _MultipartUpload(self, key, headers, part_size_for(expected_size, self.settings.min_part_size))
        try:
            return upload.run(chunks)
        except oss2.exceptions.ServerError as exc:
            _raise_if_exists(exc, key)
            raise

    def put_bytes(self, key, data, overwrite=True):
        headers = self._sse_headers()
        if not overwrite:
            headers["x-oss-forbid-overwrite"] = "true"
        try:
            result = self._call(self.bucket.put_object, key, data, headers=headers)
        except oss2.exceptions.ServerError as exc:
            _raise_if_exists(exc, key)
            raise
        return StoredObject(key, len(data), result.etag, str(result.crc or ""), result.versionid or "")

    def head(self, key):
        try:
            meta = self._call(self.bucket.head_object, key)
        except oss2.exceptions.NotFound:
            return None
        return StoredObject(key, meta.content_length, meta.etag,
                            meta.headers.get("x-oss-hash-crc64ecma", ""), meta.versionid or "",
                            last_modified=meta.last_modified)

    def open(self, key, chunk_size=1 << 20):
        try:
            stream = self._call(self.reader.get_object, key)
        except oss2.exceptions.NoSuchKey:
            raise FileNotFoundError(f"{self.url} has no object {key}") from None
        return read_chunks(stream, chunk_size)

    def list(self, prefix):
        for info in oss2.ObjectIteratorV2(self.bucket, prefix=prefix):
            yield StoredObject(info.key, info.size, info.etag, last_modified=info.last_modified)

    def delete(self, key):
        try:
            result = self._call(self.bucket.delete_object, key)
        except oss2.exceptions.ServerError as exc:
            if exc.code == "FileImmutable":
                raise ObjectLocked(f"{key} is under the bucket's retention policy (WORM)") from None
            raise
        return Deleted(key, result.delete_marker, result.versionid or "")

    def get_tags(self, key):
        try:
            return dict(self._call(self.bucket.get_object_tagging, key).tag_set.tagging_rule)
        except oss2.exceptions.NoSuchKey:
            raise FileNotFoundError(f"{self.url} has no object {key}") from None

    def set_tags(self, key, tags):
        rule = oss2.models.TaggingRule()
        for name, value in tags.items():
            rule.add(name, value)
        try:
            self._call(self.bucket.put_object_tagging, key, oss2.models.Tagging(rule))
        except oss2.exceptions.NoSuchKey:
            raise FileNotFoundError(f"{self.url} has no object {key}") from None


def _raise_if_exists(exc, key):
    # x-oss-forbid-overwrite refused: the Storage contract calls that FileExistsError.
    if exc.code == "FileAlreadyExists":
        raise FileExistsError(f"{key} already exists") from None


class _MultipartUpload:
    """One streamed multipart upload: fill a part, hand it to the pool, repeat."""

    def __init__(self, storage, key, headers, part_size):
        self.storage, self.key, self.headers = storage, key, headers
        self.part_size = part_size
        self.concurrency = max(1, storage.settings.concurrency)
        self.slots = threading.BoundedSemaphore(self.concurrency)  # parts uploading at once
        self.upload_id: Optional[str] = None
        self.parts = {}

    def run(self, chunks):
        bucket = self.storage.bucket
        self.upload_id = self.storage._call(bucket.init_multipart_upload, self.key,
                                            headers=self.headers).upload_id
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="oss-part")
        futures, size, crc = [], 0, Crc64(0)
        try:
            buffer, number = bytearray(), 0
            for chunk in chunks:
                buffer += chunk
                crc.update(chunk)
                size += len(chunk)
                while len(buffer) >= self.part_size:
                    number += 1
                    futures.append(self._submit(pool, number, bytes(buffer[:self.part_size])))
                    del buffer[:self.part_size]
                    self._grow_parts(number)
                    _raise_first_failure(futures)
                    futures = [f for f in futures if not f.done()]
            if buffer or number == 0:  # an empty stream is still one (empty) part
                number += 1
                futures.append(self._submit(pool, number, bytes(buffer)))
            for future in futures:
                future.result()
            futures = []
            parts = [oss2.models.PartInfo(n, self.parts[n]) for n in sorted(self.parts)]
            result = self.storage._call(bucket.complete_multipart_upload, self.key,
                                        self.upload_id, parts, headers=self.headers)
        except BaseException:
            for future in futures:
                future.cancel()
            pool.shutdown(wait=True)
            self._abort()
            raise
        pool.shutdown(wait=True)
        server_crc = result.headers.get("x-oss-hash-crc64ecma", "")
        if server_crc and server_crc != str(crc.crc):
            raise IOError(f"{self.key}: OSS reports CRC64 {server_crc}, we sent {crc.crc}")
        return StoredObject(self.key, size, result.etag, str(crc.crc), result.versionid or "",
                            parts=len(parts), extra={"part_size": self.part_size})

    def _grow_parts(self, number):
        # The estimate was wrong (or absent): from half the planned parts on, double the
        # part size every 500 parts (to OSS's 5 GiB limit), so even terabytes fit under the
        # 10,000-part limit. Memory grows with it, but only for such outsized dumps.
        if number >= PART_HEADROOM // 2 and number % 500 == 0:
            self.part_size = min(self.part_size * 2, MAX_PART_SIZE)

    def _submit(self, pool, number, data):
        self.slots.acquire()  # blocks the reader while `concurrency` parts are in flight

        def upload():
            try:
                result = self.storage._call(self.storage.bucket.upload_part, self.key,
                                            self.upload_id, number, data)
                self.parts[number] = result.etag
            finally:
                self.slots.release()
        return pool.submit(upload)

    def _abort(self):
        if self.upload_id is None:
            return
        try:
            self.storage._call(self.storage.bucket.abort_multipart_upload, self.key, self.upload_id)
        except Exception as exc:  # the original failure matters more; say what is left
            log.error("could not abort multipart upload %s of %s (%s): abort it with "
                      "ossutil or a lifecycle rule on incomplete uploads", self.upload_id,
                      self.key, describe(exc))


def _raise_first_failure(futures):
    for future in futures:
        if future.done() and future.exception() is not None:
            raise future.exception()
