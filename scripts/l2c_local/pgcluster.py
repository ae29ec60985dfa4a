"""Throwaway PostgreSQL clusters for tests and the local demo.

    with PgCluster() as pg:
        pg.create_database("shop")
        seed(pg, "shop")
        print(pg.url("shop"))

Each cluster is a fresh `initdb` in a temp dir, on 127.0.0.1 and a free port, with a
password on the superuser (scram over TCP, so a wrong password fails like it does in
production), and gone again after `stop()`. It never touches a PostgreSQL that is
already running on the machine.

`python -m l2c_local.pgcluster [--seed DBNAME]` starts one and waits for Ctrl-C.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

SEED_SQL = Path(__file__).with_name("seed.sql")

# Client settings a developer may have exported for their own database; any of them would
# send our psql or pg_dump somewhere else.
_PG_CLIENT_VARS = (
    "PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGPASSWORD", "PGPASSFILE", "PGDATABASE",
    "PGSERVICE", "PGSERVICEFILE", "PGOPTIONS", "PGSSLMODE", "PGTARGETSESSIONATTRS",
)


class PgClusterError(RuntimeError):
    """The throwaway cluster could not be set up, started or used; the message says why."""


def find_bin_dir(bin_dir: str | os.PathLike | None = None) -> Path:
    """The PostgreSQL bin dir: `bin_dir`, else $PG_BIN_DIR, else the newest
    /usr/lib/postgresql/N/bin (Debian keeps initdb off PATH), else initdb on PATH."""
    explicit = bin_dir or os.environ.get("PG_BIN_DIR")
    if explicit:
        candidates = [Path(explicit)]
    else:
        def major(path: str) -> tuple[int, ...]:
            version = Path(path).parent.name
            return tuple(int(p) for p in version.split(".") if p.isdigit())

        installed = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=major)
        candidates = [Path(p).parent for p in reversed(installed)]
        on_path = shutil.which("initdb")
        if on_path:
            # Homebrew and /usr/local links point into the real bin dir, next to pg_ctl.
            candidates.append(Path(os.path.realpath(on_path)).parent)
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    where = f" in {candidates[0]}" if explicit else ""
    raise PgClusterError(
        f"initdb not found{where}: install postgresql (apt-get install postgresql) "
        "or set PG_BIN_DIR to the directory holding initdb and pg_ctl"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class PgCluster:
    """One throwaway cluster. Server tools run as `os_user` when we are root, since
    initdb and postgres refuse to run as root; client tools connect over TCP."""

    host = "127.0.0.1"

    def __init__(
        self,
        bin_dir: str | os.PathLike | None = None,
        superuser: str = "postgres",
        password: str | None = None,
        os_user: str = "postgres",
        start_timeout: int = 60,
    ):
        self.bin_dir = find_bin_dir(bin_dir)
        self.superuser = superuser
        self.password = password or secrets.token_urlsafe(16)
        self.os_user = os_user
        self.start_timeout = start_timeout
        self.port: int | None = None
        self.root_dir: Path | None = None
        self.data_dir: Path | None = None
        self.socket_dir: Path | None = None
        self.log_file: Path | None = None
        self._run_as: pwd.struct_passwd | None = None

    def __enter__(self) -> "PgCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.port is not None

    def start(self) -> "PgCluster":
        if self.running:
            return self
        self.root_dir = Path(tempfile.mkdtemp(prefix="l2c-pg-"))
        try:
            self._init()
            self._start_on_free_port()
        except BaseException:
            self.stop()  # a start that timed out may still have left a server running
            raise
        atexit.register(self.stop)  # a demo killed by an exception must not leave a server
        return self

    def stop(self) -> None:
        """Stops the server and removes its files. Safe to call twice."""
        atexit.unregister(self.stop)
        if self.data_dir is not None and (self.data_dir / "postmaster.pid").exists():
            stopped = self._server_tool("pg_ctl", "-D", self.data_dir, "-m", "fast", "-w",
                                        "-t", "30", "stop", check=False)
            if stopped.returncode != 0:
                self._server_tool("pg_ctl", "-D", self.data_dir, "-m", "immediate", "-w",
                                  "stop", check=False)
        self.port = None
        self._remove_files()

    def url(self, dbname: str = "postgres") -> str:
        self._require_running()
        user, password = quote(self.superuser, safe=""), quote(self.password, safe="")
        return f"postgresql://{user}:{password}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    def bin(self, name: str) -> Path:
        """A tool from this cluster's PostgreSQL, e.g. `pg.bin("pg_dump")`."""
        return self.bin_dir / name

    def env(self) -> dict[str, str]:
        """os.environ pointed at this cluster, for running psql, pg_dump or pg_restore."""
        self._require_running()
        env = {k: v for k, v in os.environ.items() if k not in _PG_CLIENT_VARS}
        env.update(PGHOST=self.host, PGPORT=str(self.port), PGUSER=self.superuser,
                   PGPASSWORD=self.password, PGSSLMODE="disable")
        return env

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Runs `sql` with the real psql, stopping at the first error. Returns the rows
        as text: one line per row, columns separated by tabs."""
        self._require_running()
        result = subprocess.run(
            [str(self.bin("psql")), "-X", "-q", "-A", "-t", "-F", "\t",
             "-v", "ON_ERROR_STOP=1", "-d", dbname, "-f", "-"],
            input=sql, capture_output=True, text=True, env=self.env(),
        )
        if result.returncode != 0:
            raise PgClusterError(f"psql on {dbname!r} failed: {result.stderr.strip()}")
        return result.stdout

    def create_database(self, name: str) -> str:
        self.psql(f'CREATE DATABASE "{name.replace(chr(34), chr(34) * 2)}"')
        return name

    # -- internals --------------------------------------------------------------------

    def _init(self) -> None:
        assert self.root_dir is not None
        if os.geteuid() == 0:
            try:
                self._run_as = pwd.getpwnam(self.os_user)
            except KeyError:
                raise PgClusterError(
                    f"running as root, and initdb refuses root: create the unprivileged "
                    f"user {self.os_user!r} (the postgresql package does) or run as non-root"
                ) from None
            os.chown(self.root_dir, self._run_as.pw_uid, self._run_as.pw_gid)
        self.data_dir = self.root_dir / "data"
        self.socket_dir = self.root_dir / "socket"
        self.log_file = self.root_dir / "server.log"
        self.socket_dir.mkdir()
        pwfile = self.root_dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        if self._run_as is not None:
            for path in (self.socket_dir, pwfile):
                os.chown(path, self._run_as.pw_uid, self._run_as.pw_gid)
        # C locale with UTF8 works on every platform and still stores Chinese text.
        self._server_tool(
            "initdb", "-D", self.data_dir, "-U", self.superuser, f"--pwfile={pwfile}",
            "-E", "UTF8", "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256",
            "--no-sync",
        )
        pwfile.unlink()
        socket_dir = str(self.socket_dir).replace("'", "''")
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# l2c throwaway cluster\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{socket_dir}'\n"
                # Nothing here outlives the test run, so durability is only cost.
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_wal_size = '1GB'\n"
            )

    def _start_on_free_port(self, attempts: int = 5) -> None:
        assert self.log_file is not None
        for _ in range(attempts):
            port = free_port(self.host)
            log_start = self.log_file.stat().st_size if self.log_file.exists() else 0
            started = self._server_tool(
                "pg_ctl", "-D", self.data_dir, "-l", self.log_file, "-w",
                "-t", str(self.start_timeout), "-o", f"-p {port}", "start", check=False,
            )
            if started.returncode == 0:
                self.port = port
                return
            log = self._log_tail(log_start)
            # Another process can take the port between free_port() and the bind.
            if "could not bind" in log or "Address already in use" in log:
                continue
            raise PgClusterError(
                f"PostgreSQL did not start (pg_ctl exit {started.returncode}): "
                f"{started.stderr.strip() or started.stdout.strip()}\n"
                f"server log:\n{log}"
            )
        raise PgClusterError(f"PostgreSQL did not start: no free port after {attempts} tries")

    def _server_tool(self, name: str, *args, check: bool = True) -> subprocess.CompletedProcess:
        # cwd is ours: as the postgres user the caller's cwd may be unreadable.
        kwargs = {}
        if self._run_as is not None:
            kwargs = dict(user=self._run_as.pw_uid, group=self._run_as.pw_gid, extra_groups=[])
        result = subprocess.run(
            [str(self.bin(name)), *map(str, args)], cwd=self.root_dir,
            capture_output=True, text=True, **kwargs,
        )
        if check and result.returncode != 0:
            raise PgClusterError(
                f"{name} failed (exit {result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}"
            )
        return result

    def _log_tail(self, start: int = 0, lines: int = 30) -> str:
        try:
            with open(self.log_file, "rb") as log:
                log.seek(start)
                text = log.read().decode("utf-8", "replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:]) or "(server log empty)"

    def _remove_files(self) -> None:
        if self.root_dir is not None:
            shutil.rmtree(self.root_dir, ignore_errors=True)
        self.root_dir = self.data_dir = self.socket_dir = self.log_file = None

    def _require_running(self) -> None:
        if not self.running:
            raise PgClusterError("the cluster is not running: call start() first")


def seed(cluster: PgCluster, dbname: str) -> None:
    """Loads the demo dataset (seed.sql) into `dbname`, which must exist and be empty."""
    cluster.psql(SEED_SQL.read_text(encoding="utf-8"), dbname)


_USER_TABLES = """
SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1
"""


def _per_table(cluster: PgCluster, dbname: str, expr: str) -> dict[str, str]:
    tables = cluster.psql(_USER_TABLES, dbname).splitlines()
    if not tables:
        return {}
    query = "\nUNION ALL ".join(
        f"SELECT {_quote_literal(t)}, ({expr}) FROM {t} AS l2c_row" for t in tables
    )
    rows = cluster.psql(query, dbname).splitlines()
    return dict(row.split("\t", 1) for row in rows)


def table_counts(cluster: PgCluster, dbname: str) -> dict[str, int]:
    """Rows per user table, keyed "schema.table", plus "pg_largeobject" for large
    objects: what a restore must bring back."""
    counts = {t: int(n) for t, n in _per_table(cluster, dbname, "count(*)").items()}
    counts["pg_largeobject"] = int(cluster.psql(
        "SELECT count(*) FROM pg_largeobject_metadata", dbname))
    return counts


def table_digests(cluster: PgCluster, dbname: str) -> dict[str, str]:
    """md5 of each user table's rows in text form, sorted, so a restore can be compared
    byte for byte, not only by row count. Large objects are keyed "pg_largeobject"."""
    rows_md5 = "md5(coalesce(string_agg(l2c_row::text, E'\\n' ORDER BY l2c_row::text), ''))"
    digests = _per_table(cluster, dbname, rows_md5)
    digests["pg_largeobject"] = cluster.psql(
        "SELECT md5(coalesce(string_agg(lo_get(oid), '\\x0a'::bytea ORDER BY oid), ''))"
        " FROM pg_largeobject_metadata", dbname).strip()
    return digests


def _quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def main(argv: list[str] | None = None) -> None:
    import argparse
    import signal

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", metavar="DBNAME", help="create DBNAME and load the demo data")
    parser.add_argument("--bin-dir", help="PostgreSQL bin dir (default: $PG_BIN_DIR or found)")
    args = parser.parse_args(argv)

    def on_sigterm(*_):
        raise SystemExit(0)  # unwinds the with-block, so `kill` still cleans up

    signal.signal(signal.SIGTERM, on_sigterm)
    with PgCluster(bin_dir=args.bin_dir) as pg:
        if args.seed:
            pg.create_database(args.seed)
            seed(pg, args.seed)
        print(f"PostgreSQL {pg.bin_dir} on {pg.url(args.seed or 'postgres')}", flush=True)
        print("Ctrl-C stops it and removes its files.", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
