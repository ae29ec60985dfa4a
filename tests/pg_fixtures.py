"""pytest fixtures for a throwaway PostgreSQL cluster (see l2c_local.pgcluster).

Load with `pytest_plugins = ["pg_fixtures"]` in tests/conftest.py, or `-p pg_fixtures`
with tests/ on sys.path.
"""

import pytest

from l2c_local.pgcluster import PgCluster, PgClusterError, find_bin_dir, seed

__all__ = ["pg_cluster", "seeded_db", "SEEDED_DB"]

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
