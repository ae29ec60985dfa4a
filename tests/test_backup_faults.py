"""Backups under fire: a killed pg_dump, an unreachable or refusing database, OSS that
refuses, stutters or drops connections, a full disk, a blown time budget, and runs that
race or repeat.

Every failure must end in one clear L2CError that names its cause, and leave nothing
behind: no backup object, no manifest, no open (billed, invisible) multipart upload.
Every transient fault must be ridden out, and the backup that results must be whole.
Retries keep their real attempt limits; only the backoff sleeps are removed.
"""
import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from datetime import datetime, timezone
from urllib.parse import quote

import oss2
import pytest

from l2c_backup import alerts, config, retry
from l2c_backup.backup import run_backup
from l2c_backup.dump import PgDump, PgProcess
from l2c_backup.errors import (BackupTimeout, DatabaseUnreachable, DumpFailed, L2CError,
                               UploadFailed)
from l2c_local.oss import Fault
from l2c_local.pgcluster import free_port, table_digests

PREFIX = "db-backups/"
MiB = 1024 * 1024


# -- helpers ------------------------------------------------------------------------------

pytestmark = pytest.mark.usefixtures("oss_without_backoff")


def backup_env(pg_cluster, dbname, oss_server, **extra):
    env = {"DATABASE_URL": pg_cluster.url(dbname), "OSS_ENDPOINT": oss_server.endpoint,
           "OSS_BACKUP_BUCKET": "l2c-backups", "OSS_ACCESS_KEY_ID": oss_server.access_key_id,
           "OSS_ACCESS_KEY_SECRET": oss_server.access_key_secret, "PATH": os.environ["PATH"],
           "UPLOAD_MIN_PART_MB": "1"}  # ~10 parts for the seeded database
    env.update({name: str(value) for name, value in extra.items()})
    return env


@pytest.fixture
def env(pg_cluster, seeded_db, oss_server):
    return backup_env(pg_cluster, seeded_db, oss_server)


def stored_keys(bucket):
    return sorted(obj.key for obj in oss2.ObjectIteratorV2(bucket, prefix=PREFIX))


def open_uploads(bucket):
    return [(u.key, u.upload_id) for u in oss2.MultipartUploadIterator(bucket)]


def assert_nothing_left(bucket):
    assert stored_keys(bucket) == [], "a failed backup left an object or a manifest behind"
    assert open_uploads(bucket) == [], "a failed backup left a multipart upload open"


def failed_backup(cfg, kind="manual", expected=L2CError):
    with pytest.raises(L2CError) as caught:
        run_backup(cfg, kind)
    assert type(caught.value) is expected, f"{type(caught.value).__name__}: {caught.value}"
    return caught.value


def checked_backup(bucket, done):
    """The object of one summary entry, after checking it against its manifest, the
    summary and the real gunzip. Returns the gzip bytes."""
    data = bucket.get_object(done["key"]).read()
    doc = json.loads(bucket.get_object(done["key"] + ".manifest.json").read())
    assert doc["key"] == done["key"]
    assert doc["object"]["size"] == len(data) == done["bytes"]
    assert doc["object"]["sha256"] == hashlib.sha256(data).hexdigest() == done["sha256"]
    if shutil.which("gunzip"):
        subprocess.run(["gunzip", "-t"], input=data, check=True)
    assert len(gzip.decompress(data)) == doc["sql_bytes"] == done["sql_bytes"]
    return data


def restore(pg_cluster, sql_gz):
    """Replays a backup with the real psql into a new database; returns its name."""
    dbname = f"restored_{uuid.uuid4().hex[:12]}"
    pg_cluster.create_database(dbname)
    result = subprocess.run(
        [str(pg_cluster.bin("psql")), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dbname],
        input=gzip.decompress(sql_gz), env=pg_cluster.env(), capture_output=True)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    return dbname


def counter(oss_server, **match):
    """A fault that does nothing but count the requests it matches."""
    return oss_server.inject(Fault(times=None, **match))


@pytest.fixture
def sent_alerts():
    """The alerts the run sends, as the alert seam hands them to every channel."""
    sent = []
    sink = alerts.add_sink(sent.append)
    yield sent
    alerts.remove_sink(sink)


# -- the database side --------------------------------------------------------------------

def test_pg_dump_killed_mid_stream_is_dump_failed_and_aborts_the_upload(
        monkeypatch, env, oss_server, bucket):
    """SIGKILL (FC's OOM killer, say) once pg_dump has streamed 20 of its ~31 MiB: parts
    are already in OSS by then, and the upload must be aborted, not completed with a
    cut-off dump. One gzip worker, so few blocks wait in the compressor."""
    real_chunks = PgProcess.chunks
    killed = []

    def chunks(self, size=MiB):
        for chunk in real_chunks(self, size):
            yield chunk
            if not killed and self.sql_bytes >= 20 * MiB:
                os.kill(self.pid, signal.SIGKILL)
                killed.append(self.sql_bytes)

    monkeypatch.setattr(PgDump, "chunks", chunks)
    parts = counter(oss_server, method="PUT", query="partNumber")

    err = failed_backup(config.load(dict(env, GZIP_WORKERS="1")), expected=DumpFailed)

    assert killed, "pg_dump was never killed: the dump was smaller than expected"
    assert "pg_dump" in str(err) and "SIGKILL" in str(err)
    assert parts.hits >= 1, "no part had been uploaded before the kill"
    assert_nothing_left(bucket)


def test_database_on_a_closed_port_is_unreachable_before_any_upload(
        pg_cluster, seeded_db, oss_server, bucket):
    url = f"postgresql://postgres:pw@127.0.0.1:{free_port()}/{seeded_db}"
    env = backup_env(pg_cluster, seeded_db, oss_server, DATABASE_URL=url,
                     PGCONNECT_TIMEOUT=5)
    requests = counter(oss_server)

    err = failed_backup(config.load(env), expected=DatabaseUnreachable)

    assert "refused" in str(err)
    assert requests.hits == 0, "OSS was contacted although the database never answered"
    assert_nothing_left(bucket)


def test_wrong_password_is_unreachable_naming_the_user_not_the_password(
        pg_cluster, seeded_db, oss_server, bucket):
    wrong = f"WrongPw-{uuid.uuid4().hex}"
    url = (f"postgresql://{pg_cluster.superuser}:{quote(wrong, safe='')}@{pg_cluster.host}:"
           f"{pg_cluster.port}/{seeded_db}")
    env = backup_env(pg_cluster, seeded_db, oss_server, DATABASE_URL=url)
    uploads = counter(oss_server, method="POST", query="uploads")

    err = failed_backup(config.load(env), expected=DatabaseUnreachable)

    text = str(err)
    assert "password authentication failed" in text
    assert f'"{pg_cluster.superuser}"' in text
    assert wrong not in text and pg_cluster.password not in text
    assert uploads.hits == 0
    assert_nothing_left(bucket)


# -- OSS refusing -------------------------------------------------------------------------

def test_oss_403_everywhere_is_upload_failed_and_not_retried(env, oss_server, bucket,
                                                             sent_alerts):
    fault = oss_server.inject(Fault(status=403, code="AccessDenied", key_prefix=PREFIX,
                                    times=None))

    err = failed_backup(config.load(env), expected=UploadFailed)

    assert "403" in str(err)
    assert [a.title for a in sent_alerts] == ["OSS upload failed"]
    assert "permission" in err.hint or "AccessKey" in err.hint
    # A permanent error is not worth a retry: the first request fails, and that is all.
    assert 1 <= fault.hits <= 2, f"a 403 was tried {fault.hits} times"
    oss_server.clear_faults()
    assert_nothing_left(bucket)


def test_oss_403_on_initiate_names_access_denied_and_is_tried_once(env, oss_server, bucket):
    fault = oss_server.inject(Fault(method="POST", query="uploads", status=403,
                                    code="AccessDenied", times=None))

    err = failed_backup(config.load(env), expected=UploadFailed)

    assert "403" in str(err) and "AccessDenied" in str(err)
    assert fault.hits == 1
    assert_nothing_left(bucket)


def test_oss_403_on_parts_is_upload_failed_and_aborts_the_upload(env, oss_server, bucket):
    fault = oss_server.inject(Fault(method="PUT", query="partNumber", status=403,
                                    code="AccessDenied", times=None))

    err = failed_backup(config.load(env), expected=UploadFailed)

    assert "403" in str(err) and "AccessDenied" in str(err)
    # no retry of a permanent error: at most the parts that were in flight at once, each once
    assert 1 <= fault.hits <= 3
    assert_nothing_left(bucket)


def test_oss_503_forever_on_parts_gives_up_after_the_capped_attempts(env, oss_server, bucket):
    fault = oss_server.inject(Fault(method="PUT", query="partNumber", status=503,
                                    times=None))
    started = time.monotonic()

    err = failed_backup(config.load(env), expected=UploadFailed)

    assert "503" in str(err)
    # every part that was started got exactly the capped number of attempts; at most
    # the parts in flight (2) plus the one handed over as the first failure showed
    assert fault.hits % retry.ATTEMPTS == 0, fault.hits
    assert retry.ATTEMPTS <= fault.hits <= 3 * retry.ATTEMPTS, fault.hits
    assert time.monotonic() - started < 60
    assert_nothing_left(bucket)


# -- the manifest, written after the object ----------------------------------------------

DAY = datetime(2025, 3, 14, 2, 0, tzinfo=timezone.utc)
DAILY = PREFIX + "daily/backup_2025-03-14.sql.gz"


def test_a_manifest_put_failing_past_the_retries_takes_its_object_with_it(env, oss_server, bucket):
    """The object is complete when its manifest PUT keeps failing (503 on every attempt):
    an object without manifest is no backup, and must not be left to look like one."""
    fault = oss_server.inject(Fault(method="PUT", key_prefix=DAILY + ".manifest.json",
                                    status=503, times=None))

    with pytest.raises(UploadFailed) as caught:
        run_backup(config.load(env), "daily", when=DAY)

    assert fault.hits == retry.ATTEMPTS
    text = str(caught.value)
    assert f"could not write {DAILY}.manifest.json" in text and "503" in text
    assert f"the object {DAILY} was removed" in text
    assert_nothing_left(bucket)


def test_a_manifest_put_and_a_delete_both_failing_say_the_object_is_left(env, oss_server,
                                                                         bucket):
    oss_server.inject(Fault(method="PUT", key_prefix=DAILY + ".manifest.json", status=503,
                            times=None))
    oss_server.inject(Fault(method="DELETE", key_prefix=DAILY, status=503, times=None))

    with pytest.raises(UploadFailed) as caught:
        run_backup(config.load(env), "daily", when=DAY)

    text = str(caught.value)
    assert f"the object {DAILY} has no manifest and could not be removed either" in text
    assert "503" in text.split("could not be removed either", 1)[1]
    oss_server.clear_faults()
    assert bucket.object_exists(DAILY), "the message says the object is left: it must be"
    assert not bucket.object_exists(DAILY + ".manifest.json")


# -- OSS stuttering: ridden out -----------------------------------------------------------

def test_oss_503_bursts_on_parts_and_complete_are_retried_and_the_backup_restores(
        pg_cluster, seeded_db, env, oss_server, bucket):
    on_parts = oss_server.inject(Fault(method="PUT", query="partNumber", status=503, times=3))
    on_complete = oss_server.inject(Fault(method="POST", query="uploadId", status=503,
                                          times=2))

    summary = run_backup(config.load(env), "manual")

    assert (on_parts.hits, on_complete.hits) == (3, 2)
    (done,) = summary["backups"]
    data = checked_backup(bucket, done)
    doc = json.loads(bucket.get_object(done["key"] + ".manifest.json").read())
    assert doc["object"]["parts"] > 1
    assert stored_keys(bucket) == [done["key"], done["key"] + ".manifest.json"]
    assert open_uploads(bucket) == []
    restored = restore(pg_cluster, data)
    assert table_digests(pg_cluster, restored) == table_digests(pg_cluster, seeded_db)


def test_connections_dropped_mid_part_are_retried_and_the_backup_completes(
        env, oss_server, bucket):
    fault = oss_server.inject(Fault(method="PUT", query="partNumber",
                                    drop_request_after=100_000, times=2))

    summary = run_backup(config.load(env), "manual")

    assert fault.hits == 2
    (done,) = summary["backups"]
    checked_backup(bucket, done)
    assert open_uploads(bucket) == []


# -- a directory target -------------------------------------------------------------------

@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MiB tmpfs (needs root and CAP_SYS_ADMIN; skipped without)."""
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mountpoint)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {result.stderr.strip() or result.returncode}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_a_full_disk_is_upload_failed_naming_the_space_and_leaves_no_file(
        pg_cluster, seeded_db, tiny_disk, sent_alerts):
    env = {"DATABASE_URL": pg_cluster.url(seeded_db), "BACKUP_TARGET": str(tiny_disk),
           "PATH": os.environ["PATH"]}

    err = failed_backup(config.load(env), expected=UploadFailed)

    assert re.search(rf"could not write {re.escape(PREFIX)}manual/backup_\S+\.sql\.gz in "
                     rf"{re.escape(str(tiny_disk))}: No space left on device", str(err)), str(err)
    assert "space" in err.hint
    (alert,) = sent_alerts
    assert alert.title == "backup write to directory failed", "a directory is not OSS"
    files = [os.path.join(folder, name) for folder, _, names in os.walk(tiny_disk)
             for name in names]
    assert files == [], "a failed backup left a (partial) file behind"


# -- the time budget ----------------------------------------------------------------------

def test_running_past_the_time_budget_is_backup_timeout_and_aborts(env, oss_server, bucket):
    oss_server.inject(Fault(method="PUT", query="partNumber", delay=2, times=None))
    cfg = config.load(dict(env, BACKUP_TIMEOUT_SECONDS="1"))
    started = time.monotonic()

    err = failed_backup(cfg, expected=BackupTimeout)

    assert "time budget" in str(err)
    assert "BACKUP_TIMEOUT_SECONDS" in err.hint
    assert time.monotonic() - started < 30, "the budget did not stop the backup promptly"
    oss_server.clear_faults()
    assert_nothing_left(bucket)


@pytest.fixture
def locked_db(pg_cluster):
    """A small database whose only table another session holds ACCESS EXCLUSIVE (a
    migration, say): pg_dump and the row counts wait for that lock. Yields (name, locker);
    the lock goes when the locking session is terminated."""
    dbname = f"locked_{uuid.uuid4().hex[:12]}"
    pg_cluster.create_database(dbname)
    pg_cluster.psql("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g", dbname)
    app = f"l2c_locker_{uuid.uuid4().hex[:8]}"
    locker = subprocess.Popen(
        [str(pg_cluster.bin("psql")), "-X", "-q", "-d", dbname, "-c",
         "BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(120);"],
        env=dict(pg_cluster.env(), PGAPPNAME=app), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)

    def release():
        pg_cluster.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        f"WHERE application_name = '{app}'")

    try:
        for _ in range(100):  # until the lock is really held
            held = pg_cluster.psql(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                f"WHERE a.application_name = '{app}' AND l.mode = 'AccessExclusiveLock' "
                "AND l.granted AND l.relation IS NOT NULL", dbname).strip()
            if held != "0":
                break
            time.sleep(0.1)
        else:
            pytest.fail("the locking session never got its lock")
        yield dbname, release
    finally:
        release()
        locker.wait(30)


def test_a_run_stalled_on_a_database_lock_is_stopped_by_the_time_budget(
        pg_cluster, oss_server, bucket, locked_db):
    dbname, release = locked_db
    cfg = config.load(backup_env(pg_cluster, dbname, oss_server, BACKUP_TIMEOUT_SECONDS=2))
    outcome = {}

    def backup():
        try:
            outcome["summary"] = run_backup(cfg, "manual")
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=backup, daemon=True)
    thread.start()
    thread.join(15)
    stalled = thread.is_alive()
    release()  # let a stalled run finish, so it leaves nothing running behind the test
    thread.join(60)

    assert not stalled, "the backup was still waiting on the lock 13 s past its 2 s budget"
    assert isinstance(outcome.get("error"), BackupTimeout), outcome
    assert_nothing_left(bucket)


# -- runs that race or repeat -------------------------------------------------------------

def test_a_daily_and_a_manual_backup_at_once_both_succeed(env, bucket):
    cfg = config.load(env)
    start = threading.Barrier(2)
    results = {}

    def backup(kind):
        start.wait()
        try:
            results[kind] = run_backup(cfg, kind)
        except BaseException as exc:  # reported by the test thread
            results[kind] = exc

    threads = [threading.Thread(target=backup, args=(kind,)) for kind in ("daily", "manual")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
        assert not thread.is_alive(), "a concurrent backup hung"

    for kind in ("daily", "manual"):
        assert isinstance(results[kind], dict), f"{kind} failed: {results[kind]!r}"
    (daily,) = results["daily"]["backups"]
    (manual,) = results["manual"]["backups"]
    assert daily["key"].startswith(PREFIX + "daily/")
    assert manual["key"].startswith(PREFIX + "manual/")
    first, second = checked_backup(bucket, daily), checked_backup(bucket, manual)
    # both are the same database, so the same SQL (bar the random \restrict key)
    assert abs(len(gzip.decompress(first)) - len(gzip.decompress(second))) < 200
    assert len(stored_keys(bucket)) == 4
    assert open_uploads(bucket) == []


def test_a_second_daily_run_the_same_day_is_skipped_and_leaves_the_first_untouched(
        env, oss_server, bucket):
    cfg = config.load(env)
    when = datetime(2025, 3, 14, 2, 0, tzinfo=timezone.utc)
    (first,) = run_backup(cfg, "daily", when=when)["backups"]
    assert not first.get("skipped")
    before = {key: (bucket.head_object(key).etag, bucket.get_object(key).read())
              for key in stored_keys(bucket)}
    uploads = counter(oss_server, method="POST", query="uploads")
    puts = counter(oss_server, method="PUT")

    (second,) = run_backup(cfg, "daily", when=when.replace(hour=9))["backups"]

    assert second["key"] == first["key"]
    assert "already exists" in second["skipped"]
    assert (uploads.hits, puts.hits) == (0, 0), "the repeated run wrote something"
    after = {key: (bucket.head_object(key).etag, bucket.get_object(key).read())
             for key in stored_keys(bucket)}
    assert after == before


def test_a_manual_backup_never_overwrites_one_made_in_the_same_second(env, bucket):
    cfg = config.load(env)
    when = datetime(2025, 3, 14, 2, 0, 5, tzinfo=timezone.utc)
    (first,) = run_backup(cfg, "manual", when=when)["backups"]
    first_etag = bucket.head_object(first["key"]).etag

    (second,) = run_backup(cfg, "manual", when=when)["backups"]

    assert first["key"] != second["key"]
    assert second["key"] == first["key"][:-len(".sql.gz")] + "-1.sql.gz"
    assert bucket.head_object(first["key"]).etag == first_etag
    checked_backup(bucket, first)
    checked_backup(bucket, second)
    assert stored_keys(bucket) == sorted([first["key"], first["key"] + ".manifest.json",
                                          second["key"], second["key"] + ".manifest.json"])
