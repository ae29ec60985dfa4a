"""A plain pg_dump cut back into its entries, and the table each entry concerns.

A plain dump is a list of archive entries, each written as a header comment

    --
    -- Name: customers; Type: TABLE; Schema: public; Owner: postgres
    --

followed by its statements ("Data for Name:" for table data and large objects). A
`--table` restore (table_restore.py) and a parallel restore (parallel_restore.py) pick
entries out of a section of the dump by these headers. The headers are found by a small
lexer, not a bare search: a string literal (a COMMENT, a function body in dollar quotes)
or the rows of a COPY may hold text that reads exactly like a header, and there it is
data. pg_dump writes every name schema-qualified (search_path is empty) and quotes an
identifier only when it must (`public."My Table"`), so `qualified_name` reads both forms.

Sections of our own backups are small (pre-data, post-data, sequence values); the lexer
holds one section in memory, never table data (it could, COPY rows are skipped).
"""
import re
from dataclasses import dataclass

from .sections import quote_end, quote_opened

_HEADER = re.compile(
    rb"--\n-- (?P<data>Data for )?Name: (?P<name>[^\n]*?); Type: (?P<type>[^\n]*?); "
    rb"Schema: (?P<schema>[^\n]*?); Owner: (?P<owner>[^\n]*?)(?:; Tablespace: [^\n]*)?\n--\n")

# Where the lexer's state may change, outside strings and comments: a quote, a dollar
# quote (not inside an identifier such as a$b$), a comment, a line starting with COPY
# ... FROM stdin; or a psql meta-command.
_TOKEN = re.compile(
    rb"(?P<e>(?<![A-Za-z0-9_\x80-\xff$])[Ee]')|'|\"|"
    rb"(?<![A-Za-z0-9_\x80-\xff$])(?P<dollar>\$(?:[A-Za-z_\x80-\xff][A-Za-z0-9_\x80-\xff]*)?\$)|"
    rb"(?P<line>--)|/\*|"
    rb"^(?P<copy>COPY [^\n]* FROM stdin;\n)|^(?P<meta>\\)", re.M)
_COPY_END = re.compile(rb"^\\\.\n", re.M)


@dataclass(frozen=True)
class Entry:
    """One archive entry of a plain dump: its header's fields (`schema`, `owner` None for
    "-"), whether it is data ("Data for Name:"), and its bytes (header + statements up to
    the next header)."""
    name: str
    type: str
    schema: str | None
    owner: str | None
    data: bool
    text: bytes

    @property
    def body(self):
        """The statements, without the header."""
        return self.text[_HEADER.match(self.text).end():]


def split_entries(sql):
    """(preamble, entries) of a piece of a plain dump that starts at the dump's top or at
    an entry header. The preamble is what comes before the first header (the dump's
    opening comment, `\\restrict KEY`, the SETs and search_path)."""
    starts = list(_header_starts(sql))
    preamble = sql[:starts[0]] if starts else sql
    entries = []
    for at, end in zip(starts, starts[1:] + [len(sql)]):
        header = _HEADER.match(sql, at)
        fields = {k: header[k].decode("utf-8", "replace") for k in ("name", "type", "schema", "owner")}
        entries.append(Entry(fields["name"], fields["type"],
                             None if fields["schema"] == "-" else fields["schema"],
                             None if fields["owner"] == "-" else fields["owner"],
                             bool(header["data"]), sql[at:end]))
    return preamble, entries


def _header_starts(sql):
    """Offsets of the entry headers: `--` lines at the start of a line, outside string
    literals, quoted identifiers, comments (sections.quote_end) and COPY data."""
    pos = 0
    while (found := _TOKEN.search(sql, pos)) is not None:
        at = found.start()
        header = (_HEADER.match(sql, at) if found["line"] and (at == 0 or sql[at - 1:at] == b"\n")
                  else None)
        if header is not None:
            yield at
            pos = header.end()
        elif found["copy"]:
            end = _COPY_END.search(sql, found.end())
            pos = end.end() if end else len(sql)
        elif found["meta"]:
            pos = _line_end(sql, at)
        else:  # a string, a quoted name, a comment: to its end (or the end of the SQL)
            end = quote_end(quote_opened(found), sql, found.end())
            pos = len(sql) if end is None else end


def _line_end(sql, at):
    end = sql.find(b"\n", at)
    return end + 1 if end >= 0 else len(sql)


# -- names in statements ------------------------------------------------------------------

_IDENT = re.compile(rb'"((?:[^"]|"")*)"|([A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*)')
_SPACE = re.compile(rb"\s*")


def qualified_name(sql, pos):
    """([name, ...], end) of the dotted name at `pos` (after blanks), each part unquoted:
    `public."My Table"` -> ["public", "My Table"]. An unquoted part is folded to lower
    case as the server does. Empty list if no name starts there."""
    parts = []
    pos = _SPACE.match(sql, pos).end()
    while True:
        found = _IDENT.match(sql, pos)
        if not found:
            return parts, pos
        if found.group(1) is not None:
            parts.append(found.group(1).replace(b'""', b'"').decode("utf-8"))
        else:
            parts.append(found.group(2).decode("utf-8").lower())
        pos = found.end()
        if sql[pos:pos + 1] != b".":
            return parts, pos
        pos += 1


def quote_ident(name):
    """The identifier as pg_dump writes it: bare when it may be (lower case letters,
    digits, _ and not starting with a digit), else in double quotes. Keywords are quoted
    by pg_dump too; a caller that matches names in text looks for both forms."""
    if re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        return name
    return '"' + name.replace('"', '""') + '"'


def _words(sql, pos):
    """Bare words and names from `pos`, one per step: (text upper-cased if bare, start, end)."""
    while True:
        pos = _SPACE.match(sql, pos).end()
        found = _IDENT.match(sql, pos)
        if not found:
            if pos >= len(sql) or sql[pos:pos + 1] == b";":
                return
            yield None, pos, pos + 1  # punctuation: ( ) , = ...
            pos += 1
            continue
        bare = found.group(2)
        yield (bare.decode("utf-8").upper() if bare is not None else None), pos, found.end()
        pos = found.end()


def name_after(sql, keywords, start=0, skip=("ONLY",)):
    """The qualified name that follows the sequence of bare `keywords` (searched from
    `start`, outside quotes), skipping words in `skip` (ONLY, IF EXISTS ...)."""
    wanted = list(keywords)
    matched = 0
    for word, at, end in _words(sql, start):
        if word == wanted[matched]:
            matched += 1
            if matched == len(wanted):
                pos = end
                while True:
                    after = _words(sql, pos)
                    nxt = next(after, None)
                    if nxt and nxt[0] in skip:
                        pos = nxt[2]
                        continue
                    return qualified_name(sql, pos)[0]
        else:
            matched = 1 if word == wanted[0] else 0
    return []


# The statement that names the table, by entry type: the keywords before the table's name.
_TABLE_AFTER = {
    "INDEX": (b"CREATE", ("ON",)),
    "CONSTRAINT": (b"ALTER TABLE", ("TABLE",)),
    "FK CONSTRAINT": (b"ALTER TABLE", ("TABLE",)),
    "CHECK CONSTRAINT": (b"ALTER TABLE", ("TABLE",)),
    "DEFAULT": (b"ALTER TABLE", ("TABLE",)),
    "TRIGGER": (b"CREATE", ("ON",)),
    "POLICY": (b"CREATE POLICY", ("ON",)),
    "ROW SECURITY": (b"ALTER TABLE", ("TABLE",)),
    "RULE": (b"CREATE", ("TO",)),
    "SEQUENCE OWNED BY": (b"ALTER SEQUENCE", ("BY",)),
    "TABLE ATTACH": (b"ALTER TABLE", ("PARTITION",)),
    "STATISTICS": (b"CREATE STATISTICS", ("FROM",)),
}


def relation_of(entry):
    """(schema, table) that `entry` concerns, or None: the table itself and its data, a
    DEFAULT, a COMMENT or ACL on it or its columns, its indexes, constraints (FK: the
    referencing table), triggers, rules, policies, row security, a sequence it owns (OWNED
    BY or an identity column's), a partition attached (the partition), statistics objects.
    Views, functions, types, large objects ... concern no table."""
    kind, body = entry.type, entry.body
    if kind in ("TABLE", "TABLE DATA", "FOREIGN TABLE"):
        return (entry.schema, entry.name) if entry.schema else None
    if kind == "SEQUENCE":  # an identity column's: ALTER TABLE t ALTER COLUMN c ADD GENERATED
        if re.match(rb"\s*ALTER TABLE ", body):
            return _pair(name_after(body, ("TABLE",)))
        return None
    if kind in ("COMMENT", "SECURITY LABEL"):
        for what in ("TABLE", "FOREIGN TABLE"):
            if entry.name.startswith(what + " "):
                return _pair(name_after(body, what.split()))
        if entry.name.startswith("COLUMN "):
            return _pair(name_after(body, ("COLUMN",))[:2])
        if entry.name.startswith(("CONSTRAINT ", "TRIGGER ", "POLICY ", "RULE ")):
            return _pair(_last_on(body))
        return None
    if kind == "ACL":
        if entry.name.startswith(("TABLE ", "COLUMN ", "FOREIGN TABLE ")):
            return _pair(name_after(body, ("TABLE",)))
        return None
    if kind in _TABLE_AFTER:
        opener, keywords = _TABLE_AFTER[kind]
        if not re.match(rb"\s*" + opener, body):
            return None
        name = name_after(body, keywords)
        if kind == "SEQUENCE OWNED BY":
            name = name[:2]  # schema.table.column
        return _pair(name)
    return None


def _last_on(body):
    # COMMENT ON CONSTRAINT c ON schema.table IS '...': the name after the second ON.
    seen = 0
    for word, _at, end in _words(body, 0):
        if word == "ON":
            seen += 1
            if seen == 2:
                return qualified_name(body, end)[0]
        if word == "IS":
            break
    return []


def _pair(parts):
    return (parts[0], parts[1]) if len(parts) == 2 else None
