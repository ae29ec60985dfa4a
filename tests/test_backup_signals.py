"""A backup killed by a real signal: `l2c-backup backup` runs as a subprocess, as cron or a
person runs it, and is sent SIGTERM, SIGINT or SIGKILL in the middle of its upload.

SIGTERM and SIGINT (FC's stop, systemd, Ctrl-C) must undo what was in progress: pg_dump
stopped, the multipart upload aborted (or the directory's `.partial-*` file removed), no
object, no manifest, the signal's exit code and one line saying so. SIGKILL cannot be
caught: what it leaves (an open multipart upload, a `.partial-*` file) must be removed by
the next run once it is older than any run can last.
"""
import os
import re
import signal
import subprocess
import sys
import time

import oss2
import pytest

from l2c_backup import age, config, names
from l2c_backup.backup import run_backup
from l2c_local.oss import Fault
from l2c_local.resolve import child_env
from test_backup_faults import backup_env

CLI = [sys.executable, "-m", "l2c_backup.cli"]
PREFIX = "db-backups/"
LOG_LINE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


# -- helpers ------------------------------------------------------------------------------

def dir_env(pg_cluster, dbname, target, **extra):
    env = {"DATABASE_URL": pg_cluster.url(dbname), "BACKUP_TARGET": str(target),
           "PATH": os.environ["PATH"],
           # slow compression (one thread, level 9): the dump is still being written when
           # the test catches it
           "GZIP_WORKERS": "1", "GZIP_LEVEL": "9"}
    env.update({name: str(value) for name, value in extra.items()})
    return env


def start_backup(env, *args):
    return subprocess.Popen(CLI + ["backup", *args], env=child_env(env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(condition, what, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.005)
    pytest.fail(f"waited {timeout}s for {what}")


def _stat(pid):
    """(command name, state, parent pid) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    name = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    return name, fields[0], int(fields[1])


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def pg_dumps_of(parent):
    """The dumping pg_dump children of `parent` (not a `pg_dump --version`)."""
    found = []
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        stat = _stat(pid)
        if stat and stat[0] == "pg_dump" and stat[2] == parent \
                and b"--format=plain" in _cmdline(pid):
            found.append(pid)
    return found


def gone(pid):
    stat = _stat(pid)
    return stat is None or stat[1] == "Z"  # a zombie has stopped: only its exit status is left


def stored_keys(bucket):
    return sorted(obj.key for obj in oss2.ObjectIteratorV2(bucket, prefix=PREFIX))


def open_uploads(bucket):
    return [(u.key, u.upload_id) for u in oss2.MultipartUploadIterator(bucket)]


def partial_files(root):
    return [os.path.join(folder, name) for folder, _, names in os.walk(root)
            for name in names if name.startswith(".partial-")]


def all_files(root):
    return sorted(os.path.relpath(os.path.join(folder, name), root)
                  for folder, _, names in os.walk(root) for name in names)


def assert_one_line_saying(stderr, signum):
    """stderr holds log lines and exactly one line of the command's own: the signal's."""
    assert "Traceback" not in stderr, stderr
    own = [line for line in stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]
    assert len(own) == 1, own
    assert own[0].startswith("l2c-backup backup: ")
    assert signal.Signals(signum).name in own[0]


@pytest.fixture
def slow_parts(oss_server):
    """Every part upload waits 1 s at the server: the upload of the seeded database takes
    several seconds, so a signal finds it with parts stored and more to come."""
    return oss_server.inject(Fault(method="PUT", query="partNumber", delay=1, times=None))


# -- SIGTERM and SIGINT -------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_upload_stops_pg_dump_aborts_the_upload_and_leaves_nothing(
        signum, pg_cluster, seeded_db, oss_server, bucket, slow_parts):
    proc = start_backup(backup_env(pg_cluster, seeded_db, oss_server))
    try:
        (dump,) = wait_for(lambda: pg_dumps_of(proc.pid), "pg_dump to start")
        wait_for(lambda: slow_parts.hits >= 3, "three parts to be on their way")
        assert open_uploads(bucket), "no multipart upload was open when the signal came"

        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()

    assert proc.returncode == 128 + signum, stderr
    assert_one_line_saying(stderr, signum)
    wait_for(lambda: gone(dump), "pg_dump to be gone", timeout=10)
    oss_server.clear_faults()
    assert open_uploads(bucket) == [], "the multipart upload was left open"
    assert stored_keys(bucket) == [], "an object or manifest was left behind"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_write_to_a_directory_leaves_no_partial_file(
        signum, pg_cluster, seeded_db, tmp_path):
    proc = start_backup(dir_env(pg_cluster, seeded_db, tmp_path))
    dump = None
    try:
        (dump,) = wait_for(lambda: pg_dumps_of(proc.pid), "pg_dump to start")
        # Hold pg_dump once the first gzip member is in the partial file: the write
        # cannot finish before the signal, however fast this machine is.
        wait_for(lambda: any(os.path.getsize(p) for p in partial_files(tmp_path)),
                 "the partial file to get its first bytes")
        os.kill(dump, signal.SIGSTOP)

        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
        if dump and not gone(dump):
            os.kill(dump, signal.SIGCONT)

    assert proc.returncode == 128 + signum, stderr
    assert_one_line_saying(stderr, signum)
    wait_for(lambda: gone(dump), "pg_dump to be gone", timeout=10)
    assert all_files(tmp_path) == [], "a partial file or a backup was left behind"


def test_a_signal_between_the_object_and_its_manifest_removes_the_object(
        pg_cluster, seeded_db, oss_server, bucket):
    """The object is complete and its manifest PUT is held at the server (which then
    refuses it): stopped there, the run must not leave an object that has no manifest,
    nor its claim on the day."""
    key = names.backup_key(PREFIX, "daily", names.now())
    held = oss_server.inject(Fault(method="PUT", key_prefix=key + ".manifest.json", delay=3,
                                   status=503, times=None))
    proc = start_backup(backup_env(pg_cluster, seeded_db, oss_server), "--kind", "daily")
    try:
        wait_for(lambda: held.hits or proc.poll() is not None, "the manifest PUT", timeout=120)
        assert held.hits, proc.communicate()
        assert bucket.object_exists(key), "the object was not complete when the signal came"

        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()

    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert_one_line_saying(stderr, signal.SIGTERM)
    oss_server.clear_faults()
    assert stored_keys(bucket) == [], "an object without manifest (or a claim) was left"
    assert open_uploads(bucket) == []


# -- SIGKILL: what it leaves, the next run removes ----------------------------------------

@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_an_upload_left_open_by_sigkill_is_aborted_by_the_next_run(
        pg_cluster, seeded_db, oss_server, bucket, slow_parts, caplog, encrypted):
    env = dict(backup_env(pg_cluster, seeded_db, oss_server),
               **({"BACKUP_AGE_RECIPIENTS": age.generate()[1]} if encrypted else {}))
    proc = start_backup(env)
    try:
        wait_for(lambda: slow_parts.hits >= 3, "three parts to be on their way")
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    oss_server.clear_faults()
    (left,) = open_uploads(bucket)  # SIGKILL cannot be caught: the upload stays open
    assert left[0].startswith(PREFIX + "manual/backup_") and left[0].endswith(names.suffix(encrypted))

    # A run with the default age leaves it: it may be a run still going.
    cfg = config.load(env)
    (first,) = run_backup(cfg, "manual")["backups"]
    assert open_uploads(bucket) == [left]

    with caplog.at_level("INFO", logger="l2c_backup"):
        (second,) = run_backup(cfg, "manual", leftover_age=0)["backups"]

    assert open_uploads(bucket) == [], "the next run left the dead run's upload open"
    assert any(left[1] in r.getMessage() and "aborted" in r.getMessage()
               for r in caplog.records), "no log line named the aborted upload"
    assert stored_keys(bucket) == sorted([first["key"], first["key"] + ".manifest.json",
                                          second["key"], second["key"] + ".manifest.json"])


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_a_partial_file_left_by_sigkill_is_removed_by_the_next_run(
        pg_cluster, seeded_db, tmp_path, caplog, encrypted):
    env = dir_env(pg_cluster, seeded_db, tmp_path,
                  **({"BACKUP_AGE_RECIPIENTS": age.generate()[1]} if encrypted else {}))
    proc = start_backup(env)
    try:
        wait_for(lambda: any(os.path.getsize(p) for p in partial_files(tmp_path)),
                 "the partial file to get its first bytes")
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    (left,) = partial_files(tmp_path)
    assert left.endswith(names.suffix(encrypted)), left

    cfg = config.load(env)
    (first,) = run_backup(cfg, "manual")["backups"]
    assert partial_files(tmp_path) == [left], "a young partial file (maybe a live run's) went"

    with caplog.at_level("INFO", logger="l2c_backup"):
        (second,) = run_backup(cfg, "manual", leftover_age=0)["backups"]

    assert partial_files(tmp_path) == []
    assert any(os.path.basename(left) in r.getMessage() for r in caplog.records)
    assert all_files(tmp_path) == sorted([first["key"], first["key"] + ".manifest.json",
                                          second["key"], second["key"] + ".manifest.json"])


def test_leftover_cleaning_keeps_what_is_not_ours_or_too_young(oss_server, bucket, tmp_path):
    from l2c_backup import leftovers
    from l2c_backup.storage import open_storage
    from l2c_backup.storage.oss import OSSSettings
    settings = OSSSettings(oss_server.endpoint, oss_server.access_key_id,
                           oss_server.access_key_secret)
    storage = open_storage("oss://l2c-backups/db-backups/", settings)
    ours = bucket.init_multipart_upload(PREFIX + "daily/backup_2025-03-14.sql.gz").upload_id
    theirs = bucket.init_multipart_upload(PREFIX + "someone/else.bin").upload_id
    outside = bucket.init_multipart_upload("uploads/photo.jpg").upload_id

    assert leftovers.clean(storage, leftovers.safe_age(0)) == []
    removed = leftovers.clean(storage, 0)

    assert len(removed) == 1 and ours in removed[0]
    assert sorted(u for _, u in open_uploads(bucket)) == sorted([theirs, outside])
    assert leftovers.safe_age(0) > 24 * 3600, "younger than FC's longest run"
    assert leftovers.safe_age(48 * 3600) > 48 * 3600
