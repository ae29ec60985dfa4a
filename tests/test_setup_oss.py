"""`l2c-backup setup-oss` against the local OSS server: plan first, apply, idempotent."""
import argparse
import copy
import json
from pathlib import Path

import oss2
import pytest
from oss2.models import (BucketLifecycle, BucketVersioningConfig, LifecycleExpiration, LifecycleRule,
                         ReplicationRule, StorageTransition)

from l2c_backup import oss_setup, policies
from l2c_backup.commands import setup_oss
from l2c_local.oss import Fault
from oss_fixtures import BUCKET, bucket_for

DR = "l2c-backups-dr"
UPLOADS, UPLOADS_DR = "l2c-uploads", "l2c-uploads-dr"
ACCOUNT = "1234567890123456"
PRINCIPAL = f"arn:sts::{ACCOUNT}:assumed-role/l2c-backup-fc/*"
SERVER_IP = "203.0.113.7"
VPC = "vpc-bp1l2ctest"
REPO = Path(__file__).resolve().parents[1]
WORM_HINT = "would lock 30-day retention — irreversible; re-run with --yes-lock-worm"
# Settings a developer's shell might carry that would change what these tests mean.
UNSET = ("OSS_REGION", "OSS_DR_REGION", "OSS_BACKUP_PREFIX", "WORM_DAYS", "NONCURRENT_VERSION_DAYS",
         "BUCKET_POLICY_FILE", "ROLE_NAME", "OSS_UPLOADS_DR_BUCKET", "OSS_UPLOADS_REPLICATION",
         "OSS_SECURITY_TOKEN", "ALIBABA_CLOUD_SECURITY_TOKEN", "BACKUP_TARGET")


@pytest.fixture
def env(monkeypatch, oss_server):
    """The environment of an operator setting up the local server: both endpoints are the
    same server (it has one region), an uploads bucket the application already has."""
    oss_server.create_bucket(UPLOADS)
    for name in UNSET:
        monkeypatch.delenv(name, raising=False)
    values = {"OSS_ENDPOINT": oss_server.endpoint, "OSS_DR_ENDPOINT": oss_server.endpoint,
              "OSS_ACCESS_KEY_ID": oss_server.access_key_id,
              "OSS_ACCESS_KEY_SECRET": oss_server.access_key_secret,
              "OSS_BACKUP_BUCKET": BUCKET, "OSS_DR_BUCKET": DR, "OSS_UPLOADS_BUCKET": UPLOADS,
              "ACCOUNT_ID": ACCOUNT, "ROLE_PRINCIPAL": PRINCIPAL, "SERVER_IP": SERVER_IP,
              "VPC_ID": VPC}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def setup(capsys, *argv):
    """Runs `l2c-backup setup-oss ARGV` (parser built from the module) and returns its output."""
    parser = argparse.ArgumentParser(prog="l2c-backup")
    setup_oss.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["setup-oss", *argv])
    assert args.run(args) == 0
    return capsys.readouterr().out


class Writes:
    """Counts the write requests (PUT, POST, DELETE) the server receives from now on."""

    def __init__(self, server):
        self.faults = [server.inject(Fault(method=m, skip=10**9, times=None))
                       for m in ("PUT", "POST", "DELETE")]

    @property
    def count(self):
        return sum(f.seen for f in self.faults)


def snapshot(server):
    """Everything setup may touch, straight from the server's store (not through the code
    under test): buckets, versioning, WORM and every stored configuration."""
    with server.store.lock:
        return {name: (b.versioning, dict(b.worm), dict(b.configs))
                for name, b in server.store.buckets.items()}


def expected_policy(template_path=REPO / "deploy" / "bucket-policy.json", **extra):
    text = Path(template_path).read_text()
    values = {"BUCKET": BUCKET, "ACCOUNT_ID": ACCOUNT, "ROLE_PRINCIPAL": PRINCIPAL,
              "SERVER_IP": SERVER_IP, "VPC_ID": VPC, "DR_BUCKET": DR, **extra}
    for name, value in values.items():
        text = text.replace("${%s}" % name, value)
    return json.loads(text)


def worm_of(bucket):
    try:
        return bucket.get_bucket_worm()
    except oss2.exceptions.ServerError as exc:
        assert exc.status == 404
        return None


# -- a first run, and a second -------------------------------------------------------------

def test_first_run_creates_and_configures_everything(oss_server, env, capsys):
    out = setup(capsys, "--yes-lock-worm")

    primary, dr = bucket_for(oss_server, BUCKET), bucket_for(oss_server, DR)
    for name in (BUCKET, DR, UPLOADS, UPLOADS_DR):
        assert bucket_for(oss_server, name).get_bucket_versioning().status == "Enabled", name
    for b in (primary, dr):
        assert b.get_bucket_encryption().sse_algorithm == "AES256"
        (rule,) = b.get_bucket_lifecycle().rules
        assert (rule.id, rule.prefix, rule.status) == ("l2c-db-backups", "db-backups/", "Enabled")
        assert [(t.days, t.storage_class) for t in rule.storage_transitions] == [(30, "IA"), (90, "Archive")]
        assert rule.noncurrent_version_expiration.noncurrent_days == 30
        assert rule.abort_multipart_upload.days == 7
        assert rule.expiration.expired_detete_marker is True
    worm = primary.get_bucket_worm()
    assert (worm.state, worm.retention_period_days) == ("Locked", 30)
    assert worm_of(dr) is None  # WORM is the primary's (PLAN §8)
    assert json.loads(primary.get_bucket_policy().policy) == expected_policy()
    (rep,) = primary.get_bucket_replication().rule_list
    assert (rep.target_bucket_name, rep.target_bucket_location) == (DR, "oss-cn-shanghai")
    assert (rep.prefix_list, rep.action_list) == (["db-backups/"], ["PUT"])
    assert rep.is_enable_historical_object_replication is True
    (up,) = bucket_for(oss_server, UPLOADS).get_bucket_replication().rule_list
    assert (up.target_bucket_name, up.prefix_list, up.action_list) == (UPLOADS_DR, [], ["PUT"])
    assert "applied; a fresh read finds nothing left to change" in out

    # The replication acts: a new backup reaches the DR bucket.
    primary.put_object("db-backups/daily/backup_2026-01-20.sql.gz", b"dump")
    oss_server.wait_idle()
    assert dr.get_object("db-backups/daily/backup_2026-01-20.sql.gz").read() == b"dump"


def test_plan_is_printed_before_anything_is_applied(env, capsys):
    out = setup(capsys, "--yes-lock-worm")

    plan, _, applied = out.partition("applying ")
    for line in ("l2c-backups versioning: enable: never enabled -> Enabled",
                 "l2c-backups lifecycle: add: rule l2c-db-backups",
                 "l2c-backups policy: set: set from ",
                 "l2c-backups WORM: initiate and lock: initiate a 30-day retention policy, then lock it",
                 "bucket l2c-backups-dr: create",
                 "l2c-backups replication: add: l2c-backups/db-backups/ -> l2c-backups-dr (oss-cn-shanghai), PUT only",
                 "l2c-uploads replication: add"):
        assert line in plan
    assert "why: " in plan
    assert "done: l2c-backups WORM: initiate and lock" in applied
    # Versioning first, then WORM (FACTS.md), and the DR bucket versioned before replication.
    assert plan.index("l2c-backups versioning") < plan.index("l2c-backups WORM")
    assert plan.index("l2c-backups-dr versioning") < plan.index("l2c-backups replication")
    assert applied.index("l2c-backups versioning") < applied.index("l2c-backups WORM")


def test_a_second_run_plans_nothing_and_sends_no_write(oss_server, env, capsys):
    setup(capsys, "--yes-lock-worm")
    before = snapshot(oss_server)
    writes = Writes(oss_server)

    out = setup(capsys, "--yes-lock-worm")

    assert writes.count == 0
    assert "plan: nothing to change" in out
    assert "applying" not in out
    assert snapshot(oss_server) == before


def test_dry_run_prints_the_plan_and_changes_nothing(oss_server, env, capsys):
    before = snapshot(oss_server)
    writes = Writes(oss_server)

    out = setup(capsys, "--dry-run", "--yes-lock-worm")

    assert writes.count == 0
    assert snapshot(oss_server) == before
    assert DR not in snapshot(oss_server)
    assert "(dry run: nothing is applied)" in out
    assert "bucket l2c-backups-dr: create" in out
    assert "l2c-backups WORM: initiate and lock" in out
    assert "applying" not in out


def test_json_output_lists_steps_and_outcomes(oss_server, env, capsys):
    result = json.loads(setup(capsys, "--json"))

    assert result["dry_run"] is False and result["lock_worm"] is False
    steps = {(s["resource"], s["action"]): s for s in result["steps"]}
    assert steps[("l2c-backups WORM", "initiate and lock")]["blocked"]
    assert steps[("bucket l2c-backups-dr", "create")]["blocked"] == ""
    assert result["changes"] == len([s for s in result["steps"] if not s["blocked"]])
    assert {a["outcome"] for a in result["applied"]} == {"done", "skipped: " + oss_setup.WORM_FLAG}
    assert result["remaining"] == []

    again = json.loads(setup(capsys, "--json", "--yes-lock-worm"))
    assert [(s["resource"], s["action"]) for s in again["steps"]] == [("l2c-backups WORM", "initiate and lock")]


# -- WORM ------------------------------------------------------------------------------

def test_without_yes_lock_worm_worm_is_not_initiated_and_the_output_says_why(oss_server, env, capsys):
    out = setup(capsys)

    assert worm_of(bucket_for(oss_server)) is None
    assert f"l2c-backups WORM: initiate and lock: SKIPPED: {WORM_HINT}" in out
    assert "needs --yes-lock-worm" in out
    # Everything else was done; a re-run without the flag still changes nothing else.
    assert bucket_for(oss_server).get_bucket_versioning().status == "Enabled"
    writes = Writes(oss_server)
    again = setup(capsys)
    assert writes.count == 0
    assert "plan: nothing to change" in again and WORM_HINT in again

    setup(capsys, "--yes-lock-worm")
    assert worm_of(bucket_for(oss_server)).state == "Locked"


def test_an_in_progress_worm_policy_is_reported_and_locked_only_when_confirmed(oss_server, env, capsys):
    primary = bucket_for(oss_server)
    primary.put_bucket_versioning(BucketVersioningConfig("Enabled"))
    worm_id = primary.init_bucket_worm(30).worm_id

    out = setup(capsys)

    assert "a retention policy is initiated but not locked" in out and worm_id in out
    assert "24 hours" in out
    assert f"l2c-backups WORM: lock: SKIPPED: lock the InProgress 30-day policy {worm_id}" in out
    assert worm_of(primary).state == "InProgress"

    setup(capsys, "--yes-lock-worm")
    worm = worm_of(primary)
    assert (worm.worm_id, worm.state, worm.retention_period_days) == (worm_id, "Locked", 30)


def test_an_in_progress_worm_on_an_unversioned_bucket_is_aborted_so_versioning_comes_first(
        oss_server, env, capsys):
    primary = bucket_for(oss_server)
    old_id = primary.init_bucket_worm(30).worm_id  # versioning never enabled

    dry = setup(capsys)
    assert "refuses to enable versioning" in dry
    assert "l2c-backups WORM: abort: SKIPPED" in dry
    assert "l2c-backups WORM: lock" not in dry  # never lock a bucket that is not versioned yet
    assert worm_of(primary).worm_id == old_id

    out = setup(capsys, "--yes-lock-worm")
    assert out.index("l2c-backups WORM: abort") < out.index("l2c-backups versioning: enable") \
        < out.index("l2c-backups WORM: initiate and lock")
    assert primary.get_bucket_versioning().status == "Enabled"
    worm = worm_of(primary)
    assert worm.state == "Locked" and worm.worm_id != old_id


def test_a_locked_worm_is_never_lowered_and_extended_only_when_confirmed(oss_server, env, capsys,
                                                                          monkeypatch):
    primary = bucket_for(oss_server)
    primary.put_bucket_versioning(BucketVersioningConfig("Enabled"))
    worm_id = primary.init_bucket_worm(60).worm_id
    primary.complete_bucket_worm(worm_id)

    out = setup(capsys, "--yes-lock-worm")  # WORM_DAYS 30 < 60
    assert "locked at 60 days, longer than WORM_DAYS=30" in out
    assert worm_of(primary).retention_period_days == 60

    monkeypatch.setenv("WORM_DAYS", "90")
    out = setup(capsys)
    assert "l2c-backups WORM: extend: SKIPPED: locked 60 days -> 90 days" in out
    assert worm_of(primary).retention_period_days == 60
    setup(capsys, "--yes-lock-worm")
    assert worm_of(primary).retention_period_days == 90


# -- lifecycle, policy, replication details ----------------------------------------------

def test_other_lifecycle_rules_are_kept_and_a_changed_rule_is_replaced(oss_server, env, capsys):
    primary = bucket_for(oss_server)
    tmp = LifecycleRule("expire-tmp", "tmp/", expiration=LifecycleExpiration(days=1))
    drifted = LifecycleRule("l2c-db-backups", "db-backups/",
                            storage_transitions=[StorageTransition(days=60, storage_class="IA")])
    primary.put_bucket_lifecycle(BucketLifecycle([tmp, drifted]))

    out = setup(capsys)

    assert "l2c-backups lifecycle: replace: rule l2c-db-backups: prefix db-backups/, Enabled, IA at 60 days" in out
    assert "(the 1 other rule(s) kept as they are)" in out
    rules = {r.id: r for r in primary.get_bucket_lifecycle().rules}
    assert sorted(rules) == ["expire-tmp", "l2c-db-backups"]
    assert (rules["expire-tmp"].prefix, rules["expire-tmp"].expiration.days) == ("tmp/", 1)
    assert [(t.days, t.storage_class) for t in rules["l2c-db-backups"].storage_transitions] == \
        [(30, "IA"), (90, "Archive")]


def test_an_overlapping_lifecycle_rule_is_reported(oss_server, env, capsys):
    other = LifecycleRule("tier-db-backups", "db-backups/",
                          storage_transitions=[StorageTransition(days=30, storage_class="IA")])
    bucket_for(oss_server).put_bucket_lifecycle(BucketLifecycle([other]))

    out = setup(capsys)

    assert "warning: l2c-backups lifecycle: rule 'tier-db-backups' (prefix db-backups/) also acts on" in out


def test_a_changed_policy_is_replaced_and_an_equal_one_in_another_form_is_left(oss_server, env, capsys):
    primary = bucket_for(oss_server)
    primary.put_bucket_policy(json.dumps({"Version": "1", "Statement": []}))

    out = setup(capsys)
    assert "l2c-backups policy: replace: replace the current policy" in out
    assert json.loads(primary.get_bucket_policy().policy) == expected_policy()

    # The same policy written differently (order, single strings) is not a change.
    same = expected_policy()
    same["Statement"].reverse()
    for statement in same["Statement"]:
        statement["Action"].reverse()
    same["Statement"][0]["Principal"] = same["Statement"][0]["Principal"][0]
    primary.put_bucket_policy(json.dumps(same))
    writes = Writes(oss_server)
    assert "l2c-backups policy" not in setup(capsys)
    assert writes.count == 0


def test_policy_template_placeholders_are_filled_and_a_missing_one_blocks_only_the_policy(
        oss_server, env, capsys, monkeypatch, tmp_path):
    template = tmp_path / "policy.json"
    template.write_text(json.dumps({"Version": "1", "Statement": [{
        "Effect": "Allow", "Action": ["oss:GetObject"], "Principal": ["${ROLE_PRINCIPAL}"],
        "Resource": ["acs:oss:*:${ACCOUNT_ID}:${BUCKET}/${PREFIX}*"],
        "Condition": {"IpAddress": {"acs:SourceIp": ["${SERVER_IP}"]},
                      "StringEquals": {"acs:SourceVpc": ["${VPC_ID}"]}}}]}))
    monkeypatch.setenv("BUCKET_POLICY_FILE", str(template))
    monkeypatch.setenv("SERVER_IP", "203.0.113.7, 198.51.100.0/24")
    monkeypatch.delenv("VPC_ID")

    out = setup(capsys)
    assert f"l2c-backups policy: set: SKIPPED: from {template}" in out
    assert "needs ${VPC_ID}: set VPC_ID" in out
    with pytest.raises(oss2.exceptions.NoSuchBucketPolicy):
        bucket_for(oss_server).get_bucket_policy()
    assert bucket_for(oss_server).get_bucket_versioning().status == "Enabled"  # the rest was done

    monkeypatch.setenv("VPC_ID", VPC)
    setup(capsys)
    (statement,) = json.loads(bucket_for(oss_server).get_bucket_policy().policy)["Statement"]
    assert statement["Resource"] == [f"acs:oss:*:{ACCOUNT}:{BUCKET}/db-backups/*"]
    assert statement["Principal"] == [PRINCIPAL]
    assert statement["Condition"]["IpAddress"]["acs:SourceIp"] == ["203.0.113.7", "198.51.100.0/24"]
    assert statement["Condition"]["StringEquals"]["acs:SourceVpc"] == [VPC]


def test_without_a_policy_file_the_policy_is_the_one_policies_prints_for_the_prefix_in_force(
        oss_server, env, capsys, monkeypatch):
    monkeypatch.setenv("OSS_BACKUP_PREFIX", "pg/backups/")
    monkeypatch.delenv("ROLE_PRINCIPAL")
    monkeypatch.setenv("ROLE_NAME", "l2c-backup-fc")

    out = setup(capsys)

    assert "set from l2c-backup policies --kind bucket" in out
    applied = json.loads(bucket_for(oss_server).get_bucket_policy().policy)
    printed = policies.bucket_policy(policies.settings_from_env())
    assert applied == printed
    for statement in applied["Statement"]:
        assert statement["Principal"] == [PRINCIPAL]
        assert statement["Resource"] == [f"acs:oss:*:{ACCOUNT}:{BUCKET}/pg/backups/*"]
        assert set(statement["Action"]) == {"oss:PutObject", "oss:GetObject", "oss:DeleteObject",
                                            "oss:PutObjectTagging", "oss:GetObjectTagging",
                                            "oss:AbortMultipartUpload", "oss:ListParts",
                                            "oss:GetObjectVersion", "oss:DeleteObjectVersion",
                                            "oss:RestoreObject"}
    assert [st["Condition"] for st in applied["Statement"]] == [
        {"StringEquals": {"acs:SourceVpc": [VPC]}}, {"IpAddress": {"acs:SourceIp": [SERVER_IP]}}]


def test_a_different_replication_rule_is_reported_not_duplicated(oss_server, env, capsys):
    oss_server.create_bucket(DR)
    primary = bucket_for(oss_server)
    primary.put_bucket_replication(ReplicationRule(
        rule_id="console-made", target_bucket_name=DR, target_bucket_location="oss-cn-shanghai",
        prefix_list=["db-backups/"], action_list=[ReplicationRule.ALL]))

    out = setup(capsys)

    assert "l2c-backups replication: add" not in out
    assert "rule console-made to l2c-backups-dr differs (action ALL, want PUT)" in out
    assert "cannot edit a replication rule" in out
    assert [r.rule_id for r in primary.get_bucket_replication().rule_list] == ["console-made"]


def test_a_dr_bucket_outside_the_dr_region_is_reported(oss_server, env, capsys):
    setup(capsys)

    out = setup(capsys)  # the local server has one region: cn-hangzhou

    assert ("warning: bucket l2c-backups-dr: is in oss-cn-hangzhou, not oss-cn-shanghai: a bucket "
            "cannot move; this copy is then not off-site") in out


def test_a_missing_uploads_bucket_is_reported_not_created(oss_server, env, capsys, monkeypatch):
    monkeypatch.setenv("OSS_UPLOADS_BUCKET", "l2c-uploads-typo")

    out = setup(capsys)

    assert "bucket l2c-uploads-typo: does not exist" in out
    assert "l2c-uploads-typo" not in snapshot(oss_server)
    assert "l2c-uploads-typo-dr" not in snapshot(oss_server)


def test_uploads_are_optional(oss_server, env, capsys, monkeypatch):
    monkeypatch.delenv("OSS_UPLOADS_BUCKET")

    out = setup(capsys)

    assert "uploads" not in out
    assert UPLOADS_DR not in snapshot(oss_server)


# -- failures -----------------------------------------------------------------------------

def test_a_refused_step_stops_the_run_and_a_re_run_does_only_what_is_left(oss_server, env, capsys):
    oss_server.inject(Fault(method="PUT", bucket=BUCKET, query="policy", status=403, times=1))
    parser = argparse.ArgumentParser()
    setup_oss.add_parser(parser.add_subparsers())
    args = parser.parse_args(["setup-oss"])

    with pytest.raises(oss_setup.SetupFailed) as caught:
        args.run(args)
    assert "l2c-backups policy: set failed: 403 AccessDenied" in str(caught.value)
    assert caught.value.exit_code == 19
    assert DR not in snapshot(oss_server)  # later steps were not attempted
    capsys.readouterr()

    out = setup(capsys)
    assert "l2c-backups versioning" not in out.partition("applying")[0]
    assert "l2c-backups policy: set" in out and "bucket l2c-backups-dr: create" in out
    assert "applied; a fresh read finds nothing left to change" in out


def test_setup_specific_settings_are_checked(env, monkeypatch):
    monkeypatch.setenv("WORM_DAYS", "0")
    with pytest.raises(oss_setup.ConfigInvalid, match="WORM_DAYS"):
        oss_setup.desired_from_env()
    monkeypatch.setenv("WORM_DAYS", "30")
    monkeypatch.setenv("OSS_DR_BUCKET", "Not_A_Bucket")
    with pytest.raises(oss_setup.ConfigInvalid, match="OSS_DR_BUCKET"):
        oss_setup.desired_from_env()


def test_normalize_policy_ignores_order_and_single_strings():
    a = {"Version": "1", "Statement": [{"Effect": "Allow", "Action": ["oss:B", "oss:A"], "Resource": "r"},
                                        {"Effect": "Deny", "Action": "oss:C", "Resource": ["s"]}]}
    b = copy.deepcopy(a)
    b["Statement"].reverse()
    b["Statement"][1]["Action"] = ["oss:A", "oss:B"]
    b["Statement"][1]["Resource"] = ["r"]
    assert oss_setup.normalize_policy(a) == oss_setup.normalize_policy(json.dumps(b))
    b["Statement"][0]["Effect"] = "Allow"
    assert oss_setup.normalize_policy(a) != oss_setup.normalize_policy(b)


def test_the_cli_runs_setup_oss(oss_server, env, capsys):
    from l2c_backup import cli
    if "setup-oss" not in cli.build_parser()._subparsers._group_actions[0].choices:
        pytest.skip("setup-oss is not registered in cli.py yet")
    assert cli.main(["setup-oss", "--dry-run"]) == 0
    assert "bucket l2c-backups-dr: create" in capsys.readouterr().out


def test_v4_signatures_sign_each_bucket_for_its_own_region(oss_server, env, capsys, monkeypatch):
    # The local server has one region, so here the DR "region" is the same one.
    monkeypatch.setenv("OSS_REGION", oss_server.region)
    monkeypatch.setenv("OSS_DR_REGION", oss_server.region)

    out = setup(capsys, "--yes-lock-worm")

    assert "applied; a fresh read finds nothing left to change" in out
    assert "not off-site" not in setup(capsys)
    (rep,) = bucket_for(oss_server).get_bucket_replication().rule_list
    assert rep.target_bucket_location == f"oss-{oss_server.region}"
