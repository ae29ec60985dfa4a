"""Several databases backed up at once (`l2c-backup backup --concurrency 2`), stopped by a
real signal while one worker is blocked where Python cannot interrupt it: its pre-flight
count waiting on a table lock (a socket read), or its pg_dump waiting on a lock or
stopped (a pipe read); the other worker uploading.

A stop must reach every worker at once, not when its read returns by itself (a lock may
be held for hours): the process exits within seconds with the signal's code and one
line, every pg_dump is gone, nothing of ours waits on a lock in the server, no multipart
upload is open, no `.partial-*` file stays and no backup object or manifest is left.
Only the run record (runs/<kind>/<run>/run.json, written before the first backup starts)
stays: it names the databases the run meant to back up, and none reported an outcome.
"""
import contextlib
import os
import re
import signal
import subprocess
import threading
import time

import oss2
import pytest

from l2c_backup.signals import Stopped, stop_thread, wake_on_stop
from l2c_local.oss import Fault
from pg_fixtures import WAITING_ON_A_LOCK, table_locked, view_locked
from test_backup_faults import backup_env
from test_backup_signals import (all_files, assert_one_line_saying, gone, open_uploads,
                                 partial_files, pg_dumps_of, start_backup, wait_for)

PREFIX = "db-backups/"
STREAMING = ("l2c_cs_a", "l2c_cs_b")
HELD = "l2c_cs_held"  # its table `held` is locked: the pre-flight count waits
VIEW_HELD = "l2c_cs_view_held"  # its view is locked: the pre-flight passes, pg_dump waits
# A hung stop took 120 s and more (the worker's read returned only when the lock holder
# gave up); a prompt one takes a part upload (1 s here) or two.
STOP_BOUND = 30


@pytest.fixture(scope="module")
def streaming_databases(pg_cluster):
    """Two databases of ~30 MB of SQL each that compresses about 2:1: with every part
    upload held 1 s at the server, each uploads for several seconds."""
    for name in STREAMING:
        pg_cluster.psql(f"DROP DATABASE IF EXISTS {name}")
        pg_cluster.create_database(name)
        pg_cluster.psql("CREATE TABLE noise AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) "
                        "AS v FROM generate_series(1, 400000) g", dbname=name)
    return STREAMING


@pytest.fixture
def slow_parts(oss_server):
    return oss_server.inject(Fault(method="PUT", query="partNumber", delay=1, times=None))


def several(pg_cluster, oss_server, databases, **extra):
    return backup_env(pg_cluster, "postgres", oss_server, BACKUP_DATABASES=",".join(databases),
                      GZIP_WORKERS=1, **extra)


def waiting_on_a_lock(pg_cluster, dbname=None):
    """How many of our sessions (pre-flight or pg_dump) wait on a lock, in `dbname` or all."""
    where = f" AND datname = '{dbname}'" if dbname else ""
    return int(pg_cluster.psql(WAITING_ON_A_LOCK + where).strip())


def uploading(bucket, database):
    return [key for key, _ in open_uploads(bucket) if f"/{database}/" in key]


def stored_keys(bucket):
    return sorted(obj.key for obj in oss2.ObjectIteratorV2(bucket, prefix=PREFIX))


def only_the_run_record(keys):
    """`keys` without the run record (db-backups/runs/manual/<run>/run.json in the bucket,
    runs/manual/<run>/run.json in a directory)."""
    return [k for k in keys if not re.fullmatch(r"(.*/)?runs/manual/[^/]+/run\.json", k)]


def stop(proc, signum, dumps, pg_cluster):
    """Sends `signum`; returns (stderr, seconds to exit). Fails when the process is still
    running STOP_BOUND seconds later, and kills it, the pg_dumps it started and their
    sessions (which would wait on the lock for minutes, keeping the next test's DROP
    DATABASE out)."""
    sent = time.monotonic()
    proc.send_signal(signum)
    try:
        _, stderr = proc.communicate(timeout=STOP_BOUND)
    except subprocess.TimeoutExpired:
        proc.kill()
        for pid in dumps:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        pg_cluster.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = 'l2c-backup'")
        pytest.fail(f"still running {STOP_BOUND} s after {signal.Signals(signum).name}:\n"
                    f"{stderr[-3000:]}")
    seconds = time.monotonic() - sent
    print(f"\n{signal.Signals(signum).name}: exited {proc.returncode} after {seconds:.2f} s")
    return stderr, seconds


def stop_and_check(proc, signum, pg_cluster, dumps_running):
    """Signals the backup once `dumps_running` pg_dumps run, then assert_nothing_half_done."""
    dumps = pg_dumps_of(proc.pid)
    assert len(dumps) == dumps_running
    stderr, _ = stop(proc, signum, dumps, pg_cluster)
    assert_nothing_half_done(proc, signum, stderr, dumps, pg_cluster)


def assert_nothing_half_done(proc, signum, stderr, dumps, pg_cluster):
    assert proc.returncode == 128 + signum, stderr
    assert_one_line_saying(stderr, signum)
    for pid in dumps:
        wait_for(lambda: gone(pid), f"pg_dump {pid} to be gone", timeout=10)
    # a count or a pg_dump that was cancelled on our side only would still wait in the
    # server, queued in front of the application's own lockers
    wait_for(lambda: waiting_on_a_lock(pg_cluster) == 0, "nothing of ours waiting on a lock",
             timeout=10)


def assert_nothing_left_in(bucket, oss_server):
    oss_server.clear_faults()
    assert open_uploads(bucket) == [], "a multipart upload was left open"
    assert only_the_run_record(stored_keys(bucket)) == [], "an object or manifest was left"


# -- one worker blocked, one uploading ------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_a_pre_flight_waiting_on_a_lock_and_an_upload_at_once(
        signum, pg_cluster, streaming_databases, oss_server, bucket, slow_parts):
    env = several(pg_cluster, oss_server, [HELD, STREAMING[0], STREAMING[1]])
    with table_locked(pg_cluster, HELD):
        proc = start_backup(env, "--concurrency", "2")
        try:
            wait_for(lambda: waiting_on_a_lock(pg_cluster, HELD) == 1 or proc.poll() is not None,
                     f"the pre-flight of {HELD} to wait on the lock")
            wait_for(lambda: slow_parts.hits >= 2 or proc.poll() is not None,
                     f"{STREAMING[0]} to upload parts")
            assert proc.poll() is None, proc.communicate()
            assert uploading(bucket, STREAMING[0]), "no upload was open when the signal came"
            stop_and_check(proc, signum, pg_cluster, dumps_running=1)
        finally:
            proc.kill()
    assert_nothing_left_in(bucket, oss_server)


def test_sigterm_stops_a_pg_dump_waiting_on_a_lock_and_an_upload_at_once(
        pg_cluster, streaming_databases, oss_server, bucket, slow_parts):
    env = several(pg_cluster, oss_server, [VIEW_HELD, STREAMING[0], STREAMING[1]])
    with view_locked(pg_cluster, VIEW_HELD):
        proc = start_backup(env, "--concurrency", "2")
        try:
            wait_for(lambda: (waiting_on_a_lock(pg_cluster, VIEW_HELD) == 1
                              and len(pg_dumps_of(proc.pid)) == 2) or proc.poll() is not None,
                     f"the pg_dump of {VIEW_HELD} to wait on the lock")
            wait_for(lambda: slow_parts.hits >= 2 or proc.poll() is not None,
                     f"{STREAMING[0]} to upload parts")
            assert proc.poll() is None, proc.communicate()
            assert "pg_get_viewdef" in pg_cluster.psql(
                f"SELECT query FROM pg_stat_activity WHERE datname = '{VIEW_HELD}' "
                "AND wait_event_type = 'Lock'"), "the pre-flight, not pg_dump, waits"
            stop_and_check(proc, signal.SIGTERM, pg_cluster, dumps_running=2)
        finally:
            proc.kill()
    assert_nothing_left_in(bucket, oss_server)


def test_sigterm_while_both_workers_upload_aborts_both_and_starts_no_other(
        pg_cluster, streaming_databases, oss_server, bucket, slow_parts):
    env = several(pg_cluster, oss_server, [STREAMING[0], STREAMING[1], HELD])
    with table_locked(pg_cluster, HELD):
        proc = start_backup(env, "--concurrency", "2")
        try:
            wait_for(lambda: (uploading(bucket, STREAMING[0]) and uploading(bucket, STREAMING[1])
                              and slow_parts.hits >= 3) or proc.poll() is not None,
                     "both databases to upload parts")
            assert proc.poll() is None, proc.communicate()
            stop_and_check(proc, signal.SIGTERM, pg_cluster, dumps_running=2)
        finally:
            proc.kill()
    assert_nothing_left_in(bucket, oss_server)


def test_what_sigkill_leaves_of_two_uploads_at_once_the_next_run_removes(
        pg_cluster, streaming_databases, oss_server, bucket, slow_parts):
    """SIGKILL cannot be caught: both workers' uploads stay open. Their pg_dumps end (their
    pipe's reader is gone), and the next run aborts both uploads; neither counts as a backup."""
    from l2c_backup import config
    from l2c_backup.backup import run_backup
    env = several(pg_cluster, oss_server, list(STREAMING))
    proc = start_backup(env, "--concurrency", "2")
    try:
        wait_for(lambda: (uploading(bucket, STREAMING[0]) and uploading(bucket, STREAMING[1])
                          and slow_parts.hits >= 3) or proc.poll() is not None,
                 "both databases to upload parts")
        assert proc.poll() is None, proc.communicate()
        dumps = pg_dumps_of(proc.pid)
        assert len(dumps) == 2
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    for pid in dumps:
        wait_for(lambda: gone(pid), f"pg_dump {pid} to end once its reader was killed", timeout=30)
    oss_server.clear_faults()
    assert len(open_uploads(bucket)) == 2
    assert only_the_run_record(stored_keys(bucket)) == []

    cfg = config.load(env)
    made = run_backup(cfg, "manual", leftover_age=0)["backups"]
    assert open_uploads(bucket) == [], "the next run left the dead run's uploads open"
    keys = [b["key"] for b in made]
    assert only_the_run_record(stored_keys(bucket)) == sorted(
        keys + [k + ".manifest.json" for k in keys]), "something of the killed run stayed"


# -- to a directory: a stalled pg_dump beside a waiting pre-flight ----------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_a_stalled_dump_to_a_directory_and_leaves_no_partial_file(
        signum, pg_cluster, streaming_databases, tmp_path):
    env = {"DATABASE_URL": pg_cluster.url("postgres"), "BACKUP_TARGET": str(tmp_path),
           "PATH": os.environ["PATH"], "BACKUP_DATABASES": f"{HELD},{STREAMING[0]}",
           "GZIP_WORKERS": "1", "GZIP_LEVEL": "9"}
    with table_locked(pg_cluster, HELD):
        proc = start_backup(env, "--concurrency", "2")
        dump = None
        try:
            wait_for(lambda: waiting_on_a_lock(pg_cluster, HELD) == 1 or proc.poll() is not None,
                     f"the pre-flight of {HELD} to wait on the lock")
            (dump,) = wait_for(lambda: pg_dumps_of(proc.pid), "pg_dump to start")
            wait_for(lambda: any(os.path.getsize(p) for p in partial_files(tmp_path)),
                     "the partial file to get its first bytes")
            # pg_dump stalls: its worker waits in a pipe read that returns nothing
            os.kill(dump, signal.SIGSTOP)
            stderr, _ = stop(proc, signum, [dump], pg_cluster)
        finally:
            proc.kill()
            if dump and not gone(dump):
                os.kill(dump, signal.SIGCONT)
        assert_nothing_half_done(proc, signum, stderr, [dump], pg_cluster)
    assert only_the_run_record(all_files(tmp_path)) == [], "a partial file or a backup was left"


# -- the mechanism, in one process ------------------------------------------------------------

def test_a_thread_stopped_from_another_raises_stopped_although_it_waited_in_c():
    """An exception raised into a thread is seen only when it runs Python again: a
    thread in a pipe read (as on pg_dump's stdout) would wait until the writer writes.
    stop_thread calls what the thread registered to end its wait."""
    read_end, write_end = os.pipe()
    waiting, raised = threading.Event(), []

    def blocked():
        try:
            with wake_on_stop(lambda: os.close(write_end)):
                waiting.set()
                os.read(read_end, 1)  # returns only when the writer writes or closes
                time.sleep(60)  # never reached: Stopped is pending when the read returns
        except Stopped as stop:
            raised.append(stop)

    thread = threading.Thread(target=blocked)
    thread.start()
    try:
        waiting.wait(10)
        time.sleep(0.2)  # into the read
        stop_thread(thread.ident, Stopped(signal.SIGTERM))
        thread.join(10)
        assert not thread.is_alive(), "the thread still waits in its read"
        assert [s.signum for s in raised] == [signal.SIGTERM]
    finally:
        os.close(read_end)
