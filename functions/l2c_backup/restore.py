"""The restore operation: object -> gunzip -> psql, streamed, checked, all or nothing.

The SQL goes to the real psql (`ON_ERROR_STOP`) as it is inflated, with no temporary
file, inside one transaction that l2c opens and closes itself: `BEGIN;` goes first and
`COMMIT;` only once every byte has checked out (SHA-256 and length against the manifest,
every gzip member complete, the dump's completion marker) and psql has run every
statement. psql runs without `--single-transaction`, which would COMMIT when its input
ends: and input ends when l2c dies (SIGKILL, the OOM killer, FC's timeout), so a killed
restore would commit what it had sent. Without it, an input that ends early leaves the
transaction open and the server rolls it back when psql disconnects. Any failure before
COMMIT (damage, a failing statement, SIGTERM or SIGINT, which raise `Stopped`) kills
psql: the target is left as it was.

A plain dump runs in one transaction as it does under `psql -1`, with one exception that
also broke `-1`: pg_dump wraps large object data in its own `BEGIN;` ... `COMMIT;`, and
that COMMIT would commit everything before it. `DumpTransactions` drops that pair.

`--create-db NAME` makes a new database and drops it again on any failure or signal.
What SIGKILL leaves is recognisable: the database is created with the comment
`l2c-backup: restore in progress since <time> (key <key>)`, and the restore transaction
clears it just before its COMMIT (COMMENT is transactional), so only a restore that never
committed leaves it marked. While the restore runs, l2c keeps a session of its own on the
database. The next `--create-db` of that name drops a marked database with no session
connected (a restore that died) and makes it again, saying so in a log line; a marked one
with sessions (a restore still running) or one without the mark (not ours) is refused.
One transaction rather than "restore then swap" because it needs no second copy of the
data and leaves no half-restored database, whatever the target.

A backup encrypted on our side (age, the manifest's encryption.client_side) is decrypted
as it is read (reading.open_backup). Its identity is checked before anything is written
to a target (`identities_for`: the header read, the file key unwrapped, the first chunk
authenticated): a missing or wrong identity is refused before psql starts. Damage found
later (a chunk that fails authentication, an object cut short) is BackupCorrupt like any
other, and the transaction rolls back.
"""
import contextlib
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import pg8000.native

from . import age, archive, manifest, names, reading
from .database import connect
from .dump import find_pg_tool, pg_tool_version
from .errors import BackupCorrupt, BackupNotFound, ConfigInvalid, RestoreFailed, RestoreRefused
from .prune import survey
from .reading import READ_SIZE, Broken
from .signals import HANDLED

log = logging.getLogger(__name__)

# psql learned \restrict in these releases (August 2025); older ones stop at the line.
RESTRICT_SINCE = {13: 130022, 14: 140019, 15: 150014, 16: 160010, 17: 170006}
STDERR_KEEP = 16 * 1024
MARK = "l2c-backup: restore in progress since "  # the comment on a --create-db database


def find_backup(storage, key=None, latest=False, kind=None, date=None, verified_only=False):
    """The key to restore: as given, the newest (of a kind), or the one of a date."""
    if key:
        return key
    backups, sidecars = survey(storage, [kind] if kind else list(names.KINDS))
    # Only an object with its manifest is a backup: one without is a run that died.
    complete = {key for key in sidecars if key.endswith(names.MANIFEST_SUFFIX)}
    backups = [b for b in backups if b.group != "globals" and names.manifest_key(b.key) in complete
               and (b.verified or not verified_only)]
    if date:
        backups = [b for b in backups if b.stamp.startswith(date) or
                   (b.kind == "weekly" and _week_of(date) == b.stamp)]
    if not backups:
        what = " verified" if verified_only else ""
        raise BackupNotFound(f"no{what} backup found in {storage.url}" +
                             (f" of kind {kind}" if kind else "") + (f" for {date}" if date else ""),
                             "list them with `l2c-backup verify --all` (an object without its "
                             "manifest is not a backup), or give the KEY")
    # Newest first by the time in the name; across kinds a daily and a manual compare by
    # date, and the daily wins a tie (it is the scheduled one).
    order = {"daily": 2, "manual": 1, "weekly": 0}
    return max(backups, key=lambda b: (b.stamp[:10], order[b.kind], b.stamp)).key


def _week_of(date):
    from datetime import date as _date
    year, week, _ = _date.fromisoformat(date).isocalendar()
    return f"{year}-W{week:02d}"


def read_manifest(storage, key):
    try:
        return manifest.loads(b"".join(storage.open(names.manifest_key(key))))
    except FileNotFoundError:
        if storage.head(key) is None:
            raise BackupNotFound(f"the object {key} does not exist in {storage.url}",
                                 "check the KEY (`l2c-backup verify --all` lists the backups), "
                                 "or use --latest / --date") from None
        raise RestoreRefused(f"{key} has no manifest: that backup never completed",
                             "restore another backup (a backup only counts with its manifest)") from None
    except ValueError as err:
        raise RestoreRefused(f"the manifest of {key} is not valid: {err}",
                             "restore another backup, or check it with `l2c-backup verify`") from None


def identities_for(storage, key, doc, identities=None):
    """The identities that open backup `key` (None: those of BACKUP_AGE_IDENTITY_FILE or
    BACKUP_AGE_IDENTITY), checked on the object before anything is written to a target:
    its header read, its file key unwrapped and its first chunk authenticated (one ranged
    read of the header and 64 KiB). None for a backup that is not encrypted.
    ConfigInvalid naming the public keys it was written to when no identity is set or
    none of them opens it; BackupCorrupt when its header (or first chunk) is damaged."""
    sealed = manifest.client_side(doc)
    if not sealed:
        return None
    identities = reading.needed_identities(doc, key, identities)  # ConfigInvalid when none is set
    try:
        first = age.open_range(storage, key, identities, sealed["header_length"],
                               sealed["payload_size"], 0, 1, READ_SIZE)
        try:
            for _ in first:
                pass
        finally:
            first.close()
    except FileNotFoundError:
        raise BackupNotFound(f"the object {key} does not exist in {storage.url} (its manifest "
                             "does)", "restore another backup (`l2c-backup verify --all` "
                             "lists them)") from None
    except ConfigInvalid:
        ours = ", ".join(identity.recipient for identity in identities)
        raise ConfigInvalid(
            f"{key} is encrypted (age) to {', '.join(sealed['recipients'])}; the "
            f"identit{'y' if len(identities) == 1 else 'ies'} set ({ours}) open"
            f"{'s' if len(identities) == 1 else ''} none of them",
            "set BACKUP_AGE_IDENTITY_FILE to the key file of one of those public keys (or "
            "BACKUP_AGE_IDENTITY to its text)") from None
    except Broken as broken:
        raise corrupt(key, broken) from None
    return identities


def corrupt(key, broken):
    """BackupCorrupt for damage found in backup `key` before anything was committed."""
    return BackupCorrupt(f"{key} is damaged ({broken.reason}: {broken.detail}); nothing was "
                         "restored", "restore an older backup (and check this one with "
                         "`l2c-backup verify`)")


def _check_tools(head, psql_num, psql_text):
    """Refuse up front what psql or the target server cannot replay."""
    if re.search(rb"^\\restrict ", head, re.M):
        major = psql_num // 10000
        needed = RESTRICT_SINCE.get(major, 0 if major > max(RESTRICT_SINCE) else None)
        if needed is None or psql_num < needed:
            raise RestoreRefused(
                f"this dump uses \\restrict (pg_dump 17.6+, 16.10+, 15.14+), which psql "
                f"{psql_text} cannot replay",
                "use a newer psql (the layer's, or PG_BIN_DIR pointing at PostgreSQL "
                "17.6 / 16.10 / 15.14 or later)")


def _filter_for(server_major):
    """Drops settings that an older target server does not know (pg_dump 17+ writes
    `SET transaction_timeout = 0;`, an error before PostgreSQL 17)."""
    if server_major >= 17:
        return lambda sql: sql
    return lambda sql: re.sub(rb"(?m)^SET transaction_timeout = 0;\n", b"", sql)


def server_version(settings):
    conn = connect(settings)
    try:
        [[text, num]] = conn.run("SELECT current_setting('server_version'), "
                                 "current_setting('server_version_num')::int")
    finally:
        conn.close()
    return text.split()[0], num


def check_target_version(key, doc, target, force):
    """The target server's major version, once it is reachable with the password given;
    RestoreRefused for one older than the dump's server, unless `force`."""
    server_text, server_num = server_version(target)
    if server_num // 10000 < doc["server"]["version_num"] // 10000 and not force:
        raise RestoreRefused(
            f"{key} comes from PostgreSQL {doc['server']['version']}; the target runs "
            f"{server_text}, older, which may not accept all of it",
            "restore into a server of the same or a newer major version, or add --force")
    return server_num // 10000


def no_table_index(key, hint):
    """The refusal of `--table` / `--jobs` for a backup made without the table index."""
    return RestoreRefused(f"{key} has no table index (it was made before l2c-backup could "
                          "cut one): restore it whole, without --table / --jobs", hint)


def target_tables(settings):
    conn = connect(settings)
    try:
        [[tables]] = conn.run(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg\\_%'")
        [[large_objects]] = conn.run("SELECT count(*) FROM pg_largeobject_metadata")
    finally:
        conn.close()
    return tables + large_objects


def _ident(name):
    return '"' + name.replace('"', '""') + '"'


def _literal(text):
    return "'" + text.replace("'", "''") + "'"


def _pg_error(err):
    """(SQLSTATE, message) of a pg8000 DatabaseError."""
    info = err.args[0] if err.args else None
    if isinstance(info, dict):
        return info.get("C", ""), info.get("M", str(info))
    return "", str(err)


@contextlib.contextmanager
def _signals_held():
    """SIGTERM and SIGINT wait until the block ends; yields the list of those that came.
    For the short steps whose outcome must be known: creating and marking a database,
    COMMIT. Off the main thread (FC) there are no handlers to hold."""
    held = []
    if threading.current_thread() is not threading.main_thread():
        yield held
        return
    previous = {s: signal.signal(s, lambda signum, _frame: held.append(signum)) for s in HANDLED}
    try:
        yield held
    finally:
        for handled, handler in previous.items():
            signal.signal(handled, handler)


@contextlib.contextmanager
def _new_database(settings, name, key):
    """A new database `name`, marked as a restore in progress and watched by a session of
    ours for as long as the block runs; dropped again unless the block succeeds. The
    block's transaction must clear the mark (`unmark_sql`) before it commits."""
    admin = connect(settings)
    try:
        _replace_leftover(admin, settings, name)
        with _signals_held() as held:
            _create_marked(admin, settings, name, key)
    finally:
        admin.close()
    guard = None
    try:
        if held:
            signal.raise_signal(held[0])  # now that the database is ours to drop
        guard = connect(settings.with_dbname(name))
        yield settings.with_dbname(name)
    except BaseException:
        _close(guard)
        drop_database(settings, name)
        raise
    _close(guard)


def _close(conn):
    if conn is not None:
        with contextlib.suppress(Exception):
            conn.close()


def unmark_sql(name):
    return f"COMMENT ON DATABASE {_ident(name)} IS NULL;\n".encode()


def _replace_leftover(admin, settings, name):
    """Drops a database `name` left by a restore that was killed (marked, no session);
    refuses one that is not ours or may still be restoring."""
    # Client sessions only: an autovacuum worker visits a database whose tables a killed
    # --jobs restore committed (each COPY commits), and DROP DATABASE ends it by itself.
    found = admin.run("SELECT coalesce(shobj_description(d.oid, 'pg_database'), ''), "
                      "(SELECT count(*) FROM pg_stat_activity a WHERE a.datid = d.oid "
                      "AND a.backend_type = 'client backend') "
                      "FROM pg_database d WHERE d.datname = :n", n=name)
    if not found:
        return
    [[comment, sessions]] = found
    where = f"{settings.host}:{settings.port}"
    if not comment.startswith(MARK):
        raise RestoreRefused(f"database {name} already exists on {where}",
                             "choose another --create-db name, or drop it first")
    if sessions:
        raise RestoreRefused(
            f"database {name} on {where} is marked '{comment}' and {sessions} "
            f"session{'s are' if sessions > 1 else ' is'} connected to it: a restore may "
            "still be running", "wait for it to end; if none is running, end those sessions "
            f"(pg_terminate_backend) or DROP DATABASE {name}, then run again")
    try:
        admin.run(f"DROP DATABASE {_ident(name)}")  # without FORCE: a session now refuses it
    except pg8000.native.DatabaseError as err:
        raise RestoreRefused(f"database {name} on {where} was left by a restore that was "
                             f"killed ('{comment}'), and dropping it failed: {_pg_error(err)[1]}",
                             f"drop it by hand (DROP DATABASE {name}) and run again") from None
    log.warning("dropped database %s on %s, left by a restore that was killed ('%s'; no "
                "session was connected); making it again", name, where, comment)


def _create_marked(admin, settings, name, key):
    try:
        admin.run(f"CREATE DATABASE {_ident(name)}")
    except pg8000.native.DatabaseError as err:
        code, message = _pg_error(err)
        where = f"{settings.host}:{settings.port}"
        if code == "42501":
            raise RestoreRefused(
                f"role {settings.user} may not create databases on {where} (it lacks CREATEDB), "
                f"so --create-db {name} cannot work",
                f"grant it (ALTER ROLE {settings.user} CREATEDB), or have the database created "
                f"first (CREATE DATABASE {name} OWNER {settings.user}) and restore into it "
                "without --create-db") from None
        if code in ("42P04", "23505"):  # another run made it since we looked (23505: at once)
            raise RestoreRefused(f"database {name} already exists on {where}",
                                 "choose another --create-db name, or drop it first") from None
        raise RestoreFailed(f"CREATE DATABASE {name} failed on {where}: {message}",
                            "fix the cause (see PostgreSQL's message) and run again") from None
    since = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        admin.run(f"COMMENT ON DATABASE {_ident(name)} IS {_literal(f'{MARK}{since} (key {key})')}")
    except BaseException:
        drop_database(settings, name)
        raise


def drop_database(settings, name):
    admin = connect(settings.with_dbname(settings.dbname if settings.dbname != name else "postgres"))
    try:
        admin.run(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")
    finally:
        admin.close()


def restore(storage, key, target, create_db=None, force=False, progress=None, wait_archive=True,
            identities=None):
    """Restores `key` into `target` (DatabaseSettings), or into a new database `create_db`
    on that server. Returns the summary dict (restore_seconds included). A backup in OSS's
    Archive class is restored by OSS first (archive.py): waited for, or with
    wait_archive=False ArchiveNotReadable at once. An encrypted backup is opened with
    `identities` (None: from the environment, see identities_for)."""
    started = time.monotonic()
    archive.ensure_readable(storage, [key, names.manifest_key(key)], wait=wait_archive,
                            command="`l2c-backup restore`")
    doc = read_manifest(storage, key)
    identities = identities_for(storage, key, doc, identities)
    psql = find_pg_tool("psql")
    psql_text, psql_num = pg_tool_version(psql)
    server_major = check_target_version(key, doc, target, force)
    scope = _new_database(target, create_db, key) if create_db else contextlib.nullcontext(target)
    with scope as settings:
        if not create_db and not force and target_tables(settings):
            raise RestoreRefused(f"database {settings.dbname} on {settings.host} already holds "
                                 "tables or large objects", "restore into an empty database, "
                                 "use --create-db NAME, or add --force to restore on top")
        result = _stream(storage, key, doc, settings, psql, psql_text, psql_num, server_major,
                         progress, unmark_sql(create_db) if create_db else b"", identities)
    result.update(key=key, database=settings.dbname, target=settings.redacted_url(),
                  restore_seconds=round(time.monotonic() - started, 3))
    log.info("restored %s into %s in %.1fs", key, settings.dbname, result["restore_seconds"])
    return result


def _stream(storage, key, doc, settings, psql, psql_text, psql_num, server_major, progress,
            before_commit=b"", identities=None):
    # Read, hashed, decrypted and inflated on threads while this one feeds psql.
    checked_head = [False]
    cleanse = _filter_for(server_major)
    own_transaction = DumpTransactions()
    try:
        with PsqlTransaction(psql, settings) as session:

            def to_psql(sql):
                if not checked_head[0]:
                    checked_head[0] = True
                    _check_tools(sql[:65536], psql_num, psql_text)
                    sql = cleanse(sql)
                session.send(own_transaction.feed(sql))

            with reading.open_backup(storage, key, doc, identities) as content:
                for sql in content:
                    to_psql(sql)
                    if progress:
                        progress(content.bytes, doc["object"]["size"])
                content.finish()
            size, sha256 = content.bytes, content.sha256
            if size != doc["object"]["size"] or sha256 != doc["object"]["sha256"]:
                raise Broken("sha256-mismatch", f"read {size} bytes with SHA-256 {sha256}, the "
                             f"manifest says {doc['object']['size']} / {doc['object']['sha256']}")
            session.send(own_transaction.finish())
            session.commit(before_commit)
    except Broken as broken:
        raise corrupt(key, broken) from None
    if not session.committed:
        raise RestoreFailed(f"psql stopped restoring {key} into {settings.dbname}: "
                            f"{session.message()}",
                            "the transaction rolled back; the target is as it was. Fix the "
                            "cause (see psql's message) and run again")
    return {"bytes": size, "sql_bytes": content.sql_bytes, "psql": psql_text,
            "tables": len(doc["table_rows"])}


class PsqlTransaction:
    """The real psql running what is sent inside one transaction of ours: `BEGIN;` on
    entering; `commit()` sends COMMIT only once psql has run every statement before it
    (ON_ERROR_STOP, then an `\\echo` of a random marker read back on stdout). Leaving the
    block by an exception kills psql before its input ends, so the server rolls back; a
    psql that stopped at a failing statement (a broken pipe) leaves `committed` False and
    its message in `message()`. `verbose`: errors carry their SQLSTATE."""

    def __init__(self, psql, settings, verbose=False):
        # Query results go to /dev/null; stdout carries only our \echo.
        self.proc = subprocess.Popen(
            [str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1",
             *(["-v", "VERBOSITY=verbose"] if verbose else []), "--no-password",
             "-o", os.devnull, "-d", settings.dbname],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=settings.pg_env())
        self.stderr = bytearray()
        self.reader = threading.Thread(target=lambda: _drain(self.proc.stderr, self.stderr),
                                       daemon=True)
        self.reader.start()
        self.committed = False
        self.sent = 0

    def __enter__(self):
        try:
            self.send(b"BEGIN;\n")
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def send(self, data):
        self.sent += len(data)
        self.proc.stdin.write(data)

    def commit(self, before_commit=b""):
        """Runs `before_commit` (e.g. `\\unrestrict KEY`, clearing a mark), then COMMIT
        if psql ran every statement; sets and returns `committed`."""
        ran_all = f"l2c-backup: every statement ran {secrets.token_hex(8)}".encode()
        self.send(b"\n" + before_commit + b"\\echo " + ran_all + b"\n")
        self.proc.stdin.flush()
        if self.proc.stdout.readline().rstrip(b"\n") == ran_all:
            self.committed = _commit(self.proc)
        else:
            self.proc.wait()  # psql stopped at a failing statement
        return self.committed

    def message(self):
        """psql's last words (its stderr), or its exit code."""
        text = bytes(self.stderr).decode("utf-8", "replace").strip()
        return text[-1500:] or f"exit {self.proc.returncode}"

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is not None and issubclass(exc_type, BrokenPipeError):
                self.proc.wait()  # psql stopped at a failing statement: say what it said
                return True
            if exc_type is not None:
                _kill(self.proc)
            return False
        finally:
            self.reader.join(5)


def _commit(proc):
    """Sends COMMIT and waits for psql's answer (milliseconds: every statement has run).
    A SIGTERM or SIGINT meanwhile waits for that answer: after a COMMIT the restore is
    complete and says so; if it did not commit, the signal stops the run as usual."""
    with _signals_held() as held:
        try:
            proc.stdin.write(b"COMMIT;\n")
            proc.stdin.close()
        except BrokenPipeError:
            pass
        committed = proc.wait() == 0
    if held and committed:
        log.warning("%s came while the restore committed: it is complete",
                    signal.Signals(held[0]).name)
    elif held:
        signal.raise_signal(held[0])
    return committed


class DumpTransactions:
    """Drops the `BEGIN;` / `COMMIT;` pair that a plain pg_dump writes around each block of
    large object data, so that the whole dump stays in the one transaction l2c opened.

    A block is recognised by pg_dump's header (`-- Data for Name: ...; Type: BLOBS; ...`,
    `--`, an empty line) directly before `BEGIN;`; it holds only `lo_*` calls, so its end
    is the first `COMMIT;` line. COPY data is followed from `COPY ... FROM stdin;` to its
    `\\.` line, so rows that read like such a block stay data. Memory: the last few lines."""

    _SQL = re.compile(rb"^COPY [^\n]* FROM stdin;\n|^--\n-- Data for Name: [^\n]*; "
                      rb"Type: BLOBS; [^\n]*\n--\n\n(?P<begin>BEGIN;\n)", re.M)
    _ENDS = {"copy": b"\\.\n", "large objects": b"COMMIT;\n"}

    def __init__(self):
        self.state = "sql"  # or "copy", "large objects"
        self.pending = b""  # undecided bytes; in "sql" they start at the start of a line
        self.at_line_start = True  # whether `pending` does

    def feed(self, data):
        buf, pos, out = self.pending + data, 0, []
        at_line_start = self.at_line_start
        while pos < len(buf):
            if self.state == "sql":
                found = self._SQL.search(buf, pos)
                if found is None:
                    cut = self._undecided_from(buf, pos)
                    out.append(buf[pos:cut])
                    pos = cut
                    break
                if found["begin"]:
                    out.append(buf[pos:found.start("begin")])
                    self.state = "large objects"
                else:
                    out.append(buf[pos:found.end()])
                    self.state = "copy"
                pos, at_line_start = found.end(), True
                continue
            end = self._ENDS[self.state]
            if at_line_start and buf.startswith(end, pos):
                at = pos
            else:
                at = buf.find(b"\n" + end, pos)
                at = at + 1 if at >= 0 else -1
            if at < 0:
                keep = max(pos, len(buf) - len(end))  # an end line split across reads
                if keep > pos:
                    out.append(buf[pos:keep])
                    at_line_start = buf[keep - 1:keep] == b"\n"
                pos = keep
                break
            out.append(buf[pos:at + len(end)] if self.state == "copy" else buf[pos:at])
            pos, at_line_start, self.state = at + len(end), True, "sql"
        self.pending, self.at_line_start = buf[pos:], at_line_start
        return b"".join(out)

    @staticmethod
    def _undecided_from(buf, pos):
        # A header + BEGIN spans five lines: one may start in the last four complete lines.
        cut = len(buf)
        for _ in range(5):
            cut = buf.rfind(b"\n", pos, cut)
            if cut < 0:
                return pos
        return cut + 1

    def finish(self):
        rest, self.pending = self.pending, b""
        return rest


def _drain(stream, buffer):
    for line in iter(lambda: stream.read(4096), b""):
        buffer += line
        del buffer[:-STDERR_KEEP]


def _kill(proc):
    # Killed before its input ends, psql never sends COMMIT: the server rolls back.
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(BrokenPipeError, ValueError):
        proc.stdin.close()
    proc.wait()
