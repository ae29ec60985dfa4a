"""The storage seam: where backups are written and read back.

One Protocol with a handful of verbs and one module per backend (OSS via oss2, a local
directory), picked by the target: `oss://bucket/prefix/` or a filesystem path.
"""
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional, Protocol


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

    def put_bytes(self, key: str, data: bytes, overwrite: bool = True) -> StoredObject:
        """Small objects (manifests), same all-or-nothing rule."""

    def head(self, key: str) -> Optional[StoredObject]:
        """The object's size and checksums, or None when it does not exist."""

    def open(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The object's bytes as a stream. FileNotFoundError when it does not exist."""

    def list(self, prefix: str) -> Iterator[StoredObject]:
        """Objects under prefix in key order."""

    def delete(self, key: str) -> "Deleted":
        """Deletes key; deleting what does not exist succeeds (idempotent). Raises
        ObjectLocked when a retention policy (WORM) still protects the object."""

    def get_tags(self, key: str) -> dict:
        """The object's tags ({} when none). FileNotFoundError when it does not exist."""

    def set_tags(self, key: str, tags: dict) -> None:
        """Replaces the object's tags. FileNotFoundError when it does not exist."""


def read_chunks(stream, chunk_size):
    """Yields a readable stream's bytes chunk by chunk, closing it at the end."""
    with stream:
        while True:
            data = stream.read(chunk_size)
            if not data:
                return
            yield data


def open_storage(target, oss_settings=None):
    """`oss://bucket/prefix` -> OSS (needs oss_settings); anything else is a directory."""
    if target.startswith("oss://"):
        from .oss import OSSStorage
        bucket, _, prefix = target[len("oss://"):].partition("/")
        return OSSStorage(oss_settings, bucket, normalise_prefix(prefix))
    from .directory import DirectoryStorage
    return DirectoryStorage(target)


def normalise_prefix(prefix):
    prefix = prefix.strip("/")
    return prefix + "/" if prefix else ""
