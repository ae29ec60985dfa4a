"""A restore is all or nothing whatever happens to l2c: real `l2c-backup restore`
processes, killed mid-stream by real SIGINT / SIGTERM / SIGKILL, and the target checked
afterwards. A restore of a 2,000,000-row table takes a few seconds, long enough to be
caught while psql is inside its COPY."""
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from l2c_backup import config
from l2c_backup.backup import run_backup

WHEN = datetime(2026, 11, 26, 18, 30, tzinfo=timezone.utc)
ROWS = 2_000_000
L2C = Path(sys.executable).with_name("l2c-backup")
MARK = "l2c-backup: restore in progress since "


@pytest.fixture(scope="module")
def big_backup(pg_cluster, tmp_path_factory):
    """A directory holding one daily backup of a database with a 2,000,000-row table."""
    pg_cluster.create_database("sig_source")
    pg_cluster.psql(f"CREATE TABLE big AS SELECT g AS id, md5(g::text) AS payload "
                    f"FROM generate_series(1, {ROWS}) g; ALTER TABLE big ADD PRIMARY KEY (id)",
                    "sig_source")
    directory = tmp_path_factory.mktemp("sig-backups")
    run_backup(config.load({"DATABASE_URL": pg_cluster.url("sig_source"),
                            "BACKUP_TARGET": str(directory), "PRUNE_AFTER_BACKUP": "false"}),
               "daily", when=WHEN)
    return directory


def start_restore(pg, directory, target_db, create_db=None):
    argv = [str(L2C), "restore", "--latest", "--from", str(directory),
            "--target-url", pg.url(target_db)]
    if create_db:
        argv += ["--create-db", create_db]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, what, timeout=120, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the restore ended (exit {proc.returncode}) before {what}: "
                        f"{proc.stderr.read()}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def copying_into(pg, db):
    return pg.psql("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                   f"'{db}' AND application_name = 'l2c-backup' AND query LIKE 'COPY %'").strip() != "0"


def sessions_on(pg, db):
    return int(pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}'"))


def database_exists(pg, db):
    return pg.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{db}'").strip() == "1"


def big_table_in(pg, db):
    return pg.psql("SELECT count(*) FROM pg_class WHERE relname = 'big'", db).strip() == "1"


def comment_on(pg, db):
    return pg.psql(f"SELECT coalesce(shobj_description(oid, 'pg_database'), '') "
                   f"FROM pg_database WHERE datname = '{db}'").strip()


def stop_mid_copy(pg, directory, target_db, signum, create_db=None):
    proc = start_restore(pg, directory, target_db, create_db)
    wait_for(lambda: copying_into(pg, create_db or target_db), "psql's COPY started", proc=proc)
    os.kill(proc.pid, signum)
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_restore_stopped_mid_copy_drops_its_new_database(pg_cluster, big_backup, signum):
    db = f"sig_new_{signum.name.lower()}"
    code, stderr = stop_mid_copy(pg_cluster, big_backup, "postgres", signum, create_db=db)
    assert code == 128 + signum, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0] == f"l2c-backup restore: stopped by {signum.name}; what was in progress was undone"
    assert not database_exists(pg_cluster, db)  # dropped before l2c exited
    assert pg_cluster.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                           "'l2c-backup'").strip() == "0"  # psql (and its backend) gone too


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
                         ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_a_restore_stopped_mid_copy_leaves_an_existing_database_as_it_was(
        pg_cluster, big_backup, signum):
    db = pg_cluster.create_database(f"sig_into_{signum.name.lower()}")
    code, stderr = stop_mid_copy(pg_cluster, big_backup, db, signum)
    if signum == signal.SIGKILL:
        assert code == -signal.SIGKILL
        # psql, orphaned, reads the end of its input and disconnects without COMMIT.
        wait_for(lambda: sessions_on(pg_cluster, db) == 0, "psql to disconnect")
    else:
        assert code == 128 + signum, stderr
        assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr, stderr
    wait_for(lambda: sessions_on(pg_cluster, db) == 0, "the restore's session to end")
    assert not big_table_in(pg_cluster, db)
    assert pg_cluster.psql("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace",
                           db).strip() == "0"


def test_a_new_database_left_by_sigkill_is_marked_and_the_next_run_replaces_it(
        pg_cluster, big_backup):
    db = "sig_new_sigkill"
    code, _ = stop_mid_copy(pg_cluster, big_backup, "postgres", signal.SIGKILL, create_db=db)
    assert code == -signal.SIGKILL
    wait_for(lambda: sessions_on(pg_cluster, db) == 0, "psql to disconnect")
    assert database_exists(pg_cluster, db) and not big_table_in(pg_cluster, db)
    mark = comment_on(pg_cluster, db)
    assert mark.startswith(MARK) and "db-backups/daily/backup_2026-11-27.sql.gz" in mark, mark

    rerun = start_restore(pg_cluster, big_backup, "postgres", create_db=db)
    stdout, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr
    assert f"dropped database {db}" in stderr and "left by a restore that was killed" in stderr
    assert pg_cluster.psql("SELECT count(*) FROM big", db).strip() == str(ROWS)
    assert comment_on(pg_cluster, db) == ""  # the mark went in the restore's own transaction


def test_signals_held_during_commit_wait_for_the_block_and_are_then_reported():
    from l2c_backup.restore import _signals_held
    from l2c_backup.signals import Stopped, stop_on_signals
    with pytest.raises(Stopped):
        with stop_on_signals():
            with _signals_held() as held:
                os.kill(os.getpid(), signal.SIGTERM)
                deadline = time.monotonic() + 10
                while not held and time.monotonic() < deadline:
                    time.sleep(0.01)  # the handler runs here, and must not raise
                assert held == [signal.SIGTERM]
            signal.raise_signal(held[0])  # what restore does when it did not commit
