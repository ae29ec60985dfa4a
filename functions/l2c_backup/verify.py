"""The verify operation: read a stored backup end to end and say whether it is whole.

Checks, with bounded memory, reading, hashing and inflating at once (reading.py): every
gzip member decodes with the right CRC32 and length and nothing trails them; the SQL
starts like a pg_dump and ends with its completion marker; size and CRC64 match what storage reports; SHA-256 and size match the
manifest (waited for briefly: it is written just after the object). The verdict goes on
the object as tags (`verify=ok|failed`, `verify-reason=<code>`) and into
`<key>.verify.json`; a failed one raises an urgent alert.
"""
import json
import logging
import time
from dataclasses import asdict, dataclass, field

from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from . import alerts, archive, manifest, names
from .deflate_engine import ENGINE
from .errors import BackupNotFound
from .logs import bound
from .reading import READ_SIZE, Broken, ObjectReader, member_cap, member_sizes

log = logging.getLogger(__name__)

VERIFY_SUFFIX = ".verify.json"

# Reason codes: short, stable, fit for a tag value and an alert.
REASONS = {
    "ok": "the backup is whole",
    "empty": "the object is empty",
    "not-gzip": "the object is not gzip data",
    "truncated": "the gzip stream stops in the middle of a member",
    "gzip-corrupt": "a gzip member fails to decode or its CRC32/length check fails",
    "trailing-garbage": "bytes that are not gzip follow the last member",
    "member-too-large": "a gzip member is larger than the backup's block size allows "
                        "(a gzip bomb, or not written by l2c-backup)",
    "not-a-dump": "the SQL does not start like a pg_dump",
    "incomplete-dump": "the SQL does not end with pg_dump's completion marker",
    "size-mismatch": "the bytes read differ in number from what storage reports",
    "crc64-mismatch": "the CRC64 of the bytes read differs from what OSS reports",
    "manifest-missing": "no manifest appeared beside the object",
    "manifest-invalid": "the manifest is not valid",
    "sha256-mismatch": "the SHA-256 differs from the manifest's",
}


@dataclass
class Verdict:
    key: str
    reason: str
    detail: str = ""
    etag: str = ""
    version_id: str = ""
    bytes: int = 0
    sql_bytes: int = 0
    members: int = 0
    sha256: str = ""
    crc64: str = ""
    seconds: float = 0.0
    checked_at: str = ""
    repeated: bool = False  # an earlier run already recorded this verdict
    extra: dict = field(default_factory=dict)

    @property
    def ok(self):
        return self.reason == "ok"

    def summary(self):
        out = {"key": self.key, "verdict": "ok" if self.ok else "failed", "reason": self.reason,
               "detail": self.detail, "bytes": self.bytes, "sql_bytes": self.sql_bytes,
               "seconds": round(self.seconds, 3)}
        if self.repeated:
            out["repeated"] = True
        return out


def wait_for_manifest(storage, key, wait_seconds):
    """The manifest's bytes, polling up to wait_seconds (it lands just after the object)."""
    def fetch():
        try:
            return b"".join(storage.open(names.manifest_key(key)))
        except FileNotFoundError:
            return None
    retrying = Retrying(retry=retry_if_result(lambda data: data is None), wait=wait_fixed(1),
                        stop=stop_after_delay(wait_seconds), retry_error_callback=lambda _: None)
    return retrying(fetch)


def not_found(storage, key):
    """The error for a key that is not there: one line naming key and storage."""
    return BackupNotFound(f"no object {key} in {storage.url}",
                          "check the key (`l2c-backup status` lists the backups) and --from")


def check_object(storage, key, manifest_wait_seconds=60, whole_members=True):
    """Reads `key` and returns its Verdict (no side effects). BackupNotFound when there
    is no such object; StorageFailed when the storage cannot be read (that is no verdict).
    The manifest is read first (waited for: it lands just after the object): where it
    lists the size of every member and they add up to the object's, whole members go to
    the fast engine (reading.py); otherwise, or with whole_members=False, the object is
    inflated as a plain gzip stream. Same checks, same reasons, either way."""
    started = time.monotonic()
    info = storage.head(key)
    if info is None:
        raise not_found(storage, key)
    verdict = Verdict(key, "ok", etag=info.etag, version_id=info.version_id,
                      checked_at=names.now().isoformat())
    doc, unusable = _manifest(storage, key, manifest_wait_seconds)
    sizes = member_sizes(doc, info.size) if whole_members else None
    verdict.extra["inflate"] = f"whole members, {ENGINE}" if sizes is not None else "zlib stream"
    reader = None
    try:
        try:
            reading = storage.open(key, READ_SIZE)
        except FileNotFoundError:  # deleted since the HEAD above
            raise not_found(storage, key) from None
        # CRC64 only where storage reports one (a directory does not): nothing to compare
        reader = ObjectReader(reading, sizes, member_cap(doc or {}), crc64=bool(info.crc64))
        with reader:
            reader.run()
        if reader.bytes != info.size:
            raise Broken("size-mismatch", f"read {reader.bytes}, storage says {info.size}")
        if info.crc64 and reader.crc64 != info.crc64:
            raise Broken("crc64-mismatch", f"read {reader.crc64}, OSS says {info.crc64}")
        if unusable is not None:
            raise unusable
        _check_against(doc, reader.sha256, reader.bytes)
    except Broken as broken:
        verdict.reason, verdict.detail = broken.reason, broken.detail
    finally:
        if reader is not None:
            verdict.bytes, verdict.members, verdict.sql_bytes = (reader.bytes, reader.members,
                                                                 reader.sql_bytes)
            verdict.sha256, verdict.crc64 = reader.sha256, reader.crc64
        verdict.seconds = time.monotonic() - started
    return verdict


def _manifest(storage, key, wait_seconds):
    """(the manifest, None), or (None, the Broken it is) when it is missing or not valid:
    that verdict comes after the object's own checks, as damage tells more."""
    data = wait_for_manifest(storage, key, wait_seconds)
    if data is None:
        return None, Broken("manifest-missing", f"no {names.manifest_key(key)} after {wait_seconds}s")
    try:
        doc = manifest.loads(data)
    except ValueError as err:
        return None, Broken("manifest-invalid", str(err))
    if doc["key"] != key:
        return None, Broken("manifest-invalid", f"the manifest describes {doc['key']}")
    return doc, None


def _check_against(doc, sha256, size):
    if doc["object"]["sha256"] != sha256:
        raise Broken("sha256-mismatch", f"read {sha256}, manifest says {doc['object']['sha256']}")
    if doc["object"]["size"] != size:
        raise Broken("size-mismatch", f"read {size} bytes, manifest says {doc['object']['size']}")


def recorded_verdict(storage, key):
    """The verdict recorded in `<key>.verify.json`, or None."""
    try:
        doc = json.loads(b"".join(storage.open(key + VERIFY_SUFFIX)))
    except (FileNotFoundError, ValueError):
        return None
    fields = {k: doc[k] for k in Verdict.__dataclass_fields__ if k in doc}
    return Verdict(**dict(fields, repeated=True))


def record(storage, verdict, overwrite=True):
    """Writes the verdict as tags and `<key>.verify.json`. Returns False when another run
    recorded one first (overwrite=False, as for at-least-once event delivery)."""
    document = json.dumps(asdict(verdict), indent=2, sort_keys=True).encode()
    try:
        storage.put_bytes(verdict.key + VERIFY_SUFFIX, document, overwrite=overwrite)
    except FileExistsError:
        return False
    storage.set_tags(verdict.key, {"verify": "ok" if verdict.ok else "failed",
                                   "verify-reason": verdict.reason})
    return True


def verify(storage, key, manifest_wait_seconds=60, recheck=False, request_id="",
           wait_archive=True):
    """Checks one backup, records the verdict, alerts on failure. Idempotent: the same
    object checked again by a repeated event returns the recorded verdict, no new alert.
    BackupNotFound ("no object KEY in TARGET") when there is no such object; a read that
    fails (StorageFailed) records nothing.
    A backup in OSS's Archive class (its manifest, its verdict file) is restored by OSS
    first (archive.py): waited for, or with wait_archive=False ArchiveNotReadable."""
    with bound(key=key, request_id=request_id or None):
        # The backup only when it is to be checked: a repeated event (a CopyObject into
        # Archive fires one) never has OSS restore a checked one. A recheck asks for all
        # three at once, so --no-wait-archive needs one more run, not two.
        first = [key + VERIFY_SUFFIX] + ([key, names.manifest_key(key)] if recheck else [])
        archive.ensure_readable(storage, first, wait=wait_archive, command="`l2c-backup verify`")
        info = storage.head(key)
        if info is None:
            raise not_found(storage, key)
        earlier = recorded_verdict(storage, key)
        same_object = earlier is not None and earlier.etag == info.etag
        if same_object and not recheck:
            log.info("already verified (%s); nothing to do", earlier.reason)
            return earlier
        archive.ensure_readable(storage, [key, names.manifest_key(key)], wait=wait_archive,
                                command="`l2c-backup verify`")
        verdict = check_object(storage, key, manifest_wait_seconds)
        # With no verdict on record, the first writer wins: a duplicate event checking at
        # the same moment finds the file taken and stays quiet.
        if not record(storage, verdict, overwrite=earlier is not None or recheck):
            return recorded_verdict(storage, key) or verdict
        if verdict.ok:
            log.info("verified: %d bytes, %d members, %d bytes of SQL in %.1fs", verdict.bytes,
                     verdict.members, verdict.sql_bytes, verdict.seconds)
        else:
            log.error("verify failed: %s (%s)", verdict.reason, verdict.detail)
            alerts.send(alerts.Alert(
                "urgent", "verify failed", f"{REASONS[verdict.reason]}: {verdict.detail}",
                {"key": key, "reason": verdict.reason, "bytes": verdict.bytes}))
        return verdict
