"""Restoring backups encrypted to age recipients: whole, --create-db, --jobs and --table
come back equal to the source with the identity; a missing or wrong identity, and every
kind of damage to the object (cut short, a flipped byte in its first, a middle or its last
chunk, two chunks swapped, the header's MAC broken) end in one line with nothing restored;
SIGTERM mid-COPY undoes it; and the reference `age` CLI reads what we write and writes
what we read.

Real processes throughout: age-keygen's keys, `l2c-backup restore` as a subprocess, real
clusters and psql, the local OSS server, the real `age` and `gunzip`.
"""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pytest

from l2c_backup import age, config, manifest, names
from l2c_backup.backup import run_backup
from l2c_backup.database import DatabaseSettings
from l2c_backup.restore import restore
from l2c_backup.storage import Reading, open_storage
from l2c_backup.table_restore import restore_tables
from l2c_local import resolve
from l2c_local.pgcluster import table_digests
from oss_fixtures import bucket_for, crc64
from test_parallel_restore import (GATED_SCHEMA, fingerprint, psql_processes_on,
                                   waiting_at_the_gate)
from test_restore_signals import wait_for

WHEN = datetime(2026, 11, 26, 18, 30, tzinfo=timezone.utc)
KEY = "db-backups/daily/backup_2026-11-27.sql.gz.age"
TABLES = ["--table", "public.customers", "--table", "sales.orders"]  # orders: the object's middle


def settings_for(pg, db="postgres"):
    return DatabaseSettings.from_url(pg.url(db), {})


def keygen(path):
    """A new age key file written by age-keygen; returns its public key."""
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    return subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """The backup's key file and public key, and another identity's (the wrong one)."""
    directory = tmp_path_factory.mktemp("age-keys")
    right, wrong = directory / "key.txt", directory / "other.txt"
    return {"file": right, "recipient": keygen(right),
            "other_file": wrong, "other_recipient": keygen(wrong)}


def encrypted_backup(pg, db, directory, recipients):
    env = {"DATABASE_URL": pg.url(db), "BACKUP_TARGET": str(directory),
           "PRUNE_AFTER_BACKUP": "false", "BACKUP_AGE_RECIPIENTS": recipients}
    (done,) = run_backup(config.load(env), "daily", when=WHEN)["backups"]
    assert done["key"] == KEY
    return open_storage(str(directory))


@pytest.fixture(scope="module")
def sealed_dir(pg_cluster, seeded_db, keys, tmp_path_factory):
    """A directory holding one backup of the seed, encrypted to the key of `keys`."""
    directory = tmp_path_factory.mktemp("enc-backups")
    encrypted_backup(pg_cluster, seeded_db, directory, keys["recipient"])
    return directory


def manifest_of(directory, key=KEY):
    return json.loads((directory / names.manifest_key(key)).read_bytes())


def restore_cli(*argv, identity=None, identity_text=None, popen=False, **extra):
    """`l2c-backup restore ...` as a process, with only the age identity given here (and
    the settings in `extra`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUP_AGE_")}
    env.update(extra)
    if identity is not None:
        env["BACKUP_AGE_IDENTITY_FILE"] = str(identity)
    if identity_text is not None:
        env["BACKUP_AGE_IDENTITY"] = identity_text
    argv = [sys.executable, "-m", "l2c_backup.cli", "restore", *argv]
    if popen:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=resolve.child_env(env))
    return subprocess.run(argv, capture_output=True, text=True, env=resolve.child_env(env),
                          timeout=600)


def fresh_database(pg, name):
    pg.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    return pg.create_database(name)


def database_exists(pg, db):
    return pg.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{db}'").strip() == "1"


def user_objects(pg, db):
    """Tables, sequences, views, schemas and large objects of the user's in `db`."""
    return pg.psql(
        "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE "
        "'pg\\_%') + (SELECT count(*) FROM pg_namespace WHERE nspname NOT IN ('public', "
        "'information_schema') AND nspname NOT LIKE 'pg\\_%') + "
        "(SELECT count(*) FROM pg_largeobject_metadata)", db).strip()


# -- round trips ---------------------------------------------------------------------------

def test_the_backup_under_test_is_encrypted_and_says_so(sealed_dir, keys):
    doc = manifest_of(sealed_dir)
    sealed = manifest.client_side(doc)
    data = (sealed_dir / KEY).read_bytes()
    assert data.startswith(b"age-encryption.org/v1\n") and b"PostgreSQL" not in data
    assert sealed["recipients"] == [keys["recipient"]]
    assert sealed["header_length"] == age.read_header(data).length
    assert doc["object"]["size"] == len(data) and manifest.sections_of(doc)


def test_a_whole_restore_into_an_existing_database_equals_the_source(
        pg_cluster, seeded_db, sealed_dir, keys):
    db = fresh_database(pg_cluster, "enc_into")
    result = restore_cli(KEY, "--from", str(sealed_dir), "--target-url", pg_cluster.url(db),
                         identity=keys["file"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"restored {KEY} into {db} ")
    assert table_digests(pg_cluster, db) == table_digests(pg_cluster, seeded_db)


def test_a_create_db_restore_from_oss_with_the_identity_text_equals_the_source(
        oss_server, pg_cluster, seeded_db, keys):
    """BACKUP_AGE_IDENTITY carries the key file's text, as FC gets it from a secret."""
    env = {"DATABASE_URL": pg_cluster.url(seeded_db), "OSS_ENDPOINT": oss_server.endpoint,
           "OSS_BACKUP_BUCKET": "l2c-backups", "OSS_ACCESS_KEY_ID": oss_server.access_key_id,
           "OSS_ACCESS_KEY_SECRET": oss_server.access_key_secret,
           "BACKUP_AGE_RECIPIENTS": keys["recipient"]}
    (done,) = run_backup(config.load(env), "daily", when=WHEN)["backups"]
    secret = keys["file"].read_text()
    result = restore_cli("--latest", "--from", "oss://l2c-backups/db-backups/", "--endpoint",
                         oss_server.endpoint, "--target-url", pg_cluster.url(), "--create-db",
                         "enc_oss", "--json", identity_text=secret,
                         OSS_ACCESS_KEY_ID=oss_server.access_key_id,
                         OSS_ACCESS_KEY_SECRET=oss_server.access_key_secret)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["key"] == done["key"] == KEY
    assert table_digests(pg_cluster, "enc_oss") == table_digests(pg_cluster, seeded_db)
    assert "AGE-SECRET-KEY" not in result.stdout + result.stderr


def test_jobs_2_restores_an_encrypted_backup_equal_to_the_source(
        pg_cluster, seeded_db, sealed_dir, keys):
    result = restore_cli(KEY, "--from", str(sealed_dir), "--target-url", pg_cluster.url(),
                         "--create-db", "enc_jobs", "--jobs", "2", "--json",
                         identity=keys["file"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["jobs"] == 2
    assert table_digests(pg_cluster, "enc_jobs") == table_digests(pg_cluster, seeded_db)
    assert fingerprint(pg_cluster, "enc_jobs") == fingerprint(pg_cluster, seeded_db)
    assert psql_processes_on("enc_jobs") == []


def test_any_identity_of_the_key_file_that_opens_it_will_do(pg_cluster, seeded_db, keys,
                                                            tmp_path):
    """A key file holding several identities (age-keygen's format): the one the backup
    was written to opens it, wherever it stands in the file."""
    both = tmp_path / "both.txt"
    both.write_text(keys["other_file"].read_text() + keys["file"].read_text())
    directory = tmp_path / "two"
    storage = encrypted_backup(pg_cluster, seeded_db, directory,
                               f"{keys['other_recipient']}, {keys['recipient']}")
    identities = config.load_identities({"BACKUP_AGE_IDENTITY_FILE": str(keys["file"])})
    restore(storage, KEY, settings_for(pg_cluster), create_db="enc_second_recipient",
            identities=identities)
    assert table_digests(pg_cluster, "enc_second_recipient") == table_digests(pg_cluster, seeded_db)
    result = restore_cli(KEY, "--from", str(directory), "--target-url", pg_cluster.url(),
                         "--create-db", "enc_both_keys", identity=both)
    assert result.returncode == 0, result.stderr


class CountingStorage:
    """The storage, with every byte it hands out of one object counted (ranged reads too)."""

    def __init__(self, storage, key):
        self.storage, self.key, self.read, self.opened = storage, key, 0, []

    def __getattr__(self, name):
        return getattr(self.storage, name)

    def open(self, key, chunk_size=1 << 20, offset=0, length=None):
        reading = self.storage.open(key, chunk_size, offset=offset, length=length)
        if key != self.key:
            return reading
        self.opened.append((offset, length))

        def counted():
            for chunk in reading:
                self.read += len(chunk)
                yield chunk
        return Reading(counted(), reading.start, reading.etag, reading.close)


def covering(sealed, section):
    """The bytes of the age chunks that hold a section of the payload."""
    first = section["offset"] // age.CHUNK
    last = (section["offset"] + section["length"] - 1) // age.CHUNK
    return (last - first + 1) * age.SEALED


def test_table_reads_only_the_chunks_that_hold_its_sections(pg_cluster, seeded_db, sealed_dir,
                                                            keys):
    storage = CountingStorage(open_storage(str(sealed_dir)), KEY)
    doc = manifest_of(sealed_dir)
    sealed, sections = manifest.client_side(doc), manifest.sections_of(doc)
    db = fresh_database(pg_cluster, "enc_table")
    identities = config.load_identities({"BACKUP_AGE_IDENTITY_FILE": str(keys["file"])})

    summary = restore_tables(storage, KEY, settings_for(pg_cluster, db), ["sales.products"],
                             identities=identities)

    assert table_digests(pg_cluster, db)["sales.products"] == \
        table_digests(pg_cluster, seeded_db)["sales.products"]
    needed = [s for s in sections if s["kind"] in ("pre-data", "sequence-values", "post-data")
              or s.get("table") == "products"]
    # Each ranged read: at most the header and nonce, and the chunks holding its section;
    # the identity check: the header and the first chunk.
    head = sealed["header_length"] + 16
    bound = head + age.SEALED + sum(head + covering(sealed, s) for s in needed)
    assert all(length is not None for _, length in storage.opened), storage.opened
    assert 0 < storage.read <= bound, (storage.read, bound)
    assert storage.read / doc["object"]["size"] < 0.05
    assert summary["bytes_read"] == storage.read and summary["object_bytes"] == doc["object"]["size"]


# -- failures: one line, nothing restored --------------------------------------------------

def chunk_at(sealed, number):
    """Where the age chunk `number` (from 0) starts in the object."""
    return sealed["header_length"] + 16 + number * age.SEALED


def chunks_of(sealed):
    return -(-sealed["payload_size"] // age.CHUNK)


def middle_chunk(doc):
    """The chunk holding the middle of sales.orders' data (most of the object)."""
    orders = next(s for s in manifest.sections_of(doc) if s.get("table") == "orders")
    return (orders["offset"] + orders["length"] // 2) // age.CHUNK


def flip(data, at):
    data[at] ^= 0x01


def damage(case, data, doc):
    sealed = manifest.client_side(doc)
    middle, last = middle_chunk(doc), chunks_of(sealed) - 1
    if case == "truncated":  # cut in the middle of a chunk near the end
        del data[chunk_at(sealed, last - 2) + age.SEALED // 2:]
    elif case == "first chunk":
        flip(data, chunk_at(sealed, 0) + 100)
    elif case == "middle chunk":
        flip(data, chunk_at(sealed, middle) + age.SEALED // 2)
    elif case == "last chunk":
        flip(data, len(data) - 20)
    elif case == "swapped chunks":
        a, b = chunk_at(sealed, middle), chunk_at(sealed, middle + 1)
        data[a:b], data[b:b + age.SEALED] = data[b:b + age.SEALED], data[a:b]
    elif case == "header MAC":
        mac = data.index(b"\n--- ", 0, sealed["header_length"]) + 5
        data[mac + 3] = ord("A") if data[mac + 3] != ord("A") else ord("B")


FAILURES = {  # case: (exit code, what the one line says)
    "no identity": (2, "and no identity is set"),
    "wrong identity": (2, "opens none of them"),
    "truncated": (15, "(truncated: "),
    "first chunk": (15, "(age-chunk: "),
    "middle chunk": (15, "(age-chunk: "),
    "last chunk": (15, "(age-chunk: "),
    "swapped chunks": (15, "(age-chunk: "),
    "header MAC": (15, "(age-header: "),
}
MODES = ["into", "create-db", "jobs", "table"]


@pytest.fixture
def damaged(sealed_dir, tmp_path):
    """A copy of the encrypted backup, to damage."""
    copy = tmp_path / "copy"
    shutil.copytree(sealed_dir, copy)
    return copy


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(FAILURES))
def test_a_failure_ends_in_one_line_and_restores_nothing(pg_cluster, keys, damaged, case, mode):
    doc = manifest_of(damaged)
    if case not in ("no identity", "wrong identity"):
        path = damaged / KEY
        data = bytearray(path.read_bytes())
        damage(case, data, doc)
        path.write_bytes(bytes(data))
    identity = {"no identity": None, "wrong identity": keys["other_file"]}.get(case, keys["file"])
    db = "enc_fail_" + mode.replace("-", "_")
    args = [KEY, "--from", str(damaged)]
    if mode in ("into", "table"):
        fresh_database(pg_cluster, db)
        args += ["--target-url", pg_cluster.url(db)] + (TABLES if mode == "table" else [])
    else:
        pg_cluster.psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        args += ["--target-url", pg_cluster.url(), "--create-db", db]
        args += ["--jobs", "2"] if mode == "jobs" else []

    result = restore_cli(*args, identity=identity)

    code, says = FAILURES[case]
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("l2c-backup restore: ") and says in lines[0], lines[0]
    assert "AGE-SECRET-KEY" not in result.stdout + result.stderr
    if code == 2:  # names the public keys it needs and the setting to set
        assert keys["recipient"] in lines[0] and "BACKUP_AGE_IDENTITY_FILE" in lines[0], lines[0]
        if case == "wrong identity":
            assert keys["other_recipient"] in lines[0], lines[0]
    else:
        assert KEY in lines[0] and ("nothing was restored" in lines[0]
                                    or "the new database was dropped" in lines[0]), lines[0]
    if mode in ("into", "table"):
        assert user_objects(pg_cluster, db) == "0"
    else:
        assert not database_exists(pg_cluster, db)
    assert psql_processes_on(db) == []


def test_a_missing_or_wrong_identity_is_refused_before_the_target_is_looked_at(
        sealed_dir, keys, tmp_path):
    """No psql to run and no server to reach: the identity is what the line is about."""
    no_psql = tmp_path / "no-psql"
    no_psql.mkdir()
    for identity in (None, keys["other_file"]):
        result = restore_cli(KEY, "--from", str(sealed_dir), "--target-url",
                             "postgresql://nobody:pw@127.0.0.1:9/none", "--create-db", "x",
                             identity=identity, PG_BIN_DIR=str(no_psql))
        assert result.returncode == 2, result.stderr
        assert keys["recipient"] in result.stderr and "BACKUP_AGE_IDENTITY_FILE" in result.stderr


# -- signals -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gated_sealed(pg_cluster, keys, tmp_path_factory):
    """(backup directory, gate file): an encrypted backup whose restore waits in
    public.gated's COPY while the gate file is missing (see test_parallel_restore)."""
    gate = Path(tempfile.mkdtemp(prefix="l2c-enc-gate-")) / "open"
    gate.parent.chmod(0o755)
    gate.touch()
    pg_cluster.create_database("enc_gated_src")
    pg_cluster.psql(GATED_SCHEMA.replace("{gate}", str(gate)), "enc_gated_src")
    directory = tmp_path_factory.mktemp("enc-gated")
    encrypted_backup(pg_cluster, "enc_gated_src", directory, keys["recipient"])
    yield directory, gate
    shutil.rmtree(gate.parent)


def test_sigterm_mid_copy_of_an_encrypted_restore_drops_its_new_database(pg_cluster, keys,
                                                                        gated_sealed):
    directory, gate = gated_sealed
    db = "enc_sigterm"
    gate.unlink()
    try:
        proc = restore_cli(KEY, "--from", str(directory), "--target-url", pg_cluster.url(),
                           "--create-db", db, identity=keys["file"], popen=True)
        wait_for(lambda: waiting_at_the_gate(pg_cluster, db), "the COPY into public.gated "
                 "to wait", proc=proc)
        os.kill(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        gate.touch()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert stderr.strip().splitlines() == ["l2c-backup restore: stopped by SIGTERM; what was "
                                           "in progress was undone"], stderr
    assert not database_exists(pg_cluster, db)
    assert psql_processes_on(db) == []


# -- the reference tool --------------------------------------------------------------------

README_LINE = "age -d -i key.txt {name} | gunzip | psql -v ON_ERROR_STOP=1 -d {db}"


def test_our_object_from_oss_restores_with_age_gunzip_and_psql(oss_server, pg_cluster, seeded_db,
                                                              keys, tmp_path):
    env = {"DATABASE_URL": pg_cluster.url(seeded_db), "OSS_ENDPOINT": oss_server.endpoint,
           "OSS_BACKUP_BUCKET": "l2c-backups", "OSS_ACCESS_KEY_ID": oss_server.access_key_id,
           "OSS_ACCESS_KEY_SECRET": oss_server.access_key_secret,
           "BACKUP_AGE_RECIPIENTS": keys["recipient"]}
    (done,) = run_backup(config.load(env), "daily", when=WHEN)["backups"]
    name = done["key"].rsplit("/", 1)[1]
    bucket_for(oss_server).get_object_to_file(done["key"], str(tmp_path / name))
    shutil.copy(keys["file"], tmp_path / "key.txt")
    db = fresh_database(pg_cluster, "enc_by_age_cli")
    shell = dict(pg_cluster.env(), PATH=f"{pg_cluster.bin('psql').parent}:/usr/bin:/bin")

    subprocess.run(["bash", "-o", "pipefail", "-c", README_LINE.format(name=name, db=db)],
                   cwd=tmp_path, env=shell, check=True, capture_output=True)

    assert table_digests(pg_cluster, db) == table_digests(pg_cluster, seeded_db)


def test_an_object_that_age_encrypted_restores_with_ours(pg_cluster, seeded_db, keys, tmp_path):
    """A plain backup of ours, encrypted by `age -r`, stored as the `.sql.gz.age` object
    with its manifest describing it: whole, --jobs and --table restore it (the last two
    with ranged reads into age's own chunks)."""
    env = {"DATABASE_URL": pg_cluster.url(seeded_db), "BACKUP_TARGET": str(tmp_path),
           "PRUNE_AFTER_BACKUP": "false"}
    (done,) = run_backup(config.load(env), "daily", when=WHEN)["backups"]
    plain_key = done["key"]
    assert plain_key + ".age" == KEY
    plain = (tmp_path / plain_key).read_bytes()
    subprocess.run(["age", "-r", keys["recipient"], "-o", str(tmp_path / KEY),
                    str(tmp_path / plain_key)], check=True, capture_output=True)
    sealed = (tmp_path / KEY).read_bytes()
    doc = manifest_of(tmp_path, plain_key)
    doc["key"] = KEY
    doc["object"] = {"size": len(sealed), "sha256": hashlib.sha256(sealed).hexdigest(),
                     "crc64ecma": str(crc64(sealed))}
    doc["encryption"]["client_side"] = {
        "format": age.FORMAT, "recipients": [keys["recipient"]],
        "header_length": age.read_header(sealed).length, "payload_size": len(plain),
        "payload_sha256": hashlib.sha256(plain).hexdigest()}
    (tmp_path / names.manifest_key(KEY)).write_bytes(manifest.dumps(doc))
    for stale in (plain_key, names.manifest_key(plain_key)):
        (tmp_path / stale).unlink()

    whole = restore_cli("--latest", "--from", str(tmp_path), "--target-url", pg_cluster.url(),
                        "--create-db", "enc_from_age_cli", "--json", identity=keys["file"])
    assert whole.returncode == 0, whole.stderr
    assert json.loads(whole.stdout)["key"] == KEY
    assert table_digests(pg_cluster, "enc_from_age_cli") == table_digests(pg_cluster, seeded_db)

    jobs = restore_cli(KEY, "--from", str(tmp_path), "--target-url", pg_cluster.url(),
                       "--create-db", "enc_from_age_cli_jobs", "--jobs", "2", identity=keys["file"])
    assert jobs.returncode == 0, jobs.stderr
    assert table_digests(pg_cluster, "enc_from_age_cli_jobs") == table_digests(pg_cluster, seeded_db)

    db = fresh_database(pg_cluster, "enc_from_age_cli_table")
    table = restore_cli(KEY, "--from", str(tmp_path), "--target-url", pg_cluster.url(db),
                        "--table", "public.customers", identity=keys["file"])
    assert table.returncode == 0, table.stderr
    assert table_digests(pg_cluster, db)["public.customers"] == \
        table_digests(pg_cluster, seeded_db)["public.customers"]
