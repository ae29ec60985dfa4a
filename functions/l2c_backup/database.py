"""Which database to back up, how to reach it, and what is in it.

`DatabaseSettings.from_url()` reads DATABASE_URL (libpq's URI form) with the PG* variables
as fallback, the way psql does, so one setting drives both our queries (pg8000) and the
pg_dump / psql processes (`pg_env()`). Passwords travel in the environment, never in argv,
and never appear in a repr, a log line or an error message.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import socket
import ssl
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import pg8000.native

from .errors import BackupTimeout, ConfigInvalid, DatabaseUnreachable, DumpFailed
from .signals import wake_on_stop

SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
DEFAULT_CONNECT_TIMEOUT = 10  # seconds; libpq waits forever, which on FC burns the whole run
APPLICATION_NAME = "l2c-backup"  # shows in pg_stat_activity, so a DBA can tell who we are

# Query parameters we understand in DATABASE_URL. Anything else is refused rather than
# ignored: a misspelt `sslmode` must not silently turn into an unencrypted connection.
_URL_PARAMS = ("host", "port", "sslmode", "sslrootcert", "connect_timeout")
_URL_HINT = ("the form is postgresql://USER:PASSWORD@HOST:PORT/DBNAME?sslmode=require; "
             "percent-encode special characters in the user or password (@ as %40, "
             "/ as %2F, : as %3A, # as %23, ? as %3F)")


@dataclass(frozen=True, repr=False)
class DatabaseSettings:
    """One database to connect to. `password` is None when there is none to send."""

    host: str
    port: int
    user: str
    password: str | None
    dbname: str
    sslmode: str = "prefer"
    sslrootcert: str | None = None
    connect_timeout: int = DEFAULT_CONNECT_TIMEOUT  # seconds, 0 = wait forever
    # where the URL came from (DATABASE_URL, --target-url, DRILL_DATABASE_URL), for messages
    origin: str = dataclasses.field(default="DATABASE_URL", compare=False)

    def __post_init__(self):
        if self.sslmode not in SSLMODES:
            raise ConfigInvalid(f"sslmode {self.sslmode!r} is not one of {', '.join(SSLMODES)}",
                                hint=f"set sslmode in {self.origin} or PGSSLMODE")
        if not 0 < self.port < 65536:
            raise ConfigInvalid(f"database port {self.port} is out of range (1-65535)",
                                hint=f"fix the port in {self.origin} or PGPORT")
        if self.connect_timeout < 0:
            raise ConfigInvalid(f"connect_timeout {self.connect_timeout} is negative",
                                hint=f"set connect_timeout in {self.origin} or "
                                     "PGCONNECT_TIMEOUT to a number of seconds")

    def __repr__(self):
        password = None if self.password is None else "***"
        return (f"DatabaseSettings(host={self.host!r}, port={self.port}, user={self.user!r}, "
                f"password={password!r}, dbname={self.dbname!r}, sslmode={self.sslmode!r}, "
                f"sslrootcert={self.sslrootcert!r}, connect_timeout={self.connect_timeout})")

    __str__ = __repr__

    @classmethod
    def from_url(cls, url: str | None = None, environ=os.environ,
                 origin: str = "DATABASE_URL") -> "DatabaseSettings":
        """Settings from a postgresql:// (or postgres://) URL. `url=None` reads
        DATABASE_URL from `environ`; with neither, the PG* variables alone decide.
        Whatever the URL leaves out comes from PGHOST, PGPORT, PGUSER, PGPASSWORD,
        PGDATABASE, PGSSLMODE, PGSSLROOTCERT, PGCONNECT_TIMEOUT, then the defaults
        localhost:5432, user postgres, database postgres, sslmode prefer. `origin` names
        the setting or flag the URL came from in every message."""
        if url is None:
            url = environ.get("DATABASE_URL")
        parts = _parse_url(url, origin) if url else {}
        if url and not (parts.get("host") or parts.get("dbname")
                        or environ.get("PGHOST") or environ.get("PGDATABASE")):
            # libpq would read "postgresql://" as the postgres database on this machine:
            # almost always a variable that lost its value, not a wish.
            raise ConfigInvalid(
                f"{origin} names no host and no database",
                hint="give the whole URL, postgresql://USER:PASSWORD@HOST:5432/DBNAME "
                     "(or set PGHOST and PGDATABASE)")

        def pick(key, var, default=None):
            value = parts.get(key)
            if value in (None, ""):
                value = environ.get(var) or default
            return value

        port = _to_int(pick("port", "PGPORT", "5432"),
                       f"{origin} port" if parts.get("port") else "PGPORT")
        timeout = _to_int(pick("connect_timeout", "PGCONNECT_TIMEOUT",
                               str(DEFAULT_CONNECT_TIMEOUT)),
                          f"{origin} connect_timeout" if parts.get("connect_timeout")
                          else "PGCONNECT_TIMEOUT")
        password = parts["password"] if "password" in parts else environ.get("PGPASSWORD")
        return cls(
            host=pick("host", "PGHOST", "localhost"),
            port=port,
            user=pick("user", "PGUSER", "postgres"),
            password=password or None,
            dbname=pick("dbname", "PGDATABASE", "postgres"),
            sslmode=pick("sslmode", "PGSSLMODE", "prefer"),
            sslrootcert=pick("sslrootcert", "PGSSLROOTCERT"),
            connect_timeout=timeout,
            origin=origin,
        )

    def with_dbname(self, name: str) -> "DatabaseSettings":
        return dataclasses.replace(self, dbname=name)

    def pg_env(self) -> dict[str, str]:
        """libpq variables for pg_dump / pg_dumpall / psql. The password goes here, since
        argv is visible to every user of the machine in `ps`."""
        env = {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGDATABASE": self.dbname,
            "PGSSLMODE": self.sslmode,
            "PGCONNECT_TIMEOUT": str(self.connect_timeout),
            "PGAPPNAME": APPLICATION_NAME,
        }
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        if self.sslrootcert:
            env["PGSSLROOTCERT"] = self.sslrootcert
        return env

    def redacted_url(self) -> str:
        """The URL for logs: everything but the password."""
        user = quote(self.user, safe="")
        auth = f"{user}:***@" if self.password is not None else f"{user}@"
        host = f"[{self.host}]" if ":" in self.host else quote(self.host, safe="")
        query = f"?sslmode={self.sslmode}"
        if self.sslrootcert:
            query += f"&sslrootcert={quote(self.sslrootcert, safe='/')}"
        return f"postgresql://{auth}{host}:{self.port}/{quote(self.dbname, safe='')}{query}"

    @property
    def where(self) -> str:
        """HOST:PORT/DBNAME, for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}/{self.dbname}"


def _parse_url(url: str, origin: str = "DATABASE_URL") -> dict[str, str]:
    """The URL's parts, percent-decoded; absent parts are missing from the dict. Errors
    name `origin` and the part, and never repeat the URL (it holds the password)."""
    def bad(what):
        return ConfigInvalid(f"{origin} is malformed: {what}", hint=_URL_HINT)

    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("postgresql", "postgres"):
        raise bad("it must start with postgresql:// or postgres://")
    # The authority (user:password@host:port) ends at the first '/', '?' or '#'. An '@'
    # after that point means one of them sits unencoded in the password, and whatever
    # follows it (a "parameter", a "database", a "fragment") is a piece of the password:
    # never shown, not even its name.
    end = re.search(r"[/?#]", rest)
    if end and "@" in rest[end.start():]:
        raise bad("the password (or user name) holds an unencoded '/', '?', '#' or '@'; "
                  "percent-encode the password")
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unencoded [ or ] read as an IPv6 address
        raise bad("it is not a valid URL (write [ and ] in the password as %5B and %5D)") from None
    if parts.fragment:
        raise bad("it has a '#' fragment (a '#' in the password must be written %23)")
    userinfo, at, hostport = parts.netloc.rpartition("@")
    found: dict[str, str] = {}
    if at:
        user, colon, password = userinfo.partition(":")
        if user:
            found["user"] = unquote(user)
        if colon:
            found["password"] = unquote(password)
    if "," in hostport:
        raise bad("it names several hosts; L2C backup connects to one")
    if hostport.startswith("["):
        host, bracket, rest = hostport[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise bad("the IPv6 host is not closed with ']'")
        port = rest[1:]
    else:
        host, _, port = hostport.partition(":")
    if host:
        found["host"] = unquote(host)
    if port:
        if not port.isdigit():
            raise bad("the port is not a number")
        found["port"] = port
    path = parts.path
    if path.startswith("/") and len(path) > 1:
        if "/" in path[1:]:
            raise bad("the database name contains '/'")
        found["dbname"] = unquote(path[1:])
    for pair in filter(None, parts.query.split("&")):
        key, _, value = pair.partition("=")
        key = unquote(key)
        if key not in _URL_PARAMS:
            # Named only when it is a slip of one we know: anything else may be a piece
            # of a password whose '?' was not encoded.
            meant = difflib.get_close_matches(key, _URL_PARAMS, n=1, cutoff=0.75)
            shown = f"{key!r} (did you mean {meant[0]}?)" if meant else "(not shown)"
            raise bad(f"unknown parameter {shown} (known: {', '.join(_URL_PARAMS)}; a '?' in "
                      "the password must be written %3F)")
        found[key] = unquote(value)
    return found


def _to_int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigInvalid(f"{name} is not a number: {value!r}",
                            hint=f"set {name} to a whole number") from None


# -- connecting ----------------------------------------------------------------------------

def connect(settings: DatabaseSettings) -> pg8000.native.Connection:
    """A pg8000 connection that honours sslmode as libpq does:
    disable: plain; allow: plain, then TLS if the server insists on it; prefer: TLS if
    the server offers it, else plain; require: TLS, certificate not checked; verify-ca:
    TLS with a certificate signed by sslrootcert; verify-full: that, and the certificate
    names the host. Every failure is a DatabaseUnreachable that says what to fix."""
    if settings.password is None:
        found = pgpass_password(settings)
        if found is not None:
            settings = dataclasses.replace(settings, password=found)
    mode = settings.sslmode
    try:
        if mode == "disable":
            return _open(settings, False)
        if mode == "allow":
            try:
                return _open(settings, False)
            except pg8000.native.DatabaseError as e:
                if _code(e) != "28000":  # pg_hba.conf had no plain entry for us
                    raise
                return _open(settings, _tls_context(settings))
        if mode == "prefer":
            try:
                # ssl_context=None is pg8000's own "prefer": it asks for TLS and carries
                # on in plain text when the server answers that it has none.
                return _open(settings, None)
            except ssl.SSLError:
                return _open(settings, False)  # offered TLS, but the handshake failed
        return _open(settings, _tls_context(settings))
    except (pg8000.native.InterfaceError, pg8000.native.DatabaseError, OSError) as e:
        raise _unreachable_from(settings, e) from None
    except AttributeError:
        # pg8000 1.31 asked for a SCRAM password it was not given: None.decode()
        if settings.password is not None:
            raise
        raise unreachable(settings, NO_PASSWORD.format(user=settings.user)) from None


NO_PASSWORD = 'the server wants a password for user "{user}" and none is set'


def pgpass_password(settings: DatabaseSettings, environ=os.environ) -> str | None:
    """The password libpq would take from the password file (PGPASSFILE, else ~/.pgpass)
    for this host, port, database and user: the first line whose fields match, `*`
    matching anything. Like libpq, a file that others may read is ignored."""
    path = Path(environ.get("PGPASSFILE") or Path.home() / ".pgpass")
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode) or info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            return None
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    # libpq matches a socket directory (or no host) as "localhost"
    host = "localhost" if settings.host.startswith("/") else settings.host
    wanted = (host, str(settings.port), settings.dbname, settings.user)
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        fields = _pgpass_fields(line)
        if len(fields) == 5 and all(f in ("*", w) for f, w in zip(fields, wanted)):
            return fields[4]
    return None


def _pgpass_fields(line: str) -> list[str]:
    r"""hostname:port:database:username:password, with \: and \\ as escapes."""
    fields, current, chars = [], [], iter(line)
    for ch in chars:
        if ch == "\\":
            current.append(next(chars, ""))
        elif ch == ":" and len(fields) < 4:
            fields.append("".join(current))
            current = []
        else:
            current.append(ch)
    fields.append("".join(current))
    return fields


def _open(settings: DatabaseSettings, ssl_context) -> pg8000.native.Connection:
    timeout = settings.connect_timeout or None
    if settings.host.startswith("/"):  # a socket directory, as in libpq
        conn = pg8000.native.Connection(
            settings.user, password=settings.password, database=settings.dbname,
            unix_sock=f"{settings.host}/.s.PGSQL.{settings.port}", timeout=timeout,
            application_name=APPLICATION_NAME)
    else:
        conn = pg8000.native.Connection(
            settings.user, password=settings.password, database=settings.dbname,
            host=settings.host, port=settings.port, ssl_context=ssl_context, timeout=timeout,
            application_name=APPLICATION_NAME)
    # pg8000's timeout covers every later read too; connect_timeout is only for the
    # login, and a count(*) on a big table may take minutes.
    sock = getattr(conn, "_usock", None)
    if sock is not None:
        sock.settimeout(None)
    return conn


def _tls_context(settings: DatabaseSettings) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if settings.sslmode in ("allow", "prefer", "require"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    cafile = settings.sslrootcert
    if not cafile:
        default = Path.home() / ".postgresql" / "root.crt"  # libpq's default
        if not default.is_file():
            raise ConfigInvalid(
                f"sslmode={settings.sslmode} needs the CA certificate that signed the "
                "server's certificate, and sslrootcert is not set",
                hint=f"set sslrootcert in {settings.origin} or PGSSLROOTCERT to the CA file "
                     "(ApsaraDB RDS: download it from the instance's SSL page)")
        cafile = str(default)
    elif cafile == "system":  # libpq 16's keyword for the operating system's CAs
        cafile = None
    if cafile is not None:
        try:
            context = ssl.create_default_context(cafile=cafile)
        except (OSError, ssl.SSLError) as e:
            raise ConfigInvalid(f"sslrootcert {cafile!r} cannot be read as a CA "
                                f"certificate: {e}",
                                hint="point sslrootcert / PGSSLROOTCERT at a PEM file") from None
    context.check_hostname = settings.sslmode == "verify-full"
    return context


def _code(error: pg8000.native.DatabaseError) -> str | None:
    info = error.args[0] if error.args else None
    return info.get("C") if isinstance(info, dict) else None


def _unreachable_from(settings: DatabaseSettings, error: Exception) -> DatabaseUnreachable:
    """Turns a pg8000 / socket / TLS failure into the reason libpq would give."""
    cause = error.__cause__ if isinstance(error, pg8000.native.InterfaceError) else error
    if isinstance(error, pg8000.native.DatabaseError):
        code = _code(error)
        if code == "28P01":
            reason = f'password authentication failed for user "{settings.user}"'
        elif code == "3D000":
            reason = f'database "{settings.dbname}" does not exist'
        else:
            info = error.args[0] if error.args else None
            reason = info.get("M", str(info)) if isinstance(info, dict) else str(error)
    elif isinstance(cause, ssl.SSLCertVerificationError):
        reason = f"TLS certificate verify failed: {cause.verify_message}"
    elif isinstance(cause, ssl.SSLError):
        reason = f"TLS handshake failed: {cause.reason or cause}"
    elif isinstance(cause, ConnectionRefusedError):
        reason = "connection refused"
    elif isinstance(cause, socket.gaierror):
        reason = f"could not translate host name {settings.host!r} to an address"
    elif isinstance(cause, (socket.timeout, TimeoutError)):
        reason = f"timeout expired after {settings.connect_timeout} s"
    elif isinstance(cause, OSError):
        reason = cause.strerror or str(cause)
    elif "refuses SSL" in str(error):
        reason = f"server does not support SSL, but sslmode={settings.sslmode} requires it"
    elif "password was provided" in str(error) or "no password" in str(error):
        reason = NO_PASSWORD.format(user=settings.user)
    elif "network error" in str(error):
        reason = "the server closed the connection during login"
    else:
        reason = str(error)
    return unreachable(settings, reason)


def unreachable(settings: DatabaseSettings, reason: str, what: str = "cannot connect to"
                ) -> DatabaseUnreachable:
    """A DatabaseUnreachable for `reason` (pg8000's or libpq's words) with what to do
    about it. Shared with the pg_dump runner, which only has libpq's stderr."""
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    hint = _hint_for(settings, reason.lower())
    if "refused" in reason.lower():
        reason += "; is PostgreSQL running, and is the host/port right?"
    return DatabaseUnreachable(scrub(f"{what} {host}:{settings.port}: {reason}", settings),
                               hint=scrub(hint, settings))


def _hint_for(settings: DatabaseSettings, reason: str) -> str:
    url = settings.origin
    if "wants a password" in reason:
        return (f"put the password of user {settings.user!r} in {url} "
                "(postgresql://USER:PASSWORD@HOST:PORT/DBNAME, percent-encoded), in PGPASSWORD, "
                "or in ~/.pgpass (PGPASSFILE; mode 0600)")
    if "password authentication failed" in reason:
        return (f"check the password of user {settings.user!r} in {url} / PGPASSWORD "
                "(percent-encode special characters in the URL)")
    if "database" in reason and "does not exist" in reason:
        return f"check the database name {settings.dbname!r} in {url} / PGDATABASE"
    if "role" in reason and "does not exist" in reason:
        return f"check the user name {settings.user!r} in {url} / PGUSER"
    if "ssl" in reason and ("not support" in reason or "refuses" in reason):
        return ("the server has TLS turned off: turn it on (RDS: the instance's SSL page), "
                f"or set sslmode=prefer in {url} to allow plain connections")
    if "no encryption" in reason:
        return "the server only accepts TLS connections: set sslmode=require (or verify-full)"
    if "pg_hba.conf" in reason:
        return ("the server does not let this user in from this address: add the "
                "client's address to pg_hba.conf or the RDS whitelist")
    if "certificate" in reason or "tls" in reason or "ssl" in reason:
        return ("set sslrootcert to the CA that signed the server's certificate (RDS: "
                "download it from the console), check that the host name matches it, or "
                "use sslmode=require to encrypt without checking the certificate")
    if "refused" in reason:
        return (f"start PostgreSQL, or fix the host/port in {url} (PGHOST/PGPORT); on "
                "FC check that the function runs in the database's VPC")
    if "timeout" in reason or "timed out" in reason:
        return ("no answer from the server: check the host/port, the security group or RDS "
                "whitelist, and that the FC function is in the database's VPC")
    if "host name" in reason:
        return f"check the host in {url} / PGHOST"
    if "too many" in reason or "starting up" in reason or "shutting down" in reason:
        return "the server is busy or restarting: the next run will retry"
    return f"check {url} (or the PG* variables) and that the server is up"


def scrub(text: str, settings: DatabaseSettings) -> str:
    """`text` with the password (raw or percent-encoded) blanked out, in case some tool
    ever echoes it."""
    if settings.password:
        for form in {settings.password, quote(settings.password, safe="")}:
            text = text.replace(form, "***")
    return text


# -- what is in the database ---------------------------------------------------------------

@dataclass
class ServerInfo:
    server_version: str        # "15.19"
    server_version_num: int    # 150019
    database_size: int         # bytes, pg_database_size()
    table_rows: dict[str, int]  # exact count(*) per table, keyed like "sales.orders"
    large_objects: int = 0

    @property
    def major(self) -> int:
        num = self.server_version_num
        return num // 10000 if num >= 100000 else num // 100


# Tables pg_dump carries data for: plain and partitioned tables outside the system
# schemas (pg_toast and pg_temp_N included). Keys are quoted as SQL needs them
# (format %I), so "sales.orders" but '"My Schema"."Odd Name"'; they match
# l2c_local.pgcluster.table_counts.
_USER_TABLES = r"""
SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_%' ORDER BY 1
"""


def inspect(settings: DatabaseSettings, timeout_seconds: float = 0) -> ServerInfo:
    """Server version, database size and exact row counts, all from one snapshot.
    Exact counts (not pg_class.reltuples estimates) because restore checks compare them.
    A time budget (timeout_seconds > 0) bounds the wait for locks and the counting."""
    with Snapshot(settings, timeout_seconds, export=False) as snapshot:
        return snapshot.info


class Snapshot:
    """A REPEATABLE READ transaction whose counts pg_dump can share (`--snapshot`), so
    the manifest's row counts describe exactly the rows in the dump, even on a busy
    database. Keep it open until pg_dump has started, then `release()`."""

    def __init__(self, settings: DatabaseSettings, timeout_seconds: float = 0, export=True):
        self.settings, self.timeout_seconds, self.export = settings, timeout_seconds, export
        self.conn = None
        self.id = ""
        self.info: ServerInfo | None = None

    def __enter__(self) -> "Snapshot":
        self.conn = conn = connect(self.settings)
        try:
            # in a thread stopped from another (fanout.py), a count behind a lock would
            # keep waiting: the stop cancels it
            with wake_on_stop(lambda: cancel(conn, self.settings)):
                conn.run("START TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                # held while pg_dump starts: a server's idle-in-transaction limit must not end it
                conn.run("SET LOCAL idle_in_transaction_session_timeout = 0")
                if self.export:
                    [[self.id]] = conn.run("SELECT pg_export_snapshot()")
                self.info = _inspect_in(conn, self.settings, self.timeout_seconds)
        except BaseException:
            # A query may still run (a signal cut the wait for its answer short): a ROLLBACK
            # would queue behind it, e.g. forever behind a lock. Cancel it and hang up; the
            # server rolls the transaction back when the session ends.
            self.release(interrupted=True)
            raise
        return self

    def release(self, interrupted: bool = False) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            try:
                if interrupted:
                    cancel(conn, self.settings)
                else:
                    conn.run("ROLLBACK")  # read only: nothing to keep; also ends a failed one
            except Exception:  # the connection may be broken already; closing is what matters
                pass
            finally:
                try:
                    conn.close()
                except Exception:
                    pass

    def __exit__(self, *exc) -> None:
        self.release()


def cancel(conn: pg8000.native.Connection, settings: DatabaseSettings) -> None:
    """Asks the server to cancel whatever `conn` is running, as libpq's PQcancel does: a
    CancelRequest (the session's pid and secret key) on a connection of its own. Without
    it the backend runs on after we gave up: a count waiting for a lock stays queued in
    front of the application's own lockers. Best effort: never raises."""
    key = getattr(conn, "_backend_key_data", None)  # pg8000 keeps BackendKeyData here
    if not key:
        return
    try:
        if settings.host.startswith("/"):
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(5)
            sock.connect(f"{settings.host}/.s.PGSQL.{settings.port}")
        else:
            sock = socket.create_connection((settings.host, settings.port), timeout=5)
        with sock:
            sock.sendall(struct.pack("!ii", 16, 80877102) + bytes(key))  # CancelRequest
            sock.recv(1)  # the server answers by closing: the request was read
    except OSError:
        pass


def _inspect_in(conn, settings: DatabaseSettings, timeout_seconds: float) -> ServerInfo:
    budget_ms = int(timeout_seconds * 1000) if timeout_seconds > 0 else 0
    conn.run(f"SET LOCAL statement_timeout = {budget_ms}")  # 0 = none, as pg_dump sets
    conn.run(f"SET LOCAL lock_timeout = {budget_ms}")
    [[version, version_num, size]] = conn.run(
        "SELECT current_setting('server_version'), "
        "current_setting('server_version_num')::int, "
        "pg_database_size(current_database())")
    rows = {}
    for [table] in conn.run(_USER_TABLES):
        try:
            [[rows[table]]] = conn.run(f"SELECT count(*) FROM {table}")
        except pg8000.native.DatabaseError as e:
            info = e.args[0] if isinstance(e.args[0], dict) else {"M": str(e)}
            if budget_ms and info.get("C") in ("55P03", "57014"):  # lock / statement timeout
                raise BackupTimeout(
                    f"counting the rows of {table} in {settings.where} did not finish within "
                    f"the backup's time budget ({info.get('M')})",
                    hint="something holds a lock on it (see pg_locks); or raise "
                         "BACKUP_TIMEOUT_SECONDS") from None
            raise DumpFailed(
                f"cannot count the rows of {table} in {settings.where}: {info.get('M')}",
                hint=f"user {settings.user!r} needs SELECT on every table, as pg_dump "
                     "does") from None
    [[large_objects]] = conn.run("SELECT count(*) FROM pg_largeobject_metadata")
    # "15.19 (Debian 15.19-0+deb12u1)" -> "15.19"
    return ServerInfo(version.split()[0], version_num, size, rows, large_objects)


def list_databases(settings: DatabaseSettings) -> list[str]:
    """Databases `settings.user` can back up, sorted: every non-template database that
    accepts connections and that the user may CONNECT to. `postgres` is included: it is
    usually empty, but some applications keep their tables there; callers that back up
    "all databases" decide for themselves whether to skip it."""
    conn = connect(settings)
    try:
        rows = conn.run(
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate "
            "AND has_database_privilege(datname, 'CONNECT') ORDER BY datname")
    finally:
        conn.close()
    return [name for [name] in rows]
