"""Restore: round trips from OSS, a directory and the DR bucket; refusals; damage never
leaves a half-restored database."""
import gzip
import json
import subprocess
import sys
from datetime import datetime, timezone

import oss2
import pytest

from l2c_backup import config
from l2c_backup.backup import run_backup
from l2c_backup.database import DatabaseSettings
from l2c_backup.errors import BackupCorrupt, RestoreFailed, RestoreRefused
from l2c_backup.restore import _filter_for, find_backup, restore
from l2c_backup.storage import open_storage
from l2c_local import resolve
from l2c_local.pgcluster import table_digests

WHEN = datetime(2026, 11, 26, 18, 30, tzinfo=timezone.utc)


def env_for(server, pg, db, **extra):
    return dict({"DATABASE_URL": pg.url(db), "OSS_ENDPOINT": server.endpoint,
                 "OSS_BACKUP_BUCKET": "l2c-backups", "OSS_ACCESS_KEY_ID": server.access_key_id,
                 "OSS_ACCESS_KEY_SECRET": server.access_key_secret}, **extra)


@pytest.fixture
def oss_backup(oss_server, pg_cluster, seeded_db):
    env = env_for(oss_server, pg_cluster, seeded_db)
    (done,) = run_backup(config.load(env), "daily", when=WHEN)["backups"]
    target, settings = config.storage_target(env)
    return open_storage(target, settings), done["key"]


def settings_for(pg, db):
    return DatabaseSettings.from_url(pg.url(db), {})


def test_restore_from_oss_into_a_new_database_equals_the_source(pg_cluster, seeded_db, oss_backup):
    storage, key = oss_backup
    result = restore(storage, key, settings_for(pg_cluster, "postgres"), create_db="rs_from_oss")
    assert result["database"] == "rs_from_oss" and result["restore_seconds"] > 0
    assert table_digests(pg_cluster, "rs_from_oss") == table_digests(pg_cluster, seeded_db)


def test_restore_from_a_directory_into_an_empty_database(pg_cluster, seeded_db, tmp_path):
    env = {"DATABASE_URL": pg_cluster.url(seeded_db), "BACKUP_TARGET": str(tmp_path)}
    run_backup(config.load(env), "weekly", when=WHEN)
    storage = open_storage(str(tmp_path))
    key = find_backup(storage, latest=True)
    assert key.startswith("db-backups/weekly/")
    pg_cluster.create_database("rs_from_dir")
    restore(storage, key, settings_for(pg_cluster, "rs_from_dir"))
    assert table_digests(pg_cluster, "rs_from_dir") == table_digests(pg_cluster, seeded_db)


def test_restore_reads_the_dr_bucket_through_the_cli(oss_server, bucket, pg_cluster, seeded_db,
                                                     oss_backup):
    _, key = oss_backup
    oss_server.create_bucket("l2c-backups-dr")
    dr = oss2.Bucket(oss2.Auth(oss_server.access_key_id, oss_server.access_key_secret),
                     oss_server.endpoint, "l2c-backups-dr")
    for k in (key, key + ".manifest.json"):
        dr.put_object(k, bucket.get_object(k).read())
    bucket.delete_object(key)  # the primary copy is gone: only the DR copy can serve
    env = resolve.child_env(dict(env_for(oss_server, pg_cluster, seeded_db), PATH="/usr/bin:/bin"))
    result = subprocess.run(
        [sys.executable, "-m", "l2c_backup.cli", "restore", "--date", "2026-11-27",
         "--from", "oss://l2c-backups-dr/db-backups/", "--endpoint", oss_server.endpoint,
         "--target-url", pg_cluster.url("postgres"), "--create-db", "rs_from_dr", "--json"],
        capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["key"] == key
    assert table_digests(pg_cluster, "rs_from_dr") == table_digests(pg_cluster, seeded_db)


def test_a_target_that_holds_tables_is_refused_and_untouched(pg_cluster, seeded_db, oss_backup):
    storage, key = oss_backup
    pg_cluster.psql(f"CREATE DATABASE rs_busy TEMPLATE {seeded_db}")
    pg_cluster.psql("CREATE TABLE keep_me (x int); INSERT INTO keep_me VALUES (42)", "rs_busy")
    before = table_digests(pg_cluster, "rs_busy")
    with pytest.raises(RestoreRefused, match="already holds tables"):
        restore(storage, key, settings_for(pg_cluster, "rs_busy"))
    assert table_digests(pg_cluster, "rs_busy") == before


def corrupt(storage, key, data):
    storage.put_bytes(key, data)


@pytest.mark.parametrize("damage", ["truncated", "sha256-mismatch", "gzip-corrupt"])
def test_a_damaged_backup_fails_and_leaves_the_target_as_it_was(pg_cluster, oss_backup, damage):
    storage, key = oss_backup
    data = b"".join(storage.open(key))
    bad = {"truncated": data[: len(data) * 9 // 10],
           "sha256-mismatch": gzip.compress(gzip.decompress(data).replace(b"Alice", b"Alicf"), mtime=0),
           "gzip-corrupt": data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 1]) + data[len(data) // 2 + 1:]}[damage]
    corrupt(storage, key, bad)
    db = "rs_damaged_" + damage.replace("-", "_")
    pg_cluster.create_database(db)
    with pytest.raises(BackupCorrupt, match=damage):
        restore(storage, key, settings_for(pg_cluster, db))
    assert pg_cluster.psql("SELECT count(*) FROM pg_class WHERE relkind = 'r' AND "
                           "relnamespace::regnamespace::text NOT IN ('pg_catalog', 'information_schema')",
                           db).strip() == "0"
    with pytest.raises(BackupCorrupt):
        restore(storage, key, settings_for(pg_cluster, "postgres"), create_db=db + "_new")
    assert pg_cluster.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{db}_new'").strip() == "0"


def test_a_failing_statement_rolls_the_whole_restore_back(pg_cluster, oss_backup):
    storage, key = oss_backup
    pg_cluster.create_database("rs_conflict")
    pg_cluster.psql("CREATE SCHEMA sales", "rs_conflict")  # the dump's CREATE SCHEMA fails
    with pytest.raises(RestoreFailed, match='schema "sales" already exists'):
        restore(storage, key, settings_for(pg_cluster, "rs_conflict"), force=True)
    assert pg_cluster.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
                           "rs_conflict").strip() == "0"


def test_a_backup_without_manifest_is_refused(pg_cluster, oss_backup):
    storage, key = oss_backup
    storage.delete(key + ".manifest.json")
    with pytest.raises(RestoreRefused, match="no manifest"):
        restore(storage, key, settings_for(pg_cluster, "postgres"), create_db="rs_nomanifest")


def test_pg17_settings_are_dropped_for_an_older_target_and_kept_for_a_newer_one():
    sql = b"SET statement_timeout = 0;\nSET transaction_timeout = 0;\nSET lock_timeout = 0;\n"
    assert _filter_for(15)(sql) == b"SET statement_timeout = 0;\nSET lock_timeout = 0;\n"
    assert _filter_for(17)(sql) == sql


def test_restrict_lines_need_a_psql_that_knows_them():
    from l2c_backup.restore import _check_tools
    head = b"--\n-- PostgreSQL database dump\n--\n\\restrict abc\n"
    with pytest.raises(RestoreRefused, match="psql 15.13"):
        _check_tools(head, 150013, "15.13")
    _check_tools(head, 150020, "15.20")
    _check_tools(head, 180000, "18.0")
