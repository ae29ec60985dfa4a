"""`l2c-backup policies`: the role's RAM policy, its trust policy and the bucket policy,
computed from the settings; deploy/*.json are its output for the defaults."""
import argparse
import json
from pathlib import Path

import pytest

from l2c_backup import oss_setup, policies
from l2c_backup.commands import policies as command

ROOT = Path(__file__).resolve().parents[1]
ACCOUNT = "1234567890123456"
SETTINGS = {"ACCOUNT_ID": ACCOUNT, "OSS_BACKUP_BUCKET": "l2c-backups", "OSS_DR_BUCKET": "l2c-backups-dr",
            "L2C_VPC_ID": "vpc-bp1l2c", "L2C_LOG_PROJECT": "l2c-logs", "L2C_LOG_STORE": "l2c-backup",
            "SERVER_IP": "203.0.113.7"}


def run(capsys, environ, *argv):
    parser = argparse.ArgumentParser(prog="l2c-backup")
    command.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["policies", *argv])
    assert args.run(args, environ=environ) == 0
    return capsys.readouterr()


def documents(environ):
    return policies.policies(policies.settings_from_env(environ))


def actions(document):
    return {a for st in document["Statement"] for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])}


def resources(document):
    return [r for st in document["Statement"] for r in st["Resource"]]


@pytest.mark.parametrize("kind", policies.KINDS)
def test_the_committed_deploy_files_are_the_commands_output_for_the_defaults(capsys, kind):
    out = run(capsys, {}, "--kind", kind).out
    assert (ROOT / "deploy" / policies.FILES[kind]).read_text() == out, (
        f"deploy/{policies.FILES[kind]} drifted: regenerate it (deploy/README.md)")


def test_the_prefix_in_force_scopes_every_oss_grant(capsys):
    docs = documents(dict(SETTINGS, OSS_BACKUP_PREFIX="pg/nightly/"))
    text = json.dumps(docs)
    assert "db-backups" not in text
    object_resources = [r for doc in (docs["ram"], docs["bucket"]) for r in resources(doc) if r.count("/")]
    assert object_resources and all(r.endswith(":l2c-backups/pg/nightly/*") or r.endswith(":l2c-backups-dr/pg/nightly/*")
                                    for r in object_resources if r.startswith("acs:oss:"))
    listings = [st for st in docs["ram"]["Statement"] if "oss:ListObjects" in st["Action"]]
    assert len(listings) == 2 and all(st["Condition"] == {"StringLike": {"oss:Prefix": ["pg/nightly/*"]}}
                                      for st in listings)


@pytest.mark.parametrize("encryption", [None, "AES256"])
def test_kms_is_granted_only_with_sse_kms(encryption):
    environ = dict(SETTINGS, **({"OSS_SERVER_SIDE_ENCRYPTION": encryption} if encryption else {}))
    assert not any(a.startswith("kms:") for a in actions(documents(environ)["ram"]))


def test_sse_kms_grants_data_keys_and_decrypt_on_the_key_in_force():
    ram = documents(dict(SETTINGS, OSS_SERVER_SIDE_ENCRYPTION="KMS", OSS_SSE_KMS_KEY_ID="key-hzz6a1b2c3",
                         OSS_REGION="cn-hangzhou"))["ram"]
    (kms,) = [st for st in ram["Statement"] if any(a.startswith("kms:") for a in st["Action"])]
    assert sorted(kms["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey"]
    assert kms["Resource"] == [f"acs:kms:cn-hangzhou:{ACCOUNT}:key/key-hzz6a1b2c3"]
    any_key = documents(dict(SETTINGS, OSS_SERVER_SIDE_ENCRYPTION="KMS"))["ram"]
    assert f"acs:kms:cn-hangzhou:{ACCOUNT}:key/*" in resources(any_key)


def test_the_role_may_describe_the_vpc_fc_binds_and_the_bucket_admits_that_vpc():
    docs = documents(SETTINGS)
    assert {"vpc:DescribeVSwitchAttributes", "vpc:DescribeVpcAttribute"} <= actions(docs["ram"])
    sources = [st["Condition"] for st in docs["bucket"]["Statement"]]
    assert {"StringEquals": {"acs:SourceVpc": ["vpc-bp1l2c"]}} in sources
    assert {"IpAddress": {"acs:SourceIp": ["203.0.113.7"]}} in sources


def test_the_role_reaches_the_alert_destination_and_its_logstore():
    ram = documents(SETTINGS)["ram"]
    assert f"acs:fc:*:{ACCOUNT}:services/l2c-backup.*/functions/alert" in resources(ram)
    assert f"acs:log:*:{ACCOUNT}:project/l2c-logs/logstore/l2c-backup" in resources(ram)
    assert not any(a.endswith(":*") for a in actions(ram))  # no wildcard verbs
    assert all(st["Effect"] == "Allow" for st in ram["Statement"])


def test_the_backup_function_may_invoke_itself_and_no_other_function():
    """One invocation per database (fanout.py): the role may invoke the backup function
    of either deployment (s.yaml's FC 2.0 service, template.yml's FC 3.0 function) and the
    alert destination, nothing else."""
    ram = documents(SETTINGS)["ram"]
    invokes = [r for st in ram["Statement"] if "fc:InvokeFunction" in st["Action"] for r in st["Resource"]]
    assert sorted(invokes) == sorted([f"acs:fc:*:{ACCOUNT}:services/l2c-backup.*/functions/alert",
                                      f"acs:fc:*:{ACCOUNT}:services/l2c-backup.*/functions/backup",
                                      f"acs:fc:*:{ACCOUNT}:functions/l2c-backup-backup"])
    assert not any("*" in r.rsplit("/", 1)[1] for r in invokes)


def test_only_function_compute_may_assume_the_role():
    (statement,) = documents(SETTINGS)["trust"]["Statement"]
    assert statement == {"Effect": "Allow", "Action": "sts:AssumeRole",
                         "Principal": {"Service": ["fc.aliyuncs.com"]}}


def test_the_bucket_policy_names_the_backup_role_of_the_account():
    bucket = documents(SETTINGS)["bucket"]
    principals = {p for st in bucket["Statement"] for p in st["Principal"]}
    assert principals == {f"arn:sts::{ACCOUNT}:assumed-role/l2c-backup-fc/*"}


def test_setup_oss_applies_the_same_bucket_policy_the_command_prints(monkeypatch):
    """setup-oss fills deploy/bucket-policy.json's placeholders; the result is what
    `policies` computes from the same settings: one policy, not two."""
    monkeypatch.chdir(ROOT)
    environ = {"OSS_BACKUP_BUCKET": "l2c-backups", "OSS_DR_BUCKET": "l2c-backups-dr", "ACCOUNT_ID": ACCOUNT,
               "ROLE_NAME": "l2c-backup-fc", "VPC_ID": "vpc-bp1l2c", "SERVER_IP": "203.0.113.7"}
    desired = oss_setup.desired_from_env(environ)
    assert desired.policy_problem == ""
    assert oss_setup.normalize_policy(desired.policy) == oss_setup.normalize_policy(documents(environ)["bucket"])


def test_the_command_prints_all_three_and_names_what_is_left_to_fill_in(capsys):
    got = run(capsys, {"OSS_BACKUP_BUCKET": "l2c-backups"}, "--json")
    docs = json.loads(got.out)
    assert set(docs) == {"ram", "trust", "bucket"}
    assert "${ACCOUNT_ID} (set ACCOUNT_ID)" in got.err and "${VPC_ID} (set L2C_VPC_ID)" in got.err
    assert "${BUCKET}" not in got.err
    complete = run(capsys, SETTINGS, "--json")
    assert complete.err == "" and "${" not in complete.out
