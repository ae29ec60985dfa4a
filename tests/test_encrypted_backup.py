"""Backups written encrypted to age recipients (BACKUP_AGE_RECIPIENTS): the object is
`.sql.gz.age`, the `age` command opens it, the manifest says to whom and where the gzip
payload is, and the settings refuse what is not a public key without echoing it."""
import gzip
import hashlib
import os
import subprocess

import pytest

from l2c_backup import age, config, manifest, names, reading
from l2c_backup.backup import run_backup
from l2c_backup.errors import ConfigInvalid
from l2c_backup.storage import open_storage

from test_cli import run_cli


def keygen(path):
    """An identity from the reference tool: (key file, its public key)."""
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    return path, subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True,
                                text=True).stdout.strip()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    return [keygen(folder / f"key{n}.txt") for n in (1, 2)]


@pytest.fixture(scope="module")
def encrypted(pg_cluster, seeded_db, keys, tmp_path_factory):
    """One encrypted backup of the seed in a directory: (storage, key, manifest)."""
    target = tmp_path_factory.mktemp("encrypted")
    env = {"DATABASE_URL": pg_cluster.url(seeded_db), "BACKUP_TARGET": str(target),
           "BACKUP_AGE_RECIPIENTS": f"{keys[0][1]}, {keys[1][1]}"}
    (done,) = run_backup(config.load(env), "manual")["backups"]
    storage = open_storage(str(target))
    return storage, done["key"], manifest.loads(b"".join(storage.open(names.manifest_key(done["key"]))))


def test_the_object_is_named_age_and_its_manifest_says_to_whom(encrypted, keys):
    storage, key, doc = encrypted
    assert key.endswith(".sql.gz.age") and names.parse_backup_key(storage.prefix, key)
    sealed = manifest.client_side(doc)
    assert sealed["format"] == "age-encryption.org/v1"
    assert sealed["recipients"] == [keys[0][1], keys[1][1]]
    data = b"".join(storage.open(key))
    assert len(data) == doc["object"]["size"]
    assert hashlib.sha256(data).hexdigest() == doc["object"]["sha256"]
    assert data.startswith(b"age-encryption.org/v1\n")
    assert age.read_header(data).length == sealed["header_length"]
    assert doc["index"]["sections"][-1]["kind"] == "post-data"  # the index is kept


@pytest.mark.parametrize("which", [0, 1])
def test_the_age_command_opens_it_with_either_identity_into_the_same_gzip(encrypted, keys, which, tmp_path):
    storage, key, doc = encrypted
    sealed_file = tmp_path / "backup.sql.gz.age"
    sealed_file.write_bytes(b"".join(storage.open(key)))
    payload = subprocess.run(["age", "-d", "-i", str(keys[which][0]), str(sealed_file)],
                             check=True, capture_output=True).stdout
    sealed = manifest.client_side(doc)
    assert len(payload) == sealed["payload_size"] == sum(doc["compression"]["member_sizes"])
    assert hashlib.sha256(payload).hexdigest() == sealed["payload_sha256"]
    sql = gzip.decompress(payload)
    assert len(sql) == doc["sql_bytes"] and b"PostgreSQL database dump complete" in sql[-200:]
    assert not any(row in sealed_file.read_bytes() for row in (b"COPY ", b"CREATE TABLE"))


def test_reading_it_with_an_identity_gives_the_whole_dump_and_the_stored_objects_hash(encrypted, keys):
    storage, key, doc = encrypted
    identities = config.load_identities({"BACKUP_AGE_IDENTITY_FILE": str(keys[1][0])})
    with reading.open_backup(storage, key, doc, identities) as content:
        sql = b"".join(content)
        content.finish()
        assert content.sha256 == doc["object"]["sha256"] and content.bytes == doc["object"]["size"]
    assert len(sql) == doc["sql_bytes"]
    section = doc["index"]["sections"][1]
    with reading.read_section(storage, key, doc, section, identities=identities) as part:
        piece = b"".join(part)
        part.finish()
    assert piece == sql[section["sql_offset"]:section["sql_offset"] + section["sql_length"]]


def test_without_an_identity_it_is_refused_naming_the_public_keys(encrypted, keys):
    storage, key, doc = encrypted
    with pytest.raises(ConfigInvalid) as caught:
        reading.open_backup(storage, key, doc, identities=[])
    assert keys[0][1] in str(caught.value) and "BACKUP_AGE_IDENTITY_FILE" in str(caught.value)


def test_a_manifest_whose_sizes_do_not_fit_the_encryption_is_refused(encrypted):
    _, _, doc = encrypted
    for change, field in ((lambda d: d["object"].update(size=d["object"]["size"] + 1), "object/size"),
                          (lambda d: d.update(key=d["key"][:-len(".age")]), "client_side"),
                          (lambda d: d["encryption"]["client_side"].update(recipients=["age1nope"]),
                           "recipients")):
        bad = manifest.loads(manifest.dumps(doc))
        change(bad)
        with pytest.raises(ValueError, match=field):
            manifest.validate(bad)


def test_recipients_that_are_not_public_keys_are_refused_without_echoing_them(keys, tmp_path):
    secret = next(line for line in keys[0][0].read_text().splitlines()
                  if line.startswith("AGE-SECRET-KEY-"))
    for bad in (secret, "age1notakey", f"{keys[0][1]},{secret}"):
        result = run_cli("backup", "--to", str(tmp_path), env=dict(
            os.environ, DATABASE_URL="postgresql://u@127.0.0.1:1/db", BACKUP_AGE_RECIPIENTS=bad))
        assert result.returncode == 2, result.stderr
        assert "BACKUP_AGE_RECIPIENTS" in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert secret not in result.stderr + result.stdout
        assert secret.lower()[15:] not in (result.stderr + result.stdout).lower()


def test_identity_settings_are_one_or_the_other_and_a_missing_file_is_named(keys, tmp_path):
    text = keys[0][0].read_text()
    with pytest.raises(ConfigInvalid, match="only one"):
        config.load_identities({"BACKUP_AGE_IDENTITY": text, "BACKUP_AGE_IDENTITY_FILE": str(keys[0][0])})
    with pytest.raises(ConfigInvalid, match="nokey.txt") as caught:
        config.load_identities({"BACKUP_AGE_IDENTITY_FILE": str(tmp_path / "nokey.txt")})
    assert "AGE-SECRET-KEY" not in str(caught.value)
    (one,) = config.load_identities({"BACKUP_AGE_IDENTITY": text})
    assert one.recipient == keys[0][1] and "AGE-SECRET-KEY" not in repr(one).upper()
    assert config.load_identities({}) == []


def test_a_daily_slot_made_before_encryption_was_set_is_not_made_again(pg_cluster, seeded_db,
                                                                       keys, tmp_path):
    env = {"DATABASE_URL": pg_cluster.url(seeded_db), "BACKUP_TARGET": str(tmp_path)}
    (plain,) = run_backup(config.load(env), "daily")["backups"]
    (again,) = run_backup(config.load(dict(env, BACKUP_AGE_RECIPIENTS=keys[0][1])), "daily")["backups"]
    assert plain["key"].endswith(".sql.gz") and again["key"] == plain["key"]
    assert "already exists" in again["skipped"]
    (manual,) = run_backup(config.load(dict(env, BACKUP_AGE_RECIPIENTS=keys[0][1])), "manual")["backups"]
    assert manual["key"].endswith(".sql.gz.age")
    stored = sorted(p.name for p in tmp_path.rglob("backup_*") if p.name.endswith(names.SUFFIXES))
    assert stored == sorted([plain["key"].rsplit("/", 1)[1], manual["key"].rsplit("/", 1)[1]])
