"""The RAM documents of a deploy, computed from the settings in force, so they cannot
drift from them: the function role's policy, its trust policy, and the backup bucket's
policy (PLAN §8). `l2c-backup policies` prints them; deploy/*.json are its output for
the defaults (tests/test_policies.py holds the files to that).

A value the settings do not give (the account id before it is known, the VPC id...) is
printed as a `${NAME}` placeholder: the output is then a template, which
`l2c-backup setup-oss` fills for the bucket policy and a person fills in the RAM console.

What the role needs is what the code calls (storage/oss.py, verify, prune, drill):
- on `<bucket>/<prefix>*`: PutObject (put, and every multipart step but abort; a
  tagging header on upload also needs PutObjectTagging), GetObject (get and head),
  DeleteObject (prune), Get/PutObjectTagging (the verify verdict), AbortMultipartUpload
  (a failed upload is aborted), ListParts, Get/DeleteObjectVersion (a claim's versions
  on a versioned bucket, claims.py), RestoreObject (Archive, archive.py); ListObjects and
  ListObjectVersions on the bucket, only under the prefix (listing for prune, verify
  --all, the watchdog, claims); ListMultipartUploads on the bucket (uploads a killed
  backup left, leftovers.py; it takes no prefix condition);
- reads of the DR bucket under the same prefix (the DR drill);
- fc:InvokeFunction on the `alert` function (the async failure destination);
- fc:InvokeFunction on the `backup` function itself (one invocation per database,
  fanout.py);
- log:PostLogStoreLogs on the service's logstore;
- vpc:DescribeVSwitchAttributes and vpc:DescribeVpcAttribute: FC checks them on the
  service role before it binds the service to a VPC;
- with OSS_SERVER_SIDE_ENCRYPTION=KMS only: kms:GenerateDataKey (uploads, a multipart
  upload's initiation) and kms:Decrypt (reads, and completing a multipart upload), on
  OSS_SSE_KMS_KEY_ID when given, else on the account's keys in the region.
"""
import json
import re
from dataclasses import dataclass

from . import config
from .oss_setup import OBJECT_ACTIONS, role_principal

DEFAULT_PREFIX = "db-backups/"
DEFAULT_REGION = "cn-hangzhou"
DEFAULT_ROLE = "l2c-backup-fc"  # the role s.yaml and template.yml name
SERVICE = "l2c-backup"  # the FC service (s.yaml)
KINDS = ("ram", "trust", "bucket")
FILES = {"ram": "ram-policy.json", "trust": "trust-policy.json", "bucket": "bucket-policy.json"}
KMS_ACTIONS = ["kms:GenerateDataKey", "kms:Decrypt"]
VPC_ACTIONS = ["vpc:DescribeVSwitchAttributes", "vpc:DescribeVpcAttribute"]
READ_ACTIONS = ["oss:GetObject", "oss:GetObjectTagging", "oss:RestoreObject"]  # DR drills
# What sets each placeholder (the one message that tells a person what to do).
SET_BY = {"ACCOUNT_ID": "ACCOUNT_ID", "BUCKET": "OSS_BACKUP_BUCKET", "DR_BUCKET": "OSS_DR_BUCKET",
          "VPC_ID": "L2C_VPC_ID", "LOG_PROJECT": "L2C_LOG_PROJECT", "LOG_STORE": "L2C_LOG_STORE",
          "ROLE_PRINCIPAL": "ACCOUNT_ID (or ROLE_PRINCIPAL)", "SERVER_IP": "SERVER_IP"}


def _placeholder(name):
    return "${%s}" % name


@dataclass
class PolicySettings:
    account_id: str
    region: str
    bucket: str
    prefix: str
    dr_bucket: str
    encryption: str  # "", AES256 or KMS
    kms_key_id: str
    vpc_id: str
    log_project: str
    log_store: str
    role_principal: str
    server_ip: str


def settings_from_env(environ=None):
    """The settings in force (empty means unset, as everywhere); what they leave out
    becomes a placeholder. The VPC and log names are the ones s.yaml reads (L2C_*);
    setup-oss's VPC_ID is taken too."""
    environ = config.environment(environ)
    config.check_env(environ)
    account = environ.get("ACCOUNT_ID", "")
    principal = environ.get("ROLE_PRINCIPAL") or (
        role_principal(account, environ.get("ROLE_NAME", DEFAULT_ROLE)) if account
        else _placeholder("ROLE_PRINCIPAL"))
    return PolicySettings(
        account_id=account or _placeholder("ACCOUNT_ID"),
        region=environ.get("OSS_REGION", DEFAULT_REGION),
        bucket=environ.get("OSS_BACKUP_BUCKET", _placeholder("BUCKET")),
        prefix=environ.get("OSS_BACKUP_PREFIX", DEFAULT_PREFIX),
        dr_bucket=environ.get("OSS_DR_BUCKET", _placeholder("DR_BUCKET")),
        encryption=environ.get("OSS_SERVER_SIDE_ENCRYPTION", ""),
        kms_key_id=environ.get("OSS_SSE_KMS_KEY_ID", ""),
        vpc_id=environ.get("L2C_VPC_ID") or environ.get("VPC_ID") or _placeholder("VPC_ID"),
        log_project=environ.get("L2C_LOG_PROJECT", _placeholder("LOG_PROJECT")),
        log_store=environ.get("L2C_LOG_STORE", _placeholder("LOG_STORE")),
        role_principal=principal,
        server_ip=environ.get("SERVER_IP", _placeholder("SERVER_IP")))


def _oss(s, bucket, key_pattern=None):
    return f"acs:oss:*:{s.account_id}:{bucket}" + (f"/{key_pattern}" if key_pattern is not None else "")


def _listing(s, bucket, actions=("oss:ListObjects",)):
    return {"Effect": "Allow", "Action": list(actions), "Resource": [_oss(s, bucket)],
            "Condition": {"StringLike": {"oss:Prefix": [f"{s.prefix}*"]}}}


def ram_policy(s):
    """The function role's policy (RAM): least privilege for what the functions call."""
    statements = [
        {"Effect": "Allow", "Action": list(OBJECT_ACTIONS),
         "Resource": [_oss(s, s.bucket, f"{s.prefix}*")]},
        _listing(s, s.bucket, ("oss:ListObjects", "oss:ListObjectVersions")),
        {"Effect": "Allow", "Action": ["oss:ListMultipartUploads"], "Resource": [_oss(s, s.bucket)]},
        {"Effect": "Allow", "Action": list(READ_ACTIONS),
         "Resource": [_oss(s, s.dr_bucket, f"{s.prefix}*")]},
        _listing(s, s.dr_bucket),
        {"Effect": "Allow", "Action": ["fc:InvokeFunction"],
         "Resource": [f"acs:fc:*:{s.account_id}:services/{SERVICE}.*/functions/alert"]},
        # With several databases the backup function invokes itself once per database
        # (fanout.py): its own function only, as s.yaml (FC 2.0) and template.yml (FC 3.0,
        # <DeploymentName>-backup) name it.
        {"Effect": "Allow", "Action": ["fc:InvokeFunction"],
         "Resource": [f"acs:fc:*:{s.account_id}:services/{SERVICE}.*/functions/backup",
                      f"acs:fc:*:{s.account_id}:functions/{SERVICE}-backup"]},
        {"Effect": "Allow", "Action": ["log:PostLogStoreLogs"],
         "Resource": [f"acs:log:*:{s.account_id}:project/{s.log_project}/logstore/{s.log_store}"]},
        # FC reads the VPC and vSwitch through the service role before binding them;
        # these Describe actions take no resource-level scoping.
        {"Effect": "Allow", "Action": list(VPC_ACTIONS), "Resource": ["*"]},
    ]
    if s.encryption == "KMS":
        key = s.kms_key_id or "*"
        statements.append({"Effect": "Allow", "Action": list(KMS_ACTIONS),
                           "Resource": [f"acs:kms:{s.region}:{s.account_id}:key/{key}"]})
    return {"Version": "1", "Statement": statements}


def trust_policy(s):
    """Who may assume the role: Function Compute, for these functions."""
    return {"Version": "1", "Statement": [
        {"Effect": "Allow", "Action": "sts:AssumeRole",
         "Principal": {"Service": ["fc.aliyuncs.com"]}}]}


def bucket_policy(s):
    """PLAN §8 on the backup bucket: the backup role may put, get and delete under the
    prefix from the functions' VPC or from the server's IP (comma-separated IPs or
    CIDRs). Allow only: a Deny on `*` would also bind the bucket owner and OSS's
    replication reads. Listing is RAM's (ram_policy), not repeated here."""
    def objects(condition):
        return {"Effect": "Allow", "Principal": [s.role_principal], "Action": list(OBJECT_ACTIONS),
                "Resource": [_oss(s, s.bucket, f"{s.prefix}*")], "Condition": condition}
    ips = [ip.strip() for ip in s.server_ip.split(",") if ip.strip()]
    return {"Version": "1", "Statement": [
        objects({"StringEquals": {"acs:SourceVpc": [s.vpc_id]}}),
        objects({"IpAddress": {"acs:SourceIp": ips}})]}


BUILDERS = {"ram": ram_policy, "trust": trust_policy, "bucket": bucket_policy}


def policies(settings, kinds=KINDS):
    return {kind: BUILDERS[kind](settings) for kind in kinds}


def placeholders(document):
    """The ${NAME} placeholders left in a document (what still has to be filled in)."""
    return sorted(set(re.findall(r"\$\{([A-Z_]+)\}", json.dumps(document))))
