"""`restore KEY --table schema.name`: a few tables out of a backup, reading only their part.

Someone dropped one table: restoring the whole database to get it back reads every byte
and needs a second server. Our backups carry an index (manifest.sections_of): pre-data,
each table's data, the sequence values, the large objects and the post-data each start a
gzip member of their own, so this reads (ranged reads, checked against the index's
SHA-256 and lengths) the pre-data, the sequence values and the post-data (small), and the
data of the chosen tables only; the large objects only for a table with an `oid`/`lo`
column. A table holding 1% of the data costs about 1% of the object.

From the pre-data and post-data (cut into pg_dump's entries by dump_entries) it takes what
concerns the chosen tables (dump_entries.relation_of): the table, its defaults, comments,
ACLs, the sequences it owns (OWNED BY, identity), its indexes, constraints, triggers,
rules, policies; and the definitions those statements name that the target lacks (a
schema, a type or domain, a function, a sequence a default uses), found by name:
pg_dump writes every name schema-qualified (search_path is empty), so `schema.name` in
the statements is the dependency, followed transitively. What exists in the target is
used as it is, never replaced.

Refused before anything is written, naming what is missing: a table not in the backup; a
foreign key to a table neither restored nor in the target; a parent (INHERITS,
PARTITION OF) neither restored nor in the target (with --into-schema: not restored); a
table or sequence that already exists where it would go (never overwritten); large
objects whose OIDs the target already uses; a database that holds tables, unless
--into-schema S (the tables and their sequences are created in S, beside the live ones)
or --force. A dependency the name search cannot see (a type from an extension, a role)
shows up as psql's "does not exist": that too is a refusal, and nothing was restored.

All or nothing, as restore.py: one psql (ON_ERROR_STOP), our own BEGIN, COMMIT only once
every section read checked out and an \\echo after the last statement came back; psql is
killed on any failure or signal, so the server rolls the transaction back.

An encrypted backup's identity is checked first (restore.identities_for); each section is
then a ranged read of the age chunks that hold it (64 KiB each, every one authenticated),
so the share read stays small.
"""
import logging
import re
import time
from dataclasses import dataclass

from . import archive, manifest, names, reading
from .database import connect
from .dump import DUMP_COMPLETE, find_pg_tool, pg_tool_version
from .dump_entries import name_after, qualified_name, quote_ident, relation_of, split_entries
from .errors import BackupCorrupt, RestoreFailed, RestoreRefused
from .reading import Broken
from .restore import (DumpTransactions, PsqlTransaction, _check_tools, _filter_for, _ident,
                      check_target_version, corrupt, identities_for, no_table_index,
                      read_manifest, target_tables)
from .storage import Reading

log = logging.getLogger(__name__)

# Definitions a restored table may need, by the entry type pg_dump gives them, and how
# their name is written in a COMMENT / ACL entry's tag ("TYPE order_status").
DEFINITIONS = {"SCHEMA": "SCHEMA", "TYPE": "TYPE", "DOMAIN": "DOMAIN", "FUNCTION": "FUNCTION",
               "PROCEDURE": "PROCEDURE", "AGGREGATE": "AGGREGATE", "SEQUENCE": "SEQUENCE",
               "COLLATION": "COLLATION"}
# Entries that go with a table we restore (relation_of names it); data apart.
TABLE_PARTS = {"TABLE", "FOREIGN TABLE", "DEFAULT", "COMMENT", "SECURITY LABEL", "ACL",
               "SEQUENCE OWNED BY", "INDEX", "CONSTRAINT", "FK CONSTRAINT", "CHECK CONSTRAINT",
               "TRIGGER", "RULE", "POLICY", "ROW SECURITY", "TABLE ATTACH", "STATISTICS"}
# Settings pg_dump writes between entries (before the header of the entry they are for).
_STATE_SET = re.compile(rb"^SET (default_tablespace|default_table_access_method) = [^\n]*;\n", re.M)
_RESTRICT = re.compile(rb"^\\restrict (\S+)\n", re.M)
_COMPLETE = re.compile(rb"\n*--\n" + re.escape(DUMP_COMPLETE) + rb"\n--\n.*\Z", re.S)
_LO_OIDS = re.compile(rb"lo_create\('(\d+)'\)")
_REFERENCES = re.compile(rb"\bREFERENCES\b")
_INHERITS = re.compile(rb"\)\s*INHERITS \(")
_COPY_LINE = re.compile(rb"^COPY ([^\n]*?) (\([^\n]*\) )?FROM stdin;\n", re.M)
# psql's undefined-object errors (VERBOSITY verbose prints the SQLSTATE): a dependency the
# name search missed; the transaction rolled back.
_UNDEFINED = re.compile(r"ERROR:\s+(42704|42883|42P01|3F000|42703): ([^\n]*)")


def restore_tables(storage, key, target, tables, into_schema=None, force=False, progress=None,
                   wait_archive=True, identities=None):
    """Restores `tables` ("schema.name" as given on the CLI) of backup `key` into `target`
    (DatabaseSettings), in their own schema or, with `into_schema`, in that one. Returns
    the summary (key, database, target, tables, rows, bytes_read, object_bytes,
    restore_seconds, ...). An encrypted backup is opened with `identities` (None: from
    the environment)."""
    started = time.monotonic()
    archive.ensure_readable(storage, [key, names.manifest_key(key)], wait=wait_archive,
                            command="`l2c-backup restore --table`")
    doc = read_manifest(storage, key)
    storage = _Counted(storage, key)
    index = manifest.sections_of(doc)
    if index is None:
        raise no_table_index(key, "restore the whole backup into an empty database "
                                  "(--create-db), then copy the table from there")
    identities = identities_for(storage, key, doc, identities)
    psql = find_pg_tool("psql")
    psql_text, psql_num = pg_tool_version(psql)
    server_major = check_target_version(key, doc, target, force)
    budget = _Budget(progress, doc["object"]["size"], storage, identities)
    pre = _read_whole(storage, key, doc, _one(index, "pre-data", key), budget)
    preamble, pre_entries = split_entries(pre)
    post_section = _one(index, "post-data", key)
    post_entries = split_entries(_read_whole(storage, key, doc, post_section, budget))[1]
    plan = Plan(pre_entries, post_entries, index, into_schema)
    plan.choose(tables)
    with _Catalog(target) as catalog:
        if not force and not into_schema and catalog.user_tables:
            raise RestoreRefused(
                f"database {target.dbname} on {target.host} already holds tables or large "
                "objects", "restore beside them with --into-schema SCHEMA, into an empty "
                "database, or add --force to add these tables to it")
        plan.resolve(catalog)
    sequence_values = b""
    if plan.sequences_created:
        found = [s for s in index if s["kind"] == "sequence-values"]
        values = b"".join(_read_whole(storage, key, doc, s, budget) for s in found)
        sequence_values = plan.sequence_values(split_entries(values)[1])
    _check_tools(preamble, psql_num, psql_text)
    preamble = _filter_for(server_major)(preamble)
    restrict = _RESTRICT.search(preamble)
    sql = plan.sql(preamble)
    result = _run(storage, key, doc, target, psql, plan, sql, sequence_values,
                  b"\\unrestrict " + restrict.group(1) + b"\n" if restrict else b"", budget)
    summary = {
        "key": key, "database": target.dbname, "target": target.redacted_url(),
        "tables": [f"{plan.destination(t)[0]}.{plan.destination(t)[1]}" for t in plan.tables],
        "rows": sum(plan.data[t].get("rows", 0) for t in plan.tables if t in plan.data),
        "bytes_read": budget.read, "object_bytes": doc["object"]["size"],
        "into_schema": into_schema, "brought": plan.brought_names(),
        "large_objects": len(plan.lo_oids) if plan.large_objects else 0,
        "sequences": sorted(_names([plan.destination(s)]) for s in plan.sequences_created),
        "psql": psql_text, "sql_bytes": result,
        "restore_seconds": round(time.monotonic() - started, 3)}
    log.info("restored %s of %s into %s (%d bytes read of %d) in %.1fs",
             ", ".join(summary["tables"]), key, target.dbname, budget.read,
             doc["object"]["size"], summary["restore_seconds"])
    return summary


def _one(index, kind, key):
    found = [s for s in index if s["kind"] == kind]
    if len(found) != 1:
        raise BackupCorrupt(f"the index of {key} lists {len(found)} {kind} sections, not one",
                            "restore it whole, and check it with `l2c-backup verify`")
    return found[0]


class _Counted:
    """The storage, counting the bytes of object `key` it hands out: what the restore
    read of the backup (of an encrypted one, the age header and the whole chunks that
    hold each section, more than the sections' own bytes)."""

    def __init__(self, storage, key):
        self._storage, self._key, self.read = storage, key, 0

    def __getattr__(self, name):
        return getattr(self._storage, name)

    def open(self, key, *args, **kwargs):
        found = self._storage.open(key, *args, **kwargs)
        if key != self._key:
            return found

        def counted():
            for chunk in found:
                self.read += len(chunk)  # one section is read at a time: one writer
                yield chunk
        return Reading(counted(), found.start, found.etag, found.close)


class _Budget:
    """Bytes read of the object so far (`counted`), for the summary and the progress
    bar; and the identities that open it, when it is encrypted."""

    def __init__(self, progress, total, counted, identities=None):
        self.progress, self.total, self.counted = progress, total, counted
        self.identities = identities

    read = property(lambda self: self.counted.read)

    def tick(self):
        if self.progress:
            self.progress(self.read, self.total)


def _read_whole(storage, key, doc, section, budget):
    """A small section's SQL (pre-data, post-data, sequence values), checked."""
    try:
        with reading.read_section(storage, key, doc, section,
                                  identities=budget.identities) as sql:
            data = b"".join(sql)
            sql.finish()
            budget.tick()
    except Broken as broken:
        raise corrupt(key, broken) from None
    return data


# -- what to restore ----------------------------------------------------------------------

def _forms(name):
    """How pg_dump may write an identifier: bare (when it may) and quoted."""
    quoted = '"' + name.replace('"', '""') + '"'
    return [re.escape(quote_ident(name)), re.escape(quoted)] if quote_ident(name) != quoted \
        else [re.escape(quoted)]


def _qualified_pattern(schema, name):
    """`schema.name` as pg_dump writes it, not inside a longer name."""
    return (rb"(?<![A-Za-z0-9_$\x80-\xff\".])(?:" +
            b"|".join(f.encode() for f in _forms(schema)) + rb")\.(?:" +
            b"|".join(f.encode() for f in _forms(name)) + rb")(?![A-Za-z0-9_$\x80-\xff])")


@dataclass
class Definition:
    """A pre-data definition a table may need: its entry, the tag's name without the
    arguments (functions), and the catalog lookup that says the target has it."""
    entry: object
    name: str
    lookup: tuple  # (function, argument) e.g. ("to_regtype", '"sales"."amount"')


class Plan:
    """The entries of pre-data and post-data that a --table restore sends, in dump order."""

    def __init__(self, pre_entries, post_entries, index, into_schema):
        self.pre, self.post = pre_entries, post_entries
        self.into = into_schema
        self.data = {(s["schema"], s["table"]): s for s in index if s["kind"] == "table-data"}
        self.large_objects_sections = [s for s in index if s["kind"] == "large-objects"]
        self.table_entries = {(e.schema, e.name): e for e in pre_entries
                              if e.type in ("TABLE", "FOREIGN TABLE") and e.schema}
        self.tables = []  # (schema, name) in the order asked
        self.chosen = set()  # ids of the entries to send
        self.brought = []  # Definitions created because the target lacks them
        self.sequences_created = set()
        self.renamed = {}  # (schema, name) -> (schema, name): --into-schema
        self.large_objects = False
        self.lo_oids = []

    # -- which tables
    def choose(self, asked):
        unknown = []
        for text in asked:
            found = self._find(text)
            if found is None:
                unknown.append(text)
            elif found not in self.tables:
                self.tables.append(found)
        if unknown:
            known = sorted(f"{s}.{n}" for s, n in self.table_entries)
            raise RestoreRefused(
                f"{', '.join(unknown)}: no such table in this backup",
                f"give --table as schema.name; it holds {len(known)} tables, e.g. "
                f"{', '.join(known[:8])}{' ...' if len(known) > 8 else ''}")

    def _find(self, text):
        if "." in text:  # as written: sales.orders, Odd Schema.My Table
            schema, _, name = text.partition(".")
            if (schema, name) in self.table_entries:
                return (schema, name)
        parts, end = qualified_name(text.encode(), 0)  # as SQL: "Odd Schema"."My Table"
        if len(parts) == 2 and end == len(text.encode()) and tuple(parts) in self.table_entries:
            return tuple(parts)
        return None

    def destination(self, relation):
        return self.renamed.get(relation, relation)

    # -- what they need, against the target
    def resolve(self, catalog):
        tables = set(self.tables)
        owned = {(e.schema, e.name) for e in self.pre
                 if e.type == "SEQUENCE OWNED BY" and relation_of(e) in tables}
        identity = {(e.schema, e.name) for e in self.pre
                    if e.type == "SEQUENCE" and relation_of(e) in tables}
        relations = list(self.tables) + sorted(owned | identity)
        if self.into:
            self.renamed = {r: (self.into, r[1]) for r in relations}
        for relation in relations:
            where = self.destination(relation)
            if catalog.has("to_regclass", _qualify(*where)):
                raise RestoreRefused(
                    f"{where[0]}.{where[1]} already exists in database {catalog.dbname}: "
                    "l2c-backup never overwrites a table or sequence",
                    "drop or rename it first, or restore beside it with --into-schema SCHEMA")
        for entry in self.pre + self.post:
            if entry.data:
                continue
            relation = relation_of(entry)
            if (relation in tables and entry.type in TABLE_PARTS) or \
                    (entry.type == "SEQUENCE" and (entry.schema, entry.name) in owned | identity) or \
                    (entry.type in ("COMMENT", "ACL") and _names_sequence(entry, owned)):
                self.chosen.add(id(entry))
        indexes = {(e.schema, e.name) for e in self.post if e.type == "INDEX" and id(e) in self.chosen}
        for entry in self.post:  # COMMENT ON INDEX names no table
            if entry.type == "COMMENT" and entry.name.startswith("INDEX ") and \
                    (entry.schema, *qualified_name(entry.name[6:].encode(), 0)[0][:1]) in indexes:
                self.chosen.add(id(entry))
        self._check_parents(catalog, tables)
        self._check_foreign_keys(catalog, tables)
        self.sequences_created = set(owned | identity)
        self._large_objects(catalog)
        self._dependencies(catalog)

    def _check_parents(self, catalog, tables):
        for table in self.tables:
            parents = []
            body = self.table_entries[table].body
            inherits = _INHERITS.search(body)
            if inherits:
                pos = inherits.end()
                while True:
                    parts, pos = qualified_name(body, pos)
                    if len(parts) == 2:
                        parents.append(tuple(parts))
                    pos = _skip_space(body, pos)
                    if body[pos:pos + 1] != b",":
                        break
                    pos += 1
            for entry in self.pre:  # ALTER TABLE ONLY parent ATTACH PARTITION child
                if entry.type == "TABLE ATTACH" and relation_of(entry) == table:
                    parents.append(tuple(name_after(entry.body, ("TABLE",))))
            for parent in parents:
                if parent in tables:
                    continue
                if self.into:
                    raise RestoreRefused(
                        f"{table[0]}.{table[1]} is a child of {parent[0]}.{parent[1]} "
                        "(INHERITS / PARTITION OF): restored into another schema it would join "
                        "the live parent", f"add --table {parent[0]}.{parent[1]} too")
                if not catalog.has("to_regclass", _qualify(*parent)):
                    raise RestoreRefused(
                        f"{table[0]}.{table[1]} is a child of {parent[0]}.{parent[1]} "
                        "(INHERITS / PARTITION OF), which this restore does not bring and "
                        f"database {catalog.dbname} lacks", f"add --table {parent[0]}.{parent[1]}")

    def _check_foreign_keys(self, catalog, tables):
        for entry in self.post:
            if entry.type != "FK CONSTRAINT" or id(entry) not in self.chosen:
                continue
            found = _REFERENCES.search(entry.body)
            target = tuple(qualified_name(entry.body, found.end())[0]) if found else ()
            if len(target) != 2 or target in tables:
                continue
            table = relation_of(entry)
            if not catalog.has("to_regclass", _qualify(*target)):
                raise RestoreRefused(
                    f"{table[0]}.{table[1]} has a foreign key ({entry.name.split(' ', 1)[-1]}) "
                    f"to {target[0]}.{target[1]}, which this restore does not bring and "
                    f"database {catalog.dbname} lacks",
                    f"add --table {target[0]}.{target[1]}, or restore into a database that has it")

    def _large_objects(self, catalog):
        """An oid or lo column may point at large objects: bring them all (their
        metadata from the pre-data, their data section), unless the target holds any of
        those OIDs (never overwritten)."""
        if not any(_has_lo_column(self.table_entries[t].body) for t in self.tables):
            return
        blobs = [e for e in self.pre if e.type in ("BLOB", "BLOB METADATA")]
        self.lo_oids = sorted({int(o) for e in blobs for o in _LO_OIDS.findall(e.body)})
        if not self.lo_oids:
            return
        taken = catalog.large_objects(self.lo_oids)
        if taken:
            raise RestoreRefused(
                f"the large objects of {_names(self.tables)} use OIDs that database "
                f"{catalog.dbname} already holds ({', '.join(map(str, taken[:5]))}"
                f"{' ...' if len(taken) > 5 else ''}): l2c-backup never overwrites them",
                "restore into another database (it has an oid or lo column)")
        self.large_objects = True
        for entry in self.pre + self.post:
            if entry.type in ("BLOB", "BLOB METADATA") or (
                    entry.type in ("COMMENT", "ACL", "SECURITY LABEL")
                    and entry.name.startswith(("LARGE OBJECT ", "LARGE OBJECTS "))):
                self.chosen.add(id(entry))

    def _dependencies(self, catalog):
        """The definitions the chosen statements name (transitively) that the target
        lacks, and the schemas everything lands in."""
        candidates = {}
        for entry in self.pre:
            if entry.type not in DEFINITIONS or id(entry) in self.chosen or entry.schema is None \
                    or relation_of(entry) is not None:  # another table's identity sequence
                continue
            name = entry.name.split("(", 1)[0] if "(" in entry.name else entry.name
            candidates.setdefault((entry.schema, name), []).append(entry)
        patterns = {(schema, name): re.compile(_qualified_pattern(schema, name))
                    for schema, name in candidates}
        texts = [self._rewritten(e) for e in self.pre + self.post if id(e) in self.chosen]
        texts += [self._copy_line(t) for t in self.tables]
        seen = set()
        while texts:
            text = texts.pop()
            for qname, pattern in patterns.items():
                if qname in seen or not pattern.search(text):
                    continue
                seen.add(qname)
                for entry in candidates[qname]:
                    lookup = _lookup(entry)
                    if catalog.has(*lookup):
                        continue
                    self.brought.append(Definition(entry, qname[1], lookup))
                    self.chosen.add(id(entry))
                    if entry.type == "SEQUENCE":
                        self.sequences_created.add(qname)
                    texts.append(entry.text)
        schemas = {self.destination(t)[0] for t in self.tables}
        schemas |= {d.entry.schema for d in self.brought}
        schema_entries = {e.name: e for e in self.pre if e.type == "SCHEMA"}
        self.new_schemas = []  # created with a bare CREATE SCHEMA (no entry, or --into-schema)
        for schema in sorted(schemas):
            if catalog.has("to_regnamespace", _ident(schema)):
                continue
            if schema in schema_entries and schema != self.into:
                self.brought.append(Definition(schema_entries[schema], schema,
                                               ("to_regnamespace", _ident(schema))))
                self.chosen.add(id(schema_entries[schema]))
            else:
                self.new_schemas.append(schema)
        for definition in self.brought:  # its comments and grants come with it
            for entry in self.pre + self.post:
                if entry.type in ("COMMENT", "ACL", "SECURITY LABEL") and \
                        _tag_names(entry, definition):
                    self.chosen.add(id(entry))

    def sequence_values(self, entries):
        return b"".join(self._rewritten(e) for e in entries if e.type == "SEQUENCE SET"
                        and (e.schema, e.name) in self.sequences_created)

    def brought_names(self):
        return [f"{d.entry.type.lower()} " + (d.entry.name if d.entry.type == "SCHEMA" else
                                             f"{d.entry.schema}.{d.entry.name}")
                for d in self.brought] + [f"schema {s}" for s in self.new_schemas]

    # -- the SQL
    def sql(self, preamble):
        """The pre-data part and the post-data part to send, as (before data, after)."""
        head = [preamble] + [f"CREATE SCHEMA {_ident(s)};\n".encode() for s in self.new_schemas]
        return self._pick(self.pre, head), self._pick(self.post, [])

    def _pick(self, entries, out):
        # pg_dump sets default_tablespace / default_table_access_method before an entry's
        # header, so those SETs end the entry before it: carried to the entries we send.
        state, sent = {}, {}
        for entry in entries:
            if id(entry) in self.chosen:
                for setting, line in state.items():
                    if sent.get(setting) != line:
                        out.append(line)
                        sent[setting] = line
                out.append(_COMPLETE.sub(b"\n", self._rewritten(entry)))
            for found in _STATE_SET.finditer(entry.text):
                state[found.group(1)] = found.group(0)
        return b"".join(out)

    def _rewritten(self, entry):
        """The entry, with the restored relations' names moved into --into-schema (only
        the statements of the tables themselves; definitions they use stay put)."""
        if not self.renamed or entry.type in DEFINITIONS and \
                (entry.schema, entry.name) not in self.renamed:
            return entry.text
        return self.rename(entry.text)

    def rename(self, text):
        for (schema, name), (new_schema, new_name) in self.renamed.items():
            text = re.sub(_qualified_pattern(schema, name),
                          _qualify(new_schema, new_name).encode().replace(b"\\", b"\\\\"), text)
        return text

    def _copy_line(self, table):
        return f"COPY {_qualify(*self.destination(table))}".encode()


def _qualify(schema, name):
    return f"{_ident(schema)}.{_ident(name)}"


def _names(relations):
    return ", ".join(f"{s}.{n}" for s, n in relations)


def _skip_space(text, pos):
    while text[pos:pos + 1] in (b" ", b"\n", b"\t"):
        pos += 1
    return pos


def _names_sequence(entry, sequences):
    return entry.schema and entry.name.startswith("SEQUENCE ") and \
        tuple([entry.schema] + qualified_name(entry.name[9:].encode(), 0)[0][:1]) in sequences


def _has_lo_column(create_table):
    # A column line of CREATE TABLE: `    name oid NOT NULL,` or `    name public.lo,`
    return re.search(rb"^    (?:\"(?:[^\"]|\"\")*\"|\S+) (?:oid|[^\s.]+\.lo)(?:[ ,\n]|$)",
                     create_table, re.M) is not None


def _lookup(entry):
    schema, tag = entry.schema, entry.name
    if entry.type in ("FUNCTION", "PROCEDURE", "AGGREGATE"):
        name, _, args = tag.partition("(")
        return "to_regprocedure", f"{_ident(schema)}.{_ident(name)}({args}"
    if entry.type == "SEQUENCE":
        return "to_regclass", _qualify(schema, tag)
    if entry.type == "COLLATION":
        return "to_regcollation", _qualify(schema, tag)
    return "to_regtype", _qualify(schema, tag)


def _tag_names(entry, definition):
    """Whether a COMMENT / ACL entry's tag ("TYPE order_status", "FUNCTION f(integer)",
    "SCHEMA sales") is about `definition`."""
    defined = definition.entry
    prefix = DEFINITIONS[defined.type] + " "
    if not entry.name.startswith(prefix) or entry.schema != defined.schema and defined.type != "SCHEMA":
        return False
    rest = entry.name[len(prefix):]
    parts, end = qualified_name(rest.encode(), 0)
    if parts[:1] != [definition.name] and rest.split("(", 1)[0] != definition.name:
        return False
    if defined.type in ("FUNCTION", "PROCEDURE", "AGGREGATE"):
        return rest.encode()[end:] == ("(" + defined.name.partition("(")[2]).encode()
    return True


class _Catalog:
    """Questions to the target, on one connection: does it hold this object?"""

    def __init__(self, settings):
        self.settings, self.dbname = settings, settings.dbname

    def __enter__(self):
        self.user_tables = target_tables(self.settings)
        self.conn = connect(self.settings)
        return self

    def __exit__(self, *exc):
        self.conn.close()

    def has(self, function, argument):
        [[found]] = self.conn.run(f"SELECT {function}(:a) IS NOT NULL", a=argument)
        return found

    def large_objects(self, oids):
        rows = self.conn.run("SELECT oid::bigint FROM pg_largeobject_metadata "
                             "WHERE oid::bigint = ANY(:o) ORDER BY 1", o=oids)
        return [row[0] for row in rows]


# -- sending it ---------------------------------------------------------------------------

def _run(storage, key, doc, settings, psql, plan, sql, sequence_values, unrestrict, budget):
    """One psql, our transaction: pre-data, each table's data as it is read, sequence
    values, large objects, post-data; COMMIT only when all of it ran and checked out.
    Returns the SQL bytes sent."""
    before, after = sql
    try:
        # verbose: errors carry their SQLSTATE (an undefined object is a refusal)
        with PsqlTransaction(psql, settings, verbose=True) as session:
            send = session.send
            send(before)
            for table in plan.tables:
                section = plan.data.get(table)
                if section is not None:
                    copy = _CopyInto(table, plan)
                    _send_section(storage, key, doc, section, send, budget, copy)
                    copy.finish()
            send(sequence_values)
            if plan.large_objects:
                transactions = DumpTransactions()
                for section in plan.large_objects_sections:
                    _send_section(storage, key, doc, section, send, budget, transactions.feed)
                send(transactions.finish())
            send(after)
            session.commit(unrestrict)
    except Broken as broken:
        raise corrupt(key, broken) from None
    if not session.committed:
        message = session.message()
        undefined = _UNDEFINED.search(message)
        if undefined:
            raise RestoreRefused(
                f"{_names(plan.tables)} need{'s' if len(plan.tables) == 1 else ''} an object "
                f"that database {settings.dbname} lacks and the backup does not define: "
                f"{undefined.group(2)}; nothing was restored",
                "create it in the target first (an extension's type, a role ...), or "
                "add the --table that defines it")
        raise RestoreFailed(f"psql stopped restoring {_names(plan.tables)} of {key} into "
                            f"{settings.dbname}: {message}",
                            "the transaction rolled back; the target is as it was. Fix the "
                            "cause (see psql's message) and run again")
    return session.sent


def _send_section(storage, key, doc, section, send, budget, transform):
    with reading.read_section(storage, key, doc, section, identities=budget.identities) as sql:
        for piece in sql:
            send(transform(piece))
            budget.tick()
        sql.finish()
        budget.tick()


class _CopyInto:
    """Passes a table's data section on, its COPY line checked against the index (the
    section must hold that table's data) and its table moved by --into-schema; the rows
    pass untouched."""

    def __init__(self, table, plan):
        self.table, self.plan, self.head = table, plan, b""

    def __call__(self, piece):
        if self.head is None:
            return piece
        self.head += piece
        found = _COPY_LINE.search(self.head)
        table = self.table
        if found is None:
            if len(self.head) > 1 << 20:
                raise Broken("index-mismatch", f"table-data {table[0]}.{table[1]}: no COPY "
                             "line in its first MiB")
            return b""
        if tuple(qualified_name(found.group(1), 0)[0]) != table:
            raise Broken("index-mismatch", f"the index says table-data {table[0]}.{table[1]}, "
                         f"the section holds COPY {found.group(1).decode('utf-8', 'replace')}")
        head, self.head = self.head, None
        if self.plan.renamed:
            head = (head[:found.start(1)] + _qualify(*self.plan.destination(table)).encode()
                    + head[found.end(1):])
        return head

    def finish(self):
        if self.head is not None:
            raise Broken("index-mismatch", f"table-data {self.table[0]}.{self.table[1]}: "
                         "no COPY line")
