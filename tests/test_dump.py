"""Finding pg_dump, checking its version, and streaming dumps that restore exactly."""

import os
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import replace

import pytest

from l2c_backup import dump as dump_module
from l2c_backup.database import DatabaseSettings, inspect
from l2c_backup.dump import (
    CLUSTER_DUMP_COMPLETE, DUMP_COMPLETE, PgDump, check_dump_compatible, dump_globals,
    find_pg_tool, parse_pg_version, pg_tool_version, process_env,
)
from l2c_backup.errors import DatabaseUnreachable, DumpFailed, PgDumpTooOld, ToolMissing
from l2c_local.pgcluster import table_digests

KiB = 1024


def settings_for(cluster, dbname="postgres", **changes):
    return replace(DatabaseSettings.from_url(cluster.url(dbname), environ={}),
                   sslmode="disable", **changes)


def fake_tool(directory, name, body):
    """An executable Python script standing in for a PostgreSQL tool."""
    path = directory / name
    path.write_text(f"#!{sys.executable}\nimport os, sys\n{body}\n")
    path.chmod(0o755)
    return path


def within(seconds, fn):
    """fn()'s result, or a failure if it takes longer (a deadlock would hang the suite)."""
    outcome = {}

    def run():
        try:
            outcome["value"] = fn()
        except BaseException as e:  # re-raised in the test's thread
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def restore(cluster, dbname, chunks):
    """Streams SQL chunks into the real psql, into a new database `dbname`."""
    cluster.create_database(dbname)
    with tempfile.TemporaryFile() as errors:
        psql = subprocess.Popen(
            [str(cluster.bin("psql")), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dbname,
             "-f", "-"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors, env=cluster.env())
        try:
            for chunk in chunks:
                psql.stdin.write(chunk)
            psql.stdin.close()
            if psql.wait() != 0:
                errors.seek(0)
                pytest.fail(f"psql could not restore the dump: {errors.read().decode()}")
        finally:
            if psql.poll() is None:
                psql.kill()
                psql.wait()


# -- finding the tools ----------------------------------------------------------------------

@pytest.fixture
def no_layer(monkeypatch, tmp_path):
    """No FC layer and no Debian tree: each test adds what it wants to find."""
    monkeypatch.setattr(dump_module, "FC_LAYER_BIN", tmp_path / "opt-bin")
    monkeypatch.setattr(dump_module, "DEBIAN_PG_ROOT", tmp_path / "usr-lib-postgresql")
    return tmp_path


def test_pg_bin_dir_picks_the_tool(pg_cluster):
    found = find_pg_tool("pg_dump", environ={"PG_BIN_DIR": str(pg_cluster.bin_dir)})
    assert found == pg_cluster.bin("pg_dump")


def test_pg_bin_dir_without_the_tool_is_missing_even_if_path_has_it(tmp_path):
    with pytest.raises(ToolMissing, match="PG_BIN_DIR=") as err:
        find_pg_tool("pg_dump", environ={"PG_BIN_DIR": str(tmp_path), "PATH": "/usr/bin"})
    assert "PG_BIN_DIR" in err.value.hint


def test_the_fc_layer_wins_over_path(no_layer):
    (no_layer / "opt-bin").mkdir()
    layer = fake_tool(no_layer / "opt-bin", "pg_dump", "")
    (no_layer / "path").mkdir()
    fake_tool(no_layer / "path", "pg_dump", "")
    assert find_pg_tool("pg_dump", environ={"PATH": str(no_layer / "path")}) == layer


def test_path_is_searched_when_there_is_no_layer(no_layer):
    (no_layer / "path").mkdir()
    on_path = fake_tool(no_layer / "path", "pg_dump", "")
    assert find_pg_tool("pg_dump", environ={"PATH": str(no_layer / "path")}) == on_path


def test_the_newest_debian_version_is_the_last_resort(no_layer):
    for version in ("9.6", "10", "15", "16"):  # by number: "9.6" < "10" < "16"
        bin_dir = no_layer / "usr-lib-postgresql" / version / "bin"
        bin_dir.mkdir(parents=True)
        fake_tool(bin_dir, "pg_dump", "")
    found = find_pg_tool("pg_dump", environ={"PATH": str(no_layer / "empty")})
    assert found == no_layer / "usr-lib-postgresql" / "16" / "bin" / "pg_dump"


def test_a_tool_found_nowhere_says_where_it_looked_and_what_to_do(no_layer):
    with pytest.raises(ToolMissing) as err:
        find_pg_tool("pg_dump", environ={"PATH": str(no_layer / "empty")})
    assert "PATH" in str(err.value) and "/opt/bin" in err.value.hint
    assert "PG_BIN_DIR" in err.value.hint


# -- versions --------------------------------------------------------------------------------

@pytest.mark.parametrize("output, expected", [
    ("pg_dump (PostgreSQL) 15.19 (Debian 15.19-0+deb12u1)", ("15.19", 150019)),
    ("pg_dump (PostgreSQL) 18.1", ("18.1", 180001)),
    ("pg_dump (PostgreSQL) 16.10\n", ("16.10", 160010)),
    ("pg_dumpall (PostgreSQL) 9.6.24", ("9.6.24", 90624)),
    ("pg_dump (PostgreSQL) 17devel", ("17devel", 170000)),
    ("pg_dump (PostgreSQL) 16beta2", ("16beta2", 160000)),
    ("psql (PostgreSQL) 17rc1 (Homebrew)", ("17rc1", 170000)),
])
def test_version_output_is_parsed_into_text_and_number(output, expected):
    assert parse_pg_version(output) == expected


def test_output_without_a_version_is_rejected():
    with pytest.raises(ValueError):
        parse_pg_version("bash: pg_dump: command not found")


def test_the_real_pg_dump_reports_its_version(pg_cluster):
    text, num = pg_tool_version(pg_cluster.bin("pg_dump"))
    assert subprocess.run([str(pg_cluster.bin("pg_dump")), "--version"], capture_output=True,
                          text=True).stdout.split()[2] == text
    assert num // 10000 == int(text.split(".")[0])


def test_a_tool_that_cannot_run_is_missing_with_the_loader_error(tmp_path):
    broken = fake_tool(tmp_path, "pg_dump", (
        "sys.stderr.write('pg_dump: /lib/x86_64-linux-gnu/libc.so.6: version "
        "`GLIBC_2.34' not found\\n'); sys.exit(1)"))
    with pytest.raises(ToolMissing, match="GLIBC_2.34") as err:
        pg_tool_version(broken)
    assert "glibc" in err.value.hint


@pytest.mark.parametrize("pg_dump_num, server_num", [
    (150019, 150020),  # an older minor release dumps fine
    (180001, 150019),
    (150019, 90624),
    (100000, 90024),  # 10.0 vs 9.0.24
])
def test_pg_dump_of_the_same_or_a_newer_major_is_compatible(pg_dump_num, server_num):
    check_dump_compatible(pg_dump_num, server_num)


def test_pg_dump_older_than_the_server_is_refused_naming_both_and_the_fix():
    with pytest.raises(PgDumpTooOld) as err:
        check_dump_compatible(150019, 160004)
    assert "pg_dump 15.19" in str(err.value) and "PostgreSQL 16.4" in str(err.value)
    assert "pg_dump 16 or newer" in err.value.hint
    assert "/opt/bin" in err.value.hint and "PG_BIN_DIR" in err.value.hint


def test_before_10_the_second_number_is_part_of_the_major():
    with pytest.raises(PgDumpTooOld, match="9.5.25"):
        check_dump_compatible(90525, 90624)
    with pytest.raises(PgDumpTooOld, match="pg_dump 9.6 or newer"):
        check_dump_compatible(90525, 90624)


def test_the_cluster_tools_can_dump_the_cluster(pg_cluster):
    _, pg_dump_num = pg_tool_version(pg_cluster.bin("pg_dump"))
    check_dump_compatible(pg_dump_num,
                          inspect(settings_for(pg_cluster)).server_version_num)


# -- dumping ---------------------------------------------------------------------------------

def test_a_dump_restores_to_identical_tables(pg_cluster, seeded_db):
    with PgDump(settings_for(pg_cluster, seeded_db), pg_cluster.bin("pg_dump")) as dump:
        first_and_last = []
        sizes = []

        def chunks():
            for chunk in dump.chunks(256 * KiB):
                sizes.append(len(chunk))
                if not first_and_last:
                    first_and_last.append(chunk)
                yield chunk
            first_and_last.append(chunk)

        restore(pg_cluster, "dumpt_restored", chunks())
    assert first_and_last[0].startswith(b"--\n-- PostgreSQL database dump\n--\n")
    assert DUMP_COMPLETE in first_and_last[-1]
    assert max(sizes) <= 256 * KiB and len(sizes) > 10
    assert dump.sql_bytes == sum(sizes) and dump.returncode == 0
    assert table_digests(pg_cluster, "dumpt_restored") == table_digests(pg_cluster, seeded_db)


def test_pg_dump_gets_the_password_in_its_environment_never_in_argv(tmp_path, monkeypatch):
    monkeypatch.setenv("PGSERVICE", "someone-elses")
    monkeypatch.setenv("PG_BIN_DIR", "/kept")
    spy = fake_tool(tmp_path, "pg_dump", (
        "print('-- argv:', sys.argv[1:])\n"
        "for k in sorted(os.environ): print('-- env:', k, '=', os.environ[k])\n"
        "print('--\\n-- PostgreSQL database dump complete\\n--')"))
    settings = DatabaseSettings.from_url("postgresql://app:Pa55-w0rd@db:5433/shop", environ={})
    with PgDump(settings, spy, extra_args=["--schema=sales"]) as dump:
        out = b"".join(dump.chunks()).decode()
    argv_line = next(line for line in out.splitlines() if line.startswith("-- argv:"))
    assert "Pa55-w0rd" not in argv_line
    assert "'--format=plain', '--no-password', '--schema=sales'" in argv_line
    for line in ("PGPASSWORD = Pa55-w0rd", "PGHOST = db", "PGPORT = 5433", "PGUSER = app",
                 "PGDATABASE = shop", "PG_BIN_DIR = /kept"):
        assert f"-- env: {line}\n" in out
    assert "PGSERVICE" not in out


def test_process_env_drops_the_callers_libpq_variables():
    settings = DatabaseSettings.from_url("postgresql://u:p@h/d", environ={})
    env = process_env(settings, environ={"PGPASSFILE": "/x", "PGHOST": "elsewhere",
                                         "PG_BIN_DIR": "/b", "PATH": "/bin"})
    assert "PGPASSFILE" not in env and env["PGHOST"] == "h"
    assert env["PG_BIN_DIR"] == "/b" and env["PATH"] == "/bin"


def test_restrict_key_and_extra_args_reach_pg_dump(pg_cluster, seeded_db):
    pg_dump = pg_cluster.bin("pg_dump")
    if "--restrict-key" not in subprocess.run([str(pg_dump), "--help"], capture_output=True,
                                              text=True).stdout:
        pytest.skip("this pg_dump predates --restrict-key")
    with PgDump(settings_for(pg_cluster, seeded_db), pg_dump, restrict_key="l2ckey",
                extra_args=["--schema=audit"]) as dump:
        sql = b"".join(dump.chunks())
    assert b"\n\\restrict l2ckey\n" in sql and sql.rstrip().endswith(b"\\unrestrict l2ckey")
    assert b"CREATE TABLE audit.events" in sql and b"CREATE TABLE sales.orders" not in sql


def test_a_pg_dump_killed_mid_stream_is_a_failed_dump(pg_cluster, seeded_db):
    with PgDump(settings_for(pg_cluster, seeded_db), pg_cluster.bin("pg_dump")) as dump:
        chunks = dump.chunks(64 * KiB)
        next(chunks)
        os.kill(dump.pid, signal.SIGKILL)
        with pytest.raises(DumpFailed, match="killed by signal SIGKILL"):
            for _ in chunks:
                pass
    assert dump.returncode == -signal.SIGKILL


def test_leaving_the_block_early_stops_and_reaps_pg_dump(pg_cluster, seeded_db):
    with PgDump(settings_for(pg_cluster, seeded_db), pg_cluster.bin("pg_dump")) as dump:
        next(dump.chunks(64 * KiB))
    assert dump.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.kill(dump.pid, 0)  # reaped, not a zombie


def test_a_consumer_failure_stops_pg_dump_and_the_error_comes_through(pg_cluster, seeded_db):
    class UploadBroke(Exception):
        pass

    with pytest.raises(UploadBroke):
        with PgDump(settings_for(pg_cluster, seeded_db), pg_cluster.bin("pg_dump")) as dump:
            for _ in dump.chunks(64 * KiB):
                raise UploadBroke()
    assert dump.returncode is not None


def test_pg_dump_with_a_wrong_password_is_unreachable_without_the_password(pg_cluster,
                                                                          seeded_db):
    wrong = "Wr0ng-pa55word"
    settings = settings_for(pg_cluster, seeded_db, password=wrong)
    with pytest.raises(DatabaseUnreachable) as err:
        with PgDump(settings, pg_cluster.bin("pg_dump")) as dump:
            b"".join(dump.chunks())
    text = str(err.value)
    assert text.startswith(f"pg_dump cannot connect to 127.0.0.1:{pg_cluster.port}: ")
    assert f'password authentication failed for user "{pg_cluster.superuser}"' in text
    assert "PGPASSWORD" in err.value.hint
    assert wrong not in text and dump.sql_bytes == 0


def test_pg_dump_of_a_missing_database_is_named(pg_cluster):
    with pytest.raises(DatabaseUnreachable, match='database "dumpt_nope" does not exist'):
        with PgDump(settings_for(pg_cluster, "dumpt_nope"), pg_cluster.bin("pg_dump")) as d:
            list(d.chunks())


def test_exit_zero_without_the_completion_line_is_an_incomplete_dump(tmp_path, pg_cluster):
    truncated = fake_tool(tmp_path, "pg_dump", (
        "sys.stdout.write('--\\n-- PostgreSQL database dump\\n--\\n\\nCOPY t FROM stdin;\\n1\\n')"))
    with pytest.raises(DumpFailed, match="incomplete dump") as err:
        with PgDump(settings_for(pg_cluster), truncated) as dump:
            list(dump.chunks())
    assert str(DUMP_COMPLETE.decode()) in str(err.value)


def test_an_error_exit_reports_the_last_stderr_lines_scrubbed_and_cannot_deadlock(
        tmp_path, pg_cluster):
    # 2 MB of stderr before any stdout: a reader that only drained stdout would hang.
    noisy = fake_tool(tmp_path, "pg_dump", (
        "for i in range(20000): sys.stderr.write(f'pg_dump: warning: line {i:05} ' + 'x' * 80 + '\\n')\n"
        "sys.stderr.write('pg_dump: error: query failed, password was ' + os.environ['PGPASSWORD'] + '\\n')\n"
        "sys.stdout.write('-- PostgreSQL database dump\\n' * 50000)\n"
        "sys.exit(1)"))
    settings = settings_for(pg_cluster)

    def run():
        with PgDump(settings, noisy) as dump:
            for _ in dump.chunks():
                pass

    with pytest.raises(DumpFailed) as err:
        within(30, run)
    text = str(err.value)
    assert "failed (exit 1)" in text and "query failed, password was ***" in text
    assert "line 19999" in text and "line 00000" not in text  # the tail, bounded
    assert pg_cluster.password not in text


# -- globals ---------------------------------------------------------------------------------

def test_globals_dump_has_the_roles_and_the_completion_line(pg_cluster):
    sql = b"".join(dump_globals(settings_for(pg_cluster), pg_cluster.bin("pg_dumpall")))
    assert f"CREATE ROLE {pg_cluster.superuser};".encode() in sql
    assert b"SCRAM-SHA-256$" in sql  # role password hashes: store as carefully as dumps
    assert CLUSTER_DUMP_COMPLETE in sql


def test_globals_without_access_to_pg_authid_point_at_no_role_passwords(pg_cluster):
    pg_cluster.psql("CREATE ROLE dumpt_app LOGIN PASSWORD 'app-pw'")
    as_app = settings_for(pg_cluster, user="dumpt_app", password="app-pw")
    with pytest.raises(DumpFailed, match="permission denied for table pg_authid") as err:
        list(dump_globals(as_app, pg_cluster.bin("pg_dumpall")))
    assert "BACKUP_NO_ROLE_PASSWORDS=true" in err.value.hint
    sql = b"".join(dump_globals(as_app, pg_cluster.bin("pg_dumpall"), no_role_passwords=True))
    assert b"CREATE ROLE dumpt_app;" in sql and b"SCRAM-SHA-256$" not in sql
