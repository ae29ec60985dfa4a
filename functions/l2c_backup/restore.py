"""The restore operation: object -> gunzip -> psql, streamed, checked, all or nothing.

The SQL goes to the real psql (`ON_ERROR_STOP`, `--single-transaction`) as it is
inflated, with no temporary file. SHA-256 and length are checked against the manifest
while streaming; psql's input is only closed, and so its COMMIT only sent, once every
byte has passed. Any failure before that kills psql, so the transaction rolls back and
the target is left as it was; a database made for the restore (`create_db`) is dropped.
One transaction rather than "restore then swap" because it needs no second copy of the
data and leaves no half-restored database to clean up, whatever the target.
"""
import contextlib
import hashlib
import logging
import re
import subprocess
import threading
import time

from . import manifest, names
from .database import connect
from .dump import find_pg_tool, pg_tool_version
from .errors import BackupCorrupt, RestoreFailed, RestoreRefused
from .prune import survey
from .verify import Broken, GzipStreamCheck

log = logging.getLogger(__name__)

# psql learned \restrict in these releases (August 2025); older ones stop at the line.
RESTRICT_SINCE = {13: 130022, 14: 140019, 15: 150014, 16: 160010, 17: 170006}
STDERR_KEEP = 16 * 1024


def find_backup(storage, key=None, latest=False, kind=None, date=None, verified_only=False):
    """The key to restore: as given, the newest (of a kind), or the one of a date."""
    if key:
        return key
    backups, _ = survey(storage, [kind] if kind else list(names.KINDS))
    backups = [b for b in backups if b.group != "globals" and (b.verified or not verified_only)]
    if date:
        backups = [b for b in backups if b.stamp.startswith(date) or
                   (b.kind == "weekly" and _week_of(date) == b.stamp)]
    if not backups:
        what = " verified" if verified_only else ""
        raise RestoreRefused(f"no{what} backup found in {storage.url}" +
                             (f" of kind {kind}" if kind else "") + (f" for {date}" if date else ""),
                             "list them with `l2c-backup verify --all`, or give the KEY")
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
        raise RestoreRefused(f"{key} has no manifest: that backup never completed",
                             "restore another backup (a backup only counts with its manifest)") from None
    except ValueError as err:
        raise RestoreRefused(f"the manifest of {key} is not valid: {err}",
                             "restore another backup, or check it with `l2c-backup verify`") from None


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


@contextlib.contextmanager
def _new_database(settings, name):
    """CREATE DATABASE name; dropped again unless the block succeeds."""
    admin = connect(settings)
    try:
        if admin.run("SELECT 1 FROM pg_database WHERE datname = :n", n=name):
            raise RestoreRefused(f"database {name} already exists on {settings.host}",
                                 "choose another --create-db name, or drop it first")
        admin.run(f"CREATE DATABASE {_ident(name)}")
    finally:
        admin.close()
    try:
        yield settings.with_dbname(name)
    except BaseException:
        drop_database(settings, name)
        raise


def drop_database(settings, name):
    admin = connect(settings.with_dbname(settings.dbname if settings.dbname != name else "postgres"))
    try:
        admin.run(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")
    finally:
        admin.close()


def restore(storage, key, target, create_db=None, force=False, progress=None):
    """Restores `key` into `target` (DatabaseSettings), or into a new database `create_db`
    on that server. Returns the summary dict (restore_seconds included)."""
    started = time.monotonic()
    doc = read_manifest(storage, key)
    psql = find_pg_tool("psql")
    psql_text, psql_num = pg_tool_version(psql)
    server_text, server_num = server_version(target)  # reachable, password right
    server_major, dump_major = server_num // 10000, doc["server"]["version_num"] // 10000
    if server_major < dump_major and not force:
        raise RestoreRefused(
            f"{key} comes from PostgreSQL {doc['server']['version']}; the target runs "
            f"{server_text}, older, which may not accept all of it",
            "restore into a server of the same or a newer major version, or add --force")
    scope = _new_database(target, create_db) if create_db else contextlib.nullcontext(target)
    with scope as settings:
        if not create_db and not force and target_tables(settings):
            raise RestoreRefused(f"database {settings.dbname} on {settings.host} already holds "
                                 "tables or large objects", "restore into an empty database, "
                                 "use --create-db NAME, or add --force to restore on top")
        result = _stream(storage, key, doc, settings, psql, psql_text, psql_num, server_major,
                         progress)
    result.update(key=key, database=settings.dbname, target=settings.redacted_url(),
                  restore_seconds=round(time.monotonic() - started, 3))
    log.info("restored %s into %s in %.1fs", key, settings.dbname, result["restore_seconds"])
    return result


def _stream(storage, key, doc, settings, psql, psql_text, psql_num, server_major, progress):
    proc = subprocess.Popen([str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
                             "--no-password", "-d", settings.dbname],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=settings.pg_env())
    stderr = bytearray()
    reader = threading.Thread(target=lambda: _drain(proc.stderr, stderr), daemon=True)
    reader.start()
    sha, size, checked_head = hashlib.sha256(), 0, [False]
    cleanse = _filter_for(server_major)

    def to_psql(sql):
        if not checked_head[0]:
            checked_head[0] = True
            _check_tools(sql[:65536], psql_num, psql_text)
            sql = cleanse(sql)
        proc.stdin.write(sql)

    gz = GzipStreamCheck(sink=to_psql)
    committed = False
    try:
        for data in storage.open(key):
            sha.update(data)
            size += len(data)
            gz.feed(data)
            if progress:
                progress(size, doc["object"]["size"])
        gz.finish()
        if size != doc["object"]["size"] or sha.hexdigest() != doc["object"]["sha256"]:
            raise Broken("sha256-mismatch", f"read {size} bytes with SHA-256 {sha.hexdigest()}, "
                         f"the manifest says {doc['object']['size']} / {doc['object']['sha256']}")
        proc.stdin.close()  # now psql commits
        committed = proc.wait() == 0
    except Broken as broken:
        _kill(proc)
        raise BackupCorrupt(f"{key} is damaged ({broken.reason}: {broken.detail}); nothing was "
                            f"restored", "restore an older backup (and check this one with "
                            "`l2c-backup verify`)") from None
    except BrokenPipeError:
        proc.wait()
    except BaseException:
        _kill(proc)
        raise
    finally:
        reader.join(5)
    if not committed:
        message = bytes(stderr).decode("utf-8", "replace").strip()
        raise RestoreFailed(f"psql stopped restoring {key} into {settings.dbname}: "
                            f"{message[-1500:] or f'exit {proc.returncode}'}",
                            "the transaction rolled back; the target is as it was. Fix the "
                            "cause (see psql's message) and run again")
    return {"bytes": size, "sql_bytes": gz.sql_bytes, "psql": psql_text,
            "tables": len(doc["table_rows"])}


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
