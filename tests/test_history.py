"""The history the status page shows and no backup object holds: each failed backup
attempt and each drill is one record under <prefix>history/, written through the real
handlers and the real CLI, against a real PostgreSQL cluster and the local OSS server
over HTTP. A record names the error and never the database's host, user or password, nor
the endpoint; writing it never changes the outcome it records."""
import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from fc_handlers import fc_context, load_handler
from l2c_backup import cli, config, history, leftovers, names
from l2c_backup.backup import run_backup
from l2c_backup.errors import BackupNotFound, DatabaseUnreachable
from l2c_backup.mirror import mirror
from l2c_backup.prune import prune
from l2c_backup.status import survey
from l2c_backup.storage import open_storage
from l2c_local import resolve
from l2c_local.oss import Fault

backup_fn = load_handler("backup")
drill_fn = load_handler("drill")
verify_fn = load_handler("verify")

CLI = [sys.executable, "-m", "l2c_backup.cli"]
ROLE = ("STS.role-key", "role-secret", "role-token")  # the function role's STS credentials
DOWN_HOST = "db-primary.l2c.invalid"  # never resolves (RFC 6761)
PASSWORD = "Hist0ry-S3cret-pw"
DOWN_URL = f"postgresql://backup_operator:{PASSWORD}@{DOWN_HOST}:6543/app"
HISTORY = "db-backups/history/"
T0 = datetime(2026, 11, 27, 2, 0, tzinfo=timezone.utc)


def oss_env(server, **extra):
    return dict({"OSS_ENDPOINT": server.endpoint, "OSS_BACKUP_BUCKET": "l2c-backups",
                 "OSS_ACCESS_KEY_ID": server.access_key_id,
                 "OSS_ACCESS_KEY_SECRET": server.access_key_secret}, **extra)


def oss_storage(server):
    return open_storage(*config.storage_target(oss_env(server)))


def stored(storage, prefix=HISTORY):
    """{key: bytes} of every object under prefix."""
    return {o.key: b"".join(storage.open(o.key)) for o in storage.list(prefix)}


def role_context(request_id="req-1", name="backup"):
    return fc_context(request_id, *ROLE, name=name)


@pytest.fixture
def fc_env(monkeypatch, pg_cluster, seeded_db, oss_server):
    """The backup function's config as s.yaml sets it: credentials from the role."""
    for name in ("OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET", "ALIBABA_CLOUD_ACCESS_KEY_ID",
                 "ALIBABA_CLOUD_ACCESS_KEY_SECRET", "ALIBABA_CLOUD_SECURITY_TOKEN",
                 "BACKUP_TARGET", "BACKUP_DATABASES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", pg_cluster.url(seeded_db))
    monkeypatch.setenv("OSS_ENDPOINT", oss_server.endpoint)
    monkeypatch.setenv("OSS_BACKUP_BUCKET", "l2c-backups")
    oss_server.add_credentials(*ROLE)
    return oss_server


def assert_hides_the_database_and_endpoint(text, server):
    for hidden in (DOWN_HOST, PASSWORD, "6543", "backup_operator", server.endpoint,
                   server.endpoint.split("//")[1]):
        assert hidden not in text


# -- failed backups: the FC handler ----------------------------------------------------------

def test_a_backup_whose_database_is_down_leaves_one_backup_failed_record(fc_env, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", DOWN_URL)
    with pytest.raises(DatabaseUnreachable) as failed:
        backup_fn.handler(b'{"kind":"daily"}', role_context("req-down"))
    assert DOWN_HOST in str(failed.value)  # the operator's error still names it

    storage = oss_storage(fc_env)
    (record,) = history.recent(storage, 0)["backup_failures"]
    assert {k: record[k] for k in ("event", "kind", "database", "error", "exit_code", "request_id")} == {
        "event": "backup-failed", "kind": "daily", "database": "", "error": "DatabaseUnreachable",
        "exit_code": 10, "request_id": "req-down"}
    assert record["message"].startswith("cannot connect to [database]: could not translate host name")
    assert "\n" not in record["message"] and "what to do" not in record["message"]
    assert datetime.fromisoformat(record["at"]) > names.now() - timedelta(minutes=5)
    (key, raw), = stored(storage).items()
    assert key.startswith(HISTORY + "backup/daily/") and key.endswith(".json")
    assert_hides_the_database_and_endpoint(raw.decode(), fc_env)


def test_a_backup_that_works_leaves_no_history(fc_env):
    summary = json.loads(backup_fn.handler(b'{"kind":"manual"}', role_context()))
    assert summary["backups"][0]["bytes"] > 0
    assert stored(oss_storage(fc_env)) == {}


def test_a_config_that_does_not_load_has_nowhere_to_record_and_the_handler_still_fails(
        fc_env, monkeypatch):
    monkeypatch.setenv("GZIP_LEVEL", "fast")
    with pytest.raises(Exception, match="GZIP_LEVEL is invalid"):
        backup_fn.handler(b'{"kind":"daily"}', role_context())
    assert stored(oss_storage(fc_env)) == {}


def test_a_history_write_oss_refuses_changes_neither_the_error_nor_its_exit_code(
        fc_env, monkeypatch, oss_without_backoff, capfd):
    monkeypatch.setenv("DATABASE_URL", DOWN_URL)
    with pytest.raises(DatabaseUnreachable) as recorded:
        backup_fn.handler(b'{"kind":"daily"}', role_context("req-a"))
    fault = fc_env.inject(Fault(key_prefix=HISTORY, status=500, times=None))
    capfd.readouterr()

    with pytest.raises(DatabaseUnreachable) as refused:
        backup_fn.handler(b'{"kind":"daily"}', role_context("req-a"))

    assert fault.hits >= 1  # the write was tried, and retried, and refused
    assert str(refused.value) == str(recorded.value)
    assert refused.value.exit_code == recorded.value.exit_code == 10
    assert "could not record db-backups/history/backup/daily/" in capfd.readouterr().err
    fc_env.clear_faults()
    assert len(history.recent(oss_storage(fc_env), 0)["backup_failures"]) == 1


def test_a_history_write_that_hangs_is_waited_for_at_most_write_wait_seconds(
        fc_env, monkeypatch, capfd):
    import threading
    import time
    monkeypatch.setenv("DATABASE_URL", DOWN_URL)
    monkeypatch.setattr(history, "WRITE_WAIT_SECONDS", 1)
    fc_env.inject(Fault(method="PUT", key_prefix=HISTORY, delay=4.0, times=None))
    started = time.monotonic()
    with pytest.raises(DatabaseUnreachable):
        backup_fn.handler(b'{"kind":"daily"}', role_context())
    assert time.monotonic() - started < 3.5
    assert "within 1s; going on without it" in capfd.readouterr().err
    for thread in threading.enumerate():  # let the write end before the server stops
        if thread.name == "l2c-history":
            thread.join(30)


def test_one_database_of_several_failing_in_its_own_invocation_is_recorded_once(
        fc_env, monkeypatch, pg_cluster, two_databases):
    monkeypatch.setenv("DATABASE_URL", pg_cluster.url("postgres"))
    monkeypatch.setenv("BACKUP_DATABASES", two_databases)
    event = json.dumps({"kind": "daily", "database": "hist_gone", "run": "2026-11-27",
                        "when": "2026-11-26T18:00:00Z"}).encode()
    with pytest.raises(DatabaseUnreachable):
        backup_fn.handler(event, role_context("req-gone"))
    (record,) = history.recent(oss_storage(fc_env), 0)["backup_failures"]
    assert (record["database"], record["error"], record["request_id"]) == (
        "hist_gone", "DatabaseUnreachable", "req-gone")
    assert pg_cluster.password not in json.dumps(record)


@pytest.fixture(scope="module")
def two_databases(pg_cluster):
    """hist_ok with a table; hist_gone configured but not there."""
    pg_cluster.psql("DROP DATABASE IF EXISTS hist_gone")
    pg_cluster.psql("DROP DATABASE IF EXISTS hist_ok")
    pg_cluster.create_database("hist_ok")
    pg_cluster.psql("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 100) g", dbname="hist_ok")
    return "hist_ok,hist_gone"


# -- failed backups: the CLI -----------------------------------------------------------------

def run_cli(*args, env):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=300,
                          env=resolve.child_env(dict(env, PATH="/usr/bin:/bin")))


def test_the_cli_records_a_failed_backup_once_and_a_refused_record_changes_nothing(oss_server):
    env = oss_env(oss_server, DATABASE_URL=DOWN_URL)
    first = run_cli("backup", "--kind", "daily", env=env)
    assert first.returncode == 10, first.stderr
    storage = oss_storage(oss_server)
    (record,) = history.recent(storage, 0)["backup_failures"]
    assert (record["error"], record["exit_code"], record["kind"]) == ("DatabaseUnreachable", 10, "daily")
    assert_hides_the_database_and_endpoint(json.dumps(record), oss_server)

    # A key pair that may not write history/ (a permanent refusal: no retries).
    oss_server.inject(Fault(method="PUT", key_prefix=HISTORY, status=403, code="AccessDenied",
                            times=None))
    second = run_cli("backup", "--kind", "daily", env=env)
    assert second.returncode == 10
    line = [l for l in second.stderr.splitlines() if l.startswith("l2c-backup backup:")]
    assert line == [l for l in first.stderr.splitlines() if l.startswith("l2c-backup backup:")]
    assert "Traceback" not in second.stderr and "could not record" in second.stderr
    assert len(history.recent(storage, 0)["backup_failures"]) == 1


def test_the_cli_records_the_one_database_of_several_that_failed_once(
        monkeypatch, pg_cluster, two_databases, tmp_path):
    monkeypatch.setenv("DATABASE_URL", pg_cluster.url("postgres"))
    monkeypatch.setenv("BACKUP_DATABASES", two_databases)
    for name in ("BACKUP_TARGET", "OSS_BACKUP_BUCKET", "BACKUP_CONCURRENCY"):
        monkeypatch.delenv(name, raising=False)

    assert cli.main(["backup", "--kind", "daily", "--to", str(tmp_path)]) == 10

    storage = open_storage(str(tmp_path))
    (record,) = history.recent(storage, 0)["backup_failures"]
    assert (record["database"], record["error"]) == ("hist_gone", "DatabaseUnreachable")
    assert len(list(tmp_path.rglob("*.sql.gz"))) == 1  # hist_ok's


# -- drills ----------------------------------------------------------------------------------

@pytest.fixture
def drill_env(monkeypatch, oss_server, pg_cluster, seeded_db):
    env = oss_env(oss_server, DATABASE_URL=pg_cluster.url(seeded_db))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("BACKUP_TARGET", raising=False)
    monkeypatch.delenv("DRILL_CHECKS", raising=False)
    return env


def test_every_drill_leaves_one_record_with_its_restore_time_or_its_failure(
        drill_env, oss_server, pg_cluster):
    storage = oss_storage(oss_server)
    (done,) = run_backup(config.load(drill_env), "daily")["backups"]
    storage.set_tags(done["key"], {"verify": "ok"})  # what the verify trigger does

    report = json.loads(drill_fn.handler(b'{"kind": "daily"}', fc_context("req-drill", name="drill")))
    with pytest.raises(BackupNotFound):  # no verified weekly backup
        drill_fn.handler(b'{"kind": "weekly"}', fc_context("req-none", name="drill"))

    passed, failed = history.recent(storage, 0)["drills"]
    assert passed == {"event": "drill", "kind": "daily", "key": done["key"], "ok": True,
                      "at": passed["at"], "restore_seconds": report["restore_seconds"],
                      "rto_seconds": 7200, "one_stream_seconds": report["one_stream_seconds"],
                      "restore_jobs": report["restore_jobs"], "failures": [],
                      "request_id": "req-drill"}
    assert passed["restore_seconds"] > 0
    assert (failed["kind"], failed["ok"], failed["key"], failed["restore_seconds"]) == (
        "weekly", False, "", None)
    (why,) = failed["failures"]
    assert "weekly" in why and "\n" not in why
    assert history.recent(storage, 0)["backup_failures"] == []
    text = json.dumps([passed, failed])
    assert pg_cluster.password not in text and oss_server.endpoint not in text


# -- reading and cleaning ------------------------------------------------------------------

def failure(database):
    return DatabaseUnreachable(f"cannot connect to db.internal:5432 for {database}")


def test_recent_returns_records_oldest_first_and_skips_a_corrupt_one_with_a_warning(
        tmp_path, monkeypatch, caplog):
    storage = open_storage(str(tmp_path))
    for days, database in ((2, "c"), (0, "a"), (1, "b")):
        monkeypatch.setattr(names, "now", lambda days=days: T0 + timedelta(days=days))
        history.record_backup_failure(storage, "daily", database, failure(database))
    history.record_drill(storage, {"kind": "daily", "key": "k", "ok": True, "restore_seconds": 9.5,
                                   "rto_seconds": 7200, "failures": []})
    corrupt = history.record_key(storage.prefix, "backup", "daily", T0 + timedelta(hours=1))
    storage.put_bytes(corrupt, b'{"event": "backup-fa')
    not_a_record = history.record_key(storage.prefix, "drill", "daily", T0)
    storage.put_bytes(not_a_record, b'["a list"]')

    found = history.recent(storage, T0.timestamp())

    assert [r["database"] for r in found["backup_failures"]] == ["a", "b", "c"]
    assert [r["restore_seconds"] for r in found["drills"]] == [9.5]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(corrupt in m for m in warned) and any(not_a_record in m for m in warned)
    later = history.recent(storage, (T0 + timedelta(days=1)).timestamp())
    assert [r["database"] for r in later["backup_failures"]] == ["b", "c"]


def test_a_new_record_deletes_history_records_older_than_100_days_and_nothing_else(
        tmp_path, monkeypatch):
    storage = open_storage(str(tmp_path))
    old = [history.record_key(storage.prefix, "backup", "daily", T0 - timedelta(days=101)),
           history.record_key(storage.prefix, "drill", "weekly", T0 - timedelta(days=300))]
    young = history.record_key(storage.prefix, "drill", "daily", T0 - timedelta(days=99))
    others = [HISTORY + "backup/daily/notes.txt", HISTORY + "README",
              "db-backups/daily/backup_2020-01-01.sql.gz", "db-backups/status/index.html"]
    for key in old + [young] + others:
        storage.put_bytes(key, b"{}")
    monkeypatch.setattr(names, "now", lambda: T0)

    history.record_backup_failure(storage, "daily", "", failure("app"))

    left = set(stored(storage, "db-backups/"))
    assert not left & set(old)
    assert {young, *others} <= left and len(left) == len(others) + 2  # and the new record


def test_one_line_hides_names_as_whole_words_and_every_url_and_ip():
    from l2c_backup.database import DatabaseSettings
    from l2c_backup.storage.oss import OSSSettings
    database = DatabaseSettings.from_url(DOWN_URL, {})
    oss = OSSSettings("https://oss-cn-hangzhou-internal.aliyuncs.com", "id", "secret")
    text = (f'cannot connect to {DOWN_HOST}:6543: password authentication failed for user '
            f'"backup_operator"\n at https://oss-cn-hangzhou-internal.aliyuncs.com, 10.1.2.3 port 6543;'
            " postgresql://u:p@h/db; the backup_operator's postgresql 15.19 backup")
    assert history.one_line(text, history.scrub_of(database, oss)) == (
        'cannot connect to [database]: password authentication failed for user "[database]" '
        "at [endpoint], [address] port [database]; [database]; the backup_operator's "
        "postgresql 15.19 backup")


# -- nothing else mistakes history/ or status/ for a backup ----------------------------------

def test_prune_mirror_verify_leftovers_and_status_leave_history_and_the_status_page_alone(
        fc_env, pg_cluster, seeded_db, tmp_path, monkeypatch):
    storage = oss_storage(fc_env)
    env = oss_env(fc_env, DATABASE_URL=pg_cluster.url(seeded_db), PRUNE_AFTER_BACKUP="false")
    (done,) = run_backup(config.load(env), "daily", when=T0)["backups"]
    storage.set_tags(done["key"], {"verify": "ok"})
    history.record_backup_failure(storage, "daily", "", failure("app"))
    history.record_drill(storage, {"kind": "daily", "key": done["key"], "ok": True,
                                   "restore_seconds": 3.0, "rto_seconds": 7200, "failures": []})
    # One so old the clean-up would take it: only a new record's write may.
    ancient = history.record_key(storage.prefix, "backup", "daily", T0 - timedelta(days=400))
    storage.put_bytes(ancient, b'{"event": "backup-failed"}')
    storage.put_bytes("db-backups/status/index.html", b"<!doctype html><title>status</title>")
    before = {**stored(storage), **stored(storage, "db-backups/status/")}
    assert len(before) == 4

    prune(storage, names.KINDS, {"daily": 1, "weekly": 1, "manual": 1}, now=T0.timestamp() + 40 * 86400)
    mirrored = mirror(storage, str(tmp_path / "mirror"), 5)
    removed = leftovers.clean(storage, 0)
    event = {"events": [{"eventName": "ObjectCreated:PutObject",
                         "oss": {"bucket": {"name": "l2c-backups"}, "object": {"key": key}}}
                        for key in before]}
    monkeypatch.delenv("DATABASE_URL")
    verified = json.loads(verify_fn.handler(json.dumps(event).encode(), role_context(name="verify")))
    found = survey(storage)

    after = {**stored(storage), **stored(storage, "db-backups/status/")}
    assert after.pop("db-backups/status/mirror.json")  # what the mirror holds (report_held)
    assert after == before
    assert all(storage.get_tags(key) == {} for key in before)
    assert removed == []
    assert verified == {"results": [], "ignored": list(before)}
    assert [b.key for b in found] == [done["key"]]
    assert [item.key for item in mirrored.items] == [done["key"]]
    files = [p.relative_to(tmp_path / "mirror").as_posix() for p in (tmp_path / "mirror").rglob("*")
             if p.is_file()]
    assert not [f for f in files if "history" in f or "status" in f]
