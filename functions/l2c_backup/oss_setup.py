"""The OSS side of PLAN §1.2, §3, §4 and §8, set up idempotently: read, plan, apply.

`plan()` READS the buckets' current state through oss2 and compares it with the desired
state (from the environment); every difference becomes a `Step` (resource, action, what
changes, why). `apply()` runs the steps in order. A second run reads the state the first
one wrote and plans nothing, so it sends no write request at all.

What is set up:
- the backup bucket (OSS_BACKUP_BUCKET, cn-hangzhou): private, versioning, default
  encryption AES256, lifecycle rule `l2c-db-backups` on the backup prefix (IA at 30 days,
  Archive at 90, noncurrent versions expire, orphan multipart parts aborted after 7 days,
  lone delete markers removed), the bucket policy (PLAN §8), WORM retention (PLAN §8);
- the DR bucket (OSS_DR_BUCKET, cn-shanghai): private, versioning, AES256, the same
  lifecycle rule; cross-region replication primary -> DR of the backup prefix;
- the uploads bucket (OSS_UPLOADS_BUCKET, optional): versioning and replication to
  OSS_UPLOADS_DR_BUCKET (PLAN §1.2).

Ordering facts (FACTS.md): versioning is enabled BEFORE a WORM policy is initiated (OSS
refuses to enable versioning on a bucket with a retention policy, 0012-00000006), and an
initiated policy lapses unless locked within 24 hours, so initiate and lock run
back-to-back in one step. Locking is irreversible: it needs `lock_worm=True`
(--yes-lock-worm), and so does extending a locked policy. A locked policy is never
lowered (OSS cannot). Replication needs both buckets in the same versioning state, so
the DR bucket is versioned before the rule is added.

Replication sends PUT only (no DELETE): a delete that names a version (a permanent
delete, by a person, a script or ransomware holding the backup key) then never reaches
the DR copy. OSS still replicates the delete markers a plain delete makes (what prune
does), so a pruned backup becomes a noncurrent version in both buckets and the
lifecycle rule on each bucket removes it NONCURRENT_VERSION_DAYS later: the DR copy's
retention is its own lifecycle, not the primary's deletes.
"""
import json
import re
import string
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional
from xml.etree import ElementTree

import oss2
from oss2 import xml_utils
from oss2.models import (AbortMultipartUpload, BucketCreateConfig, BucketLifecycle,
                         BucketVersioningConfig, LifecycleExpiration, LifecycleRule,
                         NoncurrentVersionExpiration, ReplicationRule, ServerSideEncryptionRule,
                         StorageTransition)

from . import config
from .errors import ConfigInvalid, SetupFailed
from .storage.oss import OSSSettings

LIFECYCLE_RULE_ID = "l2c-db-backups"
IA_DAYS, ARCHIVE_DAYS = 30, 90  # PLAN §4 step 3
ABORT_MULTIPART_DAYS = 7  # orphan parts are billed and invisible in listings
WORM_MAX_DAYS = 25550  # 70 years, OSS's limit
# Where the policy template is looked for when BUCKET_POLICY_FILE is not set: the
# current directory, then the repository (functions/l2c_backup/ -> ../../deploy/).
# The object actions the backup role needs on `bucket/prefix*` (storage/oss.py: put,
# multipart upload (PutObject), head/get, delete, tagging; abort on failure; a claim's
# versions on a versioned bucket (claims.py); RestoreObject for Archive (archive.py)).
OBJECT_ACTIONS = ["oss:PutObject", "oss:GetObject", "oss:DeleteObject", "oss:PutObjectTagging",
                  "oss:GetObjectTagging", "oss:AbortMultipartUpload", "oss:ListParts",
                  "oss:GetObjectVersion", "oss:DeleteObjectVersion", "oss:RestoreObject"]
WORM_FLAG = "needs --yes-lock-worm (locking is irreversible)"
SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|DATABASE_URL|KEY_ID")
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")




@dataclass
class Step:
    resource: str  # "bucket l2c-backups", "l2c-backups versioning", ...
    action: str  # create, enable, set, replace, add, initiate and lock, lock, extend
    detail: str  # what changes
    why: str  # the reason (PLAN section)
    blocked: str = ""  # set: not applied, and why (e.g. needs --yes-lock-worm)
    run: Optional[Callable] = field(default=None, repr=False, compare=False)

    def to_dict(self):
        return {k: v for k, v in asdict(self).items() if k != "run"}


@dataclass
class Note:
    resource: str
    level: str  # info or warning
    message: str


@dataclass
class Plan:
    steps: list
    notes: list

    @property
    def changes(self):
        return [s for s in self.steps if not s.blocked]

    @property
    def skipped(self):
        return [s for s in self.steps if s.blocked]


@dataclass
class Desired:
    backup_bucket: str = "l2c-backups"
    dr_bucket: str = "l2c-backups-dr"
    uploads_bucket: str = ""
    uploads_dr_bucket: str = ""
    region: str = "cn-hangzhou"
    dr_region: str = "cn-shanghai"
    prefix: str = "db-backups/"
    worm_days: int = 30
    noncurrent_days: int = 30
    encryption: str = "AES256"
    uploads_replication_action: str = "PUT"
    policy: Optional[dict] = None
    policy_source: str = ""  # the file, or "built in"
    policy_problem: str = ""  # why no policy can be written (a variable is missing)
    notes: list = field(default_factory=list)

    def summary(self):
        return {k: v for k, v in asdict(self).items() if k != "notes"}


@dataclass
class BucketState:
    name: str
    exists: bool = False
    location: str = ""
    acl: str = ""
    versioning: str = ""  # "", Enabled, Suspended
    encryption: str = ""
    lifecycle_xml: str = ""  # the raw configuration ("" when none)
    worm: Optional[dict] = None  # id, state, days, created
    policy: Optional[str] = None
    replication: list = field(default_factory=list)


# -- desired state ---------------------------------------------------------------------

def _int_env(environ, name, default, low, high):
    text = environ.get(name)
    if text is None:
        return default
    if not re.fullmatch(r"[0-9]{1,6}", text) or not low <= int(text) <= high:
        raise ConfigInvalid(f"environment variable {name} is invalid: it must be a whole number "
                            f"from {low} to {high}", f"fix or unset {name}")
    return int(text)


def _bucket_env(environ, name, default):
    value = environ.get(name, default)
    if value and not BUCKET_NAME.match(value):
        raise ConfigInvalid(f"environment variable {name} is invalid: it must be a bucket name: "
                            "3-63 lower-case letters, digits, hyphens", f"fix or unset {name}")
    return value


def desired_from_env(environ=None):
    environ = config.environment(environ)
    config.check_env(environ)
    d = Desired(
        backup_bucket=_bucket_env(environ, "OSS_BACKUP_BUCKET", "l2c-backups"),
        dr_bucket=_bucket_env(environ, "OSS_DR_BUCKET", "l2c-backups-dr"),
        uploads_bucket=_bucket_env(environ, "OSS_UPLOADS_BUCKET", ""),
        region=environ.get("OSS_REGION", "cn-hangzhou"),
        dr_region=environ.get("OSS_DR_REGION", "cn-shanghai"),
        prefix=environ.get("OSS_BACKUP_PREFIX", "db-backups/"),
        worm_days=_int_env(environ, "WORM_DAYS", 30, 1, WORM_MAX_DAYS),
        noncurrent_days=_int_env(environ, "NONCURRENT_VERSION_DAYS", 30, 1, 36500),
        uploads_replication_action=environ.get("OSS_UPLOADS_REPLICATION", "PUT").upper())
    if not d.prefix or not d.prefix.endswith("/"):
        raise ConfigInvalid("OSS_BACKUP_PREFIX must be a folder like db-backups/ for setup-oss",
                            "the lifecycle rule, policy and replication work on that prefix")
    if d.uploads_replication_action not in ("PUT", "ALL"):
        raise ConfigInvalid("OSS_UPLOADS_REPLICATION must be PUT or ALL", "fix or unset it")
    if d.uploads_bucket:
        d.uploads_dr_bucket = _bucket_env(environ, "OSS_UPLOADS_DR_BUCKET", f"{d.uploads_bucket}-dr")
    if d.dr_bucket == d.backup_bucket:
        raise ConfigInvalid("OSS_DR_BUCKET names the backup bucket itself", "name another bucket")
    _desired_policy(environ, d)
    return d


def _policy_values(environ, d):
    """What ${NAME} in the policy template means: the buckets being set up, then any
    variable of that name in the environment (never one that holds a secret).
    ROLE_PRINCIPAL, unless set, is the backup role's STS principal built from
    ACCOUNT_ID and ROLE_NAME."""
    values = {k: v for k, v in environ.items()
              if re.fullmatch(r"[A-Z][A-Z0-9_]*", k) and not SECRET_NAME.search(k)}
    values.update({"BUCKET": d.backup_bucket, "PREFIX": d.prefix, "DR_BUCKET": d.dr_bucket,
                   "REGION": d.region, "DR_REGION": d.dr_region})
    if "ROLE_PRINCIPAL" not in values and values.get("ACCOUNT_ID") and values.get("ROLE_NAME"):
        values["ROLE_PRINCIPAL"] = role_principal(values["ACCOUNT_ID"], values["ROLE_NAME"])
    return values


def role_principal(account_id, role_name):
    """A RAM role in a bucket policy: any session of the role assumed in that account."""
    return f"arn:sts::{account_id}:assumed-role/{role_name}/*"


def _substitute(node, values, missing):
    """${NAME} in every string of a parsed policy; a string that is only "${SERVER_IP}"
    with a comma-separated value becomes a list (several IPs or CIDRs)."""
    if isinstance(node, dict):
        return {k: _substitute(v, values, missing) for k, v in node.items()}
    if isinstance(node, list):
        out = []
        for item in node:
            value = _substitute(item, values, missing)
            out.extend(value if isinstance(value, list) and isinstance(item, str) else [value])
        return out
    if isinstance(node, str):
        template = string.Template(node)
        for name in template.get_identifiers():
            if name not in values:
                missing.add(name)
        whole = re.fullmatch(r"\$\{(\w+)\}", node)
        if whole and "," in values.get(whole[1], ""):
            return [v.strip() for v in values[whole[1]].split(",") if v.strip()]
        return template.safe_substitute(values)
    return node


def _desired_policy(environ, d):
    """The bucket policy to apply: BUCKET_POLICY_FILE's template when set, else the one
    `l2c-backup policies --kind bucket` prints for these settings (one source, so the
    prefix and buckets in force are the ones the policy names); ${NAME} filled from the
    environment, and a value still missing blocks only the policy."""
    from . import policies  # it builds on this module's statement
    values = _policy_values(environ, d)
    path = environ.get("BUCKET_POLICY_FILE")
    if path:
        try:
            template = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigInvalid(f"cannot read the bucket policy {path}: {exc}",
                                "fix BUCKET_POLICY_FILE or the file") from None
        d.policy_source = path
    else:
        settings = policies.settings_from_env(dict(environ, OSS_BACKUP_BUCKET=d.backup_bucket,
                                                   OSS_BACKUP_PREFIX=d.prefix))
        template = policies.bucket_policy(settings)
        d.policy_source = "l2c-backup policies --kind bucket"
    missing = set()
    policy = _substitute(template, values, missing)
    if missing:
        d.policy_problem = (f"{d.policy_source} needs {', '.join('${%s}' % m for m in sorted(missing))}: "
                            f"set {', '.join(sorted(missing))}")
        return
    d.policy = policy


def normalize_policy(policy):
    """A policy in a form where equal meaning compares equal: single strings as lists,
    lists of strings sorted, statements in a stable order."""
    def norm(node):
        if isinstance(node, dict):
            return {k: norm([v] if k in ("Action", "Resource", "Principal") and isinstance(v, str)
                            else v) for k, v in node.items()}
        if isinstance(node, list):
            items = [norm(v) for v in node]
            if all(isinstance(v, str) for v in items):
                return sorted(items)
            return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
        return node
    if isinstance(policy, str):
        policy = json.loads(policy)
    return norm(policy)


# -- the clients -----------------------------------------------------------------------

class Buckets:
    """oss2.Bucket per name: the DR buckets through the DR endpoint (another region)."""

    def __init__(self, settings: OSSSettings, dr_settings: OSSSettings, dr_names):
        self.settings, self.dr_settings, self.dr_names = settings, dr_settings, set(dr_names)
        self._cache = {}

    @classmethod
    def from_env(cls, desired, environ=None):
        environ = config.environment(environ)
        settings = config.oss_settings(environ)
        dr_endpoint = environ.get("OSS_DR_ENDPOINT") or _dr_endpoint(settings.endpoint, desired)
        dr_settings = OSSSettings(**dict(asdict(settings), endpoint=dr_endpoint.rstrip("/"),
                                         region=desired.dr_region if settings.region else ""))
        return cls(settings, dr_settings, [desired.dr_bucket, desired.uploads_dr_bucket])

    def endpoint(self, name):
        return (self.dr_settings if name in self.dr_names else self.settings).endpoint

    def __getitem__(self, name):
        if name not in self._cache:
            s = self.dr_settings if name in self.dr_names else self.settings
            self._cache[name] = oss2.Bucket(s.auth(), s.endpoint, name, connect_timeout=s.connect_timeout,
                                            region=s.region or None)
        return self._cache[name]


def _dr_endpoint(endpoint, desired):
    if desired.region in endpoint:
        return endpoint.replace(desired.region, desired.dr_region)
    raise ConfigInvalid("OSS_DR_ENDPOINT is not set and cannot be derived from OSS_ENDPOINT",
                        f"set OSS_DR_ENDPOINT, e.g. https://oss-{desired.dr_region}.aliyuncs.com")


# -- reading the current state ---------------------------------------------------------

def _missing(exc):
    return isinstance(exc, oss2.exceptions.ServerError) and exc.status == 404


def read_bucket(bucket, aspects=("versioning", "encryption", "lifecycle", "worm", "policy",
                                 "replication")):
    """What the bucket has now; only GET requests."""
    state = BucketState(bucket.bucket_name)
    try:
        info = bucket.get_bucket_info()
    except oss2.exceptions.NoSuchBucket:
        return state
    state.exists, state.location = True, info.location or ""
    state.acl = getattr(info.acl, "grant", "") or ""
    if "versioning" in aspects:
        state.versioning = bucket.get_bucket_versioning().status or ""
    if "encryption" in aspects:
        try:
            state.encryption = bucket.get_bucket_encryption().sse_algorithm or ""
        except oss2.exceptions.ServerError as exc:
            if not _missing(exc):
                raise
    if "lifecycle" in aspects:
        try:  # the raw XML: other rules are kept byte for byte when ours is written
            state.lifecycle_xml = bucket._do("GET", bucket.bucket_name, "",
                                             params={"lifecycle": ""}).read().decode("utf-8")
        except oss2.exceptions.ServerError as exc:
            if not _missing(exc):
                raise
    if "worm" in aspects:
        try:
            w = bucket.get_bucket_worm()
            state.worm = {"id": w.worm_id, "state": w.state, "days": w.retention_period_days,
                          "created": w.creation_date}
        except oss2.exceptions.ServerError as exc:
            if not _missing(exc):
                raise
    if "policy" in aspects:
        try:
            state.policy = bucket.get_bucket_policy().policy
        except oss2.exceptions.ServerError as exc:
            if not _missing(exc):
                raise
    if "replication" in aspects:
        try:
            state.replication = list(bucket.get_bucket_replication().rule_list)
        except oss2.exceptions.ServerError as exc:
            if not _missing(exc):
                raise
    return state


def read_state(buckets, desired):
    names = {desired.backup_bucket: None, desired.dr_bucket: ("versioning", "encryption", "lifecycle")}
    if desired.uploads_bucket:
        names[desired.uploads_bucket] = ("versioning", "replication")
        names[desired.uploads_dr_bucket] = ("versioning",)
    states = {}
    for name, aspects in names.items():
        try:
            states[name] = read_bucket(buckets[name], *([aspects] if aspects else []))
        except oss2.exceptions.OssError as exc:
            raise SetupFailed(f"cannot read bucket {name} at {buckets.endpoint(name)}: {_oss_error(exc)}",
                              "check the endpoint, the credentials and that the bucket is yours") from None
    return states


def _oss_error(exc):
    if isinstance(exc, oss2.exceptions.ServerError) and exc.status > 0:
        return f"{exc.status} {exc.code}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


# -- lifecycle -------------------------------------------------------------------------

def lifecycle_rule(desired):
    return LifecycleRule(
        LIFECYCLE_RULE_ID, desired.prefix, status=LifecycleRule.ENABLED,
        storage_transitions=[StorageTransition(days=IA_DAYS, storage_class=oss2.BUCKET_STORAGE_CLASS_IA),
                             StorageTransition(days=ARCHIVE_DAYS,
                                               storage_class=oss2.BUCKET_STORAGE_CLASS_ARCHIVE)],
        noncurrent_version_expiration=NoncurrentVersionExpiration(desired.noncurrent_days),
        abort_multipart_upload=AbortMultipartUpload(days=ABORT_MULTIPART_DAYS),
        # oss2 writes str(value): a bool would go out as "True", which OSS (and oss2's own
        # parser) refuse; lone delete markers (left once old versions expire) are removed.
        expiration=LifecycleExpiration(expired_detete_marker="true"))


def rule_shape(rule):
    """The fields of a lifecycle rule that setup manages, comparable."""
    exp = rule.expiration
    return {
        "prefix": rule.prefix or "", "status": rule.status,
        "transitions": sorted((t.days, t.storage_class) for t in rule.storage_transitions or []),
        "noncurrent_expiration_days": getattr(rule.noncurrent_version_expiration, "noncurrent_days", None),
        "abort_multipart_days": getattr(rule.abort_multipart_upload, "days", None),
        "expiration_days": getattr(exp, "days", None),
        "expired_delete_marker": str(getattr(exp, "expired_detete_marker", None)).lower() == "true",
    }


def _describe_shape(s):
    parts = [f"prefix {s['prefix'] or '(all)'}", s["status"] or "?"]
    parts += [f"{c} at {d} days" for d, c in s["transitions"]]
    if s["noncurrent_expiration_days"]:
        parts.append(f"noncurrent versions expire after {s['noncurrent_expiration_days']} days")
    if s["abort_multipart_days"]:
        parts.append(f"multipart parts aborted after {s['abort_multipart_days']} days")
    if s["expiration_days"]:
        parts.append(f"objects expire after {s['expiration_days']} days")
    if s["expired_delete_marker"]:
        parts.append("lone delete markers removed")
    return ", ".join(parts)


def _parse_lifecycle(text):
    result = SimpleNamespace(rules=[])
    xml_utils.parse_get_bucket_lifecycle(result, text.encode("utf-8") if isinstance(text, str) else text)
    return result.rules


def _lifecycle_xml(existing_xml, rule):
    """The whole configuration: the other rules exactly as read, ours (re)written."""
    ours = ElementTree.fromstring(xml_utils.to_put_bucket_lifecycle(BucketLifecycle([rule])))
    root = ElementTree.Element("LifecycleConfiguration")
    if existing_xml:
        for node in ElementTree.fromstring(existing_xml).findall("Rule"):
            if (node.findtext("ID") or "") != rule.id:
                root.append(node)
    root.extend(ours.findall("Rule"))
    return ElementTree.tostring(root, encoding="utf-8")


def _overlaps(a, b):
    return a.startswith(b) or b.startswith(a)


# -- planning --------------------------------------------------------------------------

def plan(buckets, desired, lock_worm=False):
    """Reads the current state and returns the Plan that brings it to `desired`."""
    return plan_from_state(read_state(buckets, desired), buckets, desired, lock_worm)


def plan_from_state(states, buckets, desired, lock_worm=False):
    steps, notes = [], list(desired.notes)
    d = desired
    primary, dr = states[d.backup_bucket], states[d.dr_bucket]

    _bucket_steps(steps, notes, buckets, primary, d.region, "the backup bucket (PLAN §3 tier 2)")
    if primary.worm and primary.worm["state"] == "InProgress" and primary.versioning != "Enabled":
        # Versioning must come first; an unlocked policy can still be removed.
        worm_id = primary.worm["id"]
        steps.append(Step(f"{primary.name} WORM", "abort",
                          f"abort the InProgress {primary.worm['days']}-day policy {worm_id} so "
                          "versioning can be enabled before WORM is locked (FACTS.md)",
                          "OSS refuses to enable versioning on a bucket with a retention policy",
                          blocked="" if lock_worm else WORM_FLAG,
                          run=lambda: buckets[primary.name].abort_bucket_worm()))
        if lock_worm:
            primary = replace(primary, worm=None)
    versioning_ok = _versioning_steps(steps, notes, buckets, primary,
                                      "ransomware protection and restore of overwritten backups (PLAN §3)")
    _encryption_steps(steps, buckets, primary, d.encryption)
    _lifecycle_steps(steps, notes, buckets, primary, d)
    _policy_steps(steps, notes, buckets, primary, d)
    _worm_steps(steps, notes, buckets, primary, d, lock_worm, versioning_ok)

    _bucket_steps(steps, notes, buckets, dr, d.dr_region, "the cross-region copy (PLAN §3 tier 3)",
                  offsite=True)
    _versioning_steps(steps, notes, buckets, dr, "replication needs both buckets versioned alike")
    _encryption_steps(steps, buckets, dr, d.encryption)
    _lifecycle_steps(steps, notes, buckets, dr, d)
    _replication_steps(steps, notes, buckets, primary, d.dr_bucket, d.dr_region, [d.prefix], "PUT",
                       "the off-site copy of every backup (PLAN §4 step 4)",
                       blocked="" if versioning_ok else "OSS replicates only between buckets "
                       "versioned alike, and the backup bucket cannot be versioned (see above)")

    if d.uploads_bucket:
        uploads, uploads_dr = states[d.uploads_bucket], states[d.uploads_dr_bucket]
        if not uploads.exists:
            notes.append(Note(f"bucket {d.uploads_bucket}", "warning",
                              "does not exist: it is the application's uploads bucket, which setup "
                              "does not create; check OSS_UPLOADS_BUCKET"))
        else:
            _versioning_steps(steps, notes, buckets, uploads, "user uploads: versioning (PLAN §1.2)")
            _bucket_steps(steps, notes, buckets, uploads_dr, d.dr_region,
                          "user uploads: the cross-region copy (PLAN §1.2)", offsite=True)
            _versioning_steps(steps, notes, buckets, uploads_dr,
                              "replication needs both buckets versioned alike")
            _replication_steps(steps, notes, buckets, uploads, d.uploads_dr_bucket, d.dr_region, [],
                               d.uploads_replication_action,
                               "user uploads: cross-region replication (PLAN §1.2)")
    return Plan(steps, notes)


def _bucket_steps(steps, notes, buckets, state, region, why, offsite=False):
    name = state.name
    if not state.exists:
        steps.append(Step(f"bucket {name}", "create",
                          f"new private Standard bucket in {region} (via {buckets.endpoint(name)})", why,
                          run=lambda: buckets[name].create_bucket(
                              oss2.BUCKET_ACL_PRIVATE,
                              BucketCreateConfig(oss2.BUCKET_STORAGE_CLASS_STANDARD))))
        return
    if state.location and state.location != f"oss-{region}":
        notes.append(Note(f"bucket {name}", "warning",
                          f"is in {state.location}, not oss-{region}: a bucket cannot move"
                          + ("; this copy is then not off-site" if offsite else "")))
    if state.acl and state.acl != oss2.BUCKET_ACL_PRIVATE:
        steps.append(Step(f"bucket {name} ACL", "set", f"{state.acl} -> private",
                          "backups and uploads must not be readable by anyone (PLAN §8)",
                          run=lambda: buckets[name].put_bucket_acl(oss2.BUCKET_ACL_PRIVATE)))


def _versioning_steps(steps, notes, buckets, state, why):
    name = state.name
    if state.versioning == "Enabled":
        return True
    step = Step(f"{name} versioning", "enable", f"{state.versioning or 'never enabled'} -> Enabled", why,
                run=lambda: buckets[name].put_bucket_versioning(BucketVersioningConfig("Enabled")))
    if state.worm:
        step.blocked = ("the bucket already has a retention policy, and OSS refuses to enable "
                        "versioning then (0012-00000006)")
        notes.append(Note(f"{name} versioning", "warning",
                          step.blocked + ("; an InProgress policy can be aborted (it is "
                                          "reversible), then setup enables versioning and locks "
                                          "WORM again" if state.worm["state"] != "Locked" else
                                          "; a locked policy cannot be removed: this bucket stays "
                                          "unversioned, and replication needs both buckets alike")))
    steps.append(step)
    return not step.blocked


def _encryption_steps(steps, buckets, state, algorithm):
    name = state.name
    if state.encryption in ("AES256", "KMS", "SM4"):
        return  # encrypted by default already (KMS / SM4 are kept: never weakened)
    steps.append(Step(f"{name} encryption", "set", f"{state.encryption or 'none'} -> {algorithm} by default",
                      "objects encrypted at rest even when a client sends no header",
                      run=lambda: buckets[name].put_bucket_encryption(
                          ServerSideEncryptionRule(sse_algorithm=algorithm))))


def _lifecycle_steps(steps, notes, buckets, state, d):
    name, rule = state.name, lifecycle_rule(d)
    want = rule_shape(rule)
    current = _parse_lifecycle(state.lifecycle_xml) if state.lifecycle_xml else []
    ours = next((r for r in current if r.id == rule.id), None)
    for other in current:
        if other.id != rule.id and other.status == "Enabled" and _overlaps(other.prefix or "", d.prefix):
            notes.append(Note(f"{name} lifecycle", "warning",
                              f"rule {other.id!r} (prefix {other.prefix or '(all)'}) also acts on "
                              f"{d.prefix}: {_describe_shape(rule_shape(other))}; setup leaves it"))
    if ours is not None and rule_shape(ours) == want:
        return
    if ours is None:
        action, detail = "add", f"rule {rule.id}: {_describe_shape(want)}"
    else:
        action, detail = "replace", (f"rule {rule.id}: {_describe_shape(rule_shape(ours))} -> "
                                     f"{_describe_shape(want)}")
    if len(current) - (ours is not None):
        detail += f" (the {len(current) - (ours is not None)} other rule(s) kept as they are)"
    body = _lifecycle_xml(state.lifecycle_xml, rule)
    steps.append(Step(f"{name} lifecycle", action, detail,
                      f"cost: IA after {IA_DAYS} days, Archive after {ARCHIVE_DAYS} (PLAN §4 step 3); "
                      "old versions and orphan parts would be billed forever",
                      run=lambda: buckets[name].put_bucket_lifecycle(body)))


def _policy_steps(steps, notes, buckets, state, d):
    name = state.name
    if d.policy is None:
        steps.append(Step(f"{name} policy", "set", f"from {d.policy_source}",
                          "only the backup role, only from the server (PLAN §8)",
                          blocked=d.policy_problem))
        return
    current = None
    if state.policy:
        try:
            current = normalize_policy(state.policy)
        except ValueError:
            current = None
    if current == normalize_policy(d.policy):
        return
    text = json.dumps(d.policy, indent=2, sort_keys=True)
    if state.policy:
        detail = f"replace the current policy with the one from {d.policy_source}"
    else:
        detail = f"set from {d.policy_source}"
    statements = d.policy.get("Statement", [])
    detail += f" ({len(statements)} statement(s): " + "; ".join(
        f"{s.get('Effect')} {','.join(a.replace('oss:', '') for a in _as_list(s.get('Action')))} "
        f"on {','.join(_as_list(s.get('Resource')))}"
        for s in statements) + ")"
    steps.append(Step(f"{name} policy", "replace" if state.policy else "set", detail,
                      "only the backup role, only from the server (PLAN §8)",
                      run=lambda: buckets[name].put_bucket_policy(text)))


def _as_list(value):
    return value if isinstance(value, list) else [value] if value else []


def _worm_steps(steps, notes, buckets, state, d, lock_worm, versioning_ok):
    name, days = state.name, d.worm_days
    why = f"ransomware: nothing under the bucket is deleted or overwritten for {days} days (PLAN §8)"
    resource = f"{name} WORM"
    need_flag = WORM_FLAG
    worm = state.worm
    if worm is None or worm["state"] not in ("InProgress", "Locked"):
        if not versioning_ok:
            return  # the versioning step reports why
        steps.append(Step(resource, "initiate and lock",
                          f"would lock {days}-day retention — irreversible; re-run with --yes-lock-worm"
                          if not lock_worm else
                          f"initiate a {days}-day retention policy, then lock it (irreversible)",
                          why + "; versioning is enabled first, as OSS requires",
                          blocked="" if lock_worm else need_flag,
                          run=lambda: _initiate_and_lock(buckets[name], days)))
        return
    if worm["state"] == "InProgress":
        notes.append(Note(resource, "warning",
                          f"a retention policy is initiated but not locked (id {worm['id']}, "
                          f"{worm['days']} days, created {worm['created']}): OSS drops it 24 hours "
                          "after it was initiated unless it is locked"))
        if not versioning_ok:
            return  # the abort step comes first: versioning before WORM
        if worm["days"] == days:
            steps.append(Step(resource, "lock", f"lock the InProgress {days}-day policy {worm['id']} "
                              "(irreversible)", why, blocked="" if lock_worm else need_flag,
                              run=lambda: buckets[name].complete_bucket_worm(worm["id"])))
        else:
            steps.append(Step(resource, "abort, initiate and lock",
                              f"abort the InProgress {worm['days']}-day policy {worm['id']}, then "
                              f"initiate and lock {days} days (irreversible)", why,
                              blocked="" if lock_worm else need_flag,
                              run=lambda: (buckets[name].abort_bucket_worm(),
                                           _initiate_and_lock(buckets[name], days))))
        return
    if worm["days"] < days:
        steps.append(Step(resource, "extend", f"locked {worm['days']} days -> {days} days (irreversible)",
                          why, blocked="" if lock_worm else need_flag,
                          run=lambda: buckets[name].extend_bucket_worm(worm["id"], days)))
    elif worm["days"] > days:
        notes.append(Note(resource, "info",
                          f"locked at {worm['days']} days, longer than WORM_DAYS={days}: a locked "
                          "policy can only be extended, never shortened; left as it is"))


def _initiate_and_lock(bucket, days):
    worm_id = bucket.init_bucket_worm(days).worm_id
    bucket.complete_bucket_worm(worm_id)  # at once: an unlocked policy lapses after 24 hours


def _replication_steps(steps, notes, buckets, state, target, target_region, prefixes, action, why,
                       blocked=""):
    name, resource = state.name, f"{state.name} replication"
    location = f"oss-{target_region}"
    existing = [r for r in state.replication if r.target_bucket_name == target]
    if existing:
        rule = existing[0]
        problems = []
        if sorted(rule.prefix_list or []) != sorted(prefixes):
            problems.append(f"prefixes {rule.prefix_list or '(all)'}, want {prefixes or '(all)'}")
        if sorted(rule.action_list or []) != [action]:
            problems.append(f"action {','.join(rule.action_list or [])}, want {action}")
        if not rule.is_enable_historical_object_replication:
            problems.append("historical objects not replicated")
        if (rule.status or "").lower() == "closing":
            problems.append("the rule is being deleted (status closing)")
        if problems:
            notes.append(Note(resource, "warning",
                              f"rule {rule.rule_id} to {target} differs ({'; '.join(problems)}): OSS "
                              "cannot edit a replication rule; delete it (console or ossutil), wait "
                              "until it is gone, and re-run setup-oss"))
        return
    rule = ReplicationRule(rule_id=f"l2c-to-{target}"[:63], target_bucket_name=target,
                           target_bucket_location=location, prefix_list=list(prefixes) or None,
                           action_list=[action], is_enable_historical_object_replication=True)
    steps.append(Step(resource, "add",
                      f"{name}/{prefixes[0] if prefixes else '*'} -> {target} ({location}), "
                      f"{action}{' only' if action == 'PUT' else ''}, existing objects too", why,
                      blocked=blocked, run=lambda: buckets[name].put_bucket_replication(rule)))


# -- applying --------------------------------------------------------------------------

def apply(steps, report=None):
    """Runs the steps that are not blocked, in order; stops at the first refusal (later
    steps may depend on it: replication needs the DR bucket versioned). Returns
    [(step, outcome)]; `report(step, outcome)` is called as each one ends."""
    done = []
    for step in steps:
        if step.blocked:
            outcome = f"skipped: {step.blocked}"
        else:
            try:
                step.run()
            except oss2.exceptions.OssError as exc:
                if report:
                    report(step, f"failed: {_oss_error(exc)}")
                raise SetupFailed(
                    f"{step.resource}: {step.action} failed: {_oss_error(exc)} "
                    f"({sum(1 for _, o in done if o == 'done')} change(s) applied before it)",
                    "fix the cause and re-run setup-oss: it reads the state again and does only "
                    "what is left") from None
            outcome = "done"
        done.append((step, outcome))
        if report:
            report(step, outcome)
    return done
