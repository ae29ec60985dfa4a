"""Many databases: on FC the timer's invocation of the backup function starts one
asynchronous invocation of itself per database (through the local FC endpoint, the real
aliyun-fc2 client and the real handlers), off FC the CLI backs them up a few at a time;
either way a run record holds every outcome, and the watchdog and status see each
database. One of three databases fails (it was dropped) while the other two are backed up."""
import json
from pathlib import Path

import fc2
import oss2
import pytest

from l2c_backup import cli, config, fanout
from l2c_backup.errors import DatabaseUnreachable, EventInvalid
from l2c_backup.status import Location, newest_runs, report, survey
from l2c_backup.storage import open_storage
from l2c_local.fc import LocalFC

FUNCTIONS = Path(__file__).resolve().parent.parent / "functions"
ROLE = ("STS.role-key", "role-secret", "role-token")  # the function role's STS credentials
DATABASES = ("fan_a", "fan_b", "fan_gone")
TIMER = json.dumps({"triggerTime": "2026-11-26T18:00:00Z", "triggerName": "daily-0200",
                    "payload": '{"kind":"daily"}'}).encode()


@pytest.fixture(scope="module")
def three_databases(pg_cluster):
    """fan_a and fan_b with a little data; fan_gone listed in the settings but dropped."""
    for name in DATABASES:
        pg_cluster.psql(f"DROP DATABASE IF EXISTS {name}")
    for name in DATABASES[:2]:
        pg_cluster.create_database(name)
        pg_cluster.psql(f"CREATE TABLE rows_of_{name} AS SELECT g AS id, md5(g::text) AS v "
                        "FROM generate_series(1, 2000) g", dbname=name)
    return ",".join(DATABASES)


def keys(bucket, prefix="db-backups/"):
    return sorted(o.key for o in oss2.ObjectIteratorV2(bucket, prefix=prefix))


@pytest.fixture
def fc(monkeypatch, pg_cluster, three_databases, oss_server):
    """The service as s.yaml deploys it, three databases configured; the function's role
    may invoke FC (its own function), and FC_ENDPOINT points the dispatcher at the local
    endpoint (on FC it is derived from the account and region)."""
    oss_server.add_credentials(*ROLE)
    server = LocalFC(FUNCTIONS, role_credentials=ROLE)
    server.add_credentials(*ROLE)
    server.env = {"DATABASE_URL": pg_cluster.url("postgres"), "OSS_ENDPOINT": oss_server.endpoint,
                  "OSS_BACKUP_BUCKET": "l2c-backups", "BACKUP_DATABASES": three_databases,
                  "WATCHDOG_KINDS": "daily", "FC_ENDPOINT": "set below"}
    with server:
        server.env["FC_ENDPOINT"] = server.endpoint
        yield server
        server.wait_idle()


def client(fc):
    return fc2.Client(endpoint=fc.endpoint, accessKeyID=fc.access_key_id,
                      accessKeySecret=fc.access_key_secret)


def storage_of(oss_server):
    target, settings = config.storage_target({
        "OSS_ENDPOINT": oss_server.endpoint, "OSS_BACKUP_BUCKET": "l2c-backups",
        "OSS_ACCESS_KEY_ID": oss_server.access_key_id,
        "OSS_ACCESS_KEY_SECRET": oss_server.access_key_secret})
    return open_storage(target, settings)


def test_the_timer_fans_out_one_invocation_per_database_and_the_run_records_every_outcome(
        fc, bucket, oss_server, alerts_sent, pg_cluster):
    answer = client(fc).invoke_function(fc.service, "backup", payload=TIMER)
    dispatched = json.loads(answer.data)
    fc.wait_idle()

    assert [d["database"] for d in dispatched["dispatched"]] == list(DATABASES)
    dispatcher, *workers = fc.invocations
    assert dispatcher.invocation_type == "Sync" and dispatcher.status == "Succeeded"
    assert [(w.invocation_type, json.loads(w.payload)["database"]) for w in workers] == [
        ("Async", db) for db in DATABASES]
    assert all(w.access_key_id == ROLE[0] for w in workers)  # the role's own credentials
    status = {json.loads(w.payload)["database"]: w.status for w in workers}
    assert status == {"fan_a": "Succeeded", "fan_b": "Succeeded", "fan_gone": "Failed"}
    failed = next(w for w in workers if w.status == "Failed")
    assert failed.error["errorType"] == "DatabaseUnreachable"

    backups = [k for k in keys(bucket) if k.endswith(".sql.gz")]
    assert [k.split("/")[2] for k in backups] == ["fan_a", "fan_b"]  # the folders of today
    assert all(k + ".manifest.json" in keys(bucket) for k in backups)

    run = fanout.newest_run(storage_of(oss_server), "daily")
    assert run["databases"] == list(DATABASES) and run["engine"] == "fc"
    outcomes = run["outcomes"]
    assert set(outcomes) == set(DATABASES)
    assert outcomes["fan_a"]["ok"] and outcomes["fan_a"]["key"] == backups[0]
    assert outcomes["fan_b"]["ok"] and outcomes["fan_b"]["bytes"] > 0
    assert outcomes["fan_gone"]["ok"] is False
    assert "fan_gone" in outcomes["fan_gone"]["error"] and "\n" not in outcomes["fan_gone"]["error"]
    assert outcomes["fan_gone"]["error_type"] == "DatabaseUnreachable"
    assert "what to do" not in outcomes["fan_gone"]["error"]
    assert pg_cluster.password not in json.dumps(run)  # never the database password

    problems = [a for a in alerts_sent if a.severity != "info"]
    assert [(a.title, a.details["database"]) for a in problems] == [("backup failed", "fan_gone")]


def test_the_watchdog_names_the_failed_database_and_status_shows_each(fc, bucket, oss_server,
                                                                      alerts_sent):
    client(fc).invoke_function(fc.service, "backup", payload=TIMER)
    fc.wait_idle()
    storage = storage_of(oss_server)
    for key in keys(bucket):
        if key.endswith(".sql.gz"):  # what the verify function's trigger would have done
            storage.set_tags(key, {"verify": "ok"})
    alerts_sent.clear()

    with pytest.raises(fc2.FcError) as failed:
        client(fc).invoke_function(fc.service, "watchdog", payload=b"{}")
    message = json.loads(failed.value.message)["errorMessage"]
    assert "no verified daily backup of fan_gone at all" in message
    assert "fan_a" not in message and "fan_b" not in message
    assert [(a.title, a.details["database"]) for a in alerts_sent] == [("backup missing", "fan_gone")]

    primary = Location("primary", storage.url, "OSS", False, survey(storage))
    result = report([primary], ["daily"], {"daily": 30}, configured=list(DATABASES),
                    runs=newest_runs(storage, ["daily"]))
    per_database = result["kinds"]["daily"]["databases"]
    assert per_database["fan_a"]["newest_verdict"] == "ok"
    assert per_database["fan_a"]["last_run"]["outcome"] == "ok"
    assert per_database["fan_gone"]["newest"] is None
    assert per_database["fan_gone"]["last_run"]["outcome"] == "failed"
    assert "fan_gone" in per_database["fan_gone"]["last_run"]["error"]
    assert result["rpo_problems"] == ["no verified daily backup of fan_gone at all"]


def test_a_repeated_timer_delivery_starts_nothing_more(fc, bucket, oss_server):
    client(fc).invoke_function(fc.service, "backup", payload=TIMER)
    fc.wait_idle()
    before = keys(bucket)
    calls = len(fc.invocations)

    again = json.loads(client(fc).invoke_function(fc.service, "backup", payload=TIMER).data)
    fc.wait_idle()
    assert "dispatched already" in again["skipped"] and again["dispatched"] == []
    assert len(fc.invocations) == calls + 1  # the repeated dispatcher, and nothing it started
    assert keys(bucket) == before


def test_a_dispatcher_delivered_again_after_dying_half_way_starts_only_what_was_not_started(
        fc, bucket, oss_server):
    """The run record is written after the invocations start; a dispatcher killed before
    it is delivered again, and FC refuses the async task ids it already took."""
    client(fc).invoke_function(fc.service, "backup", payload=TIMER)
    fc.wait_idle()
    storage = storage_of(oss_server)
    run = fanout.newest_run(storage, "daily")
    storage.delete(fanout.summary_key(storage.prefix, "daily", run["run"]))
    before, calls = keys(bucket), len(fc.invocations)

    again = json.loads(client(fc).invoke_function(fc.service, "backup", payload=TIMER).data)
    fc.wait_idle()
    assert [d.get("already") for d in again["dispatched"]] == [True, True, True]
    assert len(fc.invocations) == calls + 1
    assert [k for k in keys(bucket) if k.endswith(".sql.gz")] == \
        [k for k in before if k.endswith(".sql.gz")]


def test_a_database_invocation_runs_only_a_configured_database(fc, alerts_sent):
    with pytest.raises(fc2.FcError) as refused:
        client(fc).invoke_function(fc.service, "backup",
                                   payload=b'{"kind":"manual","database":"l2c_seed"}')
    body = json.loads(refused.value.message)
    assert body["errorType"] == "EventInvalid" and "'l2c_seed' is not one of" in body["errorMessage"]


# -- off FC: the CLI, a few at a time ----------------------------------------------------------
def test_the_cli_backs_up_several_databases_a_few_at_a_time_and_exits_with_the_first_failure(
        monkeypatch, pg_cluster, three_databases, tmp_path, capsys, alerts_sent):
    monkeypatch.setenv("DATABASE_URL", pg_cluster.url("postgres"))
    monkeypatch.setenv("BACKUP_DATABASES", three_databases)
    for name in ("BACKUP_TARGET", "OSS_BACKUP_BUCKET", "BACKUP_CONCURRENCY"):
        monkeypatch.delenv(name, raising=False)

    code = cli.main(["backup", "--kind", "daily", "--to", str(tmp_path), "--concurrency", "2"])

    assert code == DatabaseUnreachable.exit_code
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert [l.split("/daily/")[1].split("/")[0] for l in lines[:2]] == ["fan_a", "fan_b"]
    assert lines[2].startswith("fan_gone: FAILED (DatabaseUnreachable)")
    assert err.count("l2c-backup backup:") == 1 and "fan_gone" in err
    problems = [a for a in alerts_sent if a.severity != "info"]
    assert [(a.title, a.details["database"]) for a in problems] == [("backup failed", "fan_gone")]

    run = fanout.newest_run(open_storage(str(tmp_path)), "daily")
    assert run["engine"] == "local" and run["concurrency"] == 2
    assert {db: o["ok"] for db, o in run["outcomes"].items()} == {
        "fan_a": True, "fan_b": True, "fan_gone": False}
    backups = sorted(p.relative_to(tmp_path).parts[2] for p in tmp_path.rglob("*.sql.gz"))
    assert backups == ["fan_a", "fan_b"]


def test_concurrency_is_a_setting_checked_like_the_others(monkeypatch, pg_cluster, three_databases,
                                                          tmp_path, capsys):
    monkeypatch.setenv("DATABASE_URL", pg_cluster.url("postgres"))
    monkeypatch.setenv("BACKUP_DATABASES", three_databases)
    monkeypatch.setenv("BACKUP_CONCURRENCY", "0")
    assert cli.main(["backup", "--to", str(tmp_path)]) == 2
    assert "BACKUP_CONCURRENCY is invalid" in capsys.readouterr().err
    assert list(tmp_path.rglob("*.sql.gz")) == []


def test_the_api_and_endpoint_of_the_function_itself(monkeypatch):
    from types import SimpleNamespace as NS
    from l2c_backup.invoke import FC3Invoker, Invoker
    creds = NS(access_key_id="STS.k", access_key_secret="s", security_token="t")
    fc2_context = NS(function=NS(name="backup"), service=NS(name="l2c-backup"), credentials=creds,
                     account_id="123", region="cn-hangzhou")
    monkeypatch.delenv("FC_ENDPOINT", raising=False)
    invoker, function = fanout.this_function(fc2_context, {})
    assert isinstance(invoker, Invoker) and not isinstance(invoker, FC3Invoker)
    assert invoker.settings.endpoint == "https://123.cn-hangzhou-internal.fc.aliyuncs.com"
    assert (invoker.settings.service, function) == ("l2c-backup", "backup")
    fc3_context = NS(function=NS(name="l2c-backup-backup"), credentials=creds,
                     account_id="123", region="cn-hangzhou")
    invoker, function = fanout.this_function(fc3_context, {})
    assert isinstance(invoker, FC3Invoker) and invoker.function_name(function) == "l2c-backup-backup"
    invoker, _ = fanout.this_function(fc2_context, {"BACKUP_FANOUT_API": "fc3"})
    assert isinstance(invoker, FC3Invoker)


def test_run_names_are_one_per_daily_slot_and_unique_for_manual():
    from datetime import datetime, timezone
    when = datetime(2026, 11, 26, 18, 0, 3, tzinfo=timezone.utc)
    assert fanout.run_name("daily", when, "req-1") == fanout.run_name("daily", when, "req-2") == "2026-11-27"
    assert fanout.run_name("manual", when, "req-1") != fanout.run_name("manual", when, "req-2")
    assert fanout.task_id("daily", "2026-11-27", "my db") == fanout.task_id("daily", "2026-11-27", "my db")
    assert fanout.task_id("daily", "2026-11-27", "my db") != fanout.task_id("daily", "2026-11-27", "my_db")


@pytest.mark.parametrize("event", [b'{"kind":"daily","run":"2026-11-27"}',
                                   b'{"kind":"daily","database":"a/b"}'])
def test_a_database_event_is_checked(event):
    from l2c_backup.events import parse_backup_event
    with pytest.raises(EventInvalid):
        parse_backup_event(event)
