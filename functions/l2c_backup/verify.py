"""The verify operation: read a stored backup end to end and say whether it is whole.

Checks, with bounded memory, reading, hashing and inflating at once (reading.py): every
gzip member decodes with the right CRC32 and length and nothing trails them; the SQL
starts like a pg_dump and ends with its completion marker; size and CRC64 match what
storage reports; SHA-256 and size match the manifest (waited for briefly: it is written
just after the object); where the manifest holds a table index (issue 14), the index
against the object too (IndexCheck: every section's SHA-256, boundaries on members,
sections in order tiling object and SQL, each section's first statement of its kind), as
the object is read once. The verdict goes on the object as tags (`verify=ok|failed`, `verify-reason=<code>`) and into
`<key>.verify.json`; a failed one raises an urgent alert.

An encrypted backup (`.sql.gz.age`, age.py) is checked in one of two ways. With an
identity that the manifest lists among its recipients, everything above, on the
plaintext, while the ciphertext is hashed and every chunk's tag checked (`age-header`,
`age-chunk`, `truncated`). Without one (the OSS-trigger function is given none, by design)
it reads the object once and decrypts nothing: size, SHA-256 and CRC64 of the stored bytes
against storage and the manifest, and the age header (well formed, as long as the manifest
says, one X25519 stanza per recipient it lists). Such a verdict is still `ok`: every byte
is the one written, so status, prune, the watchdog and the drill count it as verified; it
says `content_checked: false` (and the tag `verify-content=needs-identity`), since gzip
members, dump markers and the index need the plaintext: the drill, a restore or
`l2c-backup verify` with BACKUP_AGE_IDENTITY_FILE check those.
"""
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field

from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from . import age, alerts, archive, manifest, names
from .deflate_engine import ENGINE
from .dump_entries import qualified_name
from .errors import BackupNotFound, ConfigInvalid
from .logs import bound
from .reading import READ_SIZE, Broken, StoredHashes, backup_reader, section_name

log = logging.getLogger(__name__)

VERIFY_SUFFIX = ".verify.json"

# Reason codes: short, stable, fit for a tag value and an alert.
REASONS = {
    "ok": "the backup is whole",
    "empty": "the object is empty",
    "not-gzip": "the object is not gzip data",
    "truncated": "the object stops early: in the middle of a gzip member or, encrypted, of an "
                 "age chunk or before its last chunk",
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
    "index-mismatch": "the manifest's table index does not match the object (a section's "
                      "bytes, members, SQL or first statement are not what it says)",
    "age-header": "the age header of an encrypted backup is malformed, fails its MAC, or is "
                  "not the one its manifest describes (length, recipients)",
    "age-chunk": "a chunk of an encrypted backup fails authentication (a changed byte, or "
                 "chunks swapped or reordered)",
}

# Where an encrypted backup's content was not checked: the note, the verdict's tag.
NEEDS_IDENTITY = ("content (gzip members, dump markers, index) not checked: it needs an age "
                  "identity of one of its recipients (BACKUP_AGE_IDENTITY_FILE)")
CONTENT_TAG = {"verify-content": "needs-identity"}
# An age header is one line per recipient and a MAC; no header of ours comes near this.
HEADER_PEEK = 64 * 1024


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
    # False: an encrypted backup checked without its identity (its stored bytes and age
    # header only); `detail` then says what was not checked
    content_checked: bool = True
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
        if not self.content_checked:
            out["content_checked"] = False
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


def check_object(storage, key, manifest_wait_seconds=60, whole_members=True, identities=()):
    """Reads `key` and returns its Verdict (no side effects). BackupNotFound when there
    is no such object; StorageFailed when the storage cannot be read (that is no verdict).
    The manifest is read first (waited for: it lands just after the object): where it
    lists the size of every member and they add up to the object's, whole members go to
    the fast engine (reading.py); otherwise, or with whole_members=False, the object is
    inflated as a plain gzip stream. Same checks, same reasons, either way.
    An encrypted backup is decrypted and checked whole with those of `identities`
    (age.Identity) that its manifest lists as recipients; with none, only its stored bytes
    and age header are checked, nothing decrypted (the verdict's content_checked=False)."""
    started = time.monotonic()
    info = storage.head(key)
    if info is None:
        raise not_found(storage, key)
    verdict = Verdict(key, "ok", etag=info.etag, version_id=info.version_id,
                      checked_at=names.now().isoformat())
    doc, unusable = _manifest(storage, key, manifest_wait_seconds)
    sealed = manifest.client_side(doc)
    encrypted = sealed is not None or names.is_encrypted_key(key)
    openers = [i for i in identities if i.recipient in sealed["recipients"]] if sealed else []
    reader = index = header = None
    try:
        try:
            reading = storage.open(key, READ_SIZE)
        except FileNotFoundError:  # deleted since the HEAD above
            raise not_found(storage, key) from None
        if encrypted and not openers:
            verdict.content_checked = False
            verdict.detail = NEEDS_IDENTITY + _not_listed(identities, sealed)
            reader = StoredBytes(reading, crc64=bool(info.crc64))
            with reader:
                reader.run()
            header = reader.header
        else:
            index = IndexCheck.of(doc)
            # CRC64 only where storage reports one (a directory does not): nothing to compare
            reader = backup_reader(reading, doc, key, info.size, openers, whole_members,
                                   crc64=bool(info.crc64), observe=index.see_bytes if index else None)
            verdict.extra["inflate"] = (f"whole members, {ENGINE}" if reader.whole_members
                                        else "zlib stream")
            try:
                with reader:
                    reader.run(index.see_sql if index else None)
            except ConfigInvalid:
                raise Broken("age-header", "the manifest lists " + ", ".join(
                    i.recipient for i in openers) + " among its recipients, but the header "
                    "does not open with that identity") from None
            header = reader.decrypt.header if reader.decrypt else None
        if reader.bytes != info.size:
            raise Broken("size-mismatch", f"read {reader.bytes}, storage says {info.size}")
        if info.crc64 and reader.crc64 != info.crc64:
            raise Broken("crc64-mismatch", f"read {reader.crc64}, OSS says {info.crc64}")
        if unusable is not None:
            raise unusable
        if sealed:
            check_sealed(doc, sealed, header, reader.bytes)
        _check_against(doc, reader.sha256, reader.bytes)
        if index:
            # after the object's own checks: damage to the object tells more
            index.finish(reader.sql_bytes)
            verdict.extra["sections"] = len(index.sections)
    except Broken as broken:
        verdict.reason, verdict.detail = broken.reason, broken.detail
    finally:
        if reader is not None:
            verdict.bytes, verdict.members, verdict.sql_bytes = (reader.bytes, reader.members,
                                                                 reader.sql_bytes)
            verdict.sha256, verdict.crc64 = reader.sha256, reader.crc64
        verdict.seconds = time.monotonic() - started
    return verdict


def _not_listed(identities, sealed):
    """Why the identities given did not serve, when some were given."""
    if not identities or not sealed:
        return ""
    return (f"; the identities given ({', '.join(i.recipient for i in identities)}) are not "
            f"among its recipients ({', '.join(sealed['recipients'])})")


def check_sealed(doc, sealed, header, size):
    """The age header and length of an encrypted object against its manifest: a header
    that is not the one written (another length, another number of recipients) or an
    object cut short is named as such, before its SHA-256 says only that it differs."""
    if header.length != sealed["header_length"]:
        raise Broken("age-header", f"the header takes {header.length} bytes, the manifest "
                     f"says {sealed['header_length']}")
    stanzas = sum(1 for kind, _ in header.stanzas if kind == "X25519")
    if stanzas != len(sealed["recipients"]):
        raise Broken("age-header", f"the header holds {stanzas} X25519 recipient stanza(s), "
                     f"the manifest lists {len(sealed['recipients'])} recipient(s)")
    if size < doc["object"]["size"]:
        raise Broken("truncated", f"the object ends after {size} of the "
                     f"{doc['object']['size']} bytes its manifest records")


class StoredBytes(StoredHashes):
    """An encrypted object read without its identity: its size, SHA-256 and CRC64 taken
    as the bytes pass, and its age header parsed from the first of them (Broken
    "age-header" when malformed); nothing is decrypted and nothing kept but the header.
    Shaped like a reading.ObjectReader (run(), bytes, sha256, crc64, a context manager),
    for verify and the mirror. One thread: hashing (~1.4 GB/s) outruns any read."""

    members = sql_bytes = 0  # nothing inflated

    def __init__(self, chunks, crc64=False):
        super().__init__(crc64)
        self.chunks = chunks
        self.header = None
        self._first = bytearray()

    def run(self):
        try:
            for data in self.chunks:
                self.update(data)
                if self.header is None:
                    self._first += data[:HEADER_PEEK - len(self._first)]
                    if len(self._first) >= HEADER_PEEK:
                        self._parse()
            if self.header is None:
                self._parse()
        finally:
            self.close()

    def _parse(self):
        if not self._first:
            raise Broken("empty", "0 bytes")
        self.header = age.read_header(bytes(self._first))
        self._first = bytearray()

    def close(self):
        close = getattr(self.chunks, "close", None)
        if close is not None:
            close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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


# How far into a section's SQL its first statement is looked for: pg_dump's entry header
# and a COPY line with every column name fit in far less.
SECTION_PEEK = 64 * 1024
DATA_ENTRY_TYPES = (b"TABLE DATA", b"SEQUENCE SET", b"BLOBS")


class IndexCheck:
    """The manifest's table index held against the object while verify reads it once:
    `see_bytes` (every chunk, on the hash thread) hashes each section's bytes,
    `see_sql` (the SQL in order) keeps the first bytes of each section's SQL, `finish`
    says what does not match as Broken("index-mismatch") naming the section. The layout
    (manifest.validate: sections tiling the object, the SQL and the members in order;
    here: pre-data first, post-data last, member sizes listed) is checked before any
    byte is read; a layout that does not hold is reported at finish,
    after the object's own checks, and its sections are then not hashed."""

    @classmethod
    def of(cls, doc):
        """An IndexCheck for doc's index, or None when it has none (older backups)."""
        sections = manifest.sections_of(doc) if doc is not None else None
        return cls(doc, sections) if sections is not None else None

    def __init__(self, doc, sections):
        self.sections = sections
        self.problem = self._layout(doc, sections)
        self._hashes = [hashlib.sha256() for _ in sections]
        self._at = 0  # the section the next object byte belongs to
        self._left = sections[0]["length"] if sections and not self.problem else 0
        self._sql_at = 0  # SQL seen so far
        self._peeks = {}  # section number -> its first SQL bytes, while still filling
        self._starts = {}  # section number -> its first SQL bytes (SECTION_PEEK at most)
        self._next_start = 0  # the next section whose SQL start is still to come

    @staticmethod
    def _layout(doc, sections):
        """What is wrong with the layout (a Broken), or None."""
        def wrong(number, text):
            section = sections[number]
            return Broken("index-mismatch", f"section {number} ({section_name(section)}): {text}")

        if not sections:
            return Broken("index-mismatch", "the index lists no section")
        if (doc.get("compression") or {}).get("member_sizes") is None:
            return Broken("index-mismatch", "the manifest lists no member sizes to hold the "
                          "index against")
        # manifest.validate already held the sections against the object, the SQL and
        # the members (they tile all three, in order); here what readers rely on besides
        for number, section in enumerate(sections):
            kind = section["kind"]
            if (kind == "pre-data") != (number == 0):
                return wrong(number, "pre-data comes first, and only there")
            if kind == "post-data" and number != len(sections) - 1:
                return wrong(number, "post-data comes last")
            if kind == "table-data" and not (section.get("schema") and section.get("table")):
                return wrong(number, "a table-data section names no table")
        return None

    def see_bytes(self, data):
        if self.problem:
            return
        view = memoryview(data)
        while view and self._at < len(self.sections):
            take = min(len(view), self._left)
            self._hashes[self._at].update(view[:take])
            view, self._left = view[take:], self._left - take
            if self._left == 0:
                self._at += 1
                if self._at < len(self.sections):
                    self._left = self.sections[self._at]["length"]

    def see_sql(self, piece):
        end = self._sql_at + len(piece)
        while (self._next_start < len(self.sections)
               and self.sections[self._next_start]["sql_offset"] < end):
            self._peeks[self._next_start] = bytearray()
            self._next_start += 1
        for number, peek in list(self._peeks.items()):
            section = self.sections[number]
            want = min(SECTION_PEEK, section["sql_length"])
            start = section["sql_offset"] + len(peek) - self._sql_at
            peek += piece[start:start + want - len(peek)]
            if len(peek) >= want:
                self._starts[number] = bytes(self._peeks.pop(number))
        self._sql_at = end

    def finish(self, sql_bytes):
        if self.problem:
            raise self.problem
        for number, peek in self._peeks.items():  # sections whose SQL ended early
            self._starts[number] = bytes(peek)
        last = self.sections[-1]
        if last["sql_offset"] + last["sql_length"] != sql_bytes:
            raise Broken("index-mismatch", f"the sections hold {last['sql_offset'] + last['sql_length']} "
                         f"bytes of SQL; the object inflates to {sql_bytes}")
        for number, section in enumerate(self.sections):
            name = f"section {number} ({section_name(section)})"
            digest = self._hashes[number].hexdigest()
            if digest != section["sha256"]:
                raise Broken("index-mismatch", f"{name}: bytes {section['offset']}+"
                             f"{section['length']} have SHA-256 {digest}, the index says "
                             f"{section['sha256']}")
            wrong = first_statement_problem(section, self._starts.get(number, b""))
            if wrong:
                raise Broken("index-mismatch", f"{name} at byte {section['sql_offset']} of "
                             f"the SQL: {wrong}")


def first_statement_problem(section, sql):
    """What is wrong with `sql`, the first bytes of a section, for its kind; "" if nothing.
    A table-data section starts with pg_dump's `Data for Name` header naming its table,
    then the COPY of that table; the others with the header of an entry of their kind."""
    kind = section["kind"]
    if kind == "pre-data":
        return ""  # at byte 0: the dump's own header, checked as a whole dump
    first = sql.split(b"\n", 3)
    header = first[1] if len(first) > 1 and first[0] == b"--" else b""
    if not header.startswith((b"-- Name: ", b"-- Data for Name: ")):
        return f"starts with {sql[:60]!r}, not with an entry header of pg_dump"
    entry_type = _header_field(header, b"Type")
    expected = {"table-data": b"TABLE DATA", "sequence-values": b"SEQUENCE SET",
                "large-objects": b"BLOBS"}.get(kind)
    if expected is not None and entry_type != expected:
        return f"its first entry is a {entry_type.decode(errors='replace')!r}, not {expected.decode()!r}"
    if kind == "post-data" and (entry_type in DATA_ENTRY_TYPES
                                or not header.startswith(b"-- Name: ")):
        return f"its first entry is a {entry_type.decode(errors='replace')!r}, not a post-data entry"
    if kind != "table-data":
        return ""
    table, schema = section["table"], section["schema"]
    named = (_header_name(header), _header_field(header, b"Schema"))
    if named != (_sanitised(table), _sanitised(schema)):
        return (f"its header names {named[1].decode(errors='replace')}."
                f"{named[0].decode(errors='replace')}, not {schema}.{table}")
    copy = _first_statement(sql.split(b"\n", 3)[3] if len(first) > 3 else b"")
    if not copy.startswith(b"COPY "):
        return f"its first statement is {copy[:60]!r}, not the COPY of {schema}.{table}"
    if qualified_name(copy, len(b"COPY "))[0] != [schema, table]:
        return f"its COPY is {copy[:80]!r}, not of {schema}.{table}"
    return ""


def _header_name(header):
    """The Name of a pg_dump entry header line (it may hold "; ", so up to "; Type: ")."""
    rest = header.split(b"Name: ", 1)[1]
    return rest.split(b"; Type: ", 1)[0]


def _header_field(header, field_name):
    marker = b"; " + field_name + b": "
    if marker not in header:
        return b""
    return header.rsplit(marker, 1)[1].split(b"; ", 1)[0]


def _sanitised(name):
    """A name as pg_dump writes it in an entry header: newlines become spaces."""
    return name.replace("\r", " ").replace("\n", " ").encode()


def _first_statement(sql):
    """The first line that is neither blank nor a comment nor a SET."""
    for line in sql.split(b"\n"):
        if line and not line.startswith((b"--", b"SET ")):
            return line
    return b""


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
                                   "verify-reason": verdict.reason,
                                   **({} if verdict.content_checked else CONTENT_TAG)})
    return True


def verify(storage, key, manifest_wait_seconds=60, recheck=False, request_id="",
           wait_archive=True, identities=()):
    """Checks one backup, records the verdict, alerts on failure. Idempotent: the same
    object checked again by a repeated event returns the recorded verdict, no new alert.
    `identities` (age.Identity) open encrypted backups for the full check (check_object).
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
        verdict = check_object(storage, key, manifest_wait_seconds, identities=identities)
        # With no verdict on record, the first writer wins: a duplicate event checking at
        # the same moment finds the file taken and stays quiet.
        if not record(storage, verdict, overwrite=earlier is not None or recheck):
            return recorded_verdict(storage, key) or verdict
        if verdict.ok and not verdict.content_checked:
            log.info("verified the stored bytes: %d bytes, SHA-256 and age header as the "
                     "manifest says, in %.1fs; %s", verdict.bytes, verdict.seconds, verdict.detail)
        elif verdict.ok:
            log.info("verified: %d bytes, %d members, %d bytes of SQL in %.1fs", verdict.bytes,
                     verdict.members, verdict.sql_bytes, verdict.seconds)
        else:
            log.error("verify failed: %s (%s)", verdict.reason, verdict.detail)
            alerts.send(alerts.Alert(
                "urgent", "verify failed", f"{REASONS[verdict.reason]}: {verdict.detail}",
                {"key": key, "reason": verdict.reason, "bytes": verdict.bytes}))
        return verdict
