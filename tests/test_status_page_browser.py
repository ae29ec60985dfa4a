"""The status page in a real browser: headless Chromium (tests/browser.py) opens the page
the watchdog wrote to the local OSS server, through the signed URL `l2c-backup status
--url` printed, and the tests assert on the DOM it rendered and on its layout at a phone's
and a laptop's width. Screenshots of both go to test-output/.

The history is the one status_history.seed puts (90 days: a gap, a failed verification,
a late daily kind) plus what real runs leave: a backup that failed because its database
host does not resolve (the real `l2c-backup backup`), a prune that removed what retention
no longer keeps, a drill's record, and a mirror host's report of what it holds. The DR bucket misses the
newest daily backup.
"""
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest

import status_history
from browser import ink_pixels, render
from dom import parse
from fc_handlers import fc_context, load_handler
from l2c_backup import config, history, names
from l2c_backup.errors import NotCompliant
from l2c_backup.mirror import report_held
from l2c_backup.prune import prune
from l2c_backup.storage import open_storage
from l2c_backup.storage.directory import DirectoryStorage
from l2c_local import resolve
from l2c_local.oss import LocalOSS

watchdog_fn = load_handler("watchdog")
DB_HOST = "db-primary.l2c.invalid"  # .invalid never resolves: the backup fails, named
DB_USER = "l2c_backup_role"
DB_PASSWORD = "Sup3r-secret-pw"
STATUS_DOMAIN = "status.l2c.oss-local.test"  # a custom domain bound to the bucket: pages open
# inline (OSS downloads web pages on its own domain); *.oss-local.test resolves locally
PHONE, LAPTOP = 390, 1280


def cli(env, *args):
    return subprocess.run([sys.executable, "-m", "l2c_backup.cli", *args], capture_output=True,
                          text=True, env=resolve.child_env(dict(env, PATH="/usr/bin:/bin")),
                          timeout=120)


def settings(oss_server):
    return {"OSS_ENDPOINT": oss_server.endpoint, "OSS_BACKUP_BUCKET": "l2c-backups",
            "OSS_ACCESS_KEY_ID": oss_server.access_key_id,
            "OSS_ACCESS_KEY_SECRET": oss_server.access_key_secret,
            "DATABASE_URL": f"postgresql://{DB_USER}:{DB_PASSWORD}@{DB_HOST}:5432/l2c",
            "PGCONNECT_TIMEOUT": "3"}


def signed_page_url(env):
    """The URL `l2c-backup status --url` prints, checked to be one line and signed."""
    done = cli(env, "status", "--url", "600")
    assert done.returncode == 0, done.stderr
    url = done.stdout.strip()
    assert "\n" not in url and "Signature=" in url and "Expires=" in url, url
    return url


@pytest.fixture(scope="module")
def site():
    """The primary bucket holding 90 days of history, the DR bucket without the newest
    daily, and the page the watchdog wrote from them; made once for the module."""
    with LocalOSS(buckets=["l2c-backups", "l2c-backups-dr"],
                  cnames={STATUS_DOMAIN: "l2c-backups"}) as oss_server, \
            pytest.MonkeyPatch.context() as monkeypatch:
        env = dict(settings(oss_server), OSS_DR_BUCKET="l2c-backups-dr",
                   OSS_STATUS_DOMAIN=f"http://{STATUS_DOMAIN}:{oss_server.port}")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("BACKUP_TARGET", raising=False)
        yield make_history(env, oss_server)


def make_history(env, oss_server):
    primary = open_storage(*config.storage_target(env))
    now = time.time()
    seeded = status_history.seed(primary, now)
    failed = cli(env, "backup", "--kind", "daily")
    assert failed.returncode == 10 and "l2c-backup backup:" in failed.stderr, failed.stderr
    prune(primary, names.KINDS, {"daily": 30, "weekly": 12, "manual": 10}, now=now)
    history.record_drill(primary, {
        "kind": "daily", "key": seeded["newest"]["daily"], "ok": True, "restore_seconds": 1312.5,
        "rto_seconds": 7200, "one_stream_seconds": 1837.5, "restore_jobs": 2, "failures": []})
    dr = open_storage(f"oss://l2c-backups-dr/{primary.prefix}", config.oss_settings(env))
    for obj in primary.list(primary.prefix):
        if not obj.key.startswith(seeded["newest"]["daily"]) and not obj.key.startswith(
                (primary.prefix + "history/", primary.prefix + "status/")):
            dr.put_bytes(obj.key, b"".join(primary.open(obj.key)))
    with tempfile.TemporaryDirectory() as disk:  # a mirror host holding the newest two
        copy = DirectoryStorage(disk, prefix=primary.prefix)
        for key in seeded["newest"].values():
            for name in (key, names.manifest_key(key)):
                copy.put_bytes(name, b"".join(primary.open(name)))
        report_held(primary, copy)
    with pytest.raises(NotCompliant, match="daily"):  # the late daily kind: alerted, page written
        watchdog_fn.handler(b"{}", fc_context(name="watchdog"))
    return {"env": env, "oss": oss_server, "primary": primary, "seeded": seeded,
            "url": signed_page_url(env), "rendered": {}}


def shown(site, width):
    """The page at `width`, rendered once per module with its screenshot saved."""
    if width not in site["rendered"]:
        site["rendered"][width] = render(site["url"], width, screenshot=f"status-page-{width}px.png")
    return site["rendered"][width]


@pytest.mark.parametrize("width", [PHONE, LAPTOP])
def test_the_status_page_marks_the_late_kind_lists_the_failures_and_shows_the_cost(site, width):
    seen = shown(site, width)
    page = parse(seen.dom)
    daily, weekly = page.find("article", ["kind"], data_kind="daily"), page.find(
        "article", ["kind"], data_kind="weekly")
    assert "late" in daily.classes and "逾期" in daily.find(classes=["badge"]).text()
    assert "late" not in weekly.classes
    assert "不合规" in page.by_id("verdict").text()
    failures = page.by_id("failure-list").find_all("li", ["failure"])
    texts = [f.text() for f in failures]
    assert any("DatabaseUnreachable" in t and "exit 10" in t for t in texts), texts
    assert any(site["seeded"]["failed_key"] in t for t in texts), texts
    assert re.fullmatch(r"CNY \d+\.\d\d", page.by_id("cost-total").text().strip())
    assert page.by_id("restore-time").text() == "1312.5s"
    title = seen.measures["elements"]["title-zh"]  # drawn in a Chinese font, not as boxes
    zh_fonts = subprocess.run(["fc-list", ":lang=zh", "family"], capture_output=True, text=True).stdout
    assert title["fonts"] and all(font in zh_fonts for font in title["fonts"]), title["fonts"]
    assert ink_pixels(seen.screenshot, title) > 100
    assert seen.measures["requests"] == []  # self-contained: nothing fetched
    assert seen.measures["scroll_width"] <= seen.measures["inner_width"]  # no sideways scroll
    assert seen.screenshot.stat().st_size > 10_000


def test_the_timeline_shows_the_gap_the_failed_run_and_the_failed_verification(site):
    page = parse(shown(site, LAPTOP).dom)
    daily = page.find("figure", ["timeline"], data_kind="daily")
    bars = daily.find_all("rect", ["backup"])
    # over 26 h without a verified backup: the timer that was off, the night whose backup
    # failed verification, and now
    assert len(daily.find_all("rect", ["gap"])) == 3
    assert len(daily.find_all("rect", ["gap", "open"])) == 1
    assert len(daily.find_all("rect", ["attempt"])) == 1
    assert [b for b in bars if "failed" in b.classes]
    assert len([b for b in bars if "late" in b.classes]) == 2  # the first verified after each
    # pruned backups stay on the timeline: 90 days of dailies although 30 are kept
    assert len(bars) > 60
    assert page.find("article", ["kind"], data_kind="daily").find(classes=["kept"]).text() == "30 / 30"


def test_the_missing_dr_copy_of_the_newest_daily_is_marked(site):
    page = parse(shown(site, PHONE).dom)
    daily = page.find("article", ["copy"], data_kind="daily")
    assert "short" in daily.classes
    assert "no" in daily.find("li", data_location="dr").classes
    assert "yes" in daily.find("li", data_location="primary").classes
    assert "yes" in daily.find("li", data_location="mirror").classes  # as the mirror reported
    weekly = page.find("article", ["copy"], data_kind="weekly")
    assert "yes" in weekly.find("li", data_location="dr").classes


def test_cards_sit_side_by_side_on_a_laptop_and_stack_on_a_phone(site):
    laptop, phone = shown(site, LAPTOP).measures["elements"], shown(site, PHONE).measures["elements"]
    assert laptop["kind-daily"]["y"] == laptop["kind-weekly"]["y"]
    assert phone["kind-weekly"]["y"] > phone["kind-daily"]["y"] + phone["kind-daily"]["height"] - 1
    for name in ("header", "kinds", "timelines", "failures", "copies", "drill", "cost"):
        assert phone[name]["visible"] and phone[name]["x"] + phone[name]["width"] <= PHONE, name


def test_the_page_reveals_no_secret_no_database_host_and_no_access_key(site):
    raw = urllib.request.urlopen(site["url"]).read().decode()
    for secret in (DB_HOST, DB_PASSWORD, site["oss"].access_key_id, site["oss"].access_key_secret,
                   f"oss-local.test:{site['oss'].port}"):
        assert secret not in raw
    assert "[database]" in raw  # the failure's message still says what failed


def test_the_page_is_private_and_its_signed_url_expires(site):
    plain = site["url"].split("?")[0]
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(plain)
    assert anonymous.value.code == 403
    expired = re.sub(r"Expires=\d+", f"Expires={int(time.time()) - 10}", site["url"])
    with pytest.raises(urllib.error.HTTPError) as late:
        urllib.request.urlopen(expired)
    assert late.value.code == 403


def test_with_no_backups_yet_the_page_says_so_plainly(monkeypatch, oss_server):
    oss_server.bind_domain(STATUS_DOMAIN, "l2c-backups")
    env = dict(settings(oss_server), OSS_STATUS_DOMAIN=f"http://{STATUS_DOMAIN}:{oss_server.port}")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(NotCompliant):
        watchdog_fn.handler(b"{}", fc_context(name="watchdog"))
    seen = render(signed_page_url(env), PHONE, screenshot="status-page-empty-390px.png")
    page = parse(seen.dom)
    for section in ("kinds", "timelines", "copies", "drill"):
        assert page.by_id(section).find_all(classes=["empty"]), section
    assert page.find_all("svg") == []
    assert page.by_id("cost-total").text() == "CNY 0.00"
    assert seen.measures["scroll_width"] <= seen.measures["inner_width"]
