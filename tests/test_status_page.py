"""The status page without a browser: what it must never show, how `status --html` and
`status --url` fail, and that the watchdog writes it without letting a failed write
change its verdict. The page as people see it is tested in test_status_page_browser.py."""
import json
import time

import pytest

import status_history
from dom import parse
from fc_handlers import fc_context, load_handler
from l2c_backup import status, status_page
from l2c_backup.errors import NotCompliant
from l2c_backup.names import KINDS
from l2c_backup.storage import open_storage
from l2c_local.oss.faults import Fault
from test_status_page_browser import cli, settings
from test_status_watchdog import primary, put_backup  # noqa: F401  (fixture)

watchdog_fn = load_handler("watchdog")
HOST = "pg.internal.example.com"


def a_report(storage, now, history=None):
    locs = [status.Location("primary", storage.url, "local disk", False, status.survey(storage))]
    return status.report(locs, KINDS, {"daily": 30, "weekly": 12, "manual": 10}, now,
                         history=history)


def failure(message, at="2026-11-30T18:00:00+00:00"):
    return {"event": "backup-failed", "kind": "daily", "database": "", "at": at,
            "error": "DumpFailed", "exit_code": 12, "message": message, "request_id": "r"}


def test_every_text_on_the_page_is_escaped_and_the_database_host_hidden(tmp_path):
    storage = open_storage(str(tmp_path))
    evil = f'pg_dump: <img src=x onerror="alert(1)"> on {HOST}:5432 as l2c_backup_role'
    page = status_page.render(a_report(storage, time.time(), {"backup_failures": [failure(evil)]}),
                              status_page.private_scrub({
                                  "DATABASE_URL": f"postgresql://l2c_backup_role:pw-123456@{HOST}/l2c"}))
    assert "<img" not in page and "&lt;img src=x" in page
    assert HOST not in page and "pw-123456" not in page
    assert "on [database] as l2c_backup_role" in page
    assert "<script" not in page  # the page runs nothing


def test_a_report_without_backups_renders_every_section_empty(tmp_path):
    page = parse(status_page.render(a_report(open_storage(str(tmp_path)), time.time())))
    for section in ("kinds", "timelines", "failures", "copies", "drill", "cost"):
        assert page.by_id(section)
    assert page.find_all("svg") == []
    assert "No failures" in page.by_id("failures").text()


def test_status_html_writes_the_page_even_when_not_compliant(tmp_path):
    storage = open_storage(str(tmp_path / "backups"))
    status_history.seed(storage, time.time())
    done = cli({}, "status", "--from", storage.url, "--html", str(tmp_path / "status.html"))
    assert done.returncode == NotCompliant.exit_code, done.stderr
    page = (tmp_path / "status.html").read_text()
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert not list(tmp_path.glob(".*.partial"))


def test_status_html_into_a_missing_folder_is_one_line_naming_it(tmp_path):
    done = cli({}, "status", "--from", str(tmp_path), "--html", str(tmp_path / "no" / "s.html"))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and f"{tmp_path / 'no'} does not exist" in done.stderr


def test_status_html_that_cannot_be_written_is_one_line_and_leaves_no_partial(tmp_path):
    (tmp_path / "taken").mkdir()  # a folder where the page should go: the rename fails
    done = cli({}, "status", "--from", str(tmp_path / "backups"), "--html", str(tmp_path / "taken"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "cannot write it" in done.stderr and "Traceback" not in done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]  # no .taken.partial left


def test_status_html_replaces_the_partial_a_killed_run_left(tmp_path):
    (tmp_path / ".status.html.partial").write_text("<!doctype html><p>half a pa")  # SIGKILL's
    done = cli({}, "status", "--from", str(tmp_path / "backups"), "--html", str(tmp_path / "status.html"))
    assert done.returncode == NotCompliant.exit_code, done.stderr
    assert (tmp_path / "status.html").read_text().rstrip().endswith("</html>")
    assert not (tmp_path / ".status.html.partial").exists()


def test_status_url_for_too_short_a_time_is_one_line_naming_the_range(oss_server):
    done = cli(settings(oss_server), "status", "--url", "10")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "60 seconds to 7 days" in done.stderr and "Traceback" not in done.stderr


def test_status_url_before_any_page_names_the_watchdog(oss_server):
    done = cli(settings(oss_server), "status", "--url")
    assert done.returncode == 24
    assert done.stderr.count("\n") == 1 and "watchdog" in done.stderr
    assert "status/index.html" in done.stderr


def test_the_watchdog_writes_the_page_as_a_private_web_page(primary):  # noqa: F811
    storage, _ = primary
    put_backup(storage, "db-backups/daily/backup_2026-11-26.sql.gz", hours_ago=2)
    put_backup(storage, "db-backups/weekly/backup_2026-W48.sql.gz", hours_ago=30)
    summary = json.loads(watchdog_fn.handler(b"{}", fc_context(name="watchdog")))
    assert summary["page"] == {"key": "db-backups/status/index.html"}
    assert storage.head("db-backups/status/index.html").size > 1000
    page = b"".join(storage.open("db-backups/status/index.html")).decode()
    assert "backup_2026-11-26.sql.gz" in page


@pytest.mark.parametrize("fault, timeout, error", [
    (Fault(method="PUT", key_prefix="db-backups/status/", status=403, times=None), 600,
     "AccessDenied"),
    # still being written when the function's timeout nears: given up, not killed by FC
    (Fault(method="PUT", key_prefix="db-backups/status/", delay=8, times=None),
     watchdog_fn.PAGE_MARGIN_SECONDS + 2, "not written within")])
def test_a_page_that_cannot_be_written_leaves_the_watchdogs_verdict_alone(  # noqa: F811
        primary, oss_server, alerts_sent, fault, timeout, error):
    storage, _ = primary
    put_backup(storage, "db-backups/daily/backup_2026-11-26.sql.gz", hours_ago=2)
    put_backup(storage, "db-backups/weekly/backup_2026-W48.sql.gz", hours_ago=30)
    oss_server.inject(fault)
    summary = json.loads(watchdog_fn.handler(b"{}", fc_context(name="watchdog", timeout=timeout)))
    assert summary["ok"] and error in summary["page"]["error"]
    assert alerts_sent == []


def test_a_late_kind_is_alerted_and_the_page_still_written(primary, alerts_sent):  # noqa: F811
    storage, _ = primary
    put_backup(storage, "db-backups/daily/backup_2026-11-25.sql.gz", hours_ago=40)
    with pytest.raises(NotCompliant):
        watchdog_fn.handler(b"{}", fc_context(name="watchdog"))
    assert [a.details["kind"] for a in alerts_sent] == ["daily", "weekly"]
    page = parse(b"".join(storage.open("db-backups/status/index.html")).decode())
    assert "late" in page.find("article", ["kind"], data_kind="daily").classes


def test_a_pruned_backup_stays_on_the_timeline_and_its_failed_verification_in_the_list(tmp_path):
    from l2c_backup import history
    from l2c_backup.prune import prune
    storage, now = open_storage(str(tmp_path)), time.time()
    for days_ago, verdict in ((3, "failed"), (2, "ok"), (1, "ok")):
        status_history.put_backup(storage, f"db-backups/daily/backup_2026-11-{30 - days_ago}.sql.gz",
                                  now - days_ago * 86400, 5_000_000, 60, verdict)
    prune(storage, KINDS, {"daily": 1, "weekly": 1, "manual": 1}, now=now)
    assert len(list(storage.list("db-backups/daily/"))) == 2  # the newest and its manifest
    page = parse(status_page.render(a_report(storage, now, history.recent(storage, now - 86400))))
    bars = page.find("figure", ["timeline"], data_kind="daily").find_all("rect", ["backup"])
    assert len([b for b in bars if "pruned" in b.classes]) == 2
    assert "backup_2026-11-27.sql.gz" in page.by_id("failure-list").text()

