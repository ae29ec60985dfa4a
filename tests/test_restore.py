"""Restore: round trips from OSS, a directory and the DR bucket; refusals; damage never
leaves a half-restored database."""
import gzip
import json
import subprocess
import sys
import threading
from datetime import datetime, timezone

import oss2
import pytest

from l2c_backup import config, reading
from l2c_backup.backup import run_backup
from l2c_backup.database import DatabaseSettings
from l2c_backup.errors import BackupCorrupt, BackupNotFound, RestoreFailed, RestoreRefused
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
    assert [t for t in threading.enumerate() if t.name.startswith("l2c-")] == []
    assert pg_cluster.psql("SELECT count(*) FROM pg_class WHERE relkind = 'r' AND "
                           "relnamespace::regnamespace::text NOT IN ('pg_catalog', 'information_schema')",
                           db).strip() == "0"
    with pytest.raises(BackupCorrupt):
        restore(storage, key, settings_for(pg_cluster, "postgres"), create_db=db + "_new")
    assert pg_cluster.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{db}_new'").strip() == "0"


def test_restore_inflates_whole_members_when_the_manifest_lists_them(pg_cluster, seeded_db,
                                                                     oss_backup, monkeypatch):
    storage, key = oss_backup
    sizes = json.loads(b"".join(storage.open(key + ".manifest.json")))["compression"]["member_sizes"]
    inflated, real = [], reading.inflate
    monkeypatch.setattr(reading, "inflate", lambda member, number, cap: (
        inflated.append((number, len(member))), real(member, number, cap))[1])

    restore(storage, key, settings_for(pg_cluster, "postgres"), create_db="rs_whole_members")

    assert sorted(inflated) == list(enumerate(sizes, 1)) and len(sizes) > 1
    assert table_digests(pg_cluster, "rs_whole_members") == table_digests(pg_cluster, seeded_db)
    assert [t for t in threading.enumerate() if t.name.startswith("l2c-")] == []


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


# -- a transaction of our own, whatever the dump holds -------------------------------------

def dir_backup(pg, db, directory, kind="daily", when=WHEN):
    env = {"DATABASE_URL": pg.url(db), "BACKUP_TARGET": str(directory), "PRUNE_AFTER_BACKUP": "false"}
    (done,) = run_backup(config.load(env), kind, when=when)["backups"]
    return open_storage(str(directory)), done["key"]


# Rows that read like pg_dump's own large-object block: inside COPY data they are data.
LOOKALIKE_LINES = ["--", "-- Data for Name: BLOBS; Type: BLOBS; Schema: -; Owner: -", "--", "",
                   "BEGIN;", "", "SELECT pg_catalog.lo_open('1', 131072);",
                   "SELECT pg_catalog.lo_close(0);", "", "COMMIT;", ""]


@pytest.fixture(scope="module")
def lo_backup(pg_cluster, tmp_path_factory):
    """A database with large objects (a plain dump writes BEGIN; ... COMMIT; around them)
    and a table whose rows look like that block."""
    db = pg_cluster.create_database("rs_lo_source")
    values = ", ".join("('" + line.replace("'", "''") + "')" for line in LOOKALIKE_LINES)
    pg_cluster.psql(f"CREATE TABLE lines (line text); INSERT INTO lines VALUES {values}; "
                    "CREATE INDEX lines_line_idx ON lines (line); "
                    "SELECT lo_from_bytea(0, 'hello'), lo_from_bytea(0, ''), "
                    "lo_from_bytea(0, convert_to(repeat('x', 100000), 'UTF8'))", db)
    return dir_backup(pg_cluster, db, tmp_path_factory.mktemp("lo-backups"))


def large_objects(pg, db):
    return pg.psql("SELECT oid, md5(lo_get(oid)) FROM pg_largeobject_metadata ORDER BY 1", db)


def test_large_objects_and_lookalike_rows_restore_exactly(pg_cluster, lo_backup):
    storage, key = lo_backup
    restore(storage, key, settings_for(pg_cluster, "postgres"), create_db="rs_lo_copy")
    assert table_digests(pg_cluster, "rs_lo_copy") == table_digests(pg_cluster, "rs_lo_source")
    assert pg_cluster.psql("SELECT line FROM lines", "rs_lo_copy").split("\n")[:-1] == LOOKALIKE_LINES
    assert large_objects(pg_cluster, "rs_lo_copy") == large_objects(pg_cluster, "rs_lo_source")
    assert large_objects(pg_cluster, "rs_lo_copy").count("\n") == 3


def test_a_failing_statement_after_the_large_objects_still_rolls_everything_back(
        pg_cluster, lo_backup):
    # The dump's own COMMIT after its large objects would commit the tables and data
    # restored so far; the index that comes after them then fails on this clash.
    storage, key = lo_backup
    db = pg_cluster.create_database("rs_lo_clash")
    pg_cluster.psql("CREATE TABLE lines_line_idx (x int)", db)
    with pytest.raises(RestoreFailed, match='"lines_line_idx" already exists'):
        restore(storage, key, settings_for(pg_cluster, db), force=True)
    assert pg_cluster.psql("SELECT count(*) FROM pg_class WHERE relname = 'lines'", db).strip() == "0"
    assert large_objects(pg_cluster, db) == ""


def test_the_dump_transaction_filter_keeps_data_and_drops_only_the_large_object_block():
    from l2c_backup.restore import DumpTransactions
    copy = (b"SET x = 1;\n\nCOPY public.lines (line) FROM stdin;\n" +
            b"".join(line.encode() + b"\n" for line in LOOKALIKE_LINES) + b"\\.\n\n\n")
    header15 = b"--\n-- Data for Name: BLOBS; Type: BLOBS; Schema: -; Owner: -\n--\n\n"
    block15 = (b"\nSELECT pg_catalog.lo_open('16390', 131072);\n"
               b"SELECT pg_catalog.lowrite(0, '\\x68656c6c6f');\nSELECT pg_catalog.lo_close(0);\n\n")
    header18 = (b"--\n-- Data for Name: LARGE OBJECTS 16391..16392; Type: BLOBS; Schema: -; "
                b"Owner: bk\n--\n\n")
    block18 = b"\nSELECT pg_catalog.lo_open('16391', 131072);\nSELECT pg_catalog.lo_close(0);\n\n"
    rest = (b"\nCOPY public.empty (x) FROM stdin;\n\\.\n\n"
            b"--\n-- PostgreSQL database dump complete\n--\n\n")
    dump = (copy + header15 + b"BEGIN;\n" + block15 + b"COMMIT;\n" + header18 + b"BEGIN;\n" +
            block18 + b"COMMIT;\n" + rest)
    expected = copy + header15 + block15 + header18 + block18 + rest
    for cut in range(len(dump) + 1):
        for second in (cut, min(len(dump), cut + 7)):
            f = DumpTransactions()
            out = f.feed(dump[:cut]) + f.feed(dump[cut:second]) + f.feed(dump[second:]) + f.finish()
            assert out == expected, cut
    one_byte = DumpTransactions()
    assert b"".join(one_byte.feed(dump[i:i + 1]) for i in range(len(dump))) + one_byte.finish() == expected


# -- --create-db: rights, clashes, and what a killed restore left --------------------------

@pytest.fixture(scope="module")
def seed_dir_backup(pg_cluster, seeded_db, tmp_path_factory):
    return dir_backup(pg_cluster, seeded_db, tmp_path_factory.mktemp("seed-backups"))


def cli(*argv, env=None):
    return subprocess.run([sys.executable, "-m", "l2c_backup.cli", *argv],
                          capture_output=True, text=True, env=env)


def test_create_db_by_a_role_without_createdb_is_refused_in_one_line(pg_cluster, seed_dir_backup):
    storage, key = seed_dir_backup
    pg_cluster.psql("CREATE ROLE rs_nocreatedb LOGIN PASSWORD 'pw-no-createdb' NOCREATEDB")
    url = f"postgresql://rs_nocreatedb:pw-no-createdb@{pg_cluster.host}:{pg_cluster.port}/postgres"
    result = cli("restore", key, "--from", storage.url, "--target-url", url, "--create-db", "rs_denied")
    assert result.returncode == 16, result.stderr
    assert "Traceback" not in result.stderr and "pw-no-createdb" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "role rs_nocreatedb may not create databases" in line, line
    assert "ALTER ROLE rs_nocreatedb CREATEDB" in line and "CREATE DATABASE rs_denied" in line
    assert pg_cluster.psql("SELECT count(*) FROM pg_database WHERE datname = 'rs_denied'").strip() == "0"


def test_an_existing_database_without_our_mark_is_refused_and_untouched(pg_cluster, seed_dir_backup):
    storage, key = seed_dir_backup
    db = pg_cluster.create_database("rs_theirs")
    pg_cluster.psql("CREATE TABLE mine (x int); INSERT INTO mine VALUES (7)", db)
    with pytest.raises(RestoreRefused, match="database rs_theirs already exists"):
        restore(storage, key, settings_for(pg_cluster, "postgres"), create_db=db)
    assert pg_cluster.psql("SELECT x FROM mine", db).strip() == "7"


def test_a_marked_database_with_a_session_is_refused_and_without_one_is_replaced(
        pg_cluster, seeded_db, seed_dir_backup, caplog):
    import pg8000.native
    storage, key = seed_dir_backup
    db = pg_cluster.create_database("rs_left_behind")
    pg_cluster.psql(f"COMMENT ON DATABASE {db} IS 'l2c-backup: restore in progress since "
                    f"2026-11-27T02:00:00Z (key {key})'; CREATE TABLE half (x int)", db)
    holder = pg8000.native.Connection(pg_cluster.superuser, password=pg_cluster.password,
                                      host=pg_cluster.host, port=pg_cluster.port, database=db)
    try:
        with pytest.raises(RestoreRefused, match=r"restore in progress since 2026-11-27T02:00:00Z.*"
                                                 r"1 session"):
            restore(storage, key, settings_for(pg_cluster, "postgres"), create_db=db)
        assert pg_cluster.psql("SELECT count(*) FROM pg_class WHERE relname = 'half'", db).strip() == "1"
    finally:
        holder.close()
    caplog.set_level("INFO", logger="l2c_backup.restore")
    restore(storage, key, settings_for(pg_cluster, "postgres"), create_db=db)
    assert table_digests(pg_cluster, db) == table_digests(pg_cluster, seeded_db)
    assert any(f"dropped database {db}" in r.getMessage() and "left by a restore that was killed"
               in r.getMessage() for r in caplog.records)


# -- which backup: missing keys, bad dates, backups that never completed -------------------

def test_a_key_that_does_not_exist_is_named_as_missing_not_as_incomplete(pg_cluster, seed_dir_backup):
    storage, _ = seed_dir_backup
    missing = "db-backups/daily/backup_2020-01-01.sql.gz"
    result = cli("restore", missing, "--from", storage.url, "--target-url", pg_cluster.url("postgres"),
                 "--create-db", "rs_missing")
    assert result.returncode == 22 and "Traceback" not in result.stderr, result.stderr
    [first] = result.stderr.strip().splitlines()
    assert f"{missing} does not exist in {storage.url}" in first and "manifest" not in first, first


@pytest.mark.parametrize("date", ["2020-02-30", "01/02/2020", "2026-1-5"])
def test_a_date_that_is_not_yyyy_mm_dd_is_refused(pg_cluster, seed_dir_backup, date):
    storage, _ = seed_dir_backup
    result = cli("restore", "--date", date, "--from", storage.url,
                 "--target-url", pg_cluster.url("postgres"), "--create-db", "rs_bad_date")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    [first] = result.stderr.strip().splitlines()
    assert f"--date {date}" in first and "YYYY-MM-DD" in first, first


def test_latest_skips_a_newer_backup_without_manifest(pg_cluster, seeded_db, tmp_path):
    storage, key = dir_backup(pg_cluster, seeded_db, tmp_path)
    unfinished = key.replace("2026-11-27", "2026-11-28")  # a run killed before its manifest
    storage.put_bytes(unfinished, b"".join(storage.open(key)))
    assert find_backup(storage, latest=True) == key
    result = cli("restore", "--latest", "--from", str(tmp_path), "--target-url",
                 pg_cluster.url("postgres"), "--create-db", "rs_latest_complete", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["key"] == key
    assert table_digests(pg_cluster, "rs_latest_complete") == table_digests(pg_cluster, seeded_db)
    with pytest.raises(BackupNotFound, match="no backup found in .* for 2026-11-28"):
        find_backup(storage, date="2026-11-28")
