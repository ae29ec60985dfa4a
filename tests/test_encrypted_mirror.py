"""The mirror and the DR copy on encrypted backups (issue 15), with real backups encrypted
to a key from the real `age-keygen` on the local OSS server: both copy the ciphertext
byte for byte, so a leaked mirror disk or DR bucket holds no row; the mirror checks size,
SHA-256 and the age header without an identity and the whole content with one, resumes a
cut copy as before; and status counts the encrypted copies in its 3-2-1 view."""
import gzip
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from oss2.models import ReplicationRule

from l2c_backup import age, config, names, retry
from l2c_backup import mirror as mirror_mod
from l2c_backup.backup import run_backup
from l2c_backup.errors import BackupCorrupt, StorageFailed
from l2c_backup.mirror import mirror
from l2c_backup.storage import open_storage
from l2c_backup.verify import check_object, verify
from l2c_local import resolve
from l2c_local.oss import LocalOSS
from oss_fixtures import bucket_for
from test_encrypted_verify import chunk_at, flipped, keys  # noqa: F401 (keys: the fixture)
from test_mirror import KeyFault, by_key, env_for, files_in, oss_storage

PREFIX = "db-backups/"
T0 = datetime(2026, 1, 20, 2, 0, tzinfo=timezone.utc)

pytestmark = pytest.mark.usefixtures("oss_without_backoff")


@pytest.fixture(scope="module")
def sealed_backups(pg_cluster, seeded_db, keys):
    """{key: bytes} of real backups encrypted to the `ops` key, made once on a local OSS
    server: two daily ones, one manual with the globals beside it; with their manifests."""
    with LocalOSS(buckets=["l2c-backups"]) as server:
        env = env_for(server, DATABASE_URL=pg_cluster.url(seeded_db), PRUNE_AFTER_BACKUP="false",
                      BACKUP_AGE_RECIPIENTS=keys["ops"].recipient)
        for day in range(2):
            run_backup(config.load(env), "daily", when=T0 + timedelta(days=day))
        run_backup(config.load(dict(env, BACKUP_GLOBALS="true")), "manual", when=T0)
        storage = oss_storage(server)
        found = {obj.key: b"".join(storage.open(obj.key)) for obj in storage.list(PREFIX)}
    backups = [k for k in found if names.is_backup_object(k)]
    assert len(backups) == 4 and all(k.endswith(names.AGE_SUFFIX) for k in backups)
    return found


@pytest.fixture
def source(oss_server, bucket, sealed_backups):
    for key, data in sealed_backups.items():
        bucket.put_object(key, data)
    return oss_storage(oss_server)


def backups_in(objects):
    return sorted(k for k in objects if names.is_backup_object(k))


def seeded_value(pg_cluster, seeded_db):
    """A row value of the seed that any plaintext copy of a backup holds."""
    value = pg_cluster.psql("SELECT email FROM public.customers ORDER BY id LIMIT 1",
                            seeded_db).strip()
    assert "@" in value
    return value.encode()


def plaintext_found(root, value):
    """The files under `root` where `value` can be read: in their bytes, or in what
    gunzip makes of them (a plain backup is gzip)."""
    found = []
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                data = f.read()
            try:
                data += gzip.decompress(data)
            except (OSError, EOFError):
                pass  # not gzip: the ciphertext, a manifest
            if value in data:
                found.append(name)
    return found


def assert_copied_as_stored(root, key, sealed_backups):
    for name in (key, key + ".manifest.json"):
        with open(os.path.join(root, name), "rb") as f:
            assert f.read() == sealed_backups[name], name


# -- the mirror -------------------------------------------------------------------------

def test_without_an_identity_encrypted_backups_are_copied_byte_for_byte_and_checked_as_stored(
        source, sealed_backups, tmp_path):
    root = str(tmp_path / "mirror")
    report = mirror(source, root, keep=2)

    wanted = backups_in(sealed_backups)
    assert {i.key: i.action for i in report.items} == dict.fromkeys(wanted, "copied")
    for key in wanted:
        assert_copied_as_stored(root, key, sealed_backups)
    assert all(not i.content_checked and "needs an age identity" in i.detail
               for i in report.items)
    assert all(o["content_checked"] is False for o in report.summary()["objects"])


def test_with_the_identity_the_content_is_checked_too(source, sealed_backups, keys, tmp_path):
    root = str(tmp_path / "mirror")
    report = mirror(source, root, keep=2, identities=keys["ops"].identities())
    assert {i.action for i in report.items} == {"copied"}
    assert all(i.content_checked and i.detail == "" for i in report.items)
    for key in backups_in(sealed_backups):
        assert_copied_as_stored(root, key, sealed_backups)


def test_a_changed_chunk_is_not_kept_with_or_without_the_identity(
        source, sealed_backups, keys, bucket, tmp_path):
    key = backups_in(sealed_backups)[-1]
    doc = json.loads(sealed_backups[key + ".manifest.json"])
    bucket.put_object(key, flipped(sealed_backups[key], chunk_at(doc, 1)))

    for identities, why in (((), "SHA-256"), (keys["ops"].identities(), "age-chunk")):
        root = str(tmp_path / f"mirror-{len(identities)}")
        with pytest.raises(BackupCorrupt, match=key) as failed:
            mirror(source, root, keep=2, identities=identities)
        item = by_key(failed.value.report)[key]
        assert item.action == "failed" and why in item.detail, item.detail
        assert not os.path.exists(os.path.join(root, key))


def test_a_header_for_another_recipient_is_not_kept_with_the_identity(
        source, sealed_backups, keys, bucket, tmp_path):
    key = backups_in(sealed_backups)[-1]
    doc = json.loads(sealed_backups[key + ".manifest.json"])
    length = doc["encryption"]["client_side"]["header_length"]
    other = age.Encryptor([keys["other"].recipient]).header
    bucket.put_object(key, other + sealed_backups[key][length:])
    with pytest.raises(BackupCorrupt, match=key) as failed:
        mirror(source, str(tmp_path / "mirror"), keep=2, identities=keys["ops"].identities())
    item = by_key(failed.value.report)[key]
    assert item.action == "failed" and "age-header" in item.detail and "does not open" in item.detail


def test_an_interrupted_copy_of_an_encrypted_backup_resumes_and_holds_no_plaintext(
        source, sealed_backups, keys, oss_server, pg_cluster, seeded_db, tmp_path):
    root = str(tmp_path / "mirror")
    key = next(k for k in backups_in(sealed_backups) if "/backup_" in k)
    size = len(sealed_backups[key])
    partial = os.path.join(root, os.path.dirname(key), ".partial-" + os.path.basename(key))
    oss_server.inject(KeyFault(method="GET", key=key, drop_response_after=size // 3))
    cut = oss_server.inject(KeyFault(method="GET", key=key, drop_response_after=0, times=None))
    identities = keys["ops"].identities()  # decrypted in memory to check it, never on disk

    with pytest.raises(StorageFailed, match=key):
        mirror(source, root, keep=2, chunk_size=64 * 1024, identities=identities)

    assert cut.hits == retry.READ_ATTEMPTS
    have = os.path.getsize(partial)
    assert 0 < have < size
    with open(partial, "rb") as f:
        assert f.read() == sealed_backups[key][:have]  # the ciphertext as it came
    value = seeded_value(pg_cluster, seeded_db)
    assert plaintext_found(root, value) == []

    oss_server.clear_faults()
    item = by_key(mirror(source, root, keep=2, chunk_size=64 * 1024, identities=identities))[key]
    assert (item.action, item.resumed_from, item.bytes) == ("resumed", have, size - have)
    assert item.content_checked
    assert_copied_as_stored(root, key, sealed_backups)
    assert plaintext_found(root, value) == []


def test_a_leaked_mirror_disk_of_encrypted_backups_reveals_no_row(
        pg_cluster, seeded_db, keys, source, tmp_path):
    value = seeded_value(pg_cluster, seeded_db)
    root = str(tmp_path / "mirror")
    mirror(source, root, keep=2, identities=keys["ops"].identities())
    assert plaintext_found(root, value) == []
    assert subprocess.run(["grep", "-r", "-F", "-q", value.decode(), root]).returncode == 1

    # the same scan finds the row in a mirror of plain backups, and in the decrypted copy
    plain = tmp_path / "plain"
    run_backup(config.load({"DATABASE_URL": pg_cluster.url(seeded_db),
                            "BACKUP_TARGET": str(plain)}), "daily")
    assert plaintext_found(str(plain), value)
    key = next(k for k in files_in(root) if k.endswith(names.AGE_SUFFIX) and "/backup_" in k)
    decrypted = subprocess.run(["age", "-d", "-i", str(keys["ops"].path), os.path.join(root, key)],
                               capture_output=True, check=True).stdout
    assert value in gzip.decompress(decrypted)


# -- the DR copy ------------------------------------------------------------------------

@pytest.fixture
def replicated(oss_server, bucket):
    """The DR bucket, with the primary's backup prefix replicated into it by the rule
    setup-oss adds (oss_setup._replication_steps: the prefix, PUT only, existing objects
    too)."""
    oss_server.create_bucket("l2c-backups-dr")
    bucket.put_bucket_replication(ReplicationRule(
        rule_id="l2c-to-l2c-backups-dr", target_bucket_name="l2c-backups-dr",
        target_bucket_location="oss-" + oss_server.region, prefix_list=[PREFIX],
        action_list=["PUT"], is_enable_historical_object_replication=True))
    target, settings = config.storage_target(env_for(oss_server), "oss://l2c-backups-dr/" + PREFIX)
    return open_storage(target, settings)


def test_the_dr_copy_of_an_encrypted_backup_is_its_ciphertext_and_checks_like_the_primary(
        oss_server, replicated, pg_cluster, seeded_db, keys):
    env = env_for(oss_server, DATABASE_URL=pg_cluster.url(seeded_db),
                  BACKUP_AGE_RECIPIENTS=keys["ops"].recipient)
    (done,) = run_backup(config.load(env), "daily")["backups"]
    oss_server.wait_idle()
    primary = oss_storage(oss_server)
    for name in (done["key"], names.manifest_key(done["key"])):
        assert b"".join(replicated.open(name)) == b"".join(primary.open(name)), name

    as_stored = check_object(replicated, done["key"], 1)
    assert (as_stored.reason, as_stored.content_checked) == ("ok", False)
    whole = check_object(replicated, done["key"], 1, identities=keys["ops"].identities())
    assert (whole.reason, whole.content_checked) == ("ok", True)
    value = seeded_value(pg_cluster, seeded_db)
    dr = bucket_for(oss_server, "l2c-backups-dr")
    for obj in dr.list_objects_v2(prefix=PREFIX).object_list:
        assert value not in dr.get_object(obj.key).read(), obj.key


def test_status_counts_encrypted_copies_in_primary_dr_and_mirror(
        oss_server, replicated, pg_cluster, seeded_db, keys, tmp_path):
    env = env_for(oss_server, DATABASE_URL=pg_cluster.url(seeded_db),
                  BACKUP_AGE_RECIPIENTS=keys["ops"].recipient)
    primary = oss_storage(oss_server)
    for kind in ("daily", "weekly"):
        (done,) = run_backup(config.load(env), kind)["backups"]
        assert verify(primary, done["key"], 1).ok  # the trigger's check: no identity
    oss_server.wait_idle()
    mirror(primary, str(tmp_path / "mirror"), keep=2)

    status_env = resolve.child_env(dict(env_for(oss_server), OSS_DR_BUCKET="l2c-backups-dr",
                                        PATH="/usr/bin:/bin"))
    done = subprocess.run([sys.executable, "-m", "l2c_backup.cli", "status", "--json",
                           "--mirror", str(tmp_path / "mirror")],
                          capture_output=True, text=True, env=status_env)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["compliant"] is True
    for copy in report["three_two_one"]:
        assert copy["key"].endswith(names.AGE_SUFFIX)
        assert copy["copies"] == ["primary", "dr", "mirror"] and copy["offsite"]
    assert report["kinds"]["daily"]["newest_verdict"] == "ok"
