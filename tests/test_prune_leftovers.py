"""Retention and `restore --latest` around what a dead or failed run leaves behind: objects
without a manifest, claims (`<key>.claim`), and sidecars still under WORM retention whose
backup is not. Against the local OSS server (versioning, WORM, its adjustable clock) and a
directory, through the library and the CLI."""
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone

import oss2

from l2c_backup import config, errors, names
from l2c_backup.backup import run_backup
from l2c_backup.prune import (CLAIM_SUFFIX, INCOMPLETE_AFTER_SECONDS, Claim, Incomplete, parse,
                              plan, prune, sidecar_owner, slot_end, summary, survey)
from l2c_backup.restore import find_backup
from l2c_backup.storage import open_storage
from l2c_local import resolve
from l2c_local.oss import Fault
from test_prune import daily_key, live_backups, oss_env, oss_storage, put_daily

HOUR = 3600
DAY = 24 * HOUR
PREFIX = "db-backups/"


def cli_env(server=None, **extra):
    env = dict(oss_env(server) if server else {}, PATH="/usr/bin:/bin", **extra)
    return resolve.child_env(env)


def run_cli(*args, env):
    return subprocess.run([sys.executable, "-m", "l2c_backup.cli", "prune", *args],
                          capture_output=True, text=True, env=env)


def put_claim(storage, key, expires_at):
    storage.put_bytes(key + CLAIM_SUFFIX, json.dumps({"expires_at": expires_at}).encode())


def iso(epoch):
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat()


def by_key(decisions):
    return {d.key: d for d in decisions}


# -- 1. an object without its manifest is not a backup ----------------------------------

def test_an_object_without_manifest_never_counts_toward_retention(oss_server):
    storage = oss_storage(oss_server)
    put_daily(storage, range(5))
    storage.put_bytes(daily_key(5), b"killed between the object and its manifest")

    decisions = by_key(prune(storage, ["daily"], {"daily": 3}))

    # the newest three *backups* stay: the manifest-less object is not one of them
    assert live_backups(storage) == [daily_key(n) for n in (2, 3, 4, 5)]
    assert decisions[daily_key(5)].action == "wait"
    assert "waiting for manifest" in decisions[daily_key(5)].reason


def test_restore_latest_never_picks_an_object_without_manifest_on_oss_or_a_directory(
        oss_server, tmp_path):
    for storage in (oss_storage(oss_server), open_storage(str(tmp_path))):
        put_daily(storage, range(3))
        storage.put_bytes(daily_key(3), b"its manifest PUT failed")
        backups, _ = survey(storage, ["daily"])
        assert daily_key(3) not in [b.key for b in backups]
        assert find_backup(storage, latest=True) == daily_key(2)
        assert find_backup(storage, latest=True, kind="daily") == daily_key(2)


def test_objects_without_manifest_are_cleaned_past_the_safe_age_and_young_ones_wait(oss_server,
                                                                                     bucket):
    storage = oss_storage(oss_server)
    put_daily(storage, range(3))
    dead = daily_key(10)  # a run killed a day and more ago; verify had found no manifest
    storage.put_bytes(dead, b"dead run")
    storage.put_bytes(dead + ".verify.json", b'{"reason": "manifest-missing"}')
    held = daily_key(12)  # as old, but its run still holds an unexpired claim
    storage.put_bytes(held, b"slow run, still going")
    oss_server.advance_time(INCOMPLETE_AFTER_SECONDS + HOUR)
    now = time.time() + INCOMPLETE_AFTER_SECONDS + HOUR  # the server's clock, moved on
    put_claim(storage, held, iso(now + HOUR))
    young = daily_key(11)  # a run that may be writing its manifest right now
    storage.put_bytes(young, b"just completed")

    report = summary(prune(storage, ["daily"], {"daily": 30}, now=now), dry_run=False)

    keys = [o.key for o in oss2.ObjectIteratorV2(bucket, prefix="db-backups/daily/")]
    assert dead not in keys and dead + ".verify.json" not in keys
    assert young in keys and held in keys and held + CLAIM_SUFFIX in keys
    objects = {o["key"]: o for o in report["objects"]}
    assert objects[dead]["action"] == "delete" and objects[dead]["outcome"] == "deleted"
    assert objects[dead]["sidecars"] == [dead + ".verify.json"]
    assert "no manifest" in objects[dead]["reason"]
    assert objects[young]["action"] == "wait" and "waiting for manifest" in objects[young]["reason"]
    assert objects[held]["action"] == "wait" and "claim" in objects[held]["reason"]
    assert (report["kept"], report["incomplete"], report["waiting"]) == (3, 1, 2)


def test_a_directory_cleans_an_old_object_without_manifest_through_the_cli(tmp_path):
    storage = open_storage(str(tmp_path))
    put_daily(storage, range(2))
    for n in (7, 8):
        storage.put_bytes(daily_key(n), b"no manifest")
    old = time.time() - INCOMPLETE_AFTER_SECONDS - HOUR
    os.utime(tmp_path / daily_key(7), (old, old))

    dry = run_cli("--from", str(tmp_path), "--dry-run", env=cli_env())
    assert dry.returncode == 0, dry.stderr
    assert (tmp_path / daily_key(7)).exists()
    done = run_cli("--from", str(tmp_path), env=cli_env())

    assert done.returncode == 0, done.stderr
    lines = {line.split()[1].rstrip(":"): line for line in done.stdout.splitlines()[:-1]}
    assert lines[daily_key(7)].startswith("delete ") and "no manifest" in lines[daily_key(7)]
    assert lines[daily_key(8)].startswith("wait ") and "waiting for manifest" in lines[daily_key(8)]
    assert "1 without manifest deleted, 1 waiting for manifest" in done.stdout.splitlines()[-1]
    assert not (tmp_path / daily_key(7)).exists() and (tmp_path / daily_key(8)).exists()
    assert live_backups(storage) == [daily_key(0), daily_key(1), daily_key(8)]


def test_prune_removes_what_a_killed_backup_left_once_no_run_can_own_it(tmp_path):
    """A `.partial-*` file is what a SIGKILLed write to a directory leaves (see
    test_backup_signals for the real kill); prune removes an old one, never a young one."""
    storage = open_storage(str(tmp_path))
    put_daily(storage, range(1))
    folder = tmp_path / PREFIX / "daily"  # named as DirectoryStorage.put_stream names them
    old_partial = folder / f".partial-{'a' * 32}-{daily_key(5).rsplit('/', 1)[1]}"
    young_partial = folder / f".partial-{'b' * 32}-{daily_key(6).rsplit('/', 1)[1]}"
    old_partial.write_bytes(b"half a backup")
    young_partial.write_bytes(b"a backup being written")
    old = time.time() - INCOMPLETE_AFTER_SECONDS - HOUR
    os.utime(old_partial, (old, old))

    dry = run_cli("--from", str(tmp_path), "--dry-run", env=cli_env())
    assert dry.returncode == 0 and old_partial.exists()
    done = run_cli("--from", str(tmp_path), "--json", env=cli_env())

    assert done.returncode == 0, done.stderr
    removed = json.loads(done.stdout)["unfinished_removed"]
    assert len(removed) == 1 and old_partial.name in removed[0]
    assert not old_partial.exists() and young_partial.exists()
    assert live_backups(storage) == [daily_key(0)]


def test_the_prune_after_each_backup_ignores_and_cleans_objects_without_manifest(
        tmp_path, pg_cluster, seeded_db):
    env = {"DATABASE_URL": pg_cluster.url(seeded_db), "BACKUP_TARGET": str(tmp_path),
           "KEEP_MANUAL": "2"}
    storage = open_storage(str(tmp_path))
    newer = "db-backups/manual/backup_2099-01-01T00-00-00.sql.gz"  # sorts after every backup
    dead = "db-backups/manual/backup_2020-01-01T00-00-00.sql.gz"
    for key in (newer, dead):
        storage.put_bytes(key, b"a run died before its manifest")
    old = time.time() - INCOMPLETE_AFTER_SECONDS - HOUR
    os.utime(tmp_path / dead, (old, old))

    made = [run_backup(config.load(env), "manual")["backups"][0]["key"] for _ in range(2)]

    manual = sorted(o.key for o in storage.list("db-backups/manual/") if o.key.endswith(".sql.gz"))
    assert manual == sorted(made + [newer])  # both backups kept: `newer` is not one
    assert find_backup(storage, latest=True) == made[-1]  # same second: "...-1" is newer


# -- 2. claims are sidecars ---------------------------------------------------------------

def test_a_claim_of_any_generation_is_a_sidecar_never_a_backup():
    key = daily_key(3)
    for claim in (key + CLAIM_SUFFIX, key + ".1.claim", key + ".12.claim"):  # claims.py's names
        assert sidecar_owner(claim) == key
        assert parse(PREFIX, claim) is None
    assert sidecar_owner(key) is None


def test_an_expired_claim_stays_while_a_run_of_its_slot_may_still_take_it_over():
    """claims.py never deletes a claim it does not hold: one deleted while a run takes it
    over lets a third run in. So prune waits until no run of that day can be going."""
    key = daily_key(3)  # 2026-01-04, Asia/Shanghai
    end = datetime(2026, 1, 4, 16, tzinfo=timezone.utc).timestamp()  # midnight in Shanghai
    assert slot_end(parse(PREFIX, key)) == end
    claim = Claim(key + CLAIM_SUFFIX, expires_at=end - 20 * HOUR)  # its run died that morning
    dead = Incomplete(key, last_modified=end - 22 * HOUR)

    def actions(now):
        return {d.key: d.action for d in plan([], {"daily": 1}, [claim.key], PREFIX, [dead],
                                              {claim.key: claim}, now)}

    assert actions(end + INCOMPLETE_AFTER_SECONDS - HOUR) == {key: "delete", claim.key: "wait"}
    assert actions(end + INCOMPLETE_AFTER_SECONDS) == {key: "delete"}  # the claim goes with it
    assert actions(end - 20 * HOUR + 60) == {key: "wait"}  # young: waits, its claim with it


def test_claims_go_with_their_backup_and_an_orphan_claim_is_removed_only_once_expired(oss_server,
                                                                                        bucket):
    storage = oss_storage(oss_server)
    put_daily(storage, range(4))
    now = time.time()
    put_claim(storage, daily_key(0), iso(now - DAY))  # left by a run that then completed
    put_claim(storage, daily_key(3), now + HOUR)
    put_claim(storage, daily_key(20), iso(now - HOUR))  # its run died before any object
    put_claim(storage, daily_key(21), now + HOUR)  # its run is dumping now
    storage.put_bytes(daily_key(22) + CLAIM_SUFFIX, b"not json")  # unreadable, but young
    put_claim(storage, daily_key(0) + ".1", iso(now - DAY))  # a takeover's, claims.py
    put_claim(storage, daily_key(23) + ".2", iso(now - HOUR))
    today = names.backup_key(PREFIX, "daily", names.now())
    put_claim(storage, today, iso(now - 60))  # expired, but today's runs may take it over

    backups, _ = survey(storage, ["daily"])
    assert sorted(b.key for b in backups) == [daily_key(n) for n in range(4)]
    decisions = by_key(prune(storage, ["daily"], {"daily": 2}))

    keys = {o.key for o in oss2.ObjectIteratorV2(bucket, prefix="db-backups/daily/")}
    for claim in (daily_key(0) + CLAIM_SUFFIX, daily_key(0) + ".1.claim"):
        assert claim not in keys and claim in decisions[daily_key(0)].sidecars  # went with it
    assert daily_key(23) + ".2.claim" not in keys
    assert today + CLAIM_SUFFIX in keys and decisions[today + CLAIM_SUFFIX].action == "wait"
    assert "may still take it over" in decisions[today + CLAIM_SUFFIX].reason
    assert daily_key(3) + CLAIM_SUFFIX in keys
    assert daily_key(20) + CLAIM_SUFFIX not in keys
    assert decisions[daily_key(20) + CLAIM_SUFFIX].action == "delete"
    assert daily_key(21) + CLAIM_SUFFIX in keys and daily_key(22) + CLAIM_SUFFIX in keys
    assert decisions[daily_key(21) + CLAIM_SUFFIX].action == "wait"
    assert decisions[daily_key(22) + CLAIM_SUFFIX].action == "wait"


# -- 3. WORM protects sidecars too ----------------------------------------------------------

def test_a_sidecar_under_worm_whose_backup_is_not_is_skipped_and_the_rest_of_the_plan_applied(
        oss_server, bucket):
    bucket.put_bucket_versioning(oss2.models.BucketVersioningConfig("Enabled"))
    storage = oss_storage(oss_server)
    put_daily(storage, range(6))
    bucket.put_object(daily_key(30) + ".manifest.json", b"{}")  # an orphan, past retention
    oss_server.advance_time(2 * DAY)  # all of these are now past a one-day retention
    bucket.complete_bucket_worm(bucket.init_bucket_worm(1).worm_id)
    for n in (0, 2):  # re-verified today: the verify file is younger than its backup
        bucket.put_object(daily_key(n) + ".verify.json", b'{"reason": "ok"}')
    bucket.put_object(daily_key(1) + CLAIM_SUFFIX, b'{"expires_at": 0}')  # a re-run's, today

    decisions = prune(storage, ["daily"], {"daily": 2})
    report = summary(decisions, dry_run=False)

    assert live_backups(storage) == [daily_key(4), daily_key(5)]  # the plan was applied whole
    keys = {o.key for o in oss2.ObjectIteratorV2(bucket, prefix="db-backups/daily/")}
    assert not any(daily_key(n) + ".manifest.json" in keys for n in range(4))
    assert daily_key(30) + ".manifest.json" not in keys
    locked = {daily_key(0) + ".verify.json", daily_key(2) + ".verify.json", daily_key(1) + CLAIM_SUFFIX}
    assert locked <= keys
    assert report["skipped"] == 3
    for d in decisions:
        for sidecar in d.sidecars_skipped:
            assert sidecar in locked and "WORM" in d.outcome and sidecar in d.outcome
    assert sorted(s for d in decisions for s in d.sidecars_skipped) == sorted(locked)


# -- 5. a failing prune: one line, its exit code ---------------------------------------------

def assert_one_line(result, *names):
    """The CLI's own report is its last stderr line (an alert may be logged before it):
    one line naming what failed, never a traceback."""
    assert "Traceback" not in result.stderr
    ours = [line for line in result.stderr.splitlines() if line.startswith("l2c-backup prune:")]
    assert len(ours) == 1 and result.stderr.strip().splitlines()[-1] == ours[0]
    assert all(name in ours[0] for name in names), ours[0]

def test_a_prune_refused_by_oss_ends_in_one_line_with_its_exit_code(oss_server):
    oss_server.inject(Fault(method="GET", query="list-type", status=403, times=None))
    result = run_cli("--kind", "daily", env=cli_env(oss_server))
    assert result.returncode == errors.StorageFailed.exit_code, result.stderr
    assert_one_line(result, "l2c-backups", "AccessDenied")


def test_a_prune_with_a_wrong_secret_ends_in_one_line_with_its_exit_code(oss_server):
    env = cli_env(oss_server)
    env["OSS_ACCESS_KEY_SECRET"] = "wrong-secret-value"
    result = run_cli(env=env)
    assert result.returncode == errors.StorageFailed.exit_code, result.stderr
    assert_one_line(result, "l2c-backups", "OSS_ACCESS_KEY_SECRET")
    assert "wrong-secret-value" not in result.stderr + result.stdout
