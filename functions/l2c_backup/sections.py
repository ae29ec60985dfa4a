"""Cutting a plain pg_dump stream into sections, for the table index of a backup.

A restore of one table, or of many tables at once over several connections, needs to
find a table's data without inflating everything before it. So while the SQL flows to
the compressor, the Sectioner finds pg_dump's entry headers

    --
    -- Data for Name: orders; Type: TABLE DATA; Schema: sales; Owner: app
    --

and ends the gzip member being filled at every section boundary (a CUT between the
chunks it passes on). Each section then starts a member of its own, and its bytes can be
read with one ranged GET and inflated alone. The SQL itself is passed on unchanged: the
object is still one .sql.gz that `gunzip | psql` restores as before.

The sections, in dump order (pg_dump prints pre-data, data, post-data, then the ACL pass):
- pre-data: from the first byte to the first data or post-data entry;
- table-data: one per TABLE DATA entry, its `COPY ... FROM stdin;` up to `\\.` and the
  blank lines after; `rows` counts the COPY lines;
- sequence-values: a run of SEQUENCE SET entries (setval);
- large-objects: a run of BLOBS entries (pg_dump's BEGIN; lo_open / lowrite ...; COMMIT;);
- post-data: from the first other entry after the data (or the first post-data entry) to
  the end: indexes, constraints, triggers, ACLs, matview refreshes, the completion line.

Inside a COPY block only the `\\.` line ends it, so rows that read like a header stay data.
Memory: the undecided tail of the SQL outside COPY data (a few lines) and nothing else.
"""
import hashlib
import re

CUT = object()  # between chunks: end the member here, the next byte starts a section

PRE_DATA, TABLE_DATA, SEQUENCE_VALUES, LARGE_OBJECTS, POST_DATA = (
    "pre-data", "table-data", "sequence-values", "large-objects", "post-data")
KINDS = (PRE_DATA, TABLE_DATA, SEQUENCE_VALUES, LARGE_OBJECTS, POST_DATA)

# The data entries by their header's Type (pg_dump 17+ names a group of large objects
# "LARGE OBJECTS a..b" but its Type stays BLOBS).
_DATA_TYPES = {"TABLE DATA": TABLE_DATA, "SEQUENCE SET": SEQUENCE_VALUES,
               "BLOBS": LARGE_OBJECTS, "LARGE OBJECTS": LARGE_OBJECTS}
# Types pg_dump puts in its post-data section or its ACL passes: one of these ends the
# pre-data even in a dump without any data entry.
POST_DATA_TYPES = frozenset({
    "INDEX", "INDEX ATTACH", "CONSTRAINT", "FK CONSTRAINT", "CHECK CONSTRAINT", "TRIGGER",
    "EVENT TRIGGER", "RULE", "POLICY", "ROW SECURITY", "MATERIALIZED VIEW DATA",
    "PUBLICATION TABLE", "PUBLICATION TABLES IN SCHEMA", "SUBSCRIPTION TABLE", "ACL",
    "DEFAULT ACL", "STATISTICS DATA"})

HEADER = re.compile(rb"^--\n-- (?P<data>Data for )?Name: (?P<name>[^\n]*?); Type: (?P<type>[^\n]*?); "
                    rb"Schema: (?P<schema>[^\n]*?); Owner: [^\n]*\n--\n", re.M)
_END_LINE = b"\n\\.\n"  # a newline (or the start of the rows), then COPY's end line
_COPY_LINE_MAX = 1 << 20  # a COPY line longer than this is no COPY line
_UNDECIDED_LINES = 3  # a header is three lines: one may begin in the last three


class Sectioner:
    """Passes a dump's chunks on with a CUT before every section; `sections` lists them
    (dicts: kind, schema and table for table-data, rows, sql_offset, sql_length)."""

    def __init__(self):
        self.sections = []
        self.sql_bytes = 0  # passed on so far
        self._state = "sql"  # or "copy line", "rows": a table's COPY line, its rows
        self._seam = b"\n"  # in "rows": the last 3 bytes passed on ("\n": a line starts)
        self._pending = b""
        self._kind = None  # of the section being passed on
        self._quote = None  # outside COPY: the string, quoted name or comment we are in

    def pieces(self, chunks):
        for chunk in chunks:
            # only SQL outside COPY rows leaves an undecided tail to join
            yield from self._feed(self._pending + chunk if self._pending else chunk)
        rest, self._pending = self._pending, b""
        if rest:
            yield from self._emit(rest)
        self._close_last()

    # -- internals ---------------------------------------------------------------------

    def _feed(self, buf):
        pos = 0
        while pos < len(buf):
            if self._state == "copy line":  # after a TABLE DATA header: its COPY line
                line_end = buf.find(b" FROM stdin;\n", pos)
                if line_end < 0:
                    if len(buf) - pos > _COPY_LINE_MAX:  # no COPY (--inserts?): plain SQL
                        self._state = "sql"
                        continue
                    break
                stop = line_end + len(b" FROM stdin;\n")
                yield from self._emit(buf[pos:stop])
                pos, self._state, self._seam = stop, "rows", b"\n"
                continue
            if self._state == "rows":
                pos = yield from self._rows(buf, pos)
                if self._state == "rows":
                    break
                continue
            if not self.sections:
                self._open(PRE_DATA)
            pos, waiting = yield from self._sql(buf, pos)
            if waiting:
                break
        self._pending = buf[pos:]

    def _sql(self, buf, pos):
        """Passes SQL on up to the next header (cutting there when it starts a section),
        or up to what cannot be decided yet; returns (position, waiting for more)."""
        if self._quote is not None:  # inside a string, quoted name or comment
            end = quote_end(self._quote, buf, pos)
            if end is None:
                if self._quote[0] in ("E", "/*"):  # backslash escapes, nesting: wait whole
                    return pos, True
                keep = max(pos, len(buf) - max(_QUOTE_TAIL, len(self._quote[-1])))
                yield from self._emit(buf[pos:keep])
                return keep, True
            yield from self._emit(buf[pos:end])
            self._quote = None
            return end, False
        undecided = _undecided_from(buf, pos)
        token = _TOKEN.search(buf, pos)  # not endpos: a header's first line may end there
        if token is None or token.start() >= undecided:
            yield from self._emit(buf[pos:undecided])
            return undecided, True
        header = HEADER.match(buf, token.start()) if token["header"] else None
        if header is None:  # a quote or comment opens: its end may be far
            opened = token.start() + 2 if token["header"] else token.end()  # a -- line
            yield from self._emit(buf[pos:opened])
            self._quote = (b"--",) if token["header"] else quote_opened(token)
            return opened, False
        yield from self._emit(buf[pos:header.start()])
        kind = self._kind_of(header)
        if kind is not None:
            yield CUT
            self._open(kind, header)
        yield from self._emit(buf[header.start():header.end()])
        if kind == TABLE_DATA:
            self._state = "copy line"
        return header.end(), False

    def _rows(self, buf, pos):
        """Passes COPY rows on up to and including the `\\.` line; returns where it
        stopped: after that line (state "sql" again), or at the end of buf. Nothing is
        held back, so a chunk of rows is passed on without a copy: an end line that
        begins in the last bytes passed on is found through `_seam`."""
        section = self.sections[-1]
        seam = self._seam + bytes(buf[pos:pos + 3])
        at = seam.find(_END_LINE)
        if at >= 0:  # begins in the seam (the needle is longer than what buf adds)
            stop = pos + at + len(_END_LINE) - len(self._seam)
        else:
            at = buf.find(_END_LINE, pos)
            stop = at + len(_END_LINE) if at >= 0 else len(buf)
        # every row ends with a newline; the end line's own is no row
        section["rows"] += buf.count(b"\n", pos, stop) - (at >= 0)
        yield from self._emit(memoryview(buf)[pos:stop])  # no copy of the rows
        if at >= 0:
            self._state = "sql"
        else:
            self._seam = (self._seam + bytes(buf[max(pos, len(buf) - 3):]))[-3:]
        return stop

    def _kind_of(self, header):
        """The kind of section this entry starts, or None when it continues the current."""
        entry_type = header["type"].decode("utf-8", "replace")
        kind = _DATA_TYPES.get(entry_type)
        if kind == TABLE_DATA:
            return TABLE_DATA
        if kind is None:  # a definition
            if self._kind == PRE_DATA and entry_type not in POST_DATA_TYPES:
                return None
            kind = POST_DATA
        return None if kind == self._kind else kind

    def _open(self, kind, header=None):
        self._close_last()
        section = {"kind": kind, "sql_offset": self.sql_bytes}
        if kind == TABLE_DATA:
            section.update(schema=_text(header["schema"]), table=_text(header["name"]), rows=0)
        self.sections.append(section)
        self._kind = kind

    def _close_last(self):
        if self.sections and "sql_length" not in self.sections[-1]:
            last = self.sections[-1]
            last["sql_length"] = self.sql_bytes - last["sql_offset"]

    def _emit(self, data):
        if data:
            self.sql_bytes += len(data)
            yield data


# Outside COPY data a header is only a header outside string literals, quoted names and
# comments: a function body or a COMMENT may hold text that reads exactly like one. So the
# SQL is followed token by token (dump_entries.py does the same over a whole section,
# with quote_opened and quote_end).
_WORD = rb"A-Za-z0-9_\x80-\xff$"
_TOKEN = re.compile(
    rb"(?P<header>^--\n-- (?:Data for )?Name: )|(?P<e>(?<![" + _WORD + rb"])[Ee]')|'|\"|"
    rb"(?<![" + _WORD + rb"])(?P<dollar>\$(?:[A-Za-z_\x80-\xff][A-Za-z0-9_\x80-\xff]*)?\$)|"
    rb"--|/\*", re.M)
_QUOTE_TAIL = 64  # bytes kept undecided inside a quote: a closing $tag$ split by a chunk
_E_STRING = re.compile(rb"\\.|'", re.S)
_BLOCK = re.compile(rb"/\*|\*/")


def quote_opened(token):
    """The quote a token opens: ("'",), ("E",), ('"',), ("$", tag), ("--",), ("/*", depth)."""
    text = token.group()
    if token["e"]:
        return ("E",)
    if token["dollar"]:
        return ("$", text)
    if text == b"/*":
        return ("/*", 1)
    return (text,)


def quote_end(quote, buf, pos):
    """Where the quote ends in buf (after its closing bytes), or None if not in buf: then
    the quote may have changed (a block comment's depth) and is updated in place."""
    kind = quote[0]
    if kind in (b"'", b'"'):
        while True:
            at = buf.find(kind, pos)
            if at < 0 or at + 1 >= len(buf):
                return None  # a doubled quote ('' or "") may be split by the chunk
            if buf[at + 1:at + 2] != kind:
                return at + 1
            pos = at + 2
    if kind == "E":
        for found in _E_STRING.finditer(buf, pos):
            if found.group() == b"'":
                if found.end() >= len(buf):
                    return None
                if buf[found.end():found.end() + 1] != b"'":
                    return found.end()
        return None
    if kind == "$":
        at = buf.find(quote[1], pos)
        return None if at < 0 else at + len(quote[1])
    if kind == b"--":
        at = buf.find(b"\n", pos)
        return None if at < 0 else at + 1
    depth = quote[1]  # block comments nest
    for found in _BLOCK.finditer(buf, pos):
        depth += 1 if found.group() == b"/*" else -1
        if depth == 0:
            return found.end()
    return None


def _text(raw):
    return raw.decode("utf-8", "replace")


def _undecided_from(buf, pos):
    cut = len(buf)
    for _ in range(_UNDECIDED_LINES):
        cut = buf.rfind(b"\n", pos, cut)
        if cut < 0:
            return pos
    return cut + 1


class IndexBuilder:
    """Builds the manifest's index as the members go to storage: where each section
    starts in the object (its first member), its length and the SHA-256 of its bytes,
    so that a ranged read of one section can be checked on its own."""

    def __init__(self, sectioner):
        self.sectioner = sectioner
        self.entries = []
        self.offset = 0  # bytes of the object so far
        self.sql_offset = 0  # SQL in the members so far (each member's ISIZE: < 4 GiB)
        self.members = 0
        self.broken = ""  # why no index can be given (a boundary inside a member)
        self._sha = None

    def add(self, member):
        sections = self.sectioner.sections
        starting = len(self.entries)
        if starting < len(sections) and sections[starting]["sql_offset"] <= self.sql_offset:
            if sections[starting]["sql_offset"] < self.sql_offset and not self.broken:
                self.broken = (f"section {starting} starts at SQL byte "
                               f"{sections[starting]['sql_offset']}, inside a member")
            self._close()
            self.entries.append({"offset": self.offset, "first_member": self.members})
            self._sha = hashlib.sha256()
        if self._sha is not None:
            self._sha.update(member)
        self.offset += len(member)
        self.sql_offset += int.from_bytes(member[-4:], "little")
        self.members += 1

    def index(self):
        """The manifest's "index", or None (with the reason in `broken`) when the
        sections and the members do not line up."""
        self._close()
        sections = self.sectioner.sections
        if not self.broken and len(self.entries) != len(sections):
            self.broken = f"{len(sections)} sections but {len(self.entries)} started a member"
        if not self.broken and self.sql_offset != self.sectioner.sql_bytes:
            self.broken = f"members hold {self.sql_offset} bytes of SQL, the dump {self.sectioner.sql_bytes}"
        if self.broken or not sections:
            return None
        out = []
        for section, entry in zip(sections, self.entries):
            out.append(dict(section, **entry))
        return {"format": INDEX_FORMAT, "sections": out}

    def _close(self):
        if self.entries and "sha256" not in self.entries[-1]:
            last = self.entries[-1]
            last.update(length=self.offset - last["offset"],
                        members=self.members - last["first_member"], sha256=self._sha.hexdigest())


INDEX_FORMAT = 1
