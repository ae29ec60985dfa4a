"""The storage seam: where backups are written and read back.

One Protocol with a handful of verbs and one module per backend (OSS via oss2, a local
directory), picked by the target: `oss://bucket/prefix/` or a filesystem path.
"""
import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional, Protocol

from ..errors import ConfigInvalid


@dataclass
class StoredObject:
    key: str
    size: int
    etag: str = ""
    crc64: str = ""  # OSS CRC64-ECMA as a decimal string; "" where unknown
    version_id: str = ""
    parts: int = 0
    last_modified: float = 0.0
    extra: dict = field(default_factory=dict)
    # OSS: Standard / IA / Archive / ColdArchive / DeepColdArchive ("" for a directory),
    # and x-oss-restore for a frozen one (archive.py reads both).
    storage_class: str = ""
    restore: str = ""


@dataclass
class Deleted:
    key: str
    delete_marker: bool = False  # versioned bucket: the bytes stay as an old version
    version_id: str = ""


class ObjectLocked(Exception):
    """The object is under a retention policy (WORM) and cannot be deleted yet."""


class Storage(Protocol):
    url: str  # where this is, for messages and manifests (never holds a secret)
    prefix: str  # key prefix of the backups, e.g. "db-backups/"

    def put_stream(self, key: str, chunks: Iterable[bytes], expected_size: int = 0,
                   overwrite: bool = True) -> StoredObject:
        """Writes the chunks as one object that appears whole or not at all: on any
        failure, also one raised by `chunks`, nothing is left behind (no partial object,
        no open multipart upload) and the error propagates. With overwrite=False an
        existing object is never replaced (FileExistsError)."""

    def put_bytes(self, key: str, data: bytes, overwrite: bool = True,
                  content_type: Optional[str] = None,
                  content_disposition: Optional[str] = None) -> StoredObject:
        """Small objects (manifests, records, the status page), same all-or-nothing rule.
        OSS: the object has no ACL of its own (it is as private as the bucket, which
        setup-oss makes private) and keeps `content_type` / `content_disposition` as the
        headers GET sends back; a directory takes and ignores them."""

    def signed_url(self, key: str, expires_seconds: int) -> str:
        """A URL that opens `key` in a browser without credentials. OSS: a V1 query-signed
        GET URL valid for `expires_seconds`, 60 s to 7 days (else ConfigInvalid), on the
        custom domain bound to the bucket when one is set (OSSSettings.status_domain: on
        OSS's own domain a web page is downloaded, not shown); nothing is sent, so the key
        need not exist yet. Directory: the file's file:// URI, which never expires."""

    def head(self, key: str) -> Optional[StoredObject]:
        """The object's size and checksums, or None when it does not exist."""

    def open(self, key: str, chunk_size: int = 1 << 20, offset: int = 0,
             length: Optional[int] = None) -> "Reading":
        """The object's bytes from `offset` on, as a stream of chunks (a Reading: `start`
        says where they begin, `etag` which object they are). FileNotFoundError, at once,
        when it does not exist. A backend that can resume a read cut short does so itself,
        from the last byte received and only from the same object.
        With `length` (>= 1), only the bytes [offset, offset + length): no byte past the
        end is transferred, also when the read resumes; `start` is `offset`. Fewer bytes
        (none, for an offset past the end) where the object ends sooner: the caller
        counts them. ValueError for a negative offset or a length under 1 (a range of
        nothing is a caller's mistake, and OSS cannot ask for one)."""

    def list(self, prefix: str) -> Iterator[StoredObject]:
        """Objects under prefix in key order."""

    def delete(self, key: str) -> "Deleted":
        """Deletes key; deleting what does not exist succeeds (idempotent). Raises
        ObjectLocked when a retention policy (WORM) still protects the object."""

    def get_tags(self, key: str) -> dict:
        """The object's tags ({} when none). FileNotFoundError when it does not exist."""

    def set_tags(self, key: str, tags: dict) -> None:
        """Replaces the object's tags. FileNotFoundError when it does not exist."""


class Reading:
    """An object's bytes being read: iterate for the chunks. `start` is where they begin
    (the offset asked for, or 0 when the whole object came instead, as for an offset past
    its end), `etag` which object they are from; close() lets go of the file or connection,
    also when the bytes were not read to the end."""

    def __init__(self, chunks: Iterator[bytes], start: int = 0, etag: str = "", close=None):
        self._chunks, self.start, self.etag, self._close = chunks, start, etag, close

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        return next(self._chunks)

    def close(self):
        getattr(self._chunks, "close", lambda: None)()
        if self._close is not None:
            self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_chunks(stream, chunk_size, length=None):
    """Yields a readable stream's bytes chunk by chunk, closing it at the end; with
    `length`, at most that many bytes."""
    with stream:
        left = length
        while left is None or left > 0:
            data = stream.read(chunk_size if left is None else min(chunk_size, left))
            if not data:
                return
            if left is not None:
                left -= len(data)
            yield data


def check_range(offset, length):
    """ValueError for a range no backend can read (see Storage.open)."""
    if offset < 0:
        raise ValueError(f"offset {offset}: a read starts at byte 0 or later")
    if length is not None and length < 1:
        raise ValueError(f"length {length}: a ranged read takes at least one byte")


# OSS's rule for bucket names; oss2 refuses others with a ClientError that names neither.
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
BUCKET_RULE = ("OSS bucket names are 3-63 characters: lowercase letters, digits and hyphens, "
               "starting and ending with a letter or digit")


ANY_ORIGIN = "the backup target (--to / --from, BACKUP_TARGET or OSS_BACKUP_BUCKET)"


def check_target(target, origin=ANY_ORIGIN):
    """ConfigInvalid naming `origin` (the flag or variable the target came from), the
    value and OSS's rule when an `oss://` target's bucket is not a name OSS allows (oss2
    would raise a ClientError that names neither). Returns (bucket, prefix) of an
    `oss://` target, None for a directory."""
    if not target.startswith("oss://"):
        return None
    bucket, _, prefix = target[len("oss://"):].partition("/")
    if not BUCKET_NAME.match(bucket):
        named = "no bucket" if not bucket else f"bucket {bucket!r}"
        raise ConfigInvalid(f"{origin}: {target} names {named}; {BUCKET_RULE}",
                            "give it as oss://BUCKET/PREFIX, e.g. oss://l2c-backups/db-backups/")
    return bucket, normalise_prefix(prefix)


def open_storage(target, oss_settings=None, origin=ANY_ORIGIN):
    """`oss://bucket/prefix` -> OSS (needs oss_settings); anything else is a directory.
    A bucket name OSS does not allow is ConfigInvalid naming `origin` (check_target)."""
    oss_target = check_target(target, origin)
    if oss_target:
        from .oss import OSSStorage
        return OSSStorage(oss_settings, *oss_target)
    from .directory import DirectoryStorage
    return DirectoryStorage(target)


def normalise_prefix(prefix):
    prefix = prefix.strip("/")
    return prefix + "/" if prefix else ""
