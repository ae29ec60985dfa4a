"""The backup operation: pre-flight, pg_dump -> parallel gzip -> storage, then the manifest.

A backup only counts once its object and its manifest both exist: the object appears
whole or not at all (multipart complete, or rename into place), the manifest is written
after it, and any failure on the way leaves neither behind: also SIGTERM / SIGINT
(signals.Stopped, a BaseException), and a manifest that cannot be written, which takes
the object with it. What SIGKILL leaves the next run removes (leftovers.py). A daily or
weekly backup is made by one run at a time (claims.py).
"""
import contextlib
import hashlib
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass

from . import __version__, age, alerts, claims, deflate_engine, leftovers, manifest, names
from .compress import gzip_members
from .database import Snapshot, inspect, list_databases
from .dump import PgDump, check_dump_compatible, find_pg_tool, globals_dump, pg_tool_version
from .errors import BackupTimeout, DumpFailed, EventInvalid, L2CError, StorageFailed, UploadFailed
from .logs import bound
from .sections import IndexBuilder, Sectioner
from .signals import wake_on_stop
from .storage import open_storage

log = logging.getLogger(__name__)

BLOCK_SIZE = 4 * 1024 * 1024  # one gzip member per 4 MiB of SQL: ~0.05% size cost


@dataclass
class Outcome:
    """What one backup (one database, or the globals) produced."""
    database: str
    key: str
    manifest_key: str = ""
    location: str = ""  # where the object is, in full: oss://bucket/key or /dir/key
    size: int = 0
    sql_bytes: int = 0
    sha256: str = ""
    seconds: float = 0.0
    skipped: str = ""  # why nothing was written (an earlier run already made this one)

    def summary(self):
        out = {"database": self.database, "key": self.key, "location": self.location,
               "bytes": self.size, "sql_bytes": self.sql_bytes, "sha256": self.sha256,
               "seconds": round(self.seconds, 3)}
        if self.skipped:
            out["skipped"] = self.skipped
        return out


class _Meter:
    """Counts and hashes the compressed stream on its way to storage, and enforces the
    time budget between chunks (so a stuck upload or dump cannot run past FC's timeout)."""

    def __init__(self, deadline, progress, on_first_chunk=None, sectioner=None, encryptor=None):
        self.on_first_chunk = on_first_chunk  # pg_dump has started: its snapshot is taken
        self.sectioner = sectioner  # a database dump's: the table index is built here
        self.index = IndexBuilder(sectioner) if sectioner else None
        self.encryptor = encryptor  # age.Encryptor: what is stored is these gzip bytes sealed
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.members = 0
        self.member_sizes = []  # the manifest's: readers inflate whole members
        self.deadline = deadline
        self.progress = progress

    @staticmethod
    def timeout():
        return BackupTimeout("backup ran past its time budget and was stopped",
                             "raise BACKUP_TIMEOUT_SECONDS (and the FC function timeout)")

    def wrap(self, members, dump):
        for member in members:
            if self.on_first_chunk:
                self.on_first_chunk()
                self.on_first_chunk = None
            self.sha256.update(member)
            self.size += len(member)
            self.members += 1
            self.member_sizes.append(len(member))
            if self.index:
                self.index.add(member)
            if self.deadline and time.monotonic() > self.deadline:
                raise self.timeout()
            if self.progress:
                self.progress(dump.sql_bytes, self.size)
            yield member


class _Watchdog:
    """Stops the dump process at the deadline, so a dump stuck on a lock or a slow
    server cannot outlive the budget (the upload is then aborted as for any failure)."""

    def __init__(self, deadline, process):
        self.fired = False
        self.timer = None
        if deadline:
            self.timer = threading.Timer(max(deadline - time.monotonic(), 0), self._fire, [process])
            self.timer.daemon = True

    def _fire(self, process):
        self.fired = True
        with contextlib.suppress(ProcessLookupError, TypeError):
            os.kill(process.pid, signal.SIGTERM)

    def __enter__(self):
        if self.timer:
            self.timer.start()
        return self

    def __exit__(self, *exc):
        if self.timer:
            self.timer.cancel()


def _end_dump(process):
    """Ends a dump from another thread (signals.stop_thread): pg_dump cancels its own
    queries on SIGTERM (one waiting on a lock too); SIGCONT lets a stopped one get it."""
    for signum in (signal.SIGTERM, signal.SIGCONT):
        with contextlib.suppress(ProcessLookupError, TypeError):
            os.kill(process.pid, signum)


def _remaining(deadline):
    """Seconds left of the budget (at least 1), or 0 for no budget."""
    return max(deadline - time.monotonic(), 1) if deadline else 0


def after_success_steps(config):
    """What runs after a successful backup: the retention prune of that kind."""
    from .prune import after_backup_hook
    return [after_backup_hook(config.keep)] if config.prune_after_backup else []


GLOBALS = "(globals)"  # `only` for the globals alone; the database label of their backup


def run_backup(config, kind, request_id="", when=None, after_success=None, progress=None,
               leftover_age=None, only=None):
    """Backs up every configured database (and the globals when asked) as `kind`.

    Returns the summary dict. Raises the first L2CError after trying every database, so
    one broken database does not cost the others their backup. `after_success` hooks
    (default: the retention prune of that kind) run once all succeeded; a failing hook is
    logged, never fatal. Before its first write it removes what killed runs left under
    the prefix, once older than `leftover_age` seconds (default: leftovers.safe_age,
    past the end of any run).

    `only`: one of the configured databases alone, into the folder it has in a run of
    all of them (fanout.py runs one per database this way), or GLOBALS for the globals
    alone. A name that is not configured is refused (EventInvalid).
    """
    after_success = after_success_steps(config) if after_success is None else after_success
    try:
        return _run_backup(config, kind, request_id, when, after_success, progress, leftover_age,
                           only)
    except L2CError as err:
        if not getattr(err, "alerted", False):  # failed before any database was tried
            _alert_failure(err, only or "-", kind, config.target)
        raise


def _run_backup(config, kind, request_id, when, after_success, progress, leftover_age, only=None):
    when = when or names.now()
    started = time.monotonic()
    deadline = started + config.timeout_seconds if config.timeout_seconds else None
    pg_dump_path = find_pg_tool("pg_dump")
    storage = open_storage(config.target, config.oss)
    databases = [] if only == GLOBALS else databases_to_back_up(config)
    multi = len(databases) > 1
    if only and only != GLOBALS:
        if only not in databases:
            raise EventInvalid(f"database {only!r} is not one of the databases to back up "
                               f"({', '.join(databases)})",
                               "name one of BACKUP_DATABASES (with 'all': one the user may "
                               "connect to), or leave database out")
        databases = [only]
    with_globals = config.with_globals if only is None else only == GLOBALS
    outcomes, failures = [], []
    age = leftovers.safe_age(config.timeout_seconds) if leftover_age is None else leftover_age
    tidied = []

    def tidy():  # once, before the first write: a run that never reaches its database
        if not tidied:  # leaves the storage alone
            tidied.append(leftovers.clean(storage, age))

    with bound(request_id=request_id or None, kind=kind):
        for dbname in databases:
            settings = config.database.with_dbname(dbname)
            with bound(database=dbname):
                try:
                    outcomes.append(backup_database(config, storage, kind, settings, when,
                                                    pg_dump_path, request_id, deadline, progress,
                                                    folder=dbname if multi else None, tidy=tidy))
                except L2CError as err:
                    log.error("backup of %s failed: %s", dbname, err)
                    _alert_failure(err, dbname, kind, config.target)
                    failures.append(err)
        if with_globals and not failures:
            with bound(database="(globals)"):
                try:
                    outcomes.append(backup_globals(config, storage, kind, when, request_id,
                                                   deadline, tidy=tidy))
                except L2CError as err:
                    _alert_failure(err, "(globals)", kind, config.target)
                    failures.append(err)
        if failures:
            raise failures[0]
        for outcome in outcomes:
            _alert_success(outcome, kind)
        for hook in after_success:
            try:
                hook(kind, storage, outcomes)
            except Exception as exc:
                log.warning("after-backup step %s failed (the backup itself is fine): %s",
                            getattr(hook, "__name__", hook), exc)
    return {"kind": kind, "target": storage.url, "request_id": request_id,
            "seconds": round(time.monotonic() - started, 3),
            "backups": [o.summary() for o in outcomes]}


SLOW_SECONDS = 30 * 60  # PLAN §6: a backup over 30 minutes is worth a notice


def _alert_failure(err, database, kind, target):
    title = "backup failed"
    if isinstance(err, UploadFailed):  # PLAN §6 names OSS's; a directory is written, not uploaded
        title = "OSS upload failed" if target.startswith("oss://") else "backup write to directory failed"
    alerts.send(alerts.Alert(err.severity, title, str(err), {"database": database, "kind": kind}))
    err.alerted = True


def _alert_success(outcome, kind):
    if outcome.skipped:
        return
    facts = {"database": outcome.database, "kind": kind, "key": outcome.key,
             "bytes": outcome.size, "seconds": round(outcome.seconds, 1)}
    if outcome.seconds > SLOW_SECONDS:
        alerts.send(alerts.Alert("notice", "backup slow", f"took {outcome.seconds / 60:.0f} "
                                 f"minutes (over {SLOW_SECONDS // 60})", facts))
    alerts.send(alerts.Alert("info", "backup done", f"{outcome.size:,} bytes", facts))


def databases_to_back_up(config):
    """The databases a run of `config` backs up: the list, every one the user may connect
    to for "all", else the URL's database."""
    if config.databases == ["all"]:
        found = list_databases(config.database)
        if not found:
            raise L2CError("BACKUP_DATABASES=all found no database to back up",
                           "check that the user may connect to the databases")
        return found
    return config.databases or [config.database.dbname]


def _choose_key(storage, kind, when, folder, encrypted=False):
    """The key for this run, or (key, reason) when this kind's backup already exists.

    daily and weekly are one per day / week: a repeated run (timers deliver at least
    once) finds the complete backup, manifest included, and leaves it alone. One that
    finds an object without a manifest (a run that died) replaces it only once the new
    object is whole. A manual backup never overwrites: a clash in the same second gets
    a numbered name."""
    collision = 0
    while True:
        key = names.backup_key(storage.prefix, kind, when, folder, collision, encrypted)
        # the slot's backup made before BACKUP_AGE_RECIPIENTS was set or cleared
        other = names.backup_key(storage.prefix, kind, when, folder, collision, not encrypted)
        has_object = _storage(storage, storage.head, key) is not None
        has_manifest = _storage(storage, storage.head, names.manifest_key(key)) is not None
        if kind != "manual":
            if has_object and has_manifest:
                return key, f"the {kind} backup {key} already exists"
            if _storage(storage, storage.head, names.manifest_key(other)) is not None:
                return other, f"the {kind} backup {other} already exists"
            return key, ""
        if not (has_object or has_manifest or _storage(storage, storage.head, other)
                or _storage(storage, storage.head, names.manifest_key(other))):
            return key, ""
        collision += 1


def backup_database(config, storage, kind, settings, when, pg_dump_path, request_id="",
                    deadline=None, progress=None, folder=None, tidy=None):
    """One database into one object and its manifest (or skipped: see _choose_key and
    _one_run). `tidy` runs once the pre-flight passed, before anything is written."""
    # pre-flight: reachable, password right, versions, sizes; the counts come from the
    # snapshot pg_dump then dumps, so the manifest describes exactly what is in the dump
    with Snapshot(settings, _remaining(deadline)) as snapshot:
        info = snapshot.info
        pg_dump_version, pg_dump_num = pg_tool_version(pg_dump_path)
        check_dump_compatible(pg_dump_num, info.server_version_num)
        key, skipped = _choose_key(storage, kind, when, folder, bool(config.age_recipients))
        if skipped:
            log.info("%s; nothing to do", skipped)
            return Outcome(settings.dbname, key, names.manifest_key(key), skipped=skipped)
        if tidy:
            tidy()
        with _one_run(config, storage, kind, key, request_id) as skipped:
            if skipped:
                return Outcome(settings.dbname, key, names.manifest_key(key), skipped=skipped)
            args = [f"--snapshot={snapshot.id}"]
            if deadline:
                args.append(f"--lock-wait-timeout={int(_remaining(deadline) * 1000)}")
            return _backup_stream(config, storage, kind, key, settings, info, pg_dump_version,
                                  PgDump(settings, pg_dump_path, extra_args=args), "database",
                                  request_id, deadline, progress, on_first_chunk=snapshot.release)


@contextlib.contextmanager
def _one_run(config, storage, kind, key, request_id):
    """daily / weekly: holds the claim on `key` for the block (claims.py), so a second
    run of the same slot cannot mix its object with this one's manifest. Yields "" to go
    ahead, or why not: another run holds it, or one finished between our look and our
    claim. Manual backups never overwrite, so they need no claim."""
    if kind == "manual":
        yield ""
        return
    with _storage_errors(storage, "claim", claims.claim_key(key)):
        claim, holder = claims.take(storage, key, claims.ttl_for(config.timeout_seconds),
                                    request_id)
    if claim is None:
        another_run = claims.another_run(key, holder)
        log.info("%s; nothing to do", another_run)
        yield another_run
        return
    try:
        if _storage(storage, storage.head, names.manifest_key(key)):
            done = f"the {kind} backup {key} already exists"
            log.info("%s (made while we looked); nothing to do", done)
            yield done
        else:
            yield ""
    finally:
        claims.release(storage, claim)


def backup_globals(config, storage, kind, when, request_id="", deadline=None, tidy=None):
    """Roles and tablespaces (`pg_dumpall --globals-only`) beside the database backups."""
    pg_dumpall = find_pg_tool("pg_dumpall")
    info = inspect(config.database, _remaining(deadline))
    version, num = pg_tool_version(pg_dumpall)
    check_dump_compatible(num, info.server_version_num)
    info.table_rows, info.database_size = {}, 0  # a globals dump holds no table
    encrypted = bool(config.age_recipients)
    key = names.globals_key(storage.prefix, kind, when, encrypted)
    for done in (key, names.globals_key(storage.prefix, kind, when, not encrypted)):
        if kind != "manual" and _storage(storage, storage.head, names.manifest_key(done)):
            return Outcome("(globals)", done, names.manifest_key(done),
                           skipped=f"the {kind} globals backup {done} already exists")
    if tidy:
        tidy()
    with _one_run(config, storage, kind, key, request_id) as skipped:
        if skipped:
            return Outcome("(globals)", key, names.manifest_key(key), skipped=skipped)
        process = globals_dump(config.database, pg_dumpall, config.no_role_passwords)
        return _backup_stream(config, storage, kind, key, config.database, info, version,
                              process, "globals", request_id, deadline, None)


def _backup_stream(config, storage, kind, key, settings, info, tool_version, process, content,
                   request_id, deadline, progress, on_first_chunk=None):
    """Streams one dump process into `key`, then writes its manifest."""
    started_at = names.now()
    started = time.monotonic()
    location = _location(storage, key)
    with bound(key=key):
        log.info("backing up %s of %s (%d bytes on disk) to %s", content, settings.dbname,
                 info.database_size, location)
        meter = _Meter(deadline, progress, on_first_chunk,
                       Sectioner() if content == "database" and config.table_index else None,
                       age.Encryptor(config.age_recipients) if config.age_recipients else None)
        with process, _Watchdog(deadline, process) as watchdog, \
                wake_on_stop(lambda: _end_dump(process)):
            try:
                stored = _store(storage, key, process, meter, config, info.database_size,
                                overwrite=kind != "manual")
            except DumpFailed:
                if watchdog.fired:
                    raise _Meter.timeout() from None
                raise
        manifest_key = names.manifest_key(key)
        try:
            document = _manifest(config, storage, kind, key, settings, info, tool_version,
                                 stored, meter, process.sql_bytes, started_at, started,
                                 request_id, content)
            _storage(storage, storage.put_bytes, manifest_key, manifest.dumps(document))
        except BaseException as exc:  # also Stopped: an object without manifest never stays
            left = _remove_object(storage, key, manifest_key)
            if isinstance(exc, L2CError):
                raise type(exc)(exc.args[0] + left, exc.hint) from None
            raise
        seconds = time.monotonic() - started
        log.info("backup complete: %d bytes (%d of SQL) in %.1fs", stored.size,
                 process.sql_bytes, seconds)
        label = settings.dbname if content == "database" else "(globals)"
        return Outcome(label, key, manifest_key, location, stored.size, process.sql_bytes,
                       document["object"]["sha256"], seconds)


def _location(storage, key):
    """Where `key` is, in full: oss://bucket/prefix/... (the URL ends with the prefix
    keys start with) or /dir/prefix/... (the URL is the directory)."""
    if storage.url.startswith("oss://"):
        return storage.url + key[len(storage.prefix):]
    return os.path.join(storage.url, key)


def _remove_object(storage, key, manifest_key):
    """Removes a stored object whose manifest could not be written (and the manifest,
    should a failed attempt have landed after all). Returns what to add to the error."""
    try:
        storage.delete(manifest_key)
        storage.delete(key)
    except Exception as exc:
        reason = str(exc).split("\n", 1)[0]
        log.error("could not remove %s, which has no manifest: %s", key, reason)
        return (f"; the object {key} has no manifest and could not be removed either "
                f"({reason}): delete it, or let prune remove it")
    log.info("removed %s: without its manifest it is no backup", key)
    return f"; the object {key} was removed: without its manifest it is no backup"


def _store(storage, key, process, meter, config, expected_size, overwrite):
    chunks = process.chunks()
    if meter.sectioner:  # each section starts a member: the table index (sections.py)
        chunks = meter.sectioner.pieces(chunks)
    members = gzip_members(chunks, config.gzip_level, config.gzip_workers or None, BLOCK_SIZE)
    stream = meter.wrap(members, process)
    if meter.encryptor:  # after the meter: sizes, hashes and the index count the gzip bytes
        stream = meter.encryptor.wrap(stream)
    with contextlib.closing(members):  # stops the compression threads on any failure
        return _storage(storage, storage.put_stream, key, stream, expected_size,
                        overwrite=overwrite)


def _storage(storage, call, key, *args, **kwargs):
    """Runs a storage call, its failures as UploadFailed (see _storage_errors)."""
    action = "check" if getattr(call, "__name__", "") == "head" else "write"
    with _storage_errors(storage, action, key):
        return call(key, *args, **kwargs)


@contextlib.contextmanager
def _storage_errors(storage, action, key):
    """Storage failures in the block become UploadFailed, the backup's own failure (exit
    13), naming the target: the OSS seam's StorageFailed line (endpoint, bucket, key),
    or the directory. Other L2C errors such as DumpFailed pass unchanged: the dump
    broke, not the upload."""
    try:
        yield
    except StorageFailed as err:
        raise UploadFailed(err.args[0], err.hint) from None
    except L2CError:
        raise
    except FileExistsError:
        raise UploadFailed(f"{key} already exists in {storage.url} and a backup never "
                           "overwrites another", "run the backup again; it picks a new name") from None
    except OSError as exc:
        raise UploadFailed(f"could not {action} {key} in {storage.url}: {exc.strerror or exc}",
                           "check free space and permissions of the backup directory") from None


def _client_side(meter):
    """The manifest's encryption.client_side: which public keys open the object, and
    where its gzip payload is (readers map member and section offsets through it)."""
    sealed = meter.encryptor
    if sealed is None:
        return None
    return {"format": age.FORMAT, "recipients": list(sealed.recipients),
            "header_length": sealed.header_length, "payload_size": meter.size,
            "payload_sha256": meter.sha256.hexdigest()}


def _manifest(config, storage, kind, key, settings, info, pg_dump_version, stored, meter,
              sql_bytes, started_at, started, request_id, content):
    finished_at = names.now()
    oss = config.oss
    index = meter.index.index() if meter.index else None
    if meter.index and index is None:  # a fine backup still, restored whole
        log.warning("no table index for %s: %s", key, meter.index.broken or "no sections")
    document = {
        "format": manifest.FORMAT, "kind": kind, "content": content, "key": key,
        "storage": storage.url, "database": settings.dbname,
        "object": {"size": stored.size,
                   "sha256": (meter.encryptor or meter).sha256.hexdigest(),
                   "crc64ecma": stored.crc64, "etag": stored.etag, "version_id": stored.version_id,
                   "parts": stored.parts, "part_size": stored.extra.get("part_size", 0)},
        "sql_bytes": sql_bytes,
        "compression": {"format": "gzip", "level": config.gzip_level, "members": meter.members,
                        "block_size": BLOCK_SIZE, "engine": deflate_engine.ENGINE,
                        "member_sizes": meter.member_sizes},
        "started_at": started_at.isoformat(), "finished_at": finished_at.isoformat(),
        "duration_seconds": round(time.monotonic() - started, 3),
        "server": {"host": settings.host, "port": settings.port, "version": info.server_version,
                   "version_num": info.server_version_num},
        "pg_dump_version": pg_dump_version,
        "database_size": info.database_size,
        "table_rows": info.table_rows,
        "encryption": {"server_side": (oss.server_side_encryption or None) if oss else None,
                       "kms_key_id": (oss.kms_key_id or None) if oss else None,
                       "client_side": _client_side(meter)},
        "request_id": request_id,
        "tool": {"name": "l2c-backup", "version": __version__},
    }
    if index:
        document["index"] = index
    return document
