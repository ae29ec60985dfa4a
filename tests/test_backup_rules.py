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
