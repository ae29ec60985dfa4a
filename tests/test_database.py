"""Database settings, connecting (with every sslmode), and what inspect() reports."""

import os
import shutil
import socket
import subprocess
import time
from dataclasses import replace

import pytest

from l2c_backup.database import (
    DatabaseSettings, ServerInfo, connect, inspect, list_databases,
)
from l2c_backup.errors import ConfigInvalid, DatabaseUnreachable
from l2c_local.pgcluster import PgCluster, free_port, table_counts
from pg_fixtures import WAITING_ON_A_LOCK, table_locked

SECRET = "s3cr/et:p@ss#word%"  # every character that needs percent-encoding in a URL


def settings_for(cluster, dbname="postgres", **changes):
    return replace(DatabaseSettings.from_url(cluster.url(dbname), environ={}), **changes)


def ssl_in_use(conn) -> bool:
    [[ssl]] = conn.run("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    return ssl


def assert_no_secret(error, secret):
    text = str(error.value) + repr(error.value.args) + error.value.hint
    assert secret not in text


# -- settings from DATABASE_URL and PG* ------------------------------------------------------

def test_url_gives_every_part_percent_decoded():
    url = ("postgresql://app%20user:s3cr%2Fet%3Ap%40ss%23word%25@db.example.com:6543/"
           "shop%20db?sslmode=verify-full&sslrootcert=/etc/ssl/rds-ca.pem&connect_timeout=7")
    settings = DatabaseSettings.from_url(url, environ={})
    assert settings == DatabaseSettings(
        host="db.example.com", port=6543, user="app user", password=SECRET,
        dbname="shop db", sslmode="verify-full", sslrootcert="/etc/ssl/rds-ca.pem",
        connect_timeout=7)


def test_postgres_scheme_and_ipv6_host_are_accepted():
    settings = DatabaseSettings.from_url("postgres://u:p@[::1]:5433/d", environ={})
    assert (settings.host, settings.port, settings.user, settings.dbname) == ("::1", 5433, "u", "d")


def test_what_the_url_leaves_out_comes_from_pg_variables():
    environ = {"PGHOST": "pg.internal", "PGPORT": "5444", "PGUSER": "backup",
               "PGPASSWORD": "from-env", "PGDATABASE": "envdb", "PGSSLMODE": "require",
               "PGSSLROOTCERT": "/ca.pem", "PGCONNECT_TIMEOUT": "3"}
    settings = DatabaseSettings.from_url("postgresql:///shop", environ=environ)
    assert settings == DatabaseSettings(
        host="pg.internal", port=5444, user="backup", password="from-env", dbname="shop",
        sslmode="require", sslrootcert="/ca.pem", connect_timeout=3)


def test_the_url_wins_over_pg_variables():
    environ = {"PGHOST": "other", "PGPORT": "1", "PGUSER": "other", "PGPASSWORD": "other",
               "PGDATABASE": "other", "PGSSLMODE": "disable"}
    settings = DatabaseSettings.from_url(
        "postgresql://u:p@h:5432/d?sslmode=require", environ=environ)
    assert (settings.host, settings.port, settings.user, settings.password,
            settings.dbname, settings.sslmode) == ("h", 5432, "u", "p", "d", "require")


def test_without_a_url_database_url_then_pg_variables_then_defaults_decide():
    from_env = DatabaseSettings.from_url(
        environ={"DATABASE_URL": "postgresql://u@h/d", "PGPASSWORD": "pw"})
    assert (from_env.host, from_env.user, from_env.password, from_env.dbname) == (
        "h", "u", "pw", "d")
    defaults = DatabaseSettings.from_url(environ={})
    assert defaults == DatabaseSettings(
        host="localhost", port=5432, user="postgres", password=None, dbname="postgres",
        sslmode="prefer", sslrootcert=None, connect_timeout=10)


@pytest.mark.parametrize("url, complaint", [
    ("mysql://u:hunter2x@h/d", "postgresql://"),
    ("postgresql://u:hunter2x@h:port/d", "port is not a number"),
    ("postgresql://u:hunter2x@h:99999/d", "out of range"),
    ("postgresql://u:hunt/er2x@h/d", "unencoded"),  # unencoded '/'
    ("postgresql://u:hunt#er2x@h/d", "unencoded"),  # unencoded '#'
    ("postgresql://u:hunter2x@h1,h2/d", "several hosts"),
    ("postgresql://u:hunter2x@h/d?sslmod=require", "unknown parameter 'sslmod'"),
    ("postgresql://u:hunter2x@h/d?sslmode=on", "sslmode 'on'"),
    ("postgresql://u:hunter2x@h/d?connect_timeout=soon", "connect_timeout"),
])
def test_a_malformed_url_is_named_without_echoing_the_password(url, complaint):
    with pytest.raises(ConfigInvalid) as err:
        DatabaseSettings.from_url(url, environ={})
    assert complaint in str(err.value)
    assert "hunter2x" not in str(err.value) and "er2x" not in str(err.value)


def test_malformed_url_errors_name_database_url():
    with pytest.raises(ConfigInvalid, match="DATABASE_URL"):
        DatabaseSettings.from_url("postgresql://u:p@h:x/d", environ={})


def test_a_bad_pgport_is_named():
    with pytest.raises(ConfigInvalid, match="PGPORT"):
        DatabaseSettings.from_url(environ={"PGPORT": "fifty"})


def test_repr_str_and_redacted_url_never_show_the_password():
    settings = DatabaseSettings.from_url(
        "postgresql://app:s3cr%2Fet%3Ap%40ss%23word%25@h:5432/shop?sslmode=require",
        environ={})
    for text in (repr(settings), str(settings), settings.redacted_url(), f"{settings}"):
        assert SECRET not in text and "s3cr" not in text
        assert "***" in text
    assert settings.redacted_url() == "postgresql://app:***@h:5432/shop?sslmode=require"


def test_redacted_url_parses_back_to_the_same_settings_but_the_password():
    settings = DatabaseSettings.from_url(
        "postgresql://a%40b:pw@h:5/my%2Fdb?sslmode=verify-ca&sslrootcert=/ca.pem", environ={})
    again = DatabaseSettings.from_url(settings.redacted_url(), environ={})
    assert again == replace(settings, password="***")


def test_pg_env_carries_everything_libpq_needs_including_the_password():
    settings = DatabaseSettings.from_url(
        "postgresql://app:pw@h:6000/shop?sslmode=verify-full&sslrootcert=/ca.pem"
        "&connect_timeout=4", environ={})
    env = settings.pg_env()
    assert {k: env[k] for k in ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE",
                                "PGSSLMODE", "PGSSLROOTCERT", "PGCONNECT_TIMEOUT")} == {
        "PGHOST": "h", "PGPORT": "6000", "PGUSER": "app", "PGPASSWORD": "pw",
        "PGDATABASE": "shop", "PGSSLMODE": "verify-full", "PGSSLROOTCERT": "/ca.pem",
        "PGCONNECT_TIMEOUT": "4"}
    assert all(isinstance(v, str) for v in env.values())
    no_password = DatabaseSettings.from_url("postgresql://app@h/shop", environ={})
    assert "PGPASSWORD" not in no_password.pg_env()


def test_with_dbname_changes_only_the_database():
    settings = DatabaseSettings.from_url("postgresql://u:p@h/a", environ={})
    other = settings.with_dbname("b")
    assert other.dbname == "b" and other.with_dbname("a") == settings


# -- connecting -----------------------------------------------------------------------------

def test_connect_reaches_the_cluster(pg_cluster):
    conn = connect(settings_for(pg_cluster, sslmode="disable"))
    try:
        [[port, user]] = conn.run("SELECT current_setting('port')::int, current_user")
    finally:
        conn.close()
    assert (port, user) == (pg_cluster.port, pg_cluster.superuser)


def test_sslmode_prefer_falls_back_to_plain_when_the_server_has_no_tls(pg_cluster):
    conn = connect(settings_for(pg_cluster, sslmode="prefer"))
    try:
        assert ssl_in_use(conn) is False
    finally:
        conn.close()


def test_sslmode_allow_connects_plain_to_a_server_without_tls(pg_cluster):
    connect(settings_for(pg_cluster, sslmode="allow")).close()


def test_sslmode_require_against_a_server_without_tls_says_so(pg_cluster):
    with pytest.raises(DatabaseUnreachable) as err:
        connect(settings_for(pg_cluster, sslmode="require"))
    assert "does not support SSL, but sslmode=require requires it" in str(err.value)
    assert "turn it on" in err.value.hint


def test_wrong_password_names_the_user_and_never_the_password(pg_cluster):
    wrong = "Wr0ng-" + SECRET
    with pytest.raises(DatabaseUnreachable) as err:
        connect(settings_for(pg_cluster, password=wrong, sslmode="disable"))
    assert f'password authentication failed for user "{pg_cluster.superuser}"' in str(err.value)
    assert "PGPASSWORD" in err.value.hint
    assert_no_secret(err, wrong)
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_a_port_nobody_listens_on_is_connection_refused(pg_cluster):
    port = free_port()
    with pytest.raises(DatabaseUnreachable) as err:
        connect(settings_for(pg_cluster, port=port, password=SECRET))
    assert f"cannot connect to 127.0.0.1:{port}: connection refused; is PostgreSQL " \
           "running, and is the host/port right?" in str(err.value)
    assert_no_secret(err, SECRET)


def test_a_missing_database_is_named(pg_cluster):
    with pytest.raises(DatabaseUnreachable) as err:
        connect(settings_for(pg_cluster, "no_such_db"))
    assert 'database "no_such_db" does not exist' in str(err.value)
    assert "PGDATABASE" in err.value.hint


def test_a_server_that_never_answers_times_out_after_connect_timeout():
    with socket.socket() as silent:  # the kernel completes the handshake; nobody replies
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        settings = DatabaseSettings.from_url(
            f"postgresql://u:{SECRET.replace('/', '%2F').replace('#', '%23')}"
            f"@127.0.0.1:{silent.getsockname()[1]}/d?connect_timeout=1", environ={})
        started = time.monotonic()
        with pytest.raises(DatabaseUnreachable, match="timeout expired after 1 s") as err:
            connect(settings)
        assert time.monotonic() - started < 5
        assert "whitelist" in err.value.hint


def test_connect_timeout_limits_the_login_not_later_queries(pg_cluster):
    conn = connect(settings_for(pg_cluster, connect_timeout=1))
    try:
        assert conn.run("SELECT pg_sleep(1.5), 1")[0][1] == 1
    finally:
        conn.close()


def test_verify_full_without_a_ca_file_is_a_config_error(pg_cluster, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.postgresql/root.crt
    with pytest.raises(ConfigInvalid, match="sslrootcert"):
        connect(settings_for(pg_cluster, sslmode="verify-full"))


# -- a cluster with TLS ---------------------------------------------------------------------

def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_certs(directory):
    """A CA, a server certificate it signs for IP 127.0.0.1 only, and an unrelated CA."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=l2c test CA", cwd=directory)
    _openssl("req", "-x509", *ec, "-keyout", "other.key", "-out", "other-ca.crt", "-days",
             "2", "-subj", "/CN=some other CA", cwd=directory)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=directory)
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.cnf",
             cwd=directory)


def _wait_until(check, what, timeout=15):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    """A cluster of its own that takes TCP connections over TLS only (hostssl), with a
    certificate for 127.0.0.1 signed by a test CA. Yields (cluster, ca_path, other_ca)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make test certificates")
    certs = tmp_path_factory.mktemp("certs")
    _make_certs(certs)
    with PgCluster() as cluster:
        owner = os.stat(cluster.data_dir)
        for name in ("server.crt", "server.key"):
            target = cluster.data_dir / name
            shutil.copy(certs / name, target)
            target.chmod(0o600)
            os.chown(target, owner.st_uid, owner.st_gid)
        hba = cluster.data_dir / "pg_hba.conf"
        hba.write_text("local all all trust\n"
                       "hostssl all all 127.0.0.1/32 scram-sha-256\n")
        cluster.psql("ALTER SYSTEM SET ssl = on")
        cluster.psql("SELECT pg_reload_conf()")
        require = settings_for(cluster, sslmode="require")
        _wait_until(lambda: connect(require).close() is None, "the server takes TLS")
        yield cluster, str(certs / "ca.crt"), str(certs / "other-ca.crt")


@pytest.mark.parametrize("sslmode", ["allow", "prefer", "require", "verify-ca", "verify-full"])
def test_every_tls_sslmode_connects_encrypted_to_a_tls_only_server(tls_cluster, sslmode):
    cluster, ca, _ = tls_cluster
    conn = connect(settings_for(cluster, sslmode=sslmode, sslrootcert=ca))
    try:
        assert ssl_in_use(conn) is True
    finally:
        conn.close()


def test_sslmode_disable_against_a_tls_only_server_says_to_turn_tls_on(tls_cluster):
    cluster, _, _ = tls_cluster
    with pytest.raises(DatabaseUnreachable) as err:
        connect(settings_for(cluster, sslmode="disable"))
    assert "no encryption" in str(err.value)
    assert "sslmode=require" in err.value.hint


def test_a_certificate_from_another_ca_fails_verification(tls_cluster):
    cluster, _, other_ca = tls_cluster
    with pytest.raises(DatabaseUnreachable) as err:
        connect(settings_for(cluster, sslmode="verify-ca", sslrootcert=other_ca))
    assert "certificate verify failed" in str(err.value)
    assert "sslrootcert" in err.value.hint


def test_verify_full_checks_the_host_name_but_verify_ca_does_not(tls_cluster):
    cluster, ca, _ = tls_cluster
    # The certificate names 127.0.0.1, not "localhost".
    by_name = settings_for(cluster, host="localhost", sslrootcert=ca)
    connect(replace(by_name, sslmode="verify-ca")).close()
    with pytest.raises(DatabaseUnreachable, match="certificate verify failed"):
        connect(replace(by_name, sslmode="verify-full"))


def test_pg_env_takes_psql_over_verified_tls(tls_cluster):
    cluster, ca, _ = tls_cluster
    settings = settings_for(cluster, sslmode="verify-full", sslrootcert=ca)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(settings.pg_env())
    result = subprocess.run(
        [str(cluster.bin("psql")), "-X", "-A", "-t", "-c",
         "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"],
        env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "t"


# -- what is in the database ------------------------------------------------------------------

def test_inspect_reports_version_size_and_exact_row_counts(pg_cluster, seeded_db):
    info = inspect(settings_for(pg_cluster, seeded_db))
    assert isinstance(info, ServerInfo)
    version_num = int(pg_cluster.psql("SHOW server_version_num"))
    assert info.server_version_num == version_num
    assert info.server_version == pg_cluster.psql("SHOW server_version").split()[0]
    assert info.major == version_num // 10000
    size = int(pg_cluster.psql(f"SELECT pg_database_size('{seeded_db}')"))
    assert info.database_size == size > 0
    expected = table_counts(pg_cluster, seeded_db)
    assert info.large_objects == expected.pop("pg_largeobject") > 0
    assert info.table_rows == expected
    assert info.table_rows["sales.orders"] > 100_000


def test_inspect_quotes_odd_schema_and_table_names(pg_cluster):
    db = pg_cluster.create_database("dbt_odd_names")
    pg_cluster.psql('CREATE SCHEMA "My Schema"; '
                    'CREATE TABLE "My Schema"."Odd ""Name""" (x int); '
                    'INSERT INTO "My Schema"."Odd ""Name""" SELECT generate_series(1, 3); '
                    'CREATE TABLE public."select" (x int); '
                    'CREATE TABLE parted (x int) PARTITION BY RANGE (x); '
                    'CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (10); '
                    'INSERT INTO parted VALUES (1), (2);', db)
    info = inspect(settings_for(pg_cluster, db))
    assert info.table_rows == {'"My Schema"."Odd ""Name"""': 3, 'public."select"': 0,
                               "public.parted": 2, "public.parted_1": 2}


def test_list_databases_gives_connectable_non_template_databases(pg_cluster, seeded_db):
    pg_cluster.create_database("dbt_closed")
    pg_cluster.psql("ALTER DATABASE dbt_closed ALLOW_CONNECTIONS false")
    names = list_databases(settings_for(pg_cluster))
    assert seeded_db in names and "postgres" in names
    assert not {"template0", "template1", "dbt_closed"} & set(names)
    assert names == sorted(names)


def test_list_databases_leaves_out_databases_the_user_may_not_connect_to(pg_cluster):
    pg_cluster.create_database("dbt_private")
    pg_cluster.psql("REVOKE CONNECT ON DATABASE dbt_private FROM PUBLIC; "
                    "CREATE ROLE dbt_lister LOGIN PASSWORD 'dbt_lister-pw'")
    as_dbt_lister = settings_for(pg_cluster, user="dbt_lister", password="dbt_lister-pw")
    assert "dbt_private" not in list_databases(as_dbt_lister)
    assert "dbt_private" in list_databases(settings_for(pg_cluster))


# -- the URL mistakes people make, and a login with no password (issue 12) --------------------

@pytest.mark.parametrize("url", [
    "postgresql://bk:12?secretword=x@db.example.com/app",  # unencoded '?' in the password
    "postgresql://bk:12?sslmode=x@db.example.com/app",  # ... even where it reads like a parameter
    "postgresql://bk:ab/secretword@db.example.com/app",  # unencoded '/'
    "postgresql://bk:ab#secretword@db.example.com/app",  # unencoded '#'
])
def test_an_unencoded_character_in_the_password_is_named_but_no_piece_of_it_is_shown(url):
    with pytest.raises(ConfigInvalid) as err:
        DatabaseSettings.from_url(url, environ={})
    text = str(err.value)
    assert "DATABASE_URL" in text and "unencoded" in text and "percent-encode the password" in text
    for piece in ("secretword", "12?", "ab/", "ab#", "sslmode=x"):
        assert piece not in text


def test_a_misspelt_parameter_is_named_with_the_one_meant():
    with pytest.raises(ConfigInvalid, match=r"unknown parameter 'sslmod' \(did you mean sslmode\?\)"):
        DatabaseSettings.from_url("postgresql://u:p@h/d?sslmod=require", environ={})
    with pytest.raises(ConfigInvalid) as err:
        DatabaseSettings.from_url("postgresql://u:p@h/d?hunter=2", environ={})
    assert "hunter" not in str(err.value)  # not like any parameter: may be a password's piece


@pytest.mark.parametrize("url", ["postgresql://", "postgres://", "postgresql:///", "postgresql://:5432"])
def test_a_url_naming_no_host_and_no_database_is_refused(url):
    with pytest.raises(ConfigInvalid) as err:
        DatabaseSettings.from_url(url, environ={})
    assert "DATABASE_URL names no host and no database" in str(err.value)
    assert "PGHOST" in err.value.hint and "PGDATABASE" in err.value.hint
    # libpq's reading is kept where the PG* variables say where to go
    settings = DatabaseSettings.from_url(url, environ={"PGHOST": "db", "PGDATABASE": "app"})
    assert (settings.host, settings.dbname) == ("db", "app")


def test_a_url_without_password_against_a_scram_server_says_where_to_put_it(pg_cluster):
    url = f"postgresql://{pg_cluster.superuser}@{pg_cluster.host}:{pg_cluster.port}/postgres"
    settings = DatabaseSettings.from_url(url, environ={"HOME": "/nonexistent"})
    with pytest.raises(DatabaseUnreachable) as err:
        connect(settings)
    text = str(err.value)
    assert f'the server wants a password for user "{pg_cluster.superuser}" and none is set' in text
    assert f"{pg_cluster.host}:{pg_cluster.port}" in text
    assert "PGPASSWORD" in err.value.hint and ".pgpass" in err.value.hint


def test_the_password_is_found_in_pgpassfile_as_libpq_does(pg_cluster, tmp_path, monkeypatch):
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"otherhost:*:*:*:wrong\n"
                        f"{pg_cluster.host}:{pg_cluster.port}:*:{pg_cluster.superuser}:"
                        + pg_cluster.password.replace("\\", "\\\\").replace(":", "\\:") + "\n")
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    url = f"postgresql://{pg_cluster.superuser}@{pg_cluster.host}:{pg_cluster.port}/postgres"
    conn = connect(DatabaseSettings.from_url(url, environ={}))
    try:
        assert conn.run("SELECT 1") == [[1]]
    finally:
        conn.close()
    passfile.chmod(0o644)  # libpq ignores a password file others can read; so do we
    with pytest.raises(DatabaseUnreachable, match="none is set"):
        connect(DatabaseSettings.from_url(url, environ={}))


def test_messages_name_the_setting_the_url_came_from(pg_cluster):
    with pytest.raises(ConfigInvalid, match="--target-url is malformed"):
        DatabaseSettings.from_url("postgresql://u:ab?x=1@h/d", environ={}, origin="--target-url")
    with pytest.raises(ConfigInvalid, match="DRILL_DATABASE_URL names no host and no database"):
        DatabaseSettings.from_url("postgresql://", environ={}, origin="DRILL_DATABASE_URL")
    closed = DatabaseSettings.from_url(f"postgresql://u:pw@127.0.0.1:{free_port()}/d",
                                       environ={}, origin="--target-url")
    with pytest.raises(DatabaseUnreachable) as err:
        connect(closed)
    assert "fix the host/port in --target-url" in err.value.hint
    assert "DATABASE_URL" not in str(err.value)


class Interrupted(BaseException):
    """What a signal raises in the main thread (as signals.Stopped does)."""


def test_a_snapshot_interrupted_while_waiting_for_a_lock_cancels_its_query(pg_cluster):
    import signal
    import threading
    from l2c_backup.database import Snapshot

    def interrupt_once_waiting():
        deadline = time.monotonic() + 60
        while pg_cluster.psql(WAITING_ON_A_LOCK).strip() != "1" and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGUSR1)

    def raise_interrupted(*_):
        raise Interrupted()

    previous = signal.signal(signal.SIGUSR1, raise_interrupted)
    try:
        with table_locked(pg_cluster, "l2c_locked"):
            threading.Thread(target=interrupt_once_waiting, daemon=True).start()
            with pytest.raises(Interrupted):  # before the fix: ROLLBACK queued behind the count, forever
                with Snapshot(settings_for(pg_cluster, "l2c_locked")):
                    pass
            # the server was told: the count no longer waits in the lock queue
            deadline = time.monotonic() + 30
            while pg_cluster.psql(WAITING_ON_A_LOCK).strip() != "0":
                assert time.monotonic() < deadline, "the interrupted count still waits for the lock"
                time.sleep(0.1)
    finally:
        signal.signal(signal.SIGUSR1, previous)
