"""The verify operation: read a stored backup end to end and say whether it is whole.

Checks, as one stream with bounded memory: every gzip member decodes with the right
CRC32 and length and nothing trails them; the SQL starts like a pg_dump and ends with its
completion marker; size and CRC64 match what storage reports; SHA-256 and size match the
manifest (waited for briefly: it is written just after the object). The verdict goes on
the object as tags (`verify=ok|failed`, `verify-reason=<code>`) and into
`<key>.verify.json`; a failed one raises an urgent alert.
"""
import hashlib
import json
import logging
import time
import zlib
from dataclasses import asdict, dataclass, field

from oss2.utils import Crc64
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from . import alerts, archive, manifest, names
from .dump import CLUSTER_DUMP_COMPLETE, DUMP_COMPLETE, ends_with_marker
from .errors import BackupNotFound
from .logs import bound

log = logging.getLogger(__name__)

VERIFY_SUFFIX = ".verify.json"
READ_SIZE = 1 << 20
MAX_OUT = 8 << 20  # inflate at most this much per step: a gzip bomb cannot blow memory
HEAD_KEEP = 4096
TAIL_KEEP = 4096
DUMP_HEADERS = (b"--\n-- PostgreSQL database dump\n--", b"--\n-- PostgreSQL database cluster dump\n--")

# Reason codes: short, stable, fit for a tag value and an alert.
REASONS = {
    "ok": "the backup is whole",
    "empty": "the object is empty",
    "not-gzip": "the object is not gzip data",
    "truncated": "the gzip stream stops in the middle of a member",
    "gzip-corrupt": "a gzip member fails to decode or its CRC32/length check fails",
    "trailing-garbage": "bytes that are not gzip follow the last member",
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


class Broken(Exception):
    def __init__(self, reason, detail):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class GzipStreamCheck:
    """Feeds a multi-member gzip stream through zlib, keeping only the SQL's head and tail."""

    def __init__(self, sink=None):
        self.sink = sink  # receives the SQL as it is inflated (restore); None just checks
        self.inflater = None
        self.members = 0
        self.sql_bytes = 0
        self.compressed = 0
        self.head = bytearray()
        self.tail = b""
        self.carry = b""  # the first byte of a member header split across reads

    def feed(self, data):
        data = self.carry + data
        self.carry = b""
        while data:
            if self.inflater is None:
                if len(data) < 2:
                    self.carry = data
                    return
                if data[:2] != b"\x1f\x8b":
                    if self.members:
                        raise Broken("trailing-garbage", f"{len(data)}+ bytes after member "
                                      f"{self.members} (at byte {self.compressed}) are not gzip")
                    raise Broken("not-gzip", f"starts with {data[:4].hex()} instead of 1f8b")
                self.inflater = zlib.decompressobj(31)
                self.members += 1
            start_unused = len(data)
            try:
                self._sql(self.inflater.decompress(data, MAX_OUT))
                while self.inflater.unconsumed_tail:
                    self._sql(self.inflater.decompress(self.inflater.unconsumed_tail, MAX_OUT))
            except zlib.error as err:
                raise Broken("gzip-corrupt", f"member {self.members}: {err}") from None
            if self.inflater.eof:
                data = self.inflater.unused_data
                self.compressed += start_unused - len(data)
                self.inflater = None
            else:
                self.compressed += start_unused
                data = b""

    def _sql(self, out):
        if len(self.head) < HEAD_KEEP:
            self.head += out[:HEAD_KEEP - len(self.head)]
        self.tail = (self.tail + out[-TAIL_KEEP:])[-TAIL_KEEP:]
        self.sql_bytes += len(out)
        if self.sink is not None and out:
            self.sink(out)

    def finish(self):
        if self.carry:
            raise Broken("trailing-garbage", "one stray byte after the last member")
        if self.inflater is not None:
            raise Broken("truncated", f"member {self.members} ends early after "
                          f"{self.sql_bytes} bytes of SQL")
        if self.members == 0:
            raise Broken("empty", "0 bytes")
        if not any(h in self.head.replace(b"\r\n", b"\n") for h in DUMP_HEADERS):
            raise Broken("not-a-dump", f"first bytes: {bytes(self.head[:60])!r}")
        if not (ends_with_marker(self.tail, DUMP_COMPLETE)
                or ends_with_marker(self.tail, CLUSTER_DUMP_COMPLETE)):
            raise Broken("incomplete-dump", f"last bytes: {self.tail[-80:]!r}")


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


def check_object(storage, key, manifest_wait_seconds=60):
    """Streams `key` and returns its Verdict (no side effects). BackupNotFound when there
    is no such object; StorageFailed when the storage cannot be read (that is no verdict)."""
    started = time.monotonic()
    info = storage.head(key)
    if info is None:
        raise not_found(storage, key)
    verdict = Verdict(key, "ok", etag=info.etag, version_id=info.version_id,
                      checked_at=names.now().isoformat())
    gz, sha, crc = GzipStreamCheck(), hashlib.sha256(), Crc64(0)
    try:
        check_crc = bool(info.crc64)  # a directory reports none: nothing to compare with
        try:
            reading = storage.open(key, READ_SIZE)
        except FileNotFoundError:  # deleted since the HEAD above
            raise not_found(storage, key) from None
        for data in reading:
            sha.update(data)
            if check_crc:
                crc.update(data)
            verdict.bytes += len(data)
            gz.feed(data)
        gz.finish()
        if verdict.bytes != info.size:
            raise Broken("size-mismatch", f"read {verdict.bytes}, storage says {info.size}")
        if info.crc64 and str(crc.crc) != info.crc64:
            raise Broken("crc64-mismatch", f"read {crc.crc}, OSS says {info.crc64}")
        _check_manifest(storage, key, sha.hexdigest(), verdict.bytes, manifest_wait_seconds)
    except Broken as broken:
        verdict.reason, verdict.detail = broken.reason, broken.detail
    finally:
        verdict.members, verdict.sql_bytes = gz.members, gz.sql_bytes
        verdict.sha256 = sha.hexdigest()
        verdict.crc64 = str(crc.crc) if info.crc64 else ""
        verdict.seconds = time.monotonic() - started
    return verdict


def _check_manifest(storage, key, sha256, size, wait_seconds):
    data = wait_for_manifest(storage, key, wait_seconds)
    if data is None:
        raise Broken("manifest-missing", f"no {names.manifest_key(key)} after {wait_seconds}s")
    try:
        doc = manifest.loads(data)
    except ValueError as err:
        raise Broken("manifest-invalid", str(err)) from None
    if doc["key"] != key:
        raise Broken("manifest-invalid", f"the manifest describes {doc['key']}")
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
