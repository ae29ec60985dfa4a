"""Retention and leftovers when backups are encrypted (`.sql.gz.age`, issue 15): a kind's
plain and encrypted backups are one set counted together (a rotation from plain to
encrypted keeps the newest N, oldest first), their sidecars and claims of any generation
go with them, and what a killed encrypted backup leaves is cleaned by the next run (the
real SIGKILLs run plain and encrypted in test_backup_signals.py). Against the local OSS
server and a directory, with real backups where it matters."""
import json
import os
import time

import pytest

from l2c_backup import age, config, leftovers, names
from l2c_backup.backup import run_backup
from l2c_backup.prune import (CLAIM_SUFFIX, INCOMPLETE_AFTER_SECONDS, Backup, Claim, Incomplete,
                              claim_owner, parse, plan, prune, sidecar_owner, slot_end, survey)
from l2c_backup.storage import open_storage
from test_backup_signals import open_uploads
from test_prune import oss_env, oss_storage

HOUR = 3600
DAY = 24 * HOUR
PREFIX = "db-backups/"


def daily_key(n, encrypted=False):
    return (f"{PREFIX}daily/backup_2026-{1 + n // 28:02d}-{1 + n % 28:02d}"
            + (names.AGE_SUFFIX if encrypted else names.SUFFIX))


def put_daily(storage, numbers, encrypted=False):
    """Backups as prune sees them: an object, its manifest, a verify file and the claim
    its run could not delete (WORM or a crash after the manifest)."""
    for n in numbers:
        key = daily_key(n, encrypted)
        storage.put_bytes(key, b"backup %d" % n)
        storage.put_bytes(key + ".manifest.json", b"{}")
        storage.put_bytes(key + ".verify.json", b'{"reason": "ok"}')
        storage.put_bytes(key + CLAIM_SUFFIX, json.dumps({"expires_at": 0}).encode())
        storage.put_bytes(key + ".1.claim", json.dumps({"expires_at": 0}).encode())


def stored(storage):
    return sorted(o.key for o in storage.list(f"{PREFIX}daily/"))


@pytest.fixture(params=["oss", "directory"])
def storage(request, tmp_path):
    if request.param == "oss":
        return oss_storage(request.getfixturevalue("oss_server"))
    return open_storage(str(tmp_path))


# -- names: an encrypted backup's sidecars and claims are its own --------------------------

def test_the_claims_of_an_encrypted_backup_of_any_generation_are_its_sidecars():
    for key in (daily_key(3, encrypted=True), f"{PREFIX}weekly/globals_2026-W02.sql.gz.age"):
        for claim in (key + CLAIM_SUFFIX, key + ".1.claim", key + ".12.claim"):
            assert sidecar_owner(claim) == key
            assert claim_owner(claim) == key
            assert parse(PREFIX, claim) is None
        for sidecar in (key + ".manifest.json", key + ".verify.json"):
            assert sidecar_owner(sidecar) == key and claim_owner(sidecar) is None


def test_an_encrypted_globals_backup_has_the_stamp_of_its_plain_twin():
    for kind, stamp in (("daily", "2026-01-02"), ("weekly", "2026-W02"),
                        ("manual", "2026-01-02T03-04-05")):
        plain = parse(PREFIX, f"{PREFIX}{kind}/globals_{stamp}.sql.gz")
        encrypted = parse(PREFIX, f"{PREFIX}{kind}/globals_{stamp}.sql.gz.age")
        assert (encrypted.kind, encrypted.group, encrypted.stamp) == (kind, "globals", stamp)
        assert encrypted.stamp == plain.stamp
        assert slot_end(encrypted) == slot_end(plain) is not None


def test_an_expired_claim_of_an_encrypted_backup_whose_run_died_is_removed_in_time():
    """A claim prune cannot tie to a slot is left alone for ever: the encrypted one must be
    read, and its slot's end known, like a plain one's."""
    key = daily_key(3, encrypted=True)  # 2026-01-04, Asia/Shanghai
    end = slot_end(parse(PREFIX, key))
    claim = Claim(key + ".1.claim", expires_at=end - 20 * HOUR)

    def actions(now):
        return {d.key: d.action for d in plan([], {"daily": 1}, [claim.key], PREFIX, [],
                                              {claim.key: claim}, now)}

    assert actions(end + INCOMPLETE_AFTER_SECONDS - HOUR) == {claim.key: "wait"}
    assert actions(end + INCOMPLETE_AFTER_SECONDS) == {claim.key: "delete"}


def test_a_run_holding_the_claim_of_an_encrypted_object_without_manifest_keeps_it():
    key = daily_key(3, encrypted=True)
    now = slot_end(parse(PREFIX, key)) + 30 * DAY  # long past the object's safe age
    obj = Incomplete(key, last_modified=now - 2 * DAY)
    claim = Claim(key + ".2.claim", expires_at=now + HOUR)  # a takeover, still running

    [decision] = plan([], {"daily": 1}, [claim.key], PREFIX, [obj], {claim.key: claim}, now)

    assert (decision.key, decision.action) == (key, "wait")
    assert "holds its claim" in decision.reason and decision.sidecars == [claim.key]


def test_plain_and_encrypted_backups_of_a_kind_are_counted_together():
    backups = [Backup(daily_key(n), "daily", "", parse(PREFIX, daily_key(n)).stamp)
               for n in range(3)]
    backups += [Backup(daily_key(n, True), "daily", "", parse(PREFIX, daily_key(n, True)).stamp)
                for n in range(3, 6)]
    decisions = {d.key: d.action for d in plan(backups, {"daily": 4})}
    assert decisions == {**{daily_key(n): "delete" for n in (0, 1)}, daily_key(2): "keep",
                         **{daily_key(n, True): "keep" for n in range(3, 6)}}


# -- against storage: a rotation from plain to encrypted ------------------------------------

def test_a_rotation_to_encryption_keeps_the_newest_n_oldest_first_with_their_sidecars(storage):
    put_daily(storage, range(4))
    put_daily(storage, range(4, 7), encrypted=True)
    listed = stored(storage)

    decisions = {d.key: d for d in prune(storage, ["daily"], {"daily": 4})}

    gone = [daily_key(n) for n in range(3)]
    for key in gone:
        assert decisions[key].action == "delete" and decisions[key].outcome.startswith("deleted")
        assert sorted(decisions[key].sidecars) == sorted(
            key + s for s in (".manifest.json", ".verify.json", CLAIM_SUFFIX, ".1.claim"))
    kept = [daily_key(3)] + [daily_key(n, True) for n in range(4, 7)]
    assert [k for k in kept if decisions[k].action == "keep"] == kept
    assert stored(storage) == [k for k in listed if not any(k.startswith(g) for g in gone)]
    backups, _ = survey(storage, ["daily"])
    assert sorted(b.key for b in backups) == sorted(kept)


def test_the_rotation_continues_into_the_encrypted_backups_once_the_plain_ones_are_gone(storage):
    put_daily(storage, range(2))
    put_daily(storage, range(2, 6), encrypted=True)

    prune(storage, ["daily"], {"daily": 3})

    assert [k for k in stored(storage) if names.is_backup_object(k)] == \
        [daily_key(n, True) for n in range(3, 6)]
    assert all(k.startswith(tuple(daily_key(n, True) for n in range(3, 6)))
               for k in stored(storage)), stored(storage)  # no sidecar of a plain one is left


def test_an_encrypted_object_without_manifest_is_cleaned_with_its_claims_past_the_safe_age(
        tmp_path):
    storage = open_storage(str(tmp_path))
    put_daily(storage, range(2), encrypted=True)
    dead = daily_key(7, encrypted=True)
    storage.put_bytes(dead, b"age-encryption.org/v1 ... killed before its manifest")
    storage.put_bytes(dead + ".1.claim", json.dumps({"expires_at": 0}).encode())
    old = time.time() - INCOMPLETE_AFTER_SECONDS - HOUR
    os.utime(tmp_path / dead, (old, old))

    decisions = {d.key: d for d in prune(storage, ["daily"], {"daily": 5})}

    assert decisions[dead].what == "incomplete" and decisions[dead].action == "delete"
    assert decisions[dead].sidecars == [dead + ".1.claim"]
    assert not any(k.startswith(dead) for k in stored(storage))


# -- real backups: plain, then encrypted, pruned after each backup --------------------------

def recipient():
    return age.generate()[1]


def test_real_backups_rotating_to_encryption_keep_the_newest_on_oss_and_a_directory(
        oss_server, tmp_path, pg_cluster, seeded_db):
    to = recipient()
    for env in (dict(oss_env(oss_server), DATABASE_URL=pg_cluster.url(seeded_db)),
                {"DATABASE_URL": pg_cluster.url(seeded_db), "BACKUP_TARGET": str(tmp_path)}):
        env["KEEP_MANUAL"] = "3"
        cfg = config.load(env)
        storage = open_storage(cfg.target, cfg.oss)
        made = [run_backup(cfg, "manual")["backups"][0]["key"] for _ in range(2)]
        cfg = config.load(dict(env, BACKUP_AGE_RECIPIENTS=to))
        made += [run_backup(cfg, "manual")["backups"][0]["key"] for _ in range(3)]
        assert [names.is_encrypted_key(k) for k in made] == [False, False, True, True, True]

        listed = sorted(o.key for o in storage.list(f"{PREFIX}manual/"))

        # each backup pruned its kind: the newest three, whichever their kind of object
        assert listed == sorted(k + s for k in made[2:] for s in ("", ".manifest.json")), listed
        with pytest.raises(FileNotFoundError):
            b"".join(storage.open(made[0]))


# -- leftovers: what a SIGKILLed encrypted backup leaves -----------------------------------

@pytest.mark.parametrize("key", [
    daily_key(1, encrypted=True),
    daily_key(1, encrypted=True) + ".manifest.json",
    daily_key(1, encrypted=True) + ".verify.json",
    daily_key(1, encrypted=True) + ".3.claim",
    f"{PREFIX}weekly/globals_2026-W02.sql.gz.age",
    f"{PREFIX}weekly/globals_2026-W02.sql.gz.age.manifest.json",
    f"{PREFIX}manual/billing/backup_2026-01-02T03-04-05-1.sql.gz.age",
])
def test_leftovers_knows_an_encrypted_backups_writes_as_ours(key):
    assert leftovers._ours(PREFIX, key)


@pytest.mark.parametrize("key", [
    f"{PREFIX}daily/backup_notadate.sql.gz.age",
    f"{PREFIX}daily/someone.sql.gz.age",
    f"{PREFIX}daily/backup_2026-01-02.age",
    "other/daily/backup_2026-01-02.sql.gz.age",
])
def test_leftovers_leaves_encrypted_looking_names_that_are_not_ours(key):
    assert not leftovers._ours(PREFIX, key)


def test_leftovers_finds_the_backup_key_even_when_the_prefix_looks_like_one():
    """Cutting at the first `.sql.gz.` cut inside such a prefix and lost every upload."""
    prefix = "dumps.sql.gz.d/"
    for key in (f"{prefix}daily/backup_2026-01-02.sql.gz", f"{prefix}daily/backup_2026-01-02.sql.gz.age",
                f"{prefix}daily/backup_2026-01-02.sql.gz.age.manifest.json"):
        assert leftovers._ours(prefix, key), key
    assert not leftovers._ours(prefix, f"{prefix}daily/notes.sql.gz.age")


def test_an_old_multipart_upload_of_an_encrypted_backup_is_aborted_a_young_one_kept(
        oss_server, bucket):
    storage = oss_storage(oss_server)
    ours = bucket.init_multipart_upload(daily_key(1, encrypted=True)).upload_id
    other = bucket.init_multipart_upload(f"{PREFIX}daily/backup_notadate.sql.gz.age").upload_id

    assert leftovers.clean(storage, leftovers.safe_age(0)) == []
    removed = leftovers.clean(storage, 0)

    assert len(removed) == 1 and ours in removed[0]
    assert [u for _, u in open_uploads(bucket)] == [other]
