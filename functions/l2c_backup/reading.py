"""Reading a stored backup back: its bytes read, hashed and inflated at once, on threads.

Verify, restore and mirror read every byte of a backup and check it (SHA-256, CRC64 where
storage reports one, every gzip member, the dump's first and last lines). Done in turn on
one thread, the wall is the sum of the steps; but reading (a file or a socket), SHA-256
and the inflate engine all release the GIL, so here they overlap:

    storage.open chunks --[l2c-read]--> queue --[l2c-hash: SHA-256, CRC64, cut into
    members]--> queue of members being inflated by [l2c-inflate x workers] --> the
    caller's thread, which takes the SQL in order (head, tail, the restore's psql)

Where the compressed size of every member is known (`compression.member_sizes` in the
manifests of our own backups, and only when they add up to the object's size), whole
members go to the fast engine (deflate_engine.inflate_member, libdeflate when it loads),
several at once. Otherwise (an old manifest, none, a list that does not fit the object,
or `whole_members=False`) the caller's thread inflates the stream with zlib as it
comes, as before, still overlapped with reading and hashing. Both ways give the same
checks and the same reasons (verify.REASONS).

Memory is bounded whatever the object's size: at most QUEUED_CHUNKS read chunks wait to
be hashed, one member is being put together, and 2 * workers members (each at most
`member_cap` bytes compressed and `member_cap` bytes of SQL) are in flight. A member
recorded larger than the cap, or whose trailer says it holds more SQL, is refused
("member-too-large"): a gzip bomb cannot blow memory, and none of our members comes near
(each holds one block of SQL). The streaming path inflates in MAX_OUT steps.

A section of a backup (the manifest's index: pre-data, one table's data, post-data ...)
is read alone with read_section: a ranged read of its bytes, its own members through the
same reader, then its length, SHA-256 and SQL length checked against the index. A
section is no whole dump, so the dump's header and completion marker are not looked for.

An encrypted backup (age.py; the manifest's encryption.client_side) is opened the same
way: its chunks are decrypted on the reading thread (ChaCha20-Poly1305 at ~2 GB/s on one
core), so SHA-256 and CRC64 are of the object as stored and everything after them sees
the gzip payload. A section of one is a ranged read of the age chunks that hold it.

Threads stop on the first error (raised to the caller in stream order, after the SQL
before it), on close() (also the generator's), and when the caller's thread is stopped
by a signal (signals.Stopped): close() sets the stop flag, every queue wait checks it,
and close() returns only once every thread has ended. A read blocked on the network
ends within the storage's socket timeout.
"""
import hashlib
import queue
import threading
import zlib
from concurrent.futures import Future, ThreadPoolExecutor

from oss2.utils import Crc64

from . import deflate_engine, manifest
from .compress import BLOCK_SIZE, default_workers
from .dump import CLUSTER_DUMP_COMPLETE, DUMP_COMPLETE, ends_with_marker
from .errors import ConfigInvalid

READ_SIZE = 1 << 20
MAX_OUT = 8 << 20  # the streaming path inflates at most this much per step
HEAD_KEEP = 4096
TAIL_KEEP = 4096
QUEUED_CHUNKS = 4  # read but not yet hashed; as many hashed but not yet inflated (streaming)
MEMBER_CAP_BLOCKS = 2  # a member may hold twice the block size the manifest records
MEMBER_CAP_CEILING = 64 << 20  # whatever a manifest claims
WAIT = 0.1  # seconds between looks at the stop flag while a queue is full or empty
DUMP_HEADERS = (b"--\n-- PostgreSQL database dump\n--", b"--\n-- PostgreSQL database cluster dump\n--")

_END = object()


class Broken(Exception):
    """The bytes are not a whole backup: `reason` is one of verify.REASONS."""

    def __init__(self, reason, detail):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def member_cap(doc):
    """The most bytes one member of this backup may take, compressed or inflated: twice
    the block size its manifest records (each member is one block of SQL)."""
    block = (doc.get("compression") or {}).get("block_size") or BLOCK_SIZE
    return min(MEMBER_CAP_BLOCKS * block, MEMBER_CAP_CEILING)


def member_sizes(doc, object_size):
    """The compressed size of every member, from the manifest, when they add up to the
    object's size as stored; else None (read as a plain gzip stream). A list that does
    not fit is no verdict by itself: the stream then finds what is wrong with the object
    (truncated, trailing garbage ...) and the manifest's size and SHA-256 say the rest."""
    if doc is None:
        return None
    sizes = (doc.get("compression") or {}).get("member_sizes")
    if sizes is None or sum(sizes) != object_size:
        return None
    return list(sizes)


class SqlWatch:
    """The SQL as it passes: its size, first and last bytes, and whether it is a whole
    pg_dump (header at the start, completion marker at the end)."""

    def __init__(self):
        self.sql_bytes = 0
        self.head = bytearray()
        self.tail = b""

    def see(self, out):
        if len(self.head) < HEAD_KEEP:
            self.head += out[:HEAD_KEEP - len(self.head)]
        self.tail = (self.tail + out[-TAIL_KEEP:])[-TAIL_KEEP:]
        self.sql_bytes += len(out)

    def finish(self):
        if not any(h in self.head.replace(b"\r\n", b"\n") for h in DUMP_HEADERS):
            raise Broken("not-a-dump", f"first bytes: {bytes(self.head[:60])!r}")
        if not (ends_with_marker(self.tail, DUMP_COMPLETE)
                or ends_with_marker(self.tail, CLUSTER_DUMP_COMPLETE)):
            raise Broken("incomplete-dump", f"last bytes: {self.tail[-80:]!r}")


class GzipStream:
    """A multi-member gzip stream inflated by zlib as its bytes come, in MAX_OUT steps."""

    def __init__(self):
        self.inflater = None
        self.members = 0
        self.compressed = 0
        self.carry = b""  # the first byte of a member header split across reads

    def pieces(self, data):
        """Yields the SQL that `data` completes."""
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
                yield self.inflater.decompress(data, MAX_OUT)
                while self.inflater.unconsumed_tail:
                    yield self.inflater.decompress(self.inflater.unconsumed_tail, MAX_OUT)
            except zlib.error as err:
                raise Broken("gzip-corrupt", f"member {self.members}: {err}") from None
            if self.inflater.eof:
                data = self.inflater.unused_data
                self.compressed += start_unused - len(data)
                self.inflater = None
            else:
                self.compressed += start_unused
                data = b""

    def finish(self, sql_bytes):
        if self.carry:
            raise Broken("trailing-garbage", "one stray byte after the last member")
        if self.inflater is not None:
            raise Broken("truncated", f"member {self.members} ends early after "
                         f"{sql_bytes} bytes of SQL")


class GzipStreamCheck:
    """The streaming check on one thread, fed by the caller (a gzip stream of any origin)."""

    def __init__(self, sink=None):
        self.sink = sink
        self.stream, self.sql = GzipStream(), SqlWatch()

    members = property(lambda self: self.stream.members)
    sql_bytes = property(lambda self: self.sql.sql_bytes)
    tail = property(lambda self: self.sql.tail)

    def feed(self, data):
        for out in self.stream.pieces(data):
            self.sql.see(out)
            if self.sink is not None and out:
                self.sink(out)

    def finish(self):
        self.stream.finish(self.sql.sql_bytes)
        if self.stream.members == 0:
            raise Broken("empty", "0 bytes")
        self.sql.finish()


def inflate(member, number, cap):
    """The SQL of one whole gzip member (the `number`th), or Broken with the reason the
    streaming path would give."""
    if member[:2] != b"\x1f\x8b":
        if number == 1:
            raise Broken("not-gzip", f"starts with {bytes(member[:4]).hex()} instead of 1f8b")
        raise Broken("trailing-garbage", f"the bytes after member {number - 1} are not gzip "
                     f"(they start with {bytes(member[:4]).hex()})")
    isize = int.from_bytes(member[-4:], "little")
    if isize > cap:
        raise Broken("member-too-large", f"member {number} says it holds {isize} bytes of "
                     f"SQL; a member of this backup holds at most {cap}")
    try:
        return deflate_engine.inflate_member(member, cap)
    except deflate_engine.InflateError as err:
        raise Broken("gzip-corrupt", f"member {number}: {err}") from None


class StoredHashes:
    """An object's bytes as stored, counted and hashed as they pass: SHA-256, and OSS's
    CRC64 where storage reports one (`crc64`): what verify compares with the manifest
    and with OSS."""

    def __init__(self, crc64=False):
        self.bytes = 0
        self._sha = hashlib.sha256()
        self._crc = Crc64(0) if crc64 else None

    def update(self, data):
        self._sha.update(data)
        if self._crc is not None:
            self._crc.update(data)
        self.bytes += len(data)

    @property
    def sha256(self):
        return self._sha.hexdigest()

    @property
    def crc64(self):
        return str(self._crc.crc) if self._crc is not None else ""


class ObjectReader:
    """One object's bytes read, hashed and inflated on threads; iterate for its SQL in
    order, then call finish() for the end-of-stream checks. `chunks` is the object's
    bytes (a storage Reading, or any iterable of bytes; it is iterated, and closed, on
    the reading thread). With `member_sizes` (see member_sizes()) whole members are
    inflated by the fast engine; `crc64` computes OSS's CRC64 too; `observe` sees every
    chunk too (verify hashes the index's sections with it). With `decrypt` (an
    age.Decryptor) `bytes`, `sha256` and `crc64` are of the object as stored, and the
    members, the SQL and `observe` of the plaintext. Use as a context manager (or call
    close()): no thread outlives it."""

    def __init__(self, chunks, member_sizes=None, cap=BLOCK_SIZE * MEMBER_CAP_BLOCKS,
                 crc64=False, workers=None, whole_dump=True, observe=None, decrypt=None):
        for number, size in enumerate(member_sizes or (), 1):
            if size > cap:
                _close(chunks)
                raise Broken("member-too-large", f"the manifest says member {number} takes "
                             f"{size} bytes; a member of this backup takes at most {cap}")
        self.chunks = chunks
        self.sizes = member_sizes
        self.cap = cap
        self.whole_members = member_sizes is not None
        # False for a part of a dump (a section): no dump header, no completion marker
        self.whole_dump = whole_dump
        self.observe = observe  # called with every chunk read, in order, on the read thread
        self.decrypt = decrypt
        self.workers = workers or default_workers()
        self.stored = StoredHashes(crc64)  # read and hashed so far (by the hashing thread)
        self.members = 0  # inflated and taken by the caller
        self.sql = SqlWatch()
        self.stream = GzipStream()
        self._stop = threading.Event()
        self._read = queue.Queue(QUEUED_CHUNKS)
        # whole members: futures of members being inflated; streaming: hashed chunks
        self._out = queue.Queue(2 * self.workers if self.whole_members else QUEUED_CHUNKS)
        self._pool = None
        self._threads = []
        self._iterated = self._started = self._closed = False

    sql_bytes = property(lambda self: self.sql.sql_bytes)
    bytes = property(lambda self: self.stored.bytes)
    sha256 = property(lambda self: self.stored.sha256)
    crc64 = property(lambda self: self.stored.crc64)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __iter__(self):
        if self._iterated:
            raise RuntimeError("an ObjectReader is read once")
        self._iterated = True
        return self._sql()

    def run(self, sink=None):
        """Reads it all, handing each piece of SQL to `sink`, then finish()."""
        for out in self:
            if sink is not None:
                sink(out)
        self.finish()

    def finish(self):
        """The checks that only the end can tell: complete members, something there,
        a whole pg_dump (with whole_dump=False only the first)."""
        if not self.whole_members:
            self.stream.finish(self.sql.sql_bytes)
        if not self.whole_dump:
            return
        if self.members == 0:
            raise Broken("empty", "0 bytes")
        self.sql.finish()

    def close(self):
        """Stops every thread and waits for them; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        for thread in self._threads:
            thread.join()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if not self._started:
            _close(self.chunks)

    # -- the caller's side ------------------------------------------------------------

    def _sql(self):
        self._start()
        try:
            while (item := self._take()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, Future):
                    out = item.result()
                    self.members += 1
                    self.sql.see(out)
                    yield out
                    continue
                for out in self.stream.pieces(item):
                    self.members = self.stream.members
                    self.sql.see(out)
                    if out:
                        yield out
                self.members = self.stream.members
        finally:
            self.close()

    def _take(self):
        while True:
            try:
                return self._out.get(timeout=WAIT)
            except queue.Empty:
                if not any(t.is_alive() for t in self._threads) and self._out.empty():
                    raise RuntimeError("the reading threads ended without a word") from None

    def _start(self):
        self._started = True
        if self.whole_members:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="l2c-inflate")
        for name, target in (("l2c-read", self._reading), ("l2c-hash", self._hashing)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    # -- the threads ------------------------------------------------------------------

    def _put(self, q, item):
        """Waits for room in `q`; False when stopped meanwhile."""
        while not self._stop.is_set():
            try:
                q.put(item, timeout=WAIT)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, q):
        while not self._stop.is_set():
            try:
                return q.get(timeout=WAIT)
            except queue.Empty:
                continue
        return _END

    def _reading(self):
        try:
            for data in self.chunks:
                if not self._pass(data, self.decrypt.feed(data) if self.decrypt else data):
                    return
            if self.decrypt and not self._pass(b"", self.decrypt.finish()):
                return
            self._put(self._read, _END)
        except BaseException as err:  # noqa: BLE001 - handed on, in stream order
            self._put(self._read, err)
        finally:
            _close(self.chunks)

    def _pass(self, stored, data):
        """Hands on one chunk: as stored (hashed) and its plaintext (the rest)."""
        if self.observe is not None:  # here: reading waits, hashing is busy
            self.observe(data)
        return self._put(self._read, (stored, data))

    def _hashing(self):
        try:
            cut = _Members(self.sizes) if self.whole_members else None
            while (item := self._get(self._read)) is not _END:
                if isinstance(item, BaseException):
                    self._put(self._out, item)
                    return
                stored, data = item
                self.stored.update(stored)
                if cut is None:
                    if not self._put(self._out, data):
                        return
                    continue
                for number, member in cut.feed(data):
                    if not self._put(self._out, self._pool.submit(inflate, member, number, self.cap)):
                        return
            if self._stop.is_set():
                return
            if cut is not None:
                cut.finish()
            self._put(self._out, _END)
        except BaseException as err:  # noqa: BLE001 - handed on, in stream order
            if not self._stop.is_set():
                self._put(self._out, err)


class _Members:
    """Cuts a stream of chunks into whole members of the recorded sizes."""

    def __init__(self, sizes):
        self.sizes = sizes
        self.number = 0  # members cut so far
        self.parts, self.have = [], 0
        self.total = 0

    def feed(self, data):
        view = memoryview(data)
        while view:
            if self.number >= len(self.sizes):
                raise Broken("trailing-garbage", f"{len(view)}+ bytes follow the last of the "
                             f"{len(self.sizes)} members the manifest lists")
            take = min(len(view), self.sizes[self.number] - self.have)
            self.parts.append(view[:take])
            self.have += take
            view = view[take:]
            if self.have == self.sizes[self.number]:
                member = b"".join(self.parts)
                self.parts, self.have = [], 0
                self.number += 1
                yield self.number, member

    def finish(self):
        if self.number < len(self.sizes):
            raise Broken("truncated", f"member {self.number + 1} ends early: {self.have} of "
                         f"its {self.sizes[self.number]} bytes (the object ends there)")


def section_name(section):
    """How messages name a section of the index: `table-data public.orders`, `post-data`."""
    kind = section.get("kind", "section")
    if kind == "table-data":
        return f"table-data {section.get('schema')}.{section.get('table')}"
    return kind


def section_members(doc, section):
    """The compressed sizes of the section's members (its slice of
    compression.member_sizes), or None when the manifest lists none (the section is then
    inflated as a gzip stream). Broken("index-mismatch") when the slice does not start at
    the section's offset or does not add up to its length: the index and the member
    sizes disagree, and neither can be trusted to cut the object."""
    sizes = (doc.get("compression") or {}).get("member_sizes")
    if sizes is None:
        return None
    name, first, count = section_name(section), section["first_member"], section["members"]
    if count < 1 or first + count > len(sizes):
        raise Broken("index-mismatch", f"{name}: members {first}+{count} of the "
                     f"{len(sizes)} the manifest lists")
    if sum(sizes[:first]) != section["offset"]:
        raise Broken("index-mismatch", f"{name}: member {first} starts at byte "
                     f"{sum(sizes[:first])}, the index says the section starts at "
                     f"{section['offset']}")
    mine = sizes[first:first + count]
    if sum(mine) != section["length"]:
        raise Broken("index-mismatch", f"{name}: its {count} members take {sum(mine)} "
                     f"bytes, the index says {section['length']}")
    return mine


class SectionReader:
    """One section of a backup read alone (a ranged read of its bytes): iterate for its
    SQL in order, then finish() checks its length, SHA-256 and SQL length against the
    index; a mismatch, or damage found on the way, is Broken naming the section. `bytes`
    is what was read of the object so far. Use as a context manager: no thread outlives
    it. FileNotFoundError at once when the object is not there."""

    def __init__(self, storage, key, doc, section, workers=None, identities=None):
        self.section = section
        self.name = section_name(section)
        if section["length"] < 1:  # a gzip member takes 18 bytes or more
            raise Broken("index-mismatch", f"{self.name}: the index says it takes "
                         f"{section['length']} bytes")
        sizes = section_members(doc, section)
        sealed = manifest.client_side(doc)
        if sealed:
            from . import age  # age.py raises this module's Broken
            chunks = age.open_range(storage, key, needed_identities(doc, key, identities),
                                    sealed["header_length"], sealed["payload_size"],
                                    section["offset"], section["length"], READ_SIZE)
        else:
            chunks = storage.open(key, READ_SIZE, offset=section["offset"], length=section["length"])
        try:
            self._reader = ObjectReader(chunks, sizes, member_cap(doc), workers=workers,
                                        whole_dump=False)
        except Broken as broken:
            raise self._named(broken) from None

    bytes = property(lambda self: self._reader.bytes)
    sql_bytes = property(lambda self: self._reader.sql_bytes)
    sha256 = property(lambda self: self._reader.sha256)

    def _named(self, broken):
        return Broken(broken.reason, f"{self.name} (bytes {self.section['offset']:,}+"
                      f"{self.section['length']:,} of the object): {broken.detail}")

    def __iter__(self):
        try:
            yield from self._reader
        except Broken as broken:
            raise self._named(broken) from None

    def finish(self):
        section = self.section
        try:
            self._reader.finish()
            if self.bytes != section["length"]:
                raise Broken("truncated", f"read {self.bytes} of its {section['length']} "
                             "bytes (the object ends there)")
            if self.sha256 != section["sha256"]:
                raise Broken("sha256-mismatch", f"read SHA-256 {self.sha256}, the index "
                             f"says {section['sha256']}")
            if self.sql_bytes != section["sql_length"]:
                raise Broken("index-mismatch", f"{self.sql_bytes} bytes of SQL, the index "
                             f"says {section['sql_length']}")
        except Broken as broken:
            raise self._named(broken) from None

    def close(self):
        self._reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_section(storage, key, doc, section, workers=None, identities=None):
    """A SectionReader of `section` (an entry of doc's index) of the backup `key`:

        with read_section(storage, key, doc, section) as sql:
            for piece in sql:
                ...
            sql.finish()

    An encrypted backup is opened with `identities` (None: config.load_identities())."""
    return SectionReader(storage, key, doc, section, workers, identities)


def open_backup(storage, key, doc, identities=None, **options):
    """An ObjectReader of the whole backup `key` described by manifest `doc` (see
    backup_reader)."""
    stored = None if manifest.client_side(doc) else storage.head(key)
    return backup_reader(storage.open(key, READ_SIZE), doc, key,
                         stored.size if stored is not None else None, identities, **options)


def backup_reader(chunks, doc, key, stored_size, identities=None, whole_members=True, **options):
    """An ObjectReader of a whole backup's bytes `chunks`: whole members where the
    manifest's sizes tile the gzip stream (encrypted: its payload; plain: the object as
    stored, `stored_size`: sizes that do not fit leave the verdict to the stream, which
    names the damage rather than making a wrong cut), and decrypting when the manifest says
    it is encrypted, with `identities` (None: config.load_identities()). `options` go to
    ObjectReader (crc64, workers, observe)."""
    from . import age  # age.py raises this module's Broken
    sealed = manifest.client_side(doc)
    sizes = (member_sizes(doc, manifest.payload_size(doc) if sealed else stored_size)
             if whole_members else None)
    decrypt = (age.Decryptor(needed_identities(doc, key, identities), key, doc["object"]["size"])
               if sealed else None)
    return ObjectReader(chunks, sizes, member_cap(doc or {}), decrypt=decrypt, **options)


def needed_identities(doc, key, identities):
    """The identities to open an encrypted backup with; ConfigInvalid naming the public
    keys it was written to when there are none."""
    if identities is None:
        from .config import load_identities
        identities = load_identities()
    if not identities:
        recipients = ", ".join(manifest.client_side(doc)["recipients"])
        raise ConfigInvalid(f"{key} is encrypted (age) to {recipients}, and no identity is set",
                            "set BACKUP_AGE_IDENTITY_FILE to the key file of one of those "
                            "public keys (or BACKUP_AGE_IDENTITY to its text)")
    return identities


def _close(chunks):
    close = getattr(chunks, "close", None)
    if close is not None:
        close()
