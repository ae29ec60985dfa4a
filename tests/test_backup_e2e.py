"""End to end: a seeded cluster backed up to the local OSS server (and a directory),
read back, checked with the real gunzip, replayed with the real psql, and compared."""
import gzip
import hashlib
import json
import os
import subprocess
import sys

import oss2
import pytest

from l2c_backup import config, manifest
from l2c_backup.backup import run_backup
from l2c_local.pgcluster import table_digests


def sequence_values(pg, db):
    return pg.psql("SELECT schemaname || '.' || sequencename, last_value FROM pg_sequences "
                   "ORDER BY 1", db)


def restore(pg, sql_gz, db):
    pg.create_database(db)
    sql = subprocess.run(["gunzip", "-c"], input=sql_gz, capture_output=True, check=True).stdout
    result = subprocess.run([str(pg.bin("psql")), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db],
                            input=sql, env=pg.env(), capture_output=True)
    assert result.returncode == 0, result.stderr.decode()[-2000:]


@pytest.fixture
def backup_env(pg_cluster, seeded_db, oss_server):
    return {"DATABASE_URL": pg_cluster.url(seeded_db), "OSS_ENDPOINT": oss_server.endpoint,
            "OSS_BACKUP_BUCKET": "l2c-backups", "OSS_ACCESS_KEY_ID": oss_server.access_key_id,
            "OSS_ACCESS_KEY_SECRET": oss_server.access_key_secret, "UPLOAD_MIN_PART_MB": "2"}


def test_backup_to_oss_restores_to_identical_tables_sequences_and_large_objects(
        pg_cluster, seeded_db, bucket, backup_env):
    summary = run_backup(config.load(backup_env), "daily")

    (done,) = summary["backups"]
    assert done["key"].startswith("db-backups/daily/backup_") and done["key"].endswith(".sql.gz")
    data = bucket.get_object(done["key"]).read()
    subprocess.run(["gunzip", "-t"], input=data, check=True)
    doc = manifest.loads(bucket.get_object(done["key"] + ".manifest.json").read())
    assert doc["object"]["sha256"] == hashlib.sha256(data).hexdigest() == done["sha256"]
    assert doc["object"]["size"] == len(data)
    assert doc["object"]["parts"] > 1, "a multi-part upload was expected at a 2 MiB part size"
    assert doc["object"]["crc64ecma"] == bucket.head_object(done["key"]).headers["x-oss-hash-crc64ecma"]
    assert doc["sql_bytes"] == len(gzip.decompress(data))
    assert doc["table_rows"]["sales.orders"] >= 100_000

    restore(pg_cluster, data, "e2e_from_oss")
    assert table_digests(pg_cluster, "e2e_from_oss") == table_digests(pg_cluster, seeded_db)
    assert sequence_values(pg_cluster, "e2e_from_oss") == sequence_values(pg_cluster, seeded_db)
    assert list(oss2.MultipartUploadIterator(bucket)) == []


def test_backup_to_a_directory_writes_the_same_layout_and_restores(pg_cluster, seeded_db, tmp_path,
                                                                   backup_env):
    env = dict(backup_env, BACKUP_TARGET=str(tmp_path))
    (done,) = run_backup(config.load(env), "weekly")["backups"]

    path = tmp_path / done["key"]
    assert done["key"].startswith("db-backups/weekly/backup_") and "-W" in done["key"]
    doc = manifest.loads((tmp_path / (done["key"] + ".manifest.json")).read_bytes())
    assert doc["object"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".partial")] == []
    restore(pg_cluster, path.read_bytes(), "e2e_from_dir")
    assert table_digests(pg_cluster, "e2e_from_dir") == table_digests(pg_cluster, seeded_db)


def test_a_backup_to_a_directory_names_its_file_by_its_full_path(pg_cluster, seeded_db,
                                                                  tmp_path):
    """The printed line and the log line give the path an operator can copy (it once read
    `DIRdb-backups/...`, and the log `DIRmanual/...`)."""
    result = subprocess.run([sys.executable, "-m", "l2c_backup.cli", "backup", "--to",
                             str(tmp_path), "--database-url", pg_cluster.url(seeded_db)],
                            capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, result.stderr
    (key,) = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.sql.gz")]
    path = os.path.join(str(tmp_path), key)
    assert key.startswith("db-backups/manual/backup_")
    assert result.stdout.startswith(path + ": "), result.stdout
    assert f" to {path} [" in result.stderr, result.stderr


def test_every_listed_database_and_the_globals_get_their_own_object_and_manifest(
        pg_cluster, seeded_db, bucket, backup_env):
    pg_cluster.psql(f"CREATE DATABASE e2e_second TEMPLATE {seeded_db}")
    env = dict(backup_env, BACKUP_DATABASES=f"{seeded_db},e2e_second", BACKUP_GLOBALS="true")
    summary = run_backup(config.load(env), "manual")

    keys = [b["key"] for b in summary["backups"]]
    assert [k.split("/")[2] for k in keys[:2]] == [seeded_db, "e2e_second"]
    assert keys[2].startswith("db-backups/manual/globals_")
    for key in keys:
        assert bucket.object_exists(key) and bucket.object_exists(key + ".manifest.json")
    globals_sql = gzip.decompress(bucket.get_object(keys[2]).read()).decode()
    assert "CREATE ROLE" in globals_sql


def test_server_side_encryption_is_requested_and_recorded(bucket, backup_env):
    env = dict(backup_env, OSS_SERVER_SIDE_ENCRYPTION="AES256")
    (done,) = run_backup(config.load(env), "manual")["backups"]

    assert bucket.head_object(done["key"]).headers["x-oss-server-side-encryption"] == "AES256"
    doc = json.loads(bucket.get_object(done["key"] + ".manifest.json").read())
    assert doc["encryption"] == {"server_side": "AES256", "kms_key_id": None, "client_side": None}
