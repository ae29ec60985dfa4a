"""Configuration from environment variables (FC function config or a shell), checked
against one JSON schema at start. An error names the variable and what it must look
like, and never echoes a value: DATABASE_URL and the keys carry secrets."""
import os
import re
from dataclasses import dataclass, field
from typing import Optional

import jsonschema

from .compress import default_workers
from .database import DatabaseSettings
from .errors import ConfigInvalid
from .logs import register_secret
from .storage.oss import MIB, OSSSettings

_FLAG = {"type": "string", "pattern": "^(?i:true|false|yes|no|1|0|on|off)$",
         "description": "true or false"}
_COUNT = {"type": "string", "pattern": "^[1-9][0-9]{0,5}$", "description": "a positive whole number"}

ENV_SCHEMA = {
    "type": "object",
    "properties": {
        "DATABASE_URL": {"type": "string", "pattern": "^postgres(ql)?://",
                         "description": "a URL like postgresql://user:password@host:5432/dbname"},
        "BACKUP_DATABASES": {"type": "string", "pattern": r"^(all|[^,\s]+(,[^,\s]+)*)$",
                             "description": "'all' or a comma-separated list of database names"},
        "BACKUP_GLOBALS": _FLAG,
        "BACKUP_NO_ROLE_PASSWORDS": _FLAG,
        # Several databases (fanout.py): the FC API the backup function invokes itself
        # with (s.yaml deploys fc2, template.yml fc3), and off FC how many at once.
        "BACKUP_FANOUT_API": {"enum": ["fc2", "fc3"], "description": "fc2 or fc3"},
        "BACKUP_CONCURRENCY": {"type": "string", "pattern": "^([1-9]|1[0-6])$", "x-cli-only": True,
                               "description": "1 to 16 databases backed up at once"},
        "BACKUP_TARGET": {"type": "string", "minLength": 1, "x-cli-only": True,
                          "description": "oss://bucket/prefix or a directory path"},
        "OSS_ENDPOINT": {"type": "string", "pattern": "^https?://[^/]+/?$",
                         "description": "an endpoint URL like https://oss-cn-hangzhou.aliyuncs.com"},
        "OSS_BACKUP_BUCKET": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$",
                              "description": "a bucket name: 3-63 lower-case letters, digits, hyphens"},
        "OSS_BACKUP_PREFIX": {"type": "string", "pattern": "^[^/].*$|^$",
                              "description": "a key prefix like db-backups/ (no leading slash)"},
        "OSS_REGION": {"type": "string", "pattern": "^[a-z]{2}-[a-z0-9-]+$",
                       "description": "a region id like cn-hangzhou (turns on V4 signatures)"},
        "OSS_SERVER_SIDE_ENCRYPTION": {"enum": ["", "AES256", "KMS"],
                                       "description": "AES256, KMS or empty"},
        "GZIP_LEVEL": {"type": "string", "pattern": "^[0-9]$", "description": "0 to 9"},
        "GZIP_WORKERS": _COUNT,
        "UPLOAD_CONCURRENCY": {"type": "string", "pattern": "^([1-9]|1[0-6])$",
                               "description": "1 to 16 parts uploading at once"},
        "UPLOAD_MIN_PART_MB": {"type": "string", "pattern": "^([1-9]|[1-9][0-9]{1,3})$",
                               "description": "part size floor in MiB, 1 to 9999"},
        "BACKUP_TIMEOUT_SECONDS": _COUNT,
        "KEEP_DAILY": _COUNT,
        "KEEP_WEEKLY": _COUNT,
        "KEEP_MANUAL": _COUNT,
        "PRUNE_AFTER_BACKUP": _FLAG,
        "BACKUP_TABLE_INDEX": _FLAG,
        # Client-side encryption (age.py): backups are written to these public keys; only
        # restore, drill, mirror check and full verify read an identity, and the functions
        # that need none are not given it (template.yml, s.yaml).
        "BACKUP_AGE_RECIPIENTS": {
            "type": "string", "pattern": r"^[\s,]*(age1[02-9ac-hj-np-z]{58}[\s,]*)+$",
            "description": "age public keys (age1..., as age-keygen prints them; never the "
                           "AGE-SECRET-KEY), separated by commas"},
        "BACKUP_AGE_IDENTITY": {"type": "string", "pattern": "AGE-SECRET-KEY-1", "x-functions": ["drill"],
                                "description": "the text of an age key file (AGE-SECRET-KEY-1... lines)"},
        "BACKUP_AGE_IDENTITY_FILE": {"type": "string", "minLength": 1, "x-cli-only": True,
                                     "description": "the path of an age key file"},
        "OSS_SSE_KMS_KEY_ID": {"type": "string", "minLength": 1, "description": "a KMS key id"},
        "PG_BIN_DIR": {"type": "string", "minLength": 1,
                       "description": "a directory holding pg_dump and psql"},
        "VERIFY_MANIFEST_WAIT_SECONDS": _COUNT,
        "OSS_DR_BUCKET": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$",
                          "description": "a bucket name (the cross-region copy)"},
        "OSS_DR_ENDPOINT": {"type": "string", "pattern": "^https?://[^/]+/?$",
                            "description": "the DR region's endpoint URL"},
        "DRILL_DATABASE_URL": {"type": "string", "pattern": "^postgres(ql)?://",
                               "description": "a URL of the server that hosts drill databases"},
        "DRILL_CHECKS": {"type": "string", "description": "a JSON list of SQL checks"},
        "DRILL_RESTORE_JOBS": {"type": "string", "pattern": "^([1-9]|[12][0-9]|3[0-2])$",
                               "description": "1 to 32 psql sessions for the drill's restore"},
        "RTO_SECONDS": _COUNT,
        "WATCHDOG_KINDS": {"type": "string", "pattern": "^(daily|weekly)(,(daily|weekly))?$",
                           "description": "daily, weekly or daily,weekly"},
        "WATCHDOG_GRACE_HOURS": {"type": "string", "pattern": r"^[0-9]{1,3}(\.[0-9]+)?$",
                                 "description": "hours, e.g. 2"},
        # The cost estimates of `status` (CNY per GB-month, per GB copied across regions;
        # per vCPU-second, GB-second and invocation on FC).
        **{f"PRICE_{tier}": {"type": "string", "pattern": r"^[0-9]{1,6}(\.[0-9]+)?$",
                             "description": "a price in CNY such as 0.12", "x-cli-only": True}
           for tier in ("STANDARD", "IA", "ARCHIVE", "CRR_TRAFFIC",
                        "FC_VCPU_SECOND", "FC_GB_SECOND", "FC_INVOCATION")},  # fc_cost.py
        # Alert channels (channels.py checks their values and logs what is wrong).
        **{name: {"type": "string"} for name in (
            "ALERT_DINGTALK_WEBHOOK", "ALERT_DINGTALK_SECRET", "ALERT_WECOM_WEBHOOK",
            "ALERT_SLACK_WEBHOOK", "ALERT_WEBHOOK_URL", "ALERT_SMS_WEBHOOK_URL",
            "ALERT_SMS_PHONES", "ALERT_SUCCESS", "ALERT_COALESCE_SECONDS", "ALERT_TIMEOUT_SECONDS")},
        # Off FC only: FC functions take credentials from their role, the rest is local.
        "OSS_ACCESS_KEY_ID": {"type": "string", "x-cli-only": True},
        "OSS_ACCESS_KEY_SECRET": {"type": "string", "x-cli-only": True},
        "OSS_SECURITY_TOKEN": {"type": "string", "x-cli-only": True},
        # `status --url` signs the page's URL for this domain (bound to the bucket, so a
        # browser shows the page; OSS's own domain makes it a download).
        "OSS_STATUS_DOMAIN": {"type": "string", "pattern": "^https?://[^/]+/?$", "x-cli-only": True,
                              "description": "a custom domain bound to the bucket, as a URL "
                                             "like https://status.example.com"},
        "MIRROR_DIR": {"type": "string", "x-cli-only": True},
    },
}


def function_variables(function=None):
    """The variables FC function `function` may be configured with (the templates declare
    these): all but the CLI's, and those kept for some functions only where they belong."""
    return sorted(k for k, v in ENV_SCHEMA["properties"].items() if not v.get("x-cli-only")
                  and function in v.get("x-functions", [function]))


def _flag(value):
    return str(value).lower() in ("true", "yes", "1", "on")


def environment(environ=None):
    """The settings in force: os.environ (or `environ`) less empty values. The FC
    templates declare every variable, and an unset one arrives as "": that means unset."""
    return {k: v for k, v in (os.environ if environ is None else environ).items() if v != ""}


# What Serverless Devs leaves when X is missing from the deployer's .env: the reference
# itself, as text ("${env.X}" or "${env(X)}"), not an empty value.
UNRESOLVED = re.compile(r"\$\{\s*env(?:\.([A-Za-z_][A-Za-z0-9_]*)|\(\s*['\"]?([A-Za-z_][A-Za-z0-9_]*)['\"]?\s*\))\s*\}")


def check_unresolved(environ):
    for name in ENV_SCHEMA["properties"]:
        found = UNRESOLVED.search(environ.get(name, ""))
        if found:
            variable = found[1] or found[2]
            raise ConfigInvalid(
                f"environment variable {name} is the unresolved text {found[0]}: "
                f"{variable} was not in .env when the functions were deployed",
                f"add {variable}= to .env (empty means the default; see .env.example) and deploy again")


def check_env(environ):
    check_unresolved(environ)
    values = {k: environ[k] for k in ENV_SCHEMA["properties"] if k in environ}
    for err in jsonschema.Draft7Validator(ENV_SCHEMA).iter_errors(values):
        name = err.absolute_path[0] if err.absolute_path else "?"
        rule = ENV_SCHEMA["properties"].get(name, {}).get("description", err.validator)
        raise ConfigInvalid(f"environment variable {name} is invalid: it must be {rule}",
                            f"fix or unset {name}")


def setting(environ, name, default, parse=str):
    """One variable, checked against its schema: `default` when it is unset or empty (the
    README's rule), parsed with `parse` when set, ConfigInvalid naming it when malformed."""
    value = environment(environ).get(name)
    if value is None:
        return default
    check_env({name: value})
    return parse(value)


# GZIP_LEVEL's default, a libdeflate level (deflate_engine.py). bench/deflate_engines.py
# on 4 MiB blocks of a realistic dump, CPU time per thread, best of 5: level 5 deflates
# 105 MB/s per core (zlib -6: 31, 3.4x) and writes 1.0% more than gzip -6 (the target:
# within 2%); level 6 is 87 MB/s at -0.4%, level 4 128 MB/s but +3.3%. Without libdeflate
# (the zlib fallback), level 5 runs 44 MB/s, 1.5x zlib -6, for 2.7% more output.
DEFAULT_GZIP_LEVEL = 5


@dataclass
class BackupConfig:
    database: DatabaseSettings
    target: str
    oss: Optional[OSSSettings] = None
    databases: list = field(default_factory=list)  # [] = the URL's database; ["all"] = every one
    with_globals: bool = False
    no_role_passwords: bool = False
    gzip_level: int = DEFAULT_GZIP_LEVEL
    gzip_workers: int = 0  # 0 = one per available core
    timeout_seconds: int = 0  # 0 = no budget (CLI); FC sets its function timeout minus a margin
    keep: dict = field(default_factory=dict)  # kind -> backups kept by the prune
    prune_after_backup: bool = True
    table_index: bool = True  # cut sections and index them (restore --table / --jobs)
    age_recipients: list = field(default_factory=list)  # [] = not encrypted on our side

    def __repr__(self):
        return f"BackupConfig(database={self.database!r}, target={self.target!r}, oss={self.oss!r})"


def oss_settings(environ, credentials=None):
    """OSS settings from the environment; `credentials` (access_key_id, access_key_secret,
    security_token) from the FC context win over variables."""
    endpoint = environ.get("OSS_ENDPOINT")
    if not endpoint:
        raise ConfigInvalid("OSS_ENDPOINT is not set", "set OSS_ENDPOINT, e.g. "
                            "https://oss-cn-hangzhou-internal.aliyuncs.com (inside FC)")
    if credentials is None:
        ak = environ.get("OSS_ACCESS_KEY_ID") or environ.get("ALIBABA_CLOUD_ACCESS_KEY_ID")
        sk = environ.get("OSS_ACCESS_KEY_SECRET") or environ.get("ALIBABA_CLOUD_ACCESS_KEY_SECRET")
        token = environ.get("OSS_SECURITY_TOKEN") or environ.get("ALIBABA_CLOUD_SECURITY_TOKEN", "")
        credentials = (ak, sk, token)
    ak, sk, token = credentials
    if not ak or not sk:
        raise ConfigInvalid("no OSS credentials: OSS_ACCESS_KEY_ID and OSS_ACCESS_KEY_SECRET are "
                            "not set", "set both (or, in FC, give the function a role)")
    sse = environ.get("OSS_SERVER_SIDE_ENCRYPTION", "")
    return OSSSettings(
        endpoint=endpoint.rstrip("/"), access_key_id=ak, access_key_secret=sk,
        security_token=token or "", region=environ.get("OSS_REGION", ""),
        server_side_encryption=sse, kms_key_id=environ.get("OSS_SSE_KMS_KEY_ID", "") if sse == "KMS" else "",
        concurrency=int(environ.get("UPLOAD_CONCURRENCY", 2)),
        min_part_size=int(environ.get("UPLOAD_MIN_PART_MB", 8)) * MIB,
        status_domain=environ.get("OSS_STATUS_DOMAIN", "").rstrip("/"))


def storage_target(environ=None, target=None, credentials=None, flag="--to"):
    """(target, OSS settings or None): where backups live, for every operation."""
    from .storage import check_target
    environ = environment(environ)
    origin = flag if target else "BACKUP_TARGET"
    if target:
        environ["BACKUP_TARGET"] = target
    check_env(environ)
    target = environ.get("BACKUP_TARGET")
    if not target:
        bucket = environ.get("OSS_BACKUP_BUCKET")
        if not bucket:
            raise ConfigInvalid("no backup target: OSS_BACKUP_BUCKET is not set",
                                f"set OSS_BACKUP_BUCKET (and OSS_ENDPOINT), or give {flag} DIR")
        target, origin = f"oss://{bucket}/{environ.get('OSS_BACKUP_PREFIX', 'db-backups/')}", \
            "OSS_BACKUP_BUCKET"
    check_target(target, origin)  # names the flag or variable of a bucket OSS refuses
    oss = oss_settings(environ, credentials) if target.startswith("oss://") else None
    if oss:
        register_secret(oss.access_key_secret, oss.security_token)
    return target, oss


def keep_counts(environ, target):
    """Backups kept per kind: KEEP_DAILY / KEEP_WEEKLY / KEEP_MANUAL, else PLAN's numbers
    (OSS 30 / 12 / 10; a directory, the local tier, 10 of each)."""
    from .prune import DEFAULT_KEEP, LOCAL_KEEP
    defaults = DEFAULT_KEEP if target.startswith("oss://") else dict.fromkeys(DEFAULT_KEEP, LOCAL_KEEP)
    return {kind: setting(environ, f"KEEP_{kind.upper()}", n, int) for kind, n in defaults.items()}


def prices(environ):
    """CNY prices of the cost estimate: PRICE_STANDARD / _IA / _ARCHIVE / _CRR_TRAFFIC,
    else PLAN §7's."""
    from .status import PRICES
    return {tier: setting(environ, f"PRICE_{tier.upper()}", price, float)
            for tier, price in PRICES.items()}


def grace_seconds(environ):
    """WATCHDOG_GRACE_HOURS in seconds: how long past the RPO before a kind counts as
    missed (the watchdog and `status` read the same)."""
    from .status import DEFAULT_GRACE_SECONDS, HOUR
    return setting(environ, "WATCHDOG_GRACE_HOURS", DEFAULT_GRACE_SECONDS / HOUR, float) * HOUR


def drill_restore_jobs(environ=None):
    """DRILL_RESTORE_JOBS: sessions of the drill's `--jobs` restore; default the CPUs this
    process can use (the restore's psql sessions and its reading share them)."""
    return setting(environ, "DRILL_RESTORE_JOBS", None, int) or min(default_workers(), 32)


def age_recipients(environ=None):
    """BACKUP_AGE_RECIPIENTS: the public keys new backups are encrypted to ([] for none)."""
    from . import age
    return setting(environ, "BACKUP_AGE_RECIPIENTS", [],
                   lambda text: age.parse_recipients(text, "BACKUP_AGE_RECIPIENTS"))


def load_identities(environ=None):
    """The age identities of BACKUP_AGE_IDENTITY (the key file's text) or
    BACKUP_AGE_IDENTITY_FILE (its path); [] when neither is set. Their key lines are
    registered with the log redactor as they are read (age.parse_identities)."""
    from . import age
    environ = environment(environ)
    text, path = environ.get("BACKUP_AGE_IDENTITY"), environ.get("BACKUP_AGE_IDENTITY_FILE")
    if text and path:
        raise ConfigInvalid("both BACKUP_AGE_IDENTITY and BACKUP_AGE_IDENTITY_FILE are set",
                            "set only one of them")
    if path:
        return age.load_identities(path, "BACKUP_AGE_IDENTITY_FILE")
    return age.parse_identities(text, "BACKUP_AGE_IDENTITY") if text else []


def manifest_wait(environ, default):
    """VERIFY_MANIFEST_WAIT_SECONDS: how long verify waits for a manifest still missing."""
    return setting(environ, "VERIFY_MANIFEST_WAIT_SECONDS", default, int)


def load(environ=None, database_url=None, target=None, credentials=None):
    """The backup configuration; explicit arguments (CLI flags, FC context) win over env."""
    environ = environment(environ)
    if database_url:
        environ["DATABASE_URL"] = database_url
    target, oss = storage_target(environ, target, credentials)
    database = DatabaseSettings.from_url(environ.get("DATABASE_URL"), environ)
    register_secret(database.password)
    databases = environ.get("BACKUP_DATABASES", "")
    return BackupConfig(
        database=database, target=target, oss=oss,
        databases=[d for d in databases.split(",") if d],
        with_globals=_flag(environ.get("BACKUP_GLOBALS", "false")),
        no_role_passwords=_flag(environ.get("BACKUP_NO_ROLE_PASSWORDS", "false")),
        gzip_level=int(environ.get("GZIP_LEVEL", DEFAULT_GZIP_LEVEL)),
        gzip_workers=int(environ.get("GZIP_WORKERS", 0)),
        timeout_seconds=int(environ.get("BACKUP_TIMEOUT_SECONDS", 0)),
        keep=keep_counts(environ, target),
        prune_after_backup=_flag(environ.get("PRUNE_AFTER_BACKUP", "true")),
        table_index=_flag(environ.get("BACKUP_TABLE_INDEX", "true")),
        age_recipients=age_recipients(environ))
