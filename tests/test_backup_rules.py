"""Pure rules of the backup: names, part sizes, configuration checks."""
from datetime import datetime, timezone

import pytest

from l2c_backup import config, names
from l2c_backup.errors import ConfigInvalid
from l2c_backup.storage.oss import MAX_PARTS, MIB, PART_HEADROOM, _MultipartUpload, part_size_for

# 2026-11-26 18:30 UTC is already 2026-11-27 02:30 in Shanghai: the team's date.
WHEN = datetime(2026, 11, 26, 18, 30, 5, tzinfo=timezone.utc)


@pytest.mark.parametrize("kind, key", [
    ("daily", "db-backups/daily/backup_2026-11-27.sql.gz"),
    ("weekly", "db-backups/weekly/backup_2026-W48.sql.gz"),
    ("manual", "db-backups/manual/backup_2026-11-27T02-30-05.sql.gz"),
])
def test_keys_follow_the_design_with_shanghai_dates(kind, key):
    assert names.backup_key("db-backups/", kind, WHEN) == key
    assert names.parse_backup_key("db-backups/", key) == (kind, None, key.split("backup_")[1][:-7])


def test_several_databases_each_get_a_folder_and_a_clash_gets_a_number():
    key = names.backup_key("db-backups/", "manual", WHEN, "billing", collision=1)
    assert key == "db-backups/manual/billing/backup_2026-11-27T02-30-05-1.sql.gz"
    assert names.parse_backup_key("db-backups/", key)[:2] == ("manual", "billing")


@pytest.mark.parametrize("key", ["db-backups/daily/backup_2026-11-27.sql.gz.manifest.json",
                                 "db-backups/daily/backup_yesterday.sql.gz",
                                 "db-backups/hourly/backup_2026-11-27.sql.gz",
                                 "elsewhere/daily/backup_2026-11-27.sql.gz"])
def test_other_objects_are_not_taken_for_backups(key):
    assert names.parse_backup_key("db-backups/", key) is None


@pytest.mark.parametrize("expected_size", [0, 50 * 10**9, 400 * 10**9, 5 * 10**12])
def test_part_size_keeps_any_expected_size_under_the_part_limit(expected_size):
    size = part_size_for(expected_size)
    assert size >= 8 * MIB and size % MIB == 0
    assert expected_size / size <= PART_HEADROOM


def test_a_fixed_5_mib_part_would_cap_objects_near_50_gb_but_ours_grows():
    assert 5 * MIB * MAX_PARTS < 53 * 10**9  # the bug reported against peers
    upload = _MultipartUpload.__new__(_MultipartUpload)
    upload.part_size = 8 * MIB
    total, number = 0, 0
    while total < 5 * 10**12:  # a 5 TB dump whose size was never estimated
        number += 1
        total += upload.part_size
        upload._grow_parts(number)
    assert number < MAX_PARTS


BASE = {"DATABASE_URL": "postgresql://backup:pw-secret@db:5432/app", "OSS_ENDPOINT": "http://oss",
        "OSS_BACKUP_BUCKET": "l2c-backups", "OSS_ACCESS_KEY_ID": "ak", "OSS_ACCESS_KEY_SECRET": "sk"}


@pytest.mark.parametrize("name, value", [
    ("GZIP_LEVEL", "11"), ("OSS_BACKUP_BUCKET", "Bad_Bucket"), ("OSS_ENDPOINT", "oss.example"),
    ("BACKUP_DATABASES", "a,,b"), ("UPLOAD_CONCURRENCY", "0"), ("BACKUP_GLOBALS", "maybe"),
    ("OSS_SERVER_SIDE_ENCRYPTION", "rot13"), ("DATABASE_URL", "mysql://u:pw-secret@h/db"),
])
def test_bad_settings_are_refused_naming_the_variable_but_not_its_value(name, value):
    with pytest.raises(ConfigInvalid) as caught:
        config.load(dict(BASE, **{name: value}))
    assert name in str(caught.value)
    assert value not in str(caught.value) or value.isdigit()


def test_missing_credentials_and_target_are_named():
    with pytest.raises(ConfigInvalid, match="OSS_ACCESS_KEY_ID"):
        config.load({k: v for k, v in BASE.items() if k != "OSS_ACCESS_KEY_SECRET"})
    with pytest.raises(ConfigInvalid, match="OSS_BACKUP_BUCKET"):
        config.load({k: v for k, v in BASE.items() if k != "OSS_BACKUP_BUCKET"})


def test_settings_never_show_secrets_in_their_repr():
    cfg = config.load(dict(BASE, OSS_SECURITY_TOKEN="tok-secret"))
    assert "pw-secret" not in repr(cfg) and "sk" not in repr(cfg.oss).replace("ask", "")
    assert "tok-secret" not in repr(cfg)


# -- empty means unset; a bad number is named (issue 12) -------------------------------------

@pytest.mark.parametrize("target, expected", [
    ("oss://l2c-backups/db-backups/", {"daily": 30, "weekly": 12, "manual": 10}),
    ("/app/backups", {"daily": 10, "weekly": 10, "manual": 10}),
])
def test_empty_keep_settings_mean_the_defaults(target, expected):
    empty = {"KEEP_DAILY": "", "KEEP_WEEKLY": "", "KEEP_MANUAL": ""}
    assert config.keep_counts(empty, target) == expected
    assert config.keep_counts(dict(empty, KEEP_WEEKLY="4"), target) == dict(expected, weekly=4)


@pytest.mark.parametrize("name, value", [("KEEP_DAILY", "ten"), ("KEEP_WEEKLY", "0"),
                                         ("KEEP_MANUAL", "-3"), ("KEEP_DAILY", "1.5")])
def test_a_bad_keep_setting_is_refused_naming_the_variable(name, value):
    with pytest.raises(ConfigInvalid, match=f"environment variable {name} is invalid: it must be "
                                            "a positive whole number"):
        config.keep_counts({name: value}, "oss://l2c-backups/db-backups/")


def test_empty_prices_mean_plans_prices_and_bad_ones_are_named():
    from l2c_backup.status import PRICES
    empty = {f"PRICE_{k.upper()}": "" for k in PRICES}
    assert config.prices(empty) == PRICES
    assert config.prices(dict(empty, PRICE_IA="0.08"))["ia"] == 0.08
    with pytest.raises(ConfigInvalid, match="PRICE_ARCHIVE is invalid: it must be a price"):
        config.prices({"PRICE_ARCHIVE": "cheap"})


def test_watchdog_grace_and_manifest_wait_read_their_settings_empty_meaning_the_default():
    assert config.grace_seconds({}) == config.grace_seconds({"WATCHDOG_GRACE_HOURS": ""}) == 2 * 3600
    assert config.grace_seconds({"WATCHDOG_GRACE_HOURS": "0.5"}) == 1800
    with pytest.raises(ConfigInvalid, match="WATCHDOG_GRACE_HOURS"):
        config.grace_seconds({"WATCHDOG_GRACE_HOURS": "two"})
    assert config.manifest_wait({"VERIFY_MANIFEST_WAIT_SECONDS": ""}, 60) == 60
    assert config.manifest_wait({"VERIFY_MANIFEST_WAIT_SECONDS": "7"}, 60) == 7
    with pytest.raises(ConfigInvalid, match="VERIFY_MANIFEST_WAIT_SECONDS"):
        config.manifest_wait({"VERIFY_MANIFEST_WAIT_SECONDS": "soon"}, 60)
