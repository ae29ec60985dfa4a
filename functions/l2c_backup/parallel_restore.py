"""The `--jobs N` restore: one backup into a new database over N psql sessions at once.

A one-stream restore (restore.py) runs every statement through one server backend, and
COPY takes 80-88% of its wall (bench/restore.py): a bigger server does not make it
faster. Backups made since issue 14 start every section of the dump (pre-data, each
table's data, sequence values, large objects, post-data) on a gzip member of its own and
index the sections in the manifest (manifest.sections_of), so each section can be read
alone (reading.read_section: whole members, its SHA-256, length and SQL length checked).
pg_restore -j needs pg_dump's custom or directory format; this keeps the plain `.sql.gz`
that `gunzip | psql` restores with no tool of ours.

Phases, each started once the one before has succeeded:
  1. pre-data in one session, in one transaction of ours, committed before the data;
  2. over N sessions at once: the table-data sections largest first (by sql_length), each
     COPY in its own transaction after a TRUNCATE of its new table (as pg_restore -j
     does: a server with wal_level=minimal then writes no WAL for it), the sequence
     values and the large objects (with pg_dump's own BEGIN/COMMIT); and the indexes and
     constraints of the post-data (not FKs: each concerns one table), each as soon as
     its table's data is in, so that a session with no data left builds indexes while
     another still loads; two of them on one table wait for each other only when one
     needs the table exclusively (a constraint; CREATE INDEX shares it);
  3. the rest of the post-data in dump order in one session (FKs, INDEX ATTACH, triggers,
     rules, policies, ACLs, REFRESH MATERIALIZED VIEW ...), ending with the statement that
     clears the database's restore-in-progress mark.
Every session first replays the dump's preamble (its SETs, search_path, `\\restrict KEY`)
and the SETs pg_dump wrote between entries that are in force where its entries stand
(default_tablespace ...), and ends with `\\unrestrict KEY` and an `\\echo` of a random
marker: psql runs with ON_ERROR_STOP, so reading the marker back says it ran every
statement.

All or nothing without one transaction: the target is a new database (--create-db),
created marked as a restore in progress (restore._new_database). Any failure (a failing
statement, a damaged section, a lost connection: the first error of any thread) or
SIGTERM/SIGINT (Stopped, in the main thread) kills every psql at once, waits for every
thread, and drops the database. The mark is cleared only by the last statement of the
last phase, so a SIGKILL leaves a marked database, which the next run of the same
--create-db replaces (restore._replace_leftover).

An encrypted backup's identity is checked before the database is made
(restore.identities_for); each section is then a ranged read of the age chunks that hold
it, every chunk authenticated.

Memory: pre-data and post-data are held whole (the schema's statements: no rows; the
large objects' metadata entries are the biggest part of a pre-data, about 200 bytes per
object); table data streams, with at most N sections read at once (reading.py's bounds
per section).
"""
import logging
import os
import re
import secrets
import subprocess
import threading
import time

from . import archive, manifest, names, reading
from .compress import default_workers
from .dump import find_pg_tool, pg_tool_version
from .dump_entries import quote_ident, relation_of, split_entries
from .errors import BackupCorrupt, RestoreFailed, RestoreRefused
from .restore import (_check_tools, _drain, _filter_for, _new_database, check_target_version,
                      identities_for, no_table_index, read_manifest, unmark_sql)

log = logging.getLogger(__name__)

MAX_JOBS = 32
DATA_KINDS = ("table-data", "sequence-values", "large-objects")
KINDS = ("pre-data", *DATA_KINDS, "post-data")
PARALLEL_POST = ("INDEX", "CONSTRAINT")  # each builds on one table; FK CONSTRAINT reads two
WAIT = 0.2  # seconds between the main thread's looks at the threads (and the progress bar)
_RESTRICT = re.compile(rb"^\\restrict (\S+)\n", re.M)
# SETs pg_dump writes between entries, just before the next header, when the next entry
# needs another value (default_tablespace, default_table_access_method, a role with
# --use-set-session-authorization): a session that skips the entries before one must get
# them from us.
_TRAILING_SETS = re.compile(rb"(?:^|\n)((?:SET [^\n]*;\n\n?)+)\Z")
_SET_NAME = re.compile(rb"^SET (SESSION AUTHORIZATION|[\w.]+)", re.M)


def restore_parallel(storage, key, target, create_db, jobs, progress=None, force=False,
                     wait_archive=True, identities=None):
    """Restores `key` into a new database `create_db` on the server of `target`
    (DatabaseSettings of any database there) over `jobs` psql sessions. Returns the
    summary; the database is dropped again on any failure or SIGTERM/SIGINT. An encrypted
    backup is opened with `identities` (None: from the environment)."""
    started = time.monotonic()
    if not 1 <= jobs <= MAX_JOBS:
        raise RestoreRefused(f"--jobs {jobs} is out of range", f"give 1 to {MAX_JOBS}")
    archive.ensure_readable(storage, [key, names.manifest_key(key)], wait=wait_archive,
                            command="`l2c-backup restore`")
    doc = read_manifest(storage, key)
    sections = manifest.sections_of(doc)
    if sections is None:
        raise no_table_index(key, "run `l2c-backup restore KEY --create-db NAME` (one stream); "
                                  "the next backups carry the index")
    _check_layout(key, sections)
    identities = identities_for(storage, key, doc, identities)
    psql = find_pg_tool("psql")
    psql_text, psql_num = pg_tool_version(psql)
    server_major = check_target_version(key, doc, target, force)
    run = _Run(storage, key, doc, psql, _filter_for(server_major), progress, identities)
    # The schema first, before any database is made: a damaged pre- or post-data, or a
    # psql too old for the dump, is found in seconds, not after the data.
    pre_data = run.read_whole(sections[0])
    _check_tools(pre_data[:65536], psql_num, psql_text)
    post = sections[-1] if sections[-1]["kind"] == "post-data" else None
    post_data = run.read_whole(post) if post else b""
    plan = _plan(pre_data, post_data, sections, run)
    timings = {}
    with _new_database(target, create_db, key) as settings:
        run.settings = settings
        phase = time.monotonic()
        run.crew([_Item("pre-data", b"BEGIN;\n" + run.cleanse(pre_data) + b"COMMIT;\n")], 1,
                 b"", plan.restrict)
        timings["pre_data_seconds"] = time.monotonic() - phase
        del pre_data  # held for the pre-data only
        phase = time.monotonic()
        # the data, and each table's index builds as soon as its data is in
        run.crew(plan.data + plan.builds, jobs, plan.preamble, plan.restrict)
        timings["data_seconds"] = time.monotonic() - phase
        phase = time.monotonic()
        run.crew([_Item("post-data", plan.rest + unmark_sql(create_db))], 1, plan.preamble,
                 plan.restrict)
        timings["post_data_seconds"] = time.monotonic() - phase
    result = {"key": key, "database": create_db, "target": settings.redacted_url(),
              "bytes": run.bytes_read, "sql_bytes": run.sql_bytes, "jobs": jobs,
              "tables": sum(s["kind"] == "table-data" for s in sections), "psql": psql_text,
              "restore_seconds": round(time.monotonic() - started, 3),
              **{k: round(v, 3) for k, v in timings.items()}}
    log.info("restored %s into %s over %d sessions in %.1fs (pre-data %.1fs, data %.1fs, "
             "post-data %.1fs)", key, create_db, jobs, result["restore_seconds"],
             result["pre_data_seconds"], result["data_seconds"], result["post_data_seconds"])
    return result


def _check_layout(key, sections):
    """The index as this reader understands it: pre-data first, post-data (if any) last,
    data between; anything else was written by a newer l2c-backup, or is wrong."""
    kinds = [s["kind"] for s in sections]
    wrong = (not kinds or kinds[0] != "pre-data" or any(k not in KINDS for k in kinds)
             or "pre-data" in kinds[1:] or "post-data" in kinds[:-1])
    if wrong:
        raise RestoreRefused(f"the table index of {key} lists sections this l2c-backup "
                             f"cannot restore in parallel ({', '.join(sorted(set(kinds)))})",
                             "restore it whole, without --jobs, or with a newer l2c-backup")


class _Item:
    """One piece of work for a session: a section to read and stream (`section`), or
    statements already in memory (`sql`). `table` and `exclusive` keep two items that
    lock one table exclusively from running at once."""

    def __init__(self, what, sql=None, section=None, table=None, exclusive=False, size=0,
                 needs=()):
        self.what, self.sql, self.section = what, sql, section
        self.table, self.exclusive, self.size = table, exclusive, size
        self.needs = list(needs)  # items that must have run before this one starts
        self.drop_line = None  # a line of the section not to send (_DropLine)
        self.before = self.after = b""  # sent around the section's SQL


class _Plan:
    def __init__(self):
        self.preamble = b""
        self.restrict = None  # the dump's \restrict key, if it has one
        self.data = []
        self.builds = []
        self.rest = b""


def _plan(pre_data, post_data, sections, run):
    """What each phase sends: the preamble of every session, the data items largest
    first, the index builds largest table first, and the rest of the post-data."""
    plan = _Plan()
    preamble, pre_entries = split_entries(pre_data)
    plan.preamble = run.cleanse(preamble)
    found = _RESTRICT.search(preamble)
    plan.restrict = found[1] if found else None
    settings = {}
    _note_sets(preamble, settings)
    for entry in pre_entries:
        _note_sets(entry.text, settings)
    loads = {}  # table -> the item loading its data
    last = sections[-1]
    for section in sections:
        if section["kind"] not in DATA_KINDS:
            continue
        item = _Item(f"the {section['kind']}", section=section, size=section["sql_length"])
        if section["kind"] == "table-data":
            table = (section["schema"], section["table"])
            item.what = f"the data of {section['schema']}.{section['table']}"
            # As pg_restore -j does: the table is new and empty, and a TRUNCATE in the
            # COPY's transaction lets the server skip WAL for it (wal_level=minimal).
            name = f"{quote_ident(table[0])}.{quote_ident(table[1])}".encode()
            item.before = b"BEGIN;\nTRUNCATE TABLE ONLY " + name + b";\n"
            item.after = b"COMMIT;\n"
            loads[table] = item
        plan.data.append(item)
        # Without a post-data section, the dump's last lines (its own \unrestrict) end a
        # data section: every session sends its own \unrestrict, and a second one fails.
        plan.data[-1].drop_line = (b"\\unrestrict " + plan.restrict + b"\n"
                                   if section is last and plan.restrict else None)
    plan.data.sort(key=lambda item: -item.size)
    if plan.restrict:
        post_data = post_data.replace(b"\n\\unrestrict " + plan.restrict + b"\n", b"\n")
    post_preamble, entries = split_entries(post_data)
    rest = [post_preamble]
    for entry in entries:
        in_force = b"".join(settings.values())
        table = relation_of(entry) if entry.type in PARALLEL_POST else None
        if table is not None:
            # A build starts once its table's data is in (the other tables may still be
            # loading); one on a table without data of its own (a partitioned table's
            # index reaches its partitions) once all data is in.
            load = loads.get(table)
            plan.builds.append(_Item(f"{entry.type} {entry.name} ({entry.schema})",
                                     sql=in_force + entry.text, table=table,
                                     exclusive=entry.type != "INDEX",
                                     size=load.size if load else 0,
                                     needs=[load] if load else plan.data))
        else:
            rest.append(in_force + entry.text)
        _note_sets(entry.text, settings)
    plan.builds.sort(key=lambda item: -item.size)  # stable: dump order within a table
    plan.rest = b"".join(rest)
    return plan


def _note_sets(text, settings):
    found = _TRAILING_SETS.search(text[-2048:])
    if found:
        for line in found[1].splitlines(keepends=True):
            if line.strip():
                settings[_SET_NAME.match(line)[1]] = line


class _Run:
    """One parallel restore: reading sections, feeding psql sessions, and the totals."""

    def __init__(self, storage, key, doc, psql, cleanse, progress, identities=None):
        self.storage, self.key, self.doc, self.psql = storage, key, doc, psql
        self.cleanse, self.progress = cleanse, progress
        self.identities = identities  # those that open an encrypted backup
        self.settings = None
        self.workers = None  # inflate threads per section read (None: reading's default)
        self.bytes_read = 0
        self.sql_bytes = 0
        self.lock = threading.Lock()

    def read_whole(self, section):
        try:
            with reading.read_section(self.storage, self.key, self.doc, section,
                                      identities=self.identities) as content:
                sql = b"".join(content)
                content.finish()
        except reading.Broken as broken:
            raise self.corrupt(section, broken) from None
        self._count(content.bytes, 0)
        return sql

    def corrupt(self, section, broken):
        return BackupCorrupt(f"{self.key} is damaged in its {_name_of(section)} "
                             f"({broken.reason}: {broken.detail}); the new database was "
                             "dropped", "restore an older backup (and check this one with "
                             "`l2c-backup verify`)")

    def _count(self, compressed, sql):
        with self.lock:
            self.bytes_read += compressed
            self.sql_bytes += sql

    def crew(self, items, jobs, preamble, restrict):
        """Runs `items` over min(jobs, len(items)) sessions; returns once every one ran,
        raises the first failure after stopping every session and thread."""
        crew = _Crew(self, items, preamble, restrict)
        threads = [threading.Thread(target=crew.work, name=f"l2c-restore-{n}", daemon=True)
                   for n in range(max(1, min(jobs, len(items))))]
        # Inflating is several times faster than psql's COPY: the CPUs shared out suffice.
        self.workers = max(1, default_workers() // len(threads))
        for thread in threads:
            thread.start()
        try:
            while True:
                alive = [t for t in threads if t.is_alive()]
                if not alive:
                    break
                alive[0].join(WAIT)
                if self.progress:
                    self.progress(self.sql_bytes, self.doc["sql_bytes"])
        except BaseException:  # Stopped (SIGTERM/SIGINT) here, in the main thread
            crew.stop(None)
            for thread in threads:
                thread.join()
            raise
        if crew.failure is not None:
            raise crew.failure


def _name_of(section):
    if section["kind"] == "table-data":
        return f"data of {section['schema']}.{section['table']}"
    return section["kind"]


class _Crew:
    """Threads, each feeding one psql session items from a shared list. The first error
    of any of them stops them all: every psql is killed at once, so a thread waiting on
    its psql (a write to a full pipe, the marker) returns at once."""

    def __init__(self, run, items, preamble, restrict):
        self.run, self.preamble, self.restrict = run, preamble, restrict
        self.pending = list(items)
        self.busy = {}  # table -> items of it running; [exclusive?]
        self.done = set()  # items that ran
        self.changed = threading.Condition()
        self.sessions = []
        self.failure = None
        self.stopped = False

    def work(self):
        session = None
        try:
            session = self._session()
            session.send(self.preamble)
            while True:
                item = self._take()
                if item is None:
                    break
                session.current = item
                ran = False
                try:
                    self._feed(session, item)
                    ran = True
                finally:
                    self._done(item, ran)
            ending = (b"\\unrestrict " + self.restrict + b"\n") if self.restrict else b""
            if not session.close(ending) and not self.stopped:
                raise session.failed(self.run)
        except BrokenPipeError:  # psql stopped reading: it stopped at an error, or was killed
            if not self.stopped:
                session.reap()
                self.stop(session.failed(self.run))
        except reading.Broken as broken:
            self.stop(self.run.corrupt(session.current.section, broken))
        except BaseException as exc:
            self.stop(exc)
        finally:
            if session is not None:
                session.reap()

    def _session(self):
        with self.changed:
            if self.stopped:
                raise _Abandoned()
            session = _Session(self.run.psql, self.run.settings)
            self.sessions.append(session)
            return session

    def _take(self):
        """The first pending item whose needs have run and whose table no running item
        holds exclusively (nor holds at all, for an exclusive one); None when all are
        taken."""
        with self.changed:
            while True:
                if self.stopped:
                    raise _Abandoned()
                if not self.pending:
                    return None
                for n, item in enumerate(self.pending):
                    if not self.done.issuperset(item.needs):
                        continue
                    running = self.busy.get(item.table) if item.table else None
                    if not running or not (item.exclusive or any(running)):
                        self.busy.setdefault(item.table, []).append(item.exclusive)
                        return self.pending.pop(n)
                self.changed.wait(WAIT)

    def _done(self, item, ran):
        with self.changed:
            if ran:
                self.done.add(item)
            running = self.busy.get(item.table)
            if running:
                running.remove(item.exclusive)
            self.changed.notify_all()

    def _feed(self, session, item):
        run = self.run
        if item.section is None:
            session.send(item.sql)
            run._count(0, len(item.sql))
            return
        drop = _DropLine(item.drop_line)
        with reading.read_section(run.storage, run.key, run.doc, item.section,
                                  run.workers, run.identities) as content:
            session.send(item.before)
            for sql in content:
                if self.stopped:
                    raise _Abandoned()
                session.send(drop.feed(sql))
                run._count(0, len(sql))
            session.send(drop.finish())
            content.finish()
            session.send(item.after)  # COMMIT only once the section checked out
        run._count(content.bytes, 0)

    def stop(self, failure):
        """Stops every session (the first failure is the one raised)."""
        with self.changed:
            if failure is not None and self.failure is None and not self.stopped \
                    and not isinstance(failure, _Abandoned):
                self.failure = failure
            self.stopped = True
            sessions = list(self.sessions)
            self.changed.notify_all()
        for session in sessions:
            session.kill()


class _Abandoned(Exception):
    """Another thread failed, or the run was stopped: this one ends quietly."""


class _Session:
    """One psql (ON_ERROR_STOP, results to /dev/null) on the new database; stdout carries
    only our marker."""

    def __init__(self, psql, settings):
        self.settings = settings
        self.proc = subprocess.Popen([str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                                      "--no-password", "-o", os.devnull, "-d", settings.dbname],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=settings.pg_env())
        self.stderr = bytearray()
        self.reader = threading.Thread(target=_drain, args=(self.proc.stderr, self.stderr),
                                       daemon=True)
        self.reader.start()
        self.current = None

    def send(self, sql):
        if sql:
            self.proc.stdin.write(sql)

    def close(self, ending):
        """Ends the input; True once psql said it ran every statement and exited 0."""
        marker = f"l2c-backup: every statement ran {secrets.token_hex(8)}".encode()
        self.proc.stdin.write(ending + b"\\echo " + marker + b"\n")
        self.proc.stdin.close()
        ran_all = self.proc.stdout.readline().rstrip(b"\n") == marker
        return self.proc.wait() == 0 and ran_all

    def failed(self, run):
        self.reap()
        message = bytes(self.stderr).decode("utf-8", "replace").strip()
        what = self.current.what if self.current else "the session's preamble"
        return RestoreFailed(f"psql stopped restoring {what} of {run.key} into "
                             f"{self.settings.dbname}: "
                             f"{message[-1500:] or f'exit {self.proc.returncode}'}",
                             "the new database was dropped. Fix the cause (see psql's "
                             "message) and run again")

    def kill(self):
        # From another thread: only the signal. The owner thread closes the pipes.
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass

    def reap(self):
        """Ends psql if it still runs (a stop), closes our ends of its pipes, waits."""
        if self.proc.poll() is None:
            self.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except (BrokenPipeError, OSError, ValueError):
                pass
        self.proc.wait()
        self.reader.join(5)


class _DropLine:
    """Drops one exact line from a stream of SQL, also when it is split across pieces."""

    def __init__(self, line):
        self.line = line
        self.held = b""

    def feed(self, sql):
        if not self.line:
            return sql
        buf = (self.held + sql).replace(b"\n" + self.line, b"\n")
        keep = len(self.line)
        self.held = buf[-keep:]
        return buf[:-keep]

    def finish(self):
        rest, self.held = self.held, b""
        return rest.replace(b"\n" + self.line, b"\n") if self.line else rest
