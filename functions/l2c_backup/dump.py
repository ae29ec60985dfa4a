"""Running pg_dump and pg_dumpall, and streaming their SQL out as byte chunks.

    with PgDump(settings) as dump:
        for chunk in dump.chunks():
            upload(gzip(chunk))
    # leaving the loop without an exception means: exit status 0 and a complete dump

A dump is only good if pg_dump exited 0 *and* its output ends with pg_dump's
"-- PostgreSQL database dump complete" line: a pg_dump killed by FC's OOM killer or
timeout may leave a stream that looks fine up to where it stops.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import Iterator, Sequence

from .database import DatabaseSettings, scrub, unreachable
from .errors import DumpFailed, PgDumpTooOld, ToolMissing

MiB = 1 << 20

FC_LAYER_BIN = Path("/opt/bin")  # where an FC layer's binaries land (on PATH there too)
DEBIAN_PG_ROOT = Path("/usr/lib/postgresql")  # Debian: /usr/lib/postgresql/N/bin

DUMP_COMPLETE = b"-- PostgreSQL database dump complete"
CLUSTER_DUMP_COMPLETE = b"-- PostgreSQL database cluster dump complete"

_STDERR_KEEP = 16 * 1024  # bytes of stderr kept for the error message
_TAIL_KEEP = 4 * 1024     # bytes of stdout kept to find the completion marker


# -- finding the tools ---------------------------------------------------------------------

def find_pg_tool(name: str, environ=os.environ) -> Path:
    """Path of a PostgreSQL client tool (pg_dump, pg_dumpall, psql): $PG_BIN_DIR if set
    (and then only there), else /opt/bin (the FC layer), else PATH, else the newest
    /usr/lib/postgresql/N/bin."""
    explicit = environ.get("PG_BIN_DIR")
    if explicit:
        candidate = Path(explicit) / name
        if _runnable(candidate):
            return candidate
        raise ToolMissing(f"{name} not found in PG_BIN_DIR={explicit}",
                          hint=f"point PG_BIN_DIR at the directory holding {name}, or unset "
                               "it to search /opt/bin and PATH")
    if _runnable(FC_LAYER_BIN / name):
        return FC_LAYER_BIN / name
    on_path = shutil.which(name, path=environ.get("PATH", os.defpath))
    if on_path:
        return Path(on_path)
    for candidate in sorted(DEBIAN_PG_ROOT.glob(f"*/bin/{name}"),
                            key=lambda p: _version_key(p.parent.parent.name), reverse=True):
        if _runnable(candidate):
            return candidate
    raise ToolMissing(
        f"{name} not found in PG_BIN_DIR, {FC_LAYER_BIN}, PATH or {DEBIAN_PG_ROOT}/*/bin",
        hint="on FC add the layer with the PostgreSQL client tools (it puts them in "
             "/opt/bin); elsewhere install the PostgreSQL client (apt-get install "
             "postgresql-client) or set PG_BIN_DIR")


def _runnable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text))


_VERSION = re.compile(r"\(PostgreSQL\)\s+((\d+)(?:\.(\d+))?(?:\.(\d+))?([A-Za-z]\w*)?)")


def parse_pg_version(text: str) -> tuple[str, int]:
    """("15.19", 150019) from "pg_dump (PostgreSQL) 15.19 (Debian 15.19-0+deb12u1)";
    "9.6.24" -> 90624; a development build "17devel" or "16beta2" -> 170000 / 160000.
    ValueError when `text` names no PostgreSQL version."""
    match = _VERSION.search(text)
    if not match:
        raise ValueError(f"no PostgreSQL version in {text.strip()[:200]!r}")
    version, major, minor, patch, _suffix = match.groups()
    major, minor, patch = int(major), int(minor or 0), int(patch or 0)
    if major >= 10:
        return version, major * 10000 + minor
    return version, major * 10000 + minor * 100 + patch


def pg_tool_version(path: str | os.PathLike) -> tuple[str, int]:
    """The version `path --version` reports, as (text, number)."""
    try:
        result = subprocess.run([str(path), "--version"], capture_output=True, timeout=60,
                                stdin=subprocess.DEVNULL)
    except OSError as e:
        raise ToolMissing(f"cannot run {path}: {e.strerror or e}",
                          hint="check that it is a PostgreSQL binary built for this "
                               "system") from None
    output = (result.stdout + result.stderr).decode("utf-8", "replace").strip()
    if result.returncode != 0:
        raise ToolMissing(
            f"{path} --version failed (exit {result.returncode}): {output[-500:]}",
            hint="the binary may need libraries this system lacks (FC python3.10 is "
                 "Debian 10, glibc 2.28): ship a build with its libraries in the layer")
    try:
        return parse_pg_version(output)
    except ValueError as e:
        raise ToolMissing(f"{path} does not look like a PostgreSQL tool: {e}") from None


def version_text(num: int) -> str:
    """150019 -> "15.19", 90624 -> "9.6.24"."""
    if num >= 100000:
        return f"{num // 10000}.{num % 10000}"
    return f"{num // 10000}.{num // 100 % 100}.{num % 100}"


def _major(num: int) -> tuple[int, int]:
    # Before 10 the major version had two parts: 9.6 and 9.5 are different majors.
    return (num // 10000, 0) if num >= 100000 else (num // 10000, num // 100 % 100)


def check_dump_compatible(pg_dump_num: int, server_num: int) -> None:
    """Refuses a pg_dump whose major version is older than the server's: pg_dump would
    stop with "server version mismatch" anyway, after the run had started. An older
    minor version or a newer pg_dump is fine."""
    if _major(pg_dump_num) >= _major(server_num):
        return
    major, minor = _major(server_num)
    server_major = f"{major}.{minor}" if server_num < 100000 else str(major)
    raise PgDumpTooOld(
        f"pg_dump {version_text(pg_dump_num)} is older than the server (PostgreSQL "
        f"{version_text(server_num)}) and cannot dump it",
        hint=f"ship pg_dump {server_major} or newer in the FC layer (/opt/bin), or set "
             "PG_BIN_DIR to a directory holding one")


# -- running them --------------------------------------------------------------------------

def process_env(settings: DatabaseSettings, environ=os.environ) -> dict[str, str]:
    """`environ` without the caller's own libpq variables (a PGSERVICE or PGPASSFILE of
    the operator's would redirect pg_dump), plus the settings' ones."""
    env = {k: v for k, v in environ.items() if not (k.startswith("PG") and "_" not in k)}
    env.update(settings.pg_env())
    return env


class PgProcess:
    """One pg_dump-family process whose stdout is the product. Stdout is read by the
    consumer through `chunks()`; stderr is drained by a thread into a bounded buffer, so
    a chatty process can never block on a full pipe. Use it as a context manager: leaving
    the block stops a process the consumer gave up on."""

    def __init__(self, argv: Sequence[str], settings: DatabaseSettings, marker: bytes,
                 name: str | None = None):
        self.argv = [str(a) for a in argv]
        self.settings = settings
        self.marker = marker
        self.name = name or Path(self.argv[0]).name
        self.sql_bytes = 0
        self.returncode: int | None = None
        self._proc: subprocess.Popen | None = None
        self._stderr = bytearray()
        self._stderr_lock = threading.Lock()
        self._stderr_thread: threading.Thread | None = None
        self._tail = b""
        self._started_chunks = False

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        if self._proc is not None:
            return
        try:
            self._proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env=process_env(self.settings), bufsize=0)
        except OSError as e:
            raise ToolMissing(f"cannot run {self.argv[0]}: {e.strerror or e}",
                              hint="set PG_BIN_DIR or add the PostgreSQL client layer"
                              ) from None
        _grow_pipe(self._proc.stdout.fileno())
        self._stderr_thread = threading.Thread(
            target=self._drain_stderr, name=f"{self.name}-stderr", daemon=True)
        self._stderr_thread.start()

    def chunks(self, size: int = MiB) -> Iterator[bytes]:
        """Stdout as it comes, in pieces of at most `size` bytes. Raises DumpFailed (or
        DatabaseUnreachable) at the end if the process failed or the output is cut short;
        only a loop that finishes without an exception has a complete dump."""
        if self._started_chunks:
            raise RuntimeError("chunks() can be read only once")
        self._started_chunks = True
        self.start()
        fd = self._proc.stdout.fileno()
        while True:
            chunk = os.read(fd, size)
            if not chunk:
                break
            self.sql_bytes += len(chunk)
            self._tail = (self._tail + chunk[-_TAIL_KEEP:])[-_TAIL_KEEP:]
            yield chunk
        self.returncode = self._proc.wait()
        self._stderr_thread.join()
        self._check_exit()
        self._check_complete()

    def stderr_text(self, lines: int = 20) -> str:
        """The last `lines` lines of stderr, password scrubbed."""
        with self._stderr_lock:
            text = bytes(self._stderr).decode("utf-8", "replace")
        return scrub("\n".join(text.strip().splitlines()[-lines:]), self.settings)

    def close(self) -> None:
        """Stops the process if it still runs, and reaps it. Safe to call twice."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.returncode is None:
            self.returncode = proc.returncode
        proc.stdout.close()
        if self._stderr_thread is not None:
            self._stderr_thread.join(5)
        proc.stderr.close()

    # -- internals -----------------------------------------------------------------------

    def _drain_stderr(self) -> None:
        fd = self._proc.stderr.fileno()
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return
            if not data:
                return
            with self._stderr_lock:
                self._stderr += data
                del self._stderr[:-_STDERR_KEEP]

    def _check_exit(self) -> None:
        code = self.returncode
        if code == 0:
            return
        stderr = self.stderr_text()
        where = self.settings.where
        if code < 0:
            name = _signal_name(-code)
            raise DumpFailed(
                f"{self.name} of {where} was killed by signal {name} after "
                f"{self.sql_bytes} bytes" + (f": {stderr}" if stderr else ""),
                hint="if FC ran out of memory or time, give the function more of both; "
                     "the next run starts a fresh dump")
        connect_error = _CONNECT_ERROR.search(stderr)
        if connect_error and self.sql_bytes == 0:
            raise unreachable(self.settings, connect_error.group("reason").strip(),
                              what=f"{self.name} cannot connect to")
        if "permission denied for table pg_authid" in stderr:
            raise DumpFailed(
                f"{self.name} of {where} cannot read role passwords: permission denied "
                f"for table pg_authid (managed PostgreSQL hides them from its users)",
                hint="set BACKUP_NO_ROLE_PASSWORDS=true: roles are then saved without "
                     "their passwords, which must be set again after a restore")
        raise DumpFailed(f"{self.name} of {where} failed (exit {code}): "
                         f"{stderr or '(no message)'}",
                         hint="the message above is pg_dump's; fix its cause and run again")

    def _check_complete(self) -> None:
        if not ends_with_marker(self._tail, self.marker):
            raise DumpFailed(
                f"incomplete dump: {self.name} of {self.settings.where} exited 0 but its "
                f"output ({self.sql_bytes} bytes) does not end with "
                f"{self.marker.decode()!r}",
                hint="the dump was cut short; check the tool in the layer and run again")


_CONNECT_ERROR = re.compile(
    r"(?:connection to server .*? failed|could not connect to server):\s*"
    r"(?:FATAL:\s*)?(?P<reason>[^\n]*)")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _grow_pipe(fd: int) -> None:
    """Lets pg_dump run up to 1 MiB ahead of the compressor (Linux; default is 64 KiB)."""
    try:
        import fcntl
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, MiB)
    except (ImportError, AttributeError, OSError):
        pass


class PgDump(PgProcess):
    """`pg_dump --format=plain` of `settings.dbname`: the SQL psql replays.
    `restrict_key` fixes the `\\restrict` key pg_dump 17.6+/15.18+ writes (else random);
    `extra_args` go to pg_dump as they are and must keep plain SQL on stdout."""

    def __init__(self, settings: DatabaseSettings, pg_dump_path: str | os.PathLike | None = None,
                 *, restrict_key: str | None = None, extra_args: Sequence[str] = ()):
        path = pg_dump_path or find_pg_tool("pg_dump")
        argv = [path, "--format=plain", "--no-password"]
        if restrict_key:
            argv.append(f"--restrict-key={restrict_key}")
        argv.extend(extra_args)
        # The database name comes from PGDATABASE, so a name like "-x" is never an option.
        super().__init__(argv, settings, DUMP_COMPLETE, name="pg_dump")


def ends_with_marker(tail: bytes, marker: bytes) -> bool:
    """Whether SQL ending in `tail` ends as a finished dump: the marker line, then "--".
    pg_dump 17.6+/15.18+ follows it with `\\unrestrict KEY`; pg_dumpall puts that before."""
    lines = [line.strip() for line in tail.split(b"\n")]
    meaningful = [line for line in lines if line and not line.startswith(b"\\unrestrict ")]
    return meaningful[-2:] == [marker, b"--"]


def globals_dump(settings: DatabaseSettings,
                 pg_dumpall_path: str | os.PathLike | None = None,
                 no_role_passwords: bool = False, *,
                 restrict_key: str | None = None) -> PgProcess:
    """`pg_dumpall --globals-only` (roles, their passwords, tablespaces), as a PgProcess.
    Managed PostgreSQL (RDS) refuses to show pg_authid: pass no_role_passwords=True there.
    The output holds password hashes: store it as carefully as the dumps."""
    path = pg_dumpall_path or find_pg_tool("pg_dumpall")
    # --database: where to read globals from; pg_dumpall would try "postgres" and
    # "template1", which a managed server may not let us into.
    argv = [path, "--globals-only", "--no-password", f"--database={settings.dbname}"]
    if no_role_passwords:
        argv.append("--no-role-passwords")
    if restrict_key:
        argv.append(f"--restrict-key={restrict_key}")
    return PgProcess(argv, settings, CLUSTER_DUMP_COMPLETE, name="pg_dumpall")


def dump_globals(settings: DatabaseSettings,
                 pg_dumpall_path: str | os.PathLike | None = None,
                 no_role_passwords: bool = False, *, restrict_key: str | None = None,
                 size: int = MiB) -> Iterator[bytes]:
    """The globals dump as byte chunks (see globals_dump)."""
    with globals_dump(settings, pg_dumpall_path, no_role_passwords,
                      restrict_key=restrict_key) as proc:
        yield from proc.chunks(size)
