"""The watchdog (a backup that silently never ran) and the 3-2-1 status report."""
import json
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

from fc_handlers import fc_context, load_handler
from l2c_backup import config
from l2c_backup.errors import NotCompliant
from l2c_backup.status import GB, monthly_cost, BackupInfo
from l2c_backup.storage import open_storage
from l2c_local import resolve

watchdog_fn = load_handler("watchdog")
HOUR = 3600


def put_backup(storage, key, hours_ago, verified=True):
    finished = datetime.fromtimestamp(time.time() - hours_ago * HOUR, timezone.utc).isoformat()
    storage.put_bytes(key, b"x" * 1000)
    storage.put_bytes(key + ".manifest.json", json.dumps({"finished_at": finished}).encode())
    if verified:
        storage.set_tags(key, {"verify": "ok", "verify-reason": "ok"})


@pytest.fixture
def primary(monkeypatch, oss_server):
    env = {"OSS_ENDPOINT": oss_server.endpoint, "OSS_BACKUP_BUCKET": "l2c-backups",
           "OSS_ACCESS_KEY_ID": oss_server.access_key_id,
           "OSS_ACCESS_KEY_SECRET": oss_server.access_key_secret}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("BACKUP_TARGET", raising=False)
    target, settings = config.storage_target(env)
    return open_storage(target, settings), env


def test_watchdog_alerts_once_when_the_newest_daily_is_older_than_the_rpo_plus_grace(
        primary, alerts_sent):
    storage, _ = primary
    put_backup(storage, "db-backups/daily/backup_2026-11-25.sql.gz", hours_ago=27)
    put_backup(storage, "db-backups/daily/backup_2026-11-26.sql.gz", hours_ago=3, verified=False)
    put_backup(storage, "db-backups/weekly/backup_2026-W48.sql.gz", hours_ago=30)

    with pytest.raises(NotCompliant, match="27.0 h old"):
        watchdog_fn.handler(b'{"triggerTime":"2026-11-27T01:00:00Z","triggerName":"hourly","payload":""}',
                            fc_context(name="watchdog"))
    assert [(a.severity, a.details["kind"]) for a in alerts_sent] == [("urgent", "daily")]


def test_watchdog_is_quiet_while_every_kind_is_within_its_rpo(primary, alerts_sent):
    storage, _ = primary
    put_backup(storage, "db-backups/daily/backup_2026-11-26.sql.gz", hours_ago=20)
    put_backup(storage, "db-backups/weekly/backup_2026-W48.sql.gz", hours_ago=100)
    assert json.loads(watchdog_fn.handler(b"{}", fc_context(name="watchdog")))["ok"]
    assert alerts_sent == []


def test_watchdog_alerts_when_a_kind_never_had_a_backup(primary, alerts_sent):
    storage, _ = primary
    put_backup(storage, "db-backups/daily/backup_2026-11-26.sql.gz", hours_ago=1)
    with pytest.raises(NotCompliant, match="no verified weekly backup"):
        watchdog_fn.handler(b"{}", fc_context(name="watchdog"))
    assert len(alerts_sent) == 1


def run_status(env, *args):
    env = resolve.child_env(dict(env, PATH="/usr/bin:/bin"))
    return subprocess.run([sys.executable, "-m", "l2c_backup.cli", "status", "--json", *args],
                          capture_output=True, text=True, env=env)


def test_status_without_dr_copies_is_not_compliant_and_exits_nonzero(primary, oss_server, tmp_path):
    storage, env = primary
    put_backup(storage, "db-backups/daily/backup_2026-11-26.sql.gz", hours_ago=5)
    put_backup(storage, "db-backups/weekly/backup_2026-W48.sql.gz", hours_ago=5)
    oss_server.create_bucket("l2c-backups-dr")
    result = run_status(dict(env, OSS_DR_BUCKET="l2c-backups-dr"), "--mirror", str(tmp_path))
    assert result.returncode == 20
    report = json.loads(result.stdout)
    assert report["compliant"] is False
    daily = next(c for c in report["three_two_one"] if c["kind"] == "daily")
    assert daily["copies"] == ["primary"] and daily["offsite"] is False


def test_status_with_all_three_copies_is_compliant(primary, oss_server, tmp_path):
    storage, env = primary
    oss_server.create_bucket("l2c-backups-dr")
    dr_target, dr_settings = config.storage_target(env, "oss://l2c-backups-dr/db-backups/")
    dr = open_storage(dr_target, dr_settings)
    mirror = open_storage(str(tmp_path))
    for store in (storage, dr, mirror):
        put_backup(store, "db-backups/daily/backup_2026-11-26.sql.gz", hours_ago=5)
        put_backup(store, "db-backups/weekly/backup_2026-W48.sql.gz", hours_ago=50)
    result = run_status(dict(env, OSS_DR_BUCKET="l2c-backups-dr"), "--mirror", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["compliant"] is True
    for copy in report["three_two_one"]:
        assert copy["copies"] == ["primary", "dr", "mirror"]
        assert copy["media"] == ["OSS", "local disk"] and copy["offsite"]
    assert report["kinds"]["daily"]["count"] == 1 and report["kinds"]["daily"]["keep"] == 30
    cost = report["monthly_cost_cny"]  # tiny test objects: the cost rounds to almost nothing
    assert cost["total"] == pytest.approx(sum(v for k, v in cost.items() if k != "total"))


def test_cost_follows_the_lifecycle_tiers_and_plan_prices():
    now = 1_000 * 86400
    backups = [BackupInfo(f"k{d}", "daily", "", str(d), GB, "ok", now - d * 86400)
               for d in (1, 40, 100)]
    cost = monthly_cost(backups, now, replicated=True)
    assert cost["standard"] == 0.12 and cost["ia"] == 0.04 and cost["archive"] == 0.033
    assert cost["crr_traffic"] == 0.5  # only the backup of the last month is new traffic
    assert cost["total"] == pytest.approx(0.693)


def test_status_reads_empty_keep_and_price_settings_as_their_defaults(primary):
    storage, env = primary
    put_backup(storage, "db-backups/daily/backup_2026-11-26.sql.gz", hours_ago=5)
    empty = {name: "" for name in ("KEEP_DAILY", "KEEP_WEEKLY", "KEEP_MANUAL", "PRICE_STANDARD",
                                   "PRICE_IA", "PRICE_ARCHIVE", "PRICE_CRR_TRAFFIC",
                                   "WATCHDOG_GRACE_HOURS")}
    result = run_status(dict(env, **empty))
    assert "Traceback" not in result.stderr
    assert result.returncode == 20, result.stderr  # no DR copy, no mirror: not 3-2-1
    report = json.loads(result.stdout)
    assert report["kinds"]["daily"]["keep"] == 30


@pytest.mark.parametrize("name, value", [("KEEP_DAILY", "thirty"), ("PRICE_IA", "cheap")])
def test_status_names_a_bad_keep_or_price_setting_in_one_line(primary, name, value):
    _, env = primary
    result = run_status(dict(env, **{name: value}))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    [line] = [l for l in result.stderr.splitlines() if l.startswith("l2c-backup status:")]
    assert f"environment variable {name} is invalid" in line


def test_status_honours_watchdog_grace_hours(primary):
    storage, env = primary
    put_backup(storage, "db-backups/daily/backup_2026-11-26.sql.gz", hours_ago=25)
    within = json.loads(run_status(env).stdout)  # 25 h: inside RPO 24 h + the default 2 h
    assert [p for p in within["rpo_problems"] if "daily" in p] == []
    past = json.loads(run_status(dict(env, WATCHDOG_GRACE_HOURS="0.5")).stdout)
    assert [p for p in past["rpo_problems"] if "daily" in p] == [
        "the newest verified daily backup (db-backups/daily/backup_2026-11-26.sql.gz) is 25.0 h "
        "old, over the RPO of 24 h"]


def test_status_prices_the_scheduled_backups_on_fc_at_their_recorded_durations(primary):
    storage, env = primary
    for key, hours_ago, seconds in (("db-backups/daily/backup_2026-11-26.sql.gz", 5, 100),
                                    ("db-backups/weekly/backup_2026-W48.sql.gz", 50, 300)):
        put_backup(storage, key, hours_ago)
        finished = datetime.fromtimestamp(time.time() - hours_ago * HOUR, timezone.utc).isoformat()
        storage.put_bytes(key + ".manifest.json", json.dumps(
            {"finished_at": finished, "duration_seconds": seconds}).encode())
    fc = json.loads(run_status(env).stdout)["monthly_fc_cost_cny"]
    # 2048 MB, 2 vCPU: 100 s = 200 vCPU-s x 0.00011 + 200 GB-s x 0.0000165 + 0.000000825 CNY,
    # 30.4375 daily runs a month; 300 s = 0.075900825 CNY, 4.348 weekly runs
    assert (fc["daily"], fc["weekly"], fc["total"]) == (0.7701, 0.33, 1.1001)
    cheaper = json.loads(run_status(dict(env, PRICE_FC_VCPU_SECOND="0")).stdout)["monthly_fc_cost_cny"]
    assert cheaper["total"] == pytest.approx(30.4375 * 0.003300825 + 30.4375 / 7 * 0.009900825, abs=1e-4)
    text = subprocess.run([sys.executable, "-m", "l2c_backup.cli", "status"], capture_output=True,
                          text=True, env=resolve.child_env(dict(env, PATH="/usr/bin:/bin"))).stdout
    assert "estimated FC cost of the scheduled backups: CNY 1.10/month (daily 0.77, weekly 0.33; " \
           "2048 MB, 2 vCPU" in text


def closed_port():
    from l2c_local.pgcluster import free_port
    return free_port()


def storage_failures(oss_server):
    """The two ways OSS is out of reach: a wrong secret, and an endpoint nobody serves."""
    return {"wrong secret": ({"OSS_ACCESS_KEY_SECRET": "Wrong-Status-S3cret-x9"}, "l2c-backups"),
            "dead endpoint": ({"OSS_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}, "127.0.0.1")}


@pytest.mark.parametrize("failure", ["wrong secret", "dead endpoint"])
def test_status_names_the_storage_failure_instead_of_missing_backups(primary, oss_server, failure):
    storage, env = primary
    put_backup(storage, "db-backups/daily/backup_2026-11-26.sql.gz", hours_ago=5)
    change, named = storage_failures(oss_server)[failure]
    result = run_status(dict(env, **change))
    assert result.returncode == 21, result.stderr  # StorageFailed
    assert "Traceback" not in result.stderr
    [line] = [l for l in result.stderr.splitlines() if l.startswith("l2c-backup status:")]
    assert named in line and "no verified daily backup" not in line
    assert "Wrong-Status-S3cret-x9" not in result.stdout + result.stderr


def test_status_names_an_unreadable_dr_copy_in_its_verdict(primary, oss_server, tmp_path):
    storage, env = primary
    put_backup(storage, "db-backups/daily/backup_2026-11-26.sql.gz", hours_ago=5)
    put_backup(storage, "db-backups/weekly/backup_2026-W48.sql.gz", hours_ago=5)
    result = run_status(dict(env, OSS_DR_BUCKET="l2c-backups-dr"), "--mirror", str(tmp_path))
    assert result.returncode == 20  # the primary is fine: a finding, not a failure
    [line] = [l for l in result.stderr.splitlines() if l.startswith("l2c-backup status:")]
    assert "the dr copy (oss://l2c-backups-dr/db-backups/) cannot be read" in line
    assert "NoSuchBucket" in line


@pytest.mark.parametrize("failure", ["wrong secret", "dead endpoint"])
def test_watchdog_logs_and_alerts_a_storage_failure_once(primary, oss_server, alerts_sent,
                                                         monkeypatch, capsys, failure):
    change, named = storage_failures(oss_server)[failure]
    for name, value in change.items():
        monkeypatch.setenv(name, value)
    from l2c_backup.errors import StorageFailed
    with pytest.raises(StorageFailed) as err:
        watchdog_fn.handler(b"{}", fc_context(name="watchdog"))
    assert named in str(err.value)
    [alert] = alerts_sent
    assert alert.title == "watchdog failed" and alert.severity == "urgent"  # nobody sees the RPO
    assert named in alert.reason
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    errors = [line["message"] for line in logged if line["level"] == "error"
              and "watchdog failed (StorageFailed" in line["message"]]
    assert len(errors) == 1 and "Wrong-Status-S3cret-x9" not in json.dumps(logged)


# -- several databases: one database's fresh backup must not hide another's missing one --------
def test_watchdog_reports_a_database_whose_backup_is_stale_while_another_is_fresh(
        primary, alerts_sent, monkeypatch):
    storage, _ = primary
    monkeypatch.setenv("BACKUP_DATABASES", "app,crm")
    put_backup(storage, "db-backups/daily/app/backup_2026-11-26.sql.gz", hours_ago=2)
    put_backup(storage, "db-backups/daily/crm/backup_2026-11-25.sql.gz", hours_ago=30)
    for db in ("app", "crm"):
        put_backup(storage, f"db-backups/weekly/{db}/backup_2026-W48.sql.gz", hours_ago=2)

    with pytest.raises(NotCompliant, match="daily backup of crm"):
        watchdog_fn.handler(b"{}", fc_context(name="watchdog"))
    assert [(a.details["kind"], a.details["database"]) for a in alerts_sent] == [("daily", "crm")]


def test_watchdog_reports_a_configured_database_that_never_had_a_backup(primary, alerts_sent,
                                                                        monkeypatch):
    storage, _ = primary
    monkeypatch.setenv("BACKUP_DATABASES", "app,crm")
    for kind, stamp in (("daily", "2026-11-26"), ("weekly", "2026-W48")):
        put_backup(storage, f"db-backups/{kind}/app/backup_{stamp}.sql.gz", hours_ago=2)
    with pytest.raises(NotCompliant, match="no verified daily backup of crm at all"):
        watchdog_fn.handler(b"{}", fc_context(name="watchdog"))
    assert sorted(a.details["kind"] for a in alerts_sent) == ["daily", "weekly"]


def test_status_command_shows_each_configured_database_and_names_the_missing_one(primary):
    storage, env = primary
    for kind, stamp in (("daily", "2026-11-26"), ("weekly", "2026-W48")):
        put_backup(storage, f"db-backups/{kind}/app/backup_{stamp}.sql.gz", hours_ago=2)
    env = dict(env, BACKUP_DATABASES="app,crm")
    result = run_status(env)
    assert result.returncode == 20, result.stderr  # NotCompliant
    daily = json.loads(result.stdout)["kinds"]["daily"]["databases"]
    assert daily["app"]["newest"] == "db-backups/daily/app/backup_2026-11-26.sql.gz"
    assert daily["crm"]["newest"] is None
    assert "no verified daily backup of crm at all" in result.stderr
    text = subprocess.run([sys.executable, "-m", "l2c_backup.cli", "status"], capture_output=True,
                          text=True, env=resolve.child_env(dict(env, PATH="/usr/bin:/bin"))).stdout
    assert "  app: 1 kept; newest: db-backups/daily/app/backup_2026-11-26.sql.gz" in text
    assert "  crm: 0 kept; newest: - none" in text
