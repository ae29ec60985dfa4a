"""The mirror (PLAN's local / host tier) against real backups on the local OSS server:
it copies the newest N with their manifests, keeps only bytes that match them, skips what
is intact, resumes what was cut short, replaces what is damaged, prunes to N, and what it
keeps restores with the real psql."""
import argparse
import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest


from l2c_backup import config, mirror as mirror_mod, retry, status
from l2c_backup.backup import run_backup
from l2c_backup.commands import mirror as mirror_command
from l2c_backup.errors import BackupCorrupt, ConfigInvalid, StorageFailed, UploadFailed
from l2c_backup.mirror import mirror
from l2c_backup.storage import open_storage
from l2c_local.oss import Fault, LocalOSS
from l2c_local.pgcluster import table_digests

PREFIX = "db-backups/"
T0 = datetime(2026, 1, 20, 2, 0, tzinfo=timezone.utc)


@dataclass
class KeyFault(Fault):
    """A Fault on exactly `key`, or on keys ending in `suffix`, and only on plain object
    requests (no sub-resource such as ?tagging): `key_prefix` would also catch the
    backup's manifest, `<key>.manifest.json`."""

    key: str = None
    suffix: str = None

    def matches(self, method, bucket, key, params):
        return (super().matches(method, bucket, key, params) and not params
                and (self.key is None or key == self.key)
                and (self.suffix is None or (key or "").endswith(self.suffix)))


pytestmark = pytest.mark.usefixtures("oss_without_backoff")


def counter(**criteria):
    """A fault that never acts: its `seen` counts the matching requests."""
    return KeyFault(method="GET", skip=10**9, times=None, **criteria)


def env_for(server, **extra):
    return dict({"OSS_ENDPOINT": server.endpoint, "OSS_BACKUP_BUCKET": "l2c-backups",
                 "OSS_ACCESS_KEY_ID": server.access_key_id,
                 "OSS_ACCESS_KEY_SECRET": server.access_key_secret}, **extra)


def oss_storage(server):
    target, settings = config.storage_target(env_for(server))
    return open_storage(target, settings)


@pytest.fixture(scope="module")
def real_backups(pg_cluster, seeded_db):
    """{key: bytes} of real backups made once by run_backup on a local OSS server: three
    manual ones with the globals beside each, two daily ones; with their manifests."""
    with LocalOSS(buckets=["l2c-backups"]) as server:
        env = env_for(server, DATABASE_URL=pg_cluster.url(seeded_db), PRUNE_AFTER_BACKUP="false")
        for day in range(3):
            run_backup(config.load(dict(env, BACKUP_GLOBALS="true")), "manual",
                       when=T0 + timedelta(days=day))
        for day in range(2):
            run_backup(config.load(env), "daily", when=T0 + timedelta(days=day))
        storage = oss_storage(server)
        return {obj.key: b"".join(storage.open(obj.key)) for obj in storage.list(PREFIX)}


@pytest.fixture
def source(oss_server, bucket, real_backups):
    """The Storage of a fresh local OSS server holding the real backups."""
    for key, data in real_backups.items():
        bucket.put_object(key, data)
    return oss_storage(oss_server)


def backup_keys(objects, kind, what="backup"):
    return sorted(k for k in objects if k.startswith(f"{PREFIX}{kind}/{what}_") and k.endswith(".sql.gz"))


def files_in(root):
    found = set()
    for folder, _, files in os.walk(root):
        for name in files:
            found.add(os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/"))
    return found


def manifest_of(root, key):
    with open(os.path.join(root, key + ".manifest.json"), "rb") as f:
        return json.load(f)


def sha256_of(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def assert_intact(root, key, real_backups):
    path = os.path.join(root, key)
    doc = manifest_of(root, key)
    assert os.path.getsize(path) == doc["object"]["size"]
    assert sha256_of(path) == doc["object"]["sha256"]
    with open(path + ".manifest.json", "rb") as f:
        assert f.read() == real_backups[key + ".manifest.json"]


def by_key(report):
    return {item.key: item for item in report.items}


def test_mirror_copies_the_newest_n_of_each_kind_with_manifests_that_match(source, real_backups,
                                                                            tmp_path):
    root = str(tmp_path / "mirror")
    report = mirror(source, root, keep=2)

    manual, globals_ = backup_keys(real_backups, "manual"), backup_keys(real_backups, "manual", "globals")
    daily = backup_keys(real_backups, "daily")
    assert len(manual) == len(globals_) == 3 and len(daily) == 2
    wanted = manual[1:] + globals_[1:] + daily
    assert files_in(root) == (set(wanted) | {k + ".manifest.json" for k in wanted}
                              | {mirror_mod.LOCK_NAME})
    for key in wanted:
        assert_intact(root, key, real_backups)
    summary = report.summary()
    assert summary["copied"] == 6 and summary["failed"] == summary["pruned"] == 0
    assert summary["bytes"] == sum(len(real_backups[k]) for k in wanted)
    assert {i.key for i in report.items[:2]} == {manual[2], globals_[2]}, "the newest first"


def test_a_second_run_reads_no_backup_bytes(source, real_backups, oss_server, tmp_path):
    root = str(tmp_path / "mirror")
    mirror(source, root, keep=2)
    bodies = oss_server.inject(counter(suffix=".sql.gz"))

    report = mirror(source, root, keep=2)

    assert bodies.seen == 0
    assert {i.action for i in report.items} == {"skipped"} and len(report.items) == 6
    assert report.summary()["bytes"] == 0


def test_a_read_cut_short_is_resumed_in_the_same_run_without_reading_a_byte_twice(
        source, real_backups, oss_server, tmp_path):
    root = str(tmp_path / "mirror")
    key = backup_keys(real_backups, "manual")[-1]
    size = len(real_backups[key])
    drop = oss_server.inject(KeyFault(method="GET", key=key, drop_response_after=size // 2))

    report = mirror(source, root, keep=2, chunk_size=64 * 1024)

    assert drop.hits == 1
    item = by_key(report)[key]
    assert item.action == "copied" and item.bytes == size, "the rest came from a ranged read"
    assert_intact(root, key, real_backups)


def test_an_interrupted_copy_leaves_a_partial_that_the_next_run_resumes(
        source, real_backups, oss_server, tmp_path):
    root = str(tmp_path / "mirror")
    key = backup_keys(real_backups, "manual")[-1]
    size = len(real_backups[key])
    partial = os.path.join(root, os.path.dirname(key), ".partial-" + os.path.basename(key))
    oss_server.inject(KeyFault(method="GET", key=key, drop_response_after=size // 5))
    # every resume then drops before a byte arrives: the read ends after the retries
    cut = oss_server.inject(KeyFault(method="GET", key=key, drop_response_after=0, times=None))

    with pytest.raises(StorageFailed, match=key) as failed:
        mirror(source, root, keep=2, chunk_size=64 * 1024)

    assert cut.hits == retry.READ_ATTEMPTS
    assert "dropped" in str(failed.value) and oss_server.endpoint in str(failed.value)
    assert not os.path.exists(os.path.join(root, key))
    assert failed.value.report.pruned == [] and failed.value.report.count("copied") == 5
    have = os.path.getsize(partial)
    assert 0 < have < size
    with open(partial, "rb") as f:
        assert f.read() == real_backups[key][:have]
    with open(partial + mirror_mod.SOURCE_SUFFIX) as f:
        assert json.load(f)["etag"] == source.head(key).etag.strip('"')

    oss_server.clear_faults()
    # The server may send only what is missing: a read of the whole object would be cut.
    rest_only = oss_server.inject(KeyFault(method="GET", key=key, drop_response_after=size - have))
    report = mirror(source, root, keep=2, chunk_size=64 * 1024)

    assert rest_only.hits == 1
    item = by_key(report)[key]
    assert (item.action, item.resumed_from, item.bytes) == ("resumed", have, size - have)
    assert_intact(root, key, real_backups)
    assert not os.path.exists(partial) and not os.path.exists(partial + mirror_mod.SOURCE_SUFFIX)


def test_a_source_that_refuses_is_one_storage_failed_line_and_nothing_is_deleted(
        source, real_backups, oss_server, tmp_path):
    root = str(tmp_path / "mirror")
    mirror(source, root, keep=2)
    before = files_in(root)
    target, settings = config.storage_target(env_for(oss_server, OSS_ACCESS_KEY_SECRET="not-it"))
    wrong = open_storage(target, settings)

    with pytest.raises(StorageFailed) as failed:
        mirror(wrong, root, keep=1)

    text = str(failed.value)
    assert "SignatureDoesNotMatch" in text and oss_server.endpoint in text and "l2c-backups" in text
    assert "not-it" not in text and oss_server.access_key_secret not in text
    assert files_in(root) == before


def test_a_partial_of_another_version_of_the_object_is_started_over(source, real_backups, tmp_path):
    root = tmp_path / "mirror"
    key = backup_keys(real_backups, "daily")[-1]
    folder = root / os.path.dirname(key)
    folder.mkdir(parents=True)
    partial = folder / (".partial-" + os.path.basename(key))
    partial.write_bytes(b"x" * 1000)
    (folder / (partial.name + mirror_mod.SOURCE_SUFFIX)).write_text(json.dumps(
        {"key": key, "etag": "AN-OLDER-ETAG", "size": 1, "sha256": "0" * 64}))

    item = by_key(mirror(source, str(root), keep=2))[key]

    assert (item.action, item.resumed_from, item.bytes) == ("copied", 0, len(real_backups[key]))
    assert_intact(str(root), key, real_backups)


def test_a_partial_whose_bytes_are_wrong_is_caught_and_copied_again(
        source, real_backups, tmp_path):
    root = tmp_path / "mirror"
    key = backup_keys(real_backups, "daily")[-1]
    data = real_backups[key]
    folder = root / os.path.dirname(key)
    folder.mkdir(parents=True)
    partial = folder / (".partial-" + os.path.basename(key))
    partial.write_bytes(b"\0" * (len(data) // 3))  # same source object, damaged bytes
    doc = json.loads(real_backups[key + ".manifest.json"])
    (folder / (partial.name + mirror_mod.SOURCE_SUFFIX)).write_text(json.dumps(
        {"key": key, "etag": source.head(key).etag.strip('"'), "size": len(data),
         "sha256": doc["object"]["sha256"]}))

    item = by_key(mirror(source, str(root), keep=2))[key]

    # the first member is zeros: the check stops that copy as soon as it gets there (the
    # reader may have read ahead meanwhile), and the second reads it all
    assert item.action == "copied"
    assert len(data) <= item.bytes <= len(data) - len(data) // 3 + len(data)
    assert_intact(str(root), key, real_backups)


def test_a_partial_of_a_backup_no_longer_mirrored_is_removed(source, real_backups, tmp_path):
    root = tmp_path / "mirror"
    oldest = backup_keys(real_backups, "manual")[0]  # outside keep=2
    folder = root / os.path.dirname(oldest)
    folder.mkdir(parents=True)
    partial = folder / (".partial-" + os.path.basename(oldest))
    partial.write_bytes(b"half")
    (folder / (partial.name + mirror_mod.SOURCE_SUFFIX)).write_text("{}")

    report = mirror(source, str(root), keep=2)

    assert report.partials_removed == [oldest]
    assert not [n for n in os.listdir(folder) if n.startswith(".partial-")]


def test_two_runs_into_one_directory_do_not_overlap(source, tmp_path):
    fcntl = pytest.importorskip("fcntl")
    root = tmp_path / "mirror"
    root.mkdir()
    with open(root / mirror_mod.LOCK_NAME, "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(UploadFailed, match="another mirror is running"):
            mirror(source, str(root), keep=2)
    assert files_in(root) == {mirror_mod.LOCK_NAME}


def test_a_damaged_local_copy_is_detected_and_replaced(source, real_backups, tmp_path):
    root = str(tmp_path / "mirror")
    mirror(source, root, keep=2)
    key = backup_keys(real_backups, "manual")[-1]
    path = os.path.join(root, key)
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))

    report = mirror(source, root, keep=2)

    actions = {i.key: i.action for i in report.items}
    assert actions.pop(key) == "replaced"
    assert set(actions.values()) == {"skipped"}
    assert_intact(root, key, real_backups)


def test_a_missing_local_manifest_is_written_without_reading_the_backup_again(
        source, real_backups, oss_server, tmp_path):
    root = str(tmp_path / "mirror")
    mirror(source, root, keep=2)
    key = backup_keys(real_backups, "daily")[-1]
    os.unlink(os.path.join(root, key + ".manifest.json"))
    bodies = oss_server.inject(counter(suffix=".sql.gz"))

    item = by_key(mirror(source, root, keep=2))[key]

    assert bodies.seen == 0 and item.action == "skipped" and item.detail == "manifest written"
    assert_intact(root, key, real_backups)


def test_keep_prunes_the_mirror_backups_with_their_manifests(source, real_backups, tmp_path):
    root = str(tmp_path / "mirror")
    mirror(source, root, keep=3)
    manual, globals_ = backup_keys(real_backups, "manual"), backup_keys(real_backups, "manual", "globals")
    daily = backup_keys(real_backups, "daily")
    assert set(manual + globals_ + daily) <= files_in(root)

    report = mirror(source, root, keep=1)

    kept = [manual[-1], globals_[-1], daily[-1]]
    assert files_in(root) == set(kept) | {k + ".manifest.json" for k in kept} | {mirror_mod.LOCK_NAME}
    assert sorted(report.pruned) == sorted(manual[:2] + globals_[:2] + daily[:1])
    assert {i.action for i in report.items} == {"skipped"}


def test_only_the_kinds_asked_for_are_mirrored_and_pruned(source, real_backups, tmp_path):
    root = str(tmp_path / "mirror")
    mirror(source, root, keep=2)
    report = mirror(source, root, keep=1, kinds=["daily"])

    daily = backup_keys(real_backups, "daily")
    assert [i.key for i in report.items] == [daily[-1]] and report.pruned == [daily[0]]
    for key in backup_keys(real_backups, "manual")[1:]:
        assert os.path.exists(os.path.join(root, key)), "manual backups are not touched"


def test_a_source_object_that_does_not_match_its_manifest_is_not_kept(
        source, real_backups, bucket, oss_server, tmp_path):
    root = str(tmp_path / "mirror")
    key = backup_keys(real_backups, "manual")[-1]
    data = bytearray(real_backups[key])
    data[len(data) // 2] ^= 0x01  # same size, one bit off
    bucket.put_object(key, bytes(data))
    reads = oss_server.inject(counter(key=key))

    with pytest.raises(BackupCorrupt, match=key) as failed:
        mirror(source, root, keep=2)

    assert reads.seen == 2, "read once more before giving up"
    folder = os.path.join(root, os.path.dirname(key))
    assert not [n for n in os.listdir(folder) if os.path.basename(key) in n], "nothing kept"
    report = failed.value.report
    # the flipped bit breaks its gzip member: named as such, before the SHA-256 could be
    assert [i.key for i in report.failed] == [key] and "gzip-corrupt" in report.failed[0].detail
    assert 0 < report.failed[0].bytes <= 2 * len(data)
    assert report.count("copied") == 5 and report.pruned == []


def test_whole_gzip_whose_sha256_differs_from_its_manifest_is_not_kept(
        source, real_backups, bucket, tmp_path):
    root = str(tmp_path / "mirror")
    key = backup_keys(real_backups, "manual")[-1]
    doc = json.loads(real_backups[key + ".manifest.json"])
    doc["object"]["sha256"] = "0" * 64
    bucket.put_object(key + ".manifest.json", json.dumps(doc).encode())

    with pytest.raises(BackupCorrupt, match=key) as failed:
        mirror(source, root, keep=2)

    detail = failed.value.report.failed[0].detail
    assert "SHA-256" in detail and "0" * 64 in detail
    assert failed.value.report.failed[0].bytes == 2 * len(real_backups[key]), "read to the end, twice"
    assert not os.path.exists(os.path.join(root, key))


def test_a_backup_without_its_manifest_yet_is_not_copied(source, real_backups, bucket, tmp_path):
    root = str(tmp_path / "mirror")
    key = backup_keys(real_backups, "daily")[-1]
    bucket.delete_object(key + ".manifest.json")

    report = mirror(source, root, keep=1, kinds=["daily"])

    assert report.without_manifest == [key]
    older = backup_keys(real_backups, "daily")[0]
    assert [i.key for i in report.items] == [older], "the newest complete one instead"
    assert not os.path.exists(os.path.join(root, key))


def test_a_directory_source_resumes_with_a_seek(source, real_backups, tmp_path):
    first, second = str(tmp_path / "first"), tmp_path / "second"
    mirror(source, first, keep=1, kinds=["daily"])
    key = backup_keys(real_backups, "daily")[-1]
    local_source = open_storage(first)
    data = real_backups[key]
    folder = second / os.path.dirname(key)
    folder.mkdir(parents=True)
    partial = folder / (".partial-" + os.path.basename(key))
    partial.write_bytes(data[:len(data) // 2])
    doc = json.loads(real_backups[key + ".manifest.json"])
    (folder / (partial.name + mirror_mod.SOURCE_SUFFIX)).write_text(json.dumps(
        {"key": key, "etag": local_source.head(key).etag, "size": len(data),
         "sha256": doc["object"]["sha256"]}))

    item = by_key(mirror(local_source, str(second), keep=1, kinds=["daily"]))[key]

    assert (item.action, item.resumed_from, item.bytes) == ("resumed", len(data) // 2,
                                                            len(data) - len(data) // 2)
    assert_intact(str(second), key, real_backups)


def test_a_mirrored_backup_restores_to_identical_tables(source, real_backups, pg_cluster, seeded_db,
                                                          tmp_path):
    root = str(tmp_path / "mirror")
    mirror(source, root, keep=1, kinds=["manual"])
    key = backup_keys(real_backups, "manual")[-1]

    pg_cluster.create_database("mirror_restored")
    gunzip = subprocess.Popen(["gunzip", "-c", os.path.join(root, key)], stdout=subprocess.PIPE)
    psql = subprocess.run([str(pg_cluster.bin("psql")), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                           "-d", "mirror_restored"], stdin=gunzip.stdout, env=pg_cluster.env(),
                          capture_output=True)
    gunzip.stdout.close()
    assert gunzip.wait() == 0
    assert psql.returncode == 0, psql.stderr.decode()[-2000:]
    assert table_digests(pg_cluster, "mirror_restored") == table_digests(pg_cluster, seeded_db)


def command_args(argv):
    parser = argparse.ArgumentParser()
    mirror_command.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["mirror"] + argv)


def test_the_command_prints_a_json_summary(source, oss_server, monkeypatch, capsys, tmp_path):
    for name, value in env_for(oss_server).items():
        monkeypatch.setenv(name, value)
    root = str(tmp_path / "mirror")
    argv = ["--from", "oss://l2c-backups/db-backups/", "--to", root, "--keep", "1", "--json"]

    args = command_args(argv)
    assert args.run(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["copied"], first["skipped"], first["failed"]) == (3, 0, 0)
    assert first["keep"] == {"daily": 1, "weekly": 1, "manual": 1} and first["bytes"] > 0

    mirror_command.run(command_args(argv[:-1] + ["--kind", "daily"]))
    out = capsys.readouterr().out
    assert "1 intact" in out and "0 bytes" in out

    with pytest.raises(ConfigInvalid):
        mirror_command.run(command_args(argv[:4] + ["--keep", "0"]))


def test_a_mirror_run_tells_the_bucket_what_it_holds_for_the_status_page(source, real_backups,
                                                                          tmp_path):
    mirror(source, str(tmp_path / "mirror"), keep=1)
    at, keys = mirror_mod.held(source)
    newest = [backup_keys(real_backups, kind, what)[-1]
              for kind, what in (("manual", "backup"), ("manual", "globals"), ("daily", "backup"))]
    assert keys == sorted(newest)
    seen = status.reported_mirror(source)  # what the watchdog's page counts as the local copy
    assert (seen.medium, seen.error) == ("local disk", "") and at in seen.url
    assert sorted(b.key for b in seen.backups) == keys
    later = datetime.fromisoformat(at).timestamp() + 49 * 3600
    assert "49 h old" in status.reported_mirror(source, now=later).error


def test_a_source_that_refuses_the_mirror_report_still_gets_mirrored(source, oss_server, tmp_path,
                                                                      caplog):
    oss_server.inject(Fault(method="PUT", key_prefix=f"{PREFIX}status/", status=403, times=None))
    report = mirror(source, str(tmp_path / "mirror"), keep=1)
    assert not report.failed and report.summary()["copied"] == 3
    assert "the status page will not count this copy" in caplog.text
    assert mirror_mod.held(source) is None
