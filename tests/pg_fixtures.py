"""pytest fixtures for a throwaway PostgreSQL cluster (see l2c_local.pgcluster).

Load with `pytest_plugins = ["pg_fixtures"]` in tests/conftest.py, or `-p pg_fixtures`
with tests/ on sys.path.
"""
import contextlib
import subprocess

import pytest

from l2c_local.pgcluster import PgCluster, PgClusterError, find_bin_dir, seed

__all__ = ["pg_cluster", "seeded_db", "SEEDED_DB", "table_locked"]

SEEDED_DB = "l2c_seed"


@pytest.fixture(scope="session")
def pg_cluster():
    """A running cluster for the whole session. Skips (the reason says how to fix it)
    when PostgreSQL is not installed; any other start failure is an error."""
    try:
        find_bin_dir()
    except PgClusterError as e:
        pytest.skip(str(e))
    with PgCluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def seeded_db(pg_cluster):
    """Name of a database in `pg_cluster` holding the seed.sql dataset, loaded once.
    Shared by every test: read it, back it up, restore it elsewhere; never change it."""
    pg_cluster.create_database(SEEDED_DB)
    seed(pg_cluster, SEEDED_DB)
    return SEEDED_DB


# What a backup's pre-flight row count waiting on a lock looks like (it is surely running).
WAITING_ON_A_LOCK = ("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'l2c-backup' "
                     "AND wait_event_type = 'Lock'")


@contextlib.contextmanager
def table_locked(cluster, dbname):
    """A new database `dbname` with a table `held` that another session holds in ACCESS
    EXCLUSIVE mode for the block: what l2c reads there waits, so a test can signal it
    while it is surely running."""
    with _held(cluster, dbname, "CREATE TABLE held (id int)"):
        yield


@contextlib.contextmanager
def view_locked(cluster, dbname):
    """A new database `dbname` with a table (which the pre-flight counts) and a view `held`
    that another session holds in ACCESS EXCLUSIVE mode: the pre-flight passes, pg_dump
    waits for the lock in pg_get_viewdef. (The view reads no table: LOCK on a view locks
    the tables it reads as well.)"""
    with _held(cluster, dbname, "CREATE TABLE free (id int); CREATE VIEW held AS SELECT 1 AS one"):
        yield


@contextlib.contextmanager
def _held(cluster, dbname, schema):
    cluster.psql(f"DROP DATABASE IF EXISTS {dbname}")
    cluster.create_database(dbname)
    cluster.psql(schema, dbname=dbname)
    holder = subprocess.Popen([str(cluster.bin("psql")), "-X", "-q", "-d", dbname, "-c",
                               "BEGIN; LOCK TABLE held IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(300);"],
                              env=cluster.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        holder.kill()
        holder.wait()
        # Killing psql leaves its backend in pg_sleep, holding the lock and the database.
        cluster.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     f"WHERE datname = '{dbname}' AND pid <> pg_backend_pid()")
