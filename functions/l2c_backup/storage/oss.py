"""Backups in Aliyun OSS through oss2: streamed multipart uploads with bounded memory.

Memory is at most (concurrency + 1) parts: one filling, the rest uploading. Every part
is retried from its own bytes; any failure aborts the upload, so OSS keeps neither a
partial object nor orphan parts (which are billed and invisible in listings).

Every request goes through the retry policies (retry.py). What they do not cure leaves
this module as one StorageFailed that names the endpoint, the bucket and the key (or
prefix) and what to do, never as an oss2 error; only the seam's own answers pass as they
are (None, FileNotFoundError, FileExistsError, ObjectLocked). A read cut short resumes
with a ranged GET from the last byte received, If-Match the ETag it started with, so the
bytes handed on are all of one object. A read of a range (`length`) asks for its end too,
also when it resumes, so no byte past it crosses the network.
"""
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import oss2
from oss2.utils import Crc64
from tenacity import Retrying

from ..errors import ConfigInvalid, L2CError, StorageFailed
from ..retry import TRANSPORT_ERRORS, describe, oss_policy, read_policy
from . import Deleted, ObjectLocked, Reading, StoredObject, check_range

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MIN_PART_SIZE = 8 * MIB
MAX_PARTS = 10_000
MAX_PART_SIZE = 5 * 1024 * MIB
PART_HEADROOM = 9_000  # plan for fewer parts than the limit: the size is only an estimate

# How long a signed URL may last. V1 URLs have no documented ceiling (Expires is any epoch
# time), V4 ones at most 604,800 s (OSS EC 0002-00000232); a page link lives a week at most
# either way, and less than a minute is too short to open it.
URL_MIN_SECONDS = 60
URL_MAX_SECONDS = 7 * 24 * 3600


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
    # A custom domain bound to the bucket (OSS_STATUS_DOMAIN, e.g. https://status.example.com):
    # signed URLs name it, since on OSS's own domain a web page is downloaded, not shown.
    status_domain: str = ""

    def __repr__(self):  # the secret and the token never reach a log line
        return (f"OSSSettings(endpoint={self.endpoint!r}, access_key_id={self.access_key_id!r}, "
                f"region={self.region!r}, sse={self.server_side_encryption!r})")

    def auth(self, v4=None):
        """oss2's signer: V4 where a region is set, else V1. Signed URLs ask for V1
        (v4=False): OSS accepts it in every region, and it needs no region."""
        v4 = bool(self.region) if v4 is None else v4
        if self.security_token:
            return oss2.StsAuth(self.access_key_id, self.access_key_secret, self.security_token,
                                auth_version=oss2.AUTH_VERSION_4 if v4 else oss2.AUTH_VERSION_1)
        if v4:
            return oss2.AuthV4(self.access_key_id, self.access_key_secret)
        return oss2.Auth(self.access_key_id, self.access_key_secret)


def part_size_for(expected_size, min_part_size=MIN_PART_SIZE):
    """Big enough that `expected_size` fits in PART_HEADROOM parts, in whole MiB."""
    needed = -(-max(expected_size, 0) // PART_HEADROOM)
    return max(min_part_size, -(-needed // MIB) * MIB)


class OSSStorage:
    def __init__(self, settings: OSSSettings, bucket: str, prefix: str = ""):
        self.settings = settings
        self.bucket_name = bucket
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

    @contextmanager
    def _failures(self, doing, key):
        """Turns what the retries did not cure into one StorageFailed line, e.g.
        `with self._failures("list", prefix):`. The seam's own answers pass unchanged."""
        try:
            yield
        except (FileNotFoundError, FileExistsError, ObjectLocked, L2CError):
            raise
        except oss2.exceptions.OssError as exc:
            raise self._failed(doing, key, exc) from None

    def _failed(self, doing, key, exc, detail=""):
        """The StorageFailed for `exc`: endpoint, bucket, key, OSS's answer, what to do."""
        where = f"{key} in bucket {self.bucket_name} at {self.settings.endpoint}"
        if isinstance(exc, oss2.exceptions.ClientError):  # oss2 refused to send it
            return StorageFailed(f"could not {doing} {where}: {exc.body}",
                                 "check the bucket, key and OSS_ENDPOINT named")
        if not isinstance(exc, oss2.exceptions.ServerError):  # never reached OSS's answer
            kind = _transport_kind(exc)
            if kind == "dropped":
                return StorageFailed(
                    f"could not {doing} {where}: the connection dropped{detail}, and again "
                    "on every retry", "check the network between here and OSS_ENDPOINT (in FC: "
                    "the VPC, vSwitch and NAT gateway), then run again")
            return StorageFailed(
                f"could not {doing} {where}: the endpoint cannot be reached ({kind}), also "
                "after the retries", "check OSS_ENDPOINT (the bucket's region, e.g. "
                "https://oss-cn-hangzhou.aliyuncs.com; in FC its -internal endpoint) and the network")
        code = exc.code or ("AccessDenied" if exc.status == 403 else "")
        answer = f"OSS {exc.status} {code}".rstrip()
        if code in _REFUSALS:
            meaning, hint = _REFUSALS[code]
            meaning = meaning.format(key_id=self.settings.access_key_id, bucket=self.bucket_name)
            return StorageFailed(f"could not {doing} {where}: {answer}: {meaning}", hint)
        request = f" (request id {exc.request_id})" if exc.request_id else ""
        if exc.status >= 500 or exc.status in (408, 429):
            return StorageFailed(f"could not {doing} {where}: {answer}{request}, still failing "
                                 "after the retries", "OSS is failing or throttling: run again "
                                 "later; if it lasts, open a ticket with Aliyun quoting the request id")
        return StorageFailed(f"could not {doing} {where}: {describe(exc)}{request}",
                             "look up OSS's error code above (help.aliyun.com, OSS error codes)")

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
        with self._failures("write", key):
            try:
                return upload.run(chunks)
            except oss2.exceptions.ServerError as exc:
                _raise_if_exists(exc, key)
                raise

    def put_bytes(self, key, data, overwrite=True, content_type=None, content_disposition=None):
        # No x-oss-object-acl: the object inherits the bucket's ACL, which setup-oss makes
        # private, and setting an object's ACL is oss:PutObjectAcl, which the role must
        # not hold (it could make a backup public). A signed URL is the way in.
        headers = self._sse_headers()
        if not overwrite:
            headers["x-oss-forbid-overwrite"] = "true"
        if content_type:
            headers["Content-Type"] = content_type
        if content_disposition:
            headers["Content-Disposition"] = content_disposition
        with self._failures("write", key):
            try:
                result = self._call(self.bucket.put_object, key, data, headers=headers)
            except oss2.exceptions.ServerError as exc:
                _raise_if_exists(exc, key)
                raise
        return StoredObject(key, len(data), result.etag, str(result.crc or ""), result.versionid or "")

    def signed_url(self, key, expires_seconds):
        """A V1 query-signed GET URL of `key`, valid for `expires_seconds` (60 s to 7 days,
        else ConfigInvalid), on the status domain when one is set. Signed here, no request
        is sent: the object need not exist yet. With STS credentials the URL carries the
        security token and stops working when the token expires, whichever comes first."""
        if not URL_MIN_SECONDS <= expires_seconds <= URL_MAX_SECONDS:
            raise ConfigInvalid(
                f"a signed URL valid for {expires_seconds} seconds: it must last "
                f"{URL_MIN_SECONDS} seconds to 7 days ({URL_MAX_SECONDS} seconds)",
                "ask for a time in that range, e.g. 86400 for a day")
        domain = self.settings.status_domain
        signer = oss2.Bucket(self.settings.auth(v4=False), domain or self.settings.endpoint,
                             self.bucket_name, is_cname=bool(domain))
        return signer.sign_url("GET", key, int(expires_seconds), slash_safe=True)

    def head(self, key):
        with self._failures("check", key):
            try:
                meta = self._call(self.bucket.head_object, key)
            except oss2.exceptions.NotFound as exc:
                # A missing bucket is a 404 too (NoSuchBucket): only a missing key is None.
                if exc.code not in ("", "NoSuchKey"):
                    raise
                return None
        return StoredObject(key, meta.content_length, meta.etag,
                            meta.headers.get("x-oss-hash-crc64ecma", ""), meta.versionid or "",
                            last_modified=meta.last_modified,
                            storage_class=meta.headers.get("x-oss-storage-class", ""),
                            restore=meta.headers.get("x-oss-restore", ""))

    def open(self, key, chunk_size=1 << 20, offset=0, length=None):
        check_range(offset, length)
        read = _ResumingRead(self, key, chunk_size, offset, length)
        return Reading(read.chunks(), read.start, read.etag, read.close)

    def list(self, prefix):
        token = ""
        while True:
            with self._failures("list", prefix):
                page = self._call(self.bucket.list_objects_v2, prefix=prefix,
                                  continuation_token=token, max_keys=1000)
            for info in page.object_list:
                yield StoredObject(info.key, info.size, info.etag, last_modified=info.last_modified,
                                   storage_class=info.storage_class or "",
                                   restore=info.restore_info or "")
            if not page.is_truncated:
                return
            token = page.next_continuation_token

    def delete(self, key):
        with self._failures("delete", key):
            try:
                result = self._call(self.bucket.delete_object, key)
            except oss2.exceptions.ServerError as exc:
                if exc.code == "FileImmutable":
                    raise ObjectLocked(f"{key} is under the bucket's retention policy (WORM)") from None
                raise
        return Deleted(key, result.delete_marker, result.versionid or "")

    def restore_object(self, key, days=1):
        """Asks OSS to restore an Archive / Cold Archive object for `days` (archive.py):
        "requested" (202), "in progress" (409 RestoreAlreadyInProgress), "restored" (200:
        done, its copy kept longer) or "not needed" (a class that reads at once).
        FileNotFoundError when it does not exist."""
        config = oss2.models.RestoreConfiguration(days=days)
        with self._failures("restore", key):
            try:
                result = self._call(self.bucket.restore_object, key, input=config)
            except oss2.exceptions.RestoreAlreadyInProgress:
                return "in progress"
            except oss2.exceptions.OperationNotSupported:
                return "not needed"
            except oss2.exceptions.NoSuchKey:
                raise FileNotFoundError(f"no object {key} in {self.url}") from None
        return "restored" if result.status == 200 else "requested"

    def get_tags(self, key):
        with self._failures("read the tags of", key):
            try:
                return dict(self._call(self.bucket.get_object_tagging, key).tag_set.tagging_rule)
            except oss2.exceptions.NoSuchKey:
                raise FileNotFoundError(f"no object {key} in {self.url}") from None

    def set_tags(self, key, tags):
        rule = oss2.models.TaggingRule()
        for name, value in tags.items():
            rule.add(name, value)
        with self._failures("tag", key):
            try:
                self._call(self.bucket.put_object_tagging, key, oss2.models.Tagging(rule))
            except oss2.exceptions.NoSuchKey:
                raise FileNotFoundError(f"no object {key} in {self.url}") from None

    # -- what a killed run leaves, and claims on versioned buckets (leftovers.py, claims.py)

    def unfinished_writes(self, prefix):
        """Multipart uploads under prefix never completed nor aborted (a run in progress,
        or one that was killed): key, last_modified = when it was initiated (OSS's clock),
        extra["upload_id"]. Needs oss:ListMultipartUploads."""
        key_marker = id_marker = ""
        while True:
            with self._failures("list the unfinished uploads under", prefix):
                page = self._call(self.bucket.list_multipart_uploads, prefix=prefix,
                                  key_marker=key_marker, upload_id_marker=id_marker)
            for upload in page.upload_list:
                yield StoredObject(upload.key, 0, last_modified=upload.initiation_date,
                                   extra={"upload_id": upload.upload_id})
            if not page.is_truncated:
                return
            key_marker, id_marker = page.next_key_marker, page.next_upload_id_marker

    def discard_unfinished(self, unfinished):
        """Aborts an upload unfinished_writes() listed (its parts are gone); one that is
        gone already is fine."""
        with self._failures("abort the unfinished upload of", unfinished.key):
            try:
                self._call(self.bucket.abort_multipart_upload, unfinished.key,
                           unfinished.extra["upload_id"])
            except oss2.exceptions.NoSuchUpload:
                pass

    def versions(self, key):
        """Every version of exactly `key`, oldest first: version_id, last_modified (OSS's
        clock, whole seconds), extra["delete_marker"]. oss2 hands versions and delete
        markers over as two lists: within a second a marker counts as the older. Needs
        oss:ListObjectVersions."""
        found, key_marker, id_marker = [], "", ""
        while True:
            with self._failures("list the versions of", key):
                page = self._call(self.bucket.list_object_versions, prefix=key, max_keys=1000,
                                  key_marker=key_marker, versionid_marker=id_marker)
            # each list comes newest first: -len(found) keeps that order within a second
            for info in page.versions:
                if info.key == key:
                    found.append((info.last_modified, 1, -len(found), StoredObject(
                        key, int(info.size or 0), info.etag or "", version_id=info.versionid,
                        last_modified=info.last_modified, extra={"delete_marker": False})))
            for info in page.delete_marker:
                if info.key == key:
                    found.append((info.last_modified, 0, -len(found), StoredObject(
                        key, 0, version_id=info.versionid, last_modified=info.last_modified,
                        extra={"delete_marker": True})))
            if not page.is_truncated:
                break
            key_marker, id_marker = page.next_key_marker, page.next_versionid_marker
        return [entry[-1] for entry in sorted(found, key=lambda entry: entry[:3])]

    def read_version(self, key, version_id):
        """The bytes of one version of a small object (a claim). FileNotFoundError when
        that version is gone. Needs oss:GetObjectVersion."""
        with self._failures("read", f"{key} (version {version_id})"):
            try:
                return self._call(lambda: self.reader.get_object(
                    key, params={"versionId": version_id}).read())
            except oss2.exceptions.NotFound:  # NoSuchKey, NoSuchVersion
                raise FileNotFoundError(f"no version {version_id} of {key} in {self.url}") from None

    def delete_version(self, key, version_id):
        """Removes one version for good (no delete marker). ObjectLocked under WORM.
        Needs oss:DeleteObjectVersion."""
        with self._failures("delete", f"{key} (version {version_id})"):
            try:
                self._call(self.bucket.delete_object, key, params={"versionId": version_id})
            except oss2.exceptions.ServerError as exc:
                if exc.code == "FileImmutable":
                    raise ObjectLocked(f"{key} is under the bucket's retention policy (WORM)") from None
                raise


# OSS refusals another try cannot fix: what the code means, what to do.
_REFUSALS = {
    "InvalidObjectState": ("the object is in OSS's Archive / Cold Archive storage and not "
                           "restored (the lifecycle rule archives the prefix after 90 days)",
                           "run `l2c-backup restore`, `verify` or `mirror` on it: they have OSS "
                           "restore it and wait (about 1 minute for Archive, hours for Cold Archive)"),
    "InvalidAccessKeyId": ("OSS does not know AccessKey id {key_id}",
                           "check OSS_ACCESS_KEY_ID (in FC: the function's role supplies the key)"),
    "SignatureDoesNotMatch": ("the AccessKey secret is not the one of AccessKey id {key_id}",
                              "check OSS_ACCESS_KEY_SECRET: it must belong to OSS_ACCESS_KEY_ID "
                              "(in FC: the function's role supplies both)"),
    "InvalidSecurityToken": ("the STS token is not valid",
                             "check OSS_SECURITY_TOKEN (in FC: the function's role supplies it)"),
    "SecurityTokenExpired": ("the STS token has expired",
                             "get a fresh token (in FC: the role's token is renewed per invocation)"),
    "AccessDenied": ("the AccessKey or role is not allowed this, or the bucket policy refuses it",
                     "grant the AccessKey or role oss:GetObject, oss:PutObject, oss:DeleteObject "
                     "and oss:ListObjects on the prefix (`l2c-backup policies` prints them), and "
                     "check that the bucket policy allows this network (VPC / IP)"),
    "NoSuchBucket": ("bucket {bucket} does not exist at this endpoint",
                     "check the bucket name (OSS_BACKUP_BUCKET, BACKUP_TARGET or --to/--from) and "
                     "that OSS_ENDPOINT is the bucket's region, or create it: `l2c-backup setup-oss`"),
}


def _transport_kind(exc):
    """What went wrong below HTTP, in an operator's words (for a RequestError or a body
    cut short)."""
    text = f"{exc} {getattr(exc, 'exception', '')!r}".lower()
    if any(s in text for s in ("nameresolution", "name or service not known", "failed to resolve",
                               "nodename nor servname", "temporary failure in name resolution",
                               "getaddrinfo")):
        return "the name does not resolve"
    if "connection refused" in text or "errno 111" in text:
        return "connection refused"
    if "timed out" in text or "timeout" in text:
        return "timed out"
    if any(s in text for s in ("remotedisconnected", "connection aborted", "connection reset",
                               "incompleteread", "connection broken", "broken pipe",
                               "without response")):
        return "dropped"
    return type(getattr(exc, "exception", None) or exc).__name__


def _etag(value):
    return (value or "").strip('"')


class _ResumingRead:
    """One object read from `offset` to its end, or to `offset + length` for a range. A
    connection dropped mid-body is resumed with a ranged GET from the last byte received
    (to the same end), If-Match the ETag of the first answer: the bytes are all of one
    object, or the read fails. Resuming follows retry.read_policy; an attempt is a GET and
    its first chunk, so the count starts again whenever bytes arrive: a long read survives
    drops that each bring bytes, and ends after READ_ATTEMPTS in a row that bring none."""

    def __init__(self, storage, key, chunk_size, offset, length=None):
        self.storage, self.key, self.chunk_size = storage, key, chunk_size
        self.stream, self.etag, self.start, self.position, self.size = None, "", 0, 0, 0
        # One past the last byte wanted; None: the object's end.
        self.end = offset + length if length is not None else None
        with storage._failures("read", key):
            try:
                self.first = self._attempts(self._begin, offset)
            except oss2.exceptions.NoSuchKey:
                raise FileNotFoundError(f"no object {key} in {storage.url}") from None
            except TRANSPORT_ERRORS as exc:  # a body cut short on every try: not an OssError
                raise storage._failed("read", key, exc) from None

    def _attempts(self, fn, *args):
        return Retrying(**read_policy())(fn, *args)

    def _get(self, position, if_match=""):
        ranged = position > 0 or self.end is not None
        last = self.end - 1 if self.end is not None else None
        return self.storage.reader.get_object(
            self.key, byte_range=(position, last) if ranged else None,
            headers={"If-Match": f'"{if_match}"'} if if_match else None)

    def _begin(self, offset):
        try:
            result = self._get(offset)
        except oss2.exceptions.ServerError as exc:
            if exc.status != 416 or offset <= 0:
                raise
            if self.end is not None:
                # A range that starts past the end: none of its bytes exist. The caller
                # counts what it gets (a section's length check says what is missing).
                self.start = self.position = offset
                self.etag = _etag(exc.headers.get("ETag", ""))
                return b""
            result = self._get(0)  # an offset past the end: the object shrank, read it all
        self.etag = _etag(result.etag)
        if result.status == 206 or offset <= 0:
            self.start = self.position = offset
            self.size = self.start + (result.content_length or 0)
            return self._take(result)
        # OSS answers a range it does not like with the whole object (200), not an error:
        # a range still gets its own bytes (skipped to, and cut at its end); an open read
        # from an offset gets the whole object, and `start` says so.
        if self.end is not None:
            self.start = self.position = offset
            self.size = min(self.end, result.content_length or 0)
            return self._take(result, skip=offset)
        self.start = self.position = 0
        self.size = result.content_length or 0
        return self._take(result)

    def _resume(self):
        result = self._get(self.position, if_match=self.etag)
        # A server that ignored the range sent it all: pass over what was already received.
        return self._take(result, skip=self.position if result.status != 206 else 0)

    def _want(self):
        """How many bytes to read next: a chunk, or what is left of the range."""
        if self.end is None:
            return self.chunk_size
        return max(0, min(self.chunk_size, self.end - self.position))

    def _take(self, result, skip=0):
        """Makes `result` the stream and returns its first chunk."""
        try:
            while skip:
                passed = result.read(min(skip, self.chunk_size))
                if not passed:
                    raise ConnectionError("the object ended before the resume point")
                skip -= len(passed)
            want = self._want()
            data = result.read(want) if want else b""
        except BaseException:
            result.close()
            raise
        self.stream = result
        self.position += len(data)
        return data

    def chunks(self):
        data, self.first = self.first, b""
        try:
            while data:
                yield data
                data = self._next()
        finally:
            self.close()

    def _next(self):
        want = self._want()
        if not want:  # the range is read: the rest of a whole-object answer stays unread
            return b""
        try:
            data = self.stream.read(want)
        except TRANSPORT_ERRORS as exc:
            self.close()
            log.warning("%s: the connection dropped after %d of %d bytes (%s); resuming there",
                        self.key, self.position, self.size, _transport_kind(exc))
            return self._resumed()
        self.position += len(data)
        return data

    def _resumed(self):
        storage = self.storage
        try:
            return self._attempts(self._resume)
        except (oss2.exceptions.PreconditionFailed, oss2.exceptions.NoSuchKey):
            raise StorageFailed(
                f"{self.key} in bucket {storage.bucket_name} at {storage.settings.endpoint} "
                f"changed while it was read (it is no longer ETag {self.etag}; read "
                f"{self.position:,} of {self.size:,} bytes)",
                "something replaced or deleted it meanwhile: run again to read what is there now") from None
        except TRANSPORT_ERRORS + (oss2.exceptions.OssError,) as exc:
            raise storage._failed("read", self.key, exc,
                                  f" after {self.position:,} of {self.size:,} bytes") from None

    def close(self):
        if self.stream is not None:
            self.stream.close()
            self.stream = None


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
