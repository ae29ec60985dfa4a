"""s.yaml as `s deploy` sees it: resolved by Serverless Devs' own parser
(@serverless-devs/core, pinned in tests/sdevs/, driven by tests/sdevs/resolve.js) with the
shipped .env.example, then held to the devsapp/fc props spec and to what the functions'
configuration accepts."""
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest

from l2c_backup import config
from l2c_backup.errors import ConfigInvalid

ROOT = Path(__file__).resolve().parents[1]
SDEVS = ROOT / "tests" / "sdevs"
RESOLVER = SDEVS / "resolve.js"
SPEC = json.loads((SDEVS / "fc-props.schema.json").read_text())
ACCOUNT = "1234567890123456"
OLD_COMMIT = "94b2aee"  # s.yaml before issue 11
# What a deployer fills in: the REQUIRED lines of .env.example.
SAMPLES = {
    "L2C_VPC_ID": "vpc-bp1l2csample", "L2C_VSWITCH_ID": "vsw-bp1l2csample",
    "L2C_SECURITY_GROUP_ID": "sg-bp1l2csample", "L2C_LOG_PROJECT": "l2c-logs",
    "L2C_LOG_STORE": "l2c-backup",
    "L2C_PG_LAYER_ARN": f"acs:fc:cn-hangzhou:{ACCOUNT}:layers/l2c-pg/versions/1",
    "L2C_PY_LAYER_ARN": f"acs:fc:cn-hangzhou:{ACCOUNT}:layers/l2c-python/versions/1",
    "DATABASE_URL": "postgresql://backup:sample@pgm-sample.pg.rds.aliyuncs.com:5432/l2c?sslmode=require",
    "OSS_ENDPOINT": "https://oss-cn-hangzhou-internal.aliyuncs.com",
    "OSS_BACKUP_BUCKET": "l2c-backups",
}
COMPLETING_EVENTS = ["oss:ObjectCreated:PutObject", "oss:ObjectCreated:PostObject",
                     "oss:ObjectCreated:CopyObject", "oss:ObjectCreated:CompleteMultipartUpload"]

if not (SDEVS / "node_modules" / "@serverless-devs" / "core").is_dir() or not shutil.which("node"):
    pytest.fail("the Serverless Devs parser is not installed: run `npm ci --prefix tests/sdevs` "
                "(Node.js needed)", pytrace=False)


def env_example(**values):
    """.env.example with some values filled in (a line `X=` becomes `X=value`)."""
    text = (ROOT / ".env.example").read_text()
    for name, value in values.items():
        text, count = re.subn(rf"(?m)^{name}=.*$", f"{name}={value}", text)
        assert count == 1, name
    return text


def without(env_text, name):
    return re.sub(rf"(?m)^{name}=.*\n", "", env_text)


class Deployer:
    """A project folder (s.yaml + .env) and a Serverless Devs home (~/.s), as on the
    machine that runs `s deploy`."""

    def __init__(self, tmp_path):
        self.project, self.home = tmp_path / "project", tmp_path / "home"
        self.project.mkdir()
        self.home.mkdir()
        # Only what node needs: no CI markers, no AccessKeyID/AccountID of the caller's.
        self.env = {"PATH": os.environ["PATH"], "HOME": str(self.home),
                    "serverless_devs_config_home": str(self.home)}

    def node(self, *args):
        done = subprocess.run(["node", str(RESOLVER), *args], cwd=self.project, env=self.env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done

    def config_add(self, alias, account_id):
        """`s config add --AccountID ... -a ALIAS`: core's own writer of ~/.s/access.yaml."""
        self.node("config-add", alias, account_id)

    def resolve(self, s_yaml, env_text, access=None):
        (self.project / "s.yaml").write_text(s_yaml)
        (self.project / ".env").write_text(env_text)
        out = self.project / "resolved.json"
        self.node("resolve", "s.yaml", str(out), *([access] if access else []))
        return json.loads(out.read_text())


@pytest.fixture
def deployer(tmp_path):
    d = Deployer(tmp_path)
    d.config_add("default", ACCOUNT)
    return d


@pytest.fixture
def resolved(deployer):
    return deployer.resolve((ROOT / "s.yaml").read_text(), env_example(**SAMPLES))


def unresolved_text(node, path="$"):
    """Every place where a ${...} survived, as (path, value)."""
    if isinstance(node, dict):
        return [hit for k, v in node.items() for hit in unresolved_text(v, f"{path}.{k}")]
    if isinstance(node, list):
        return [hit for i, v in enumerate(node) for hit in unresolved_text(v, f"{path}[{i}]")]
    return [(path, node)] if isinstance(node, str) and "${" in node else []


def spec_errors(props):
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in jsonschema.Draft202012Validator(SPEC).iter_errors(props)]


def environments(resolved):
    return {name: s["props"]["function"]["environmentVariables"] for name, s in resolved["services"].items()}


# -- today's s.yaml ------------------------------------------------------------------------

def test_s_yaml_resolves_with_env_example_and_no_variable_text_survives(resolved):
    assert set(resolved["services"]) == {"backup", "verify", "drill", "watchdog", "alert"}
    assert unresolved_text(resolved) == []
    assert resolved["access"] == "default"
    for name, service in resolved["services"].items():
        assert service["credentials_found"], name  # so ${config(AccountID)} had a value
        assert service["props"]["service"]["role"] == f"acs:ram::{ACCOUNT}:role/l2c-backup-fc"


def test_resolved_props_carry_only_fields_of_the_devsapp_fc_spec_with_valid_values(resolved):
    for name, service in resolved["services"].items():
        assert service["component"] == "devsapp/fc"
        assert spec_errors(service["props"]) == [], name


def test_config_accepts_every_functions_resolved_environment(resolved):
    for name, environ in environments(resolved).items():
        assert sorted(environ) == config.function_variables(name), name
        cfg = config.load(environ, credentials=("sample-id", "sample-secret", ""))
        assert cfg.target == "oss://l2c-backups/db-backups/", name
        assert cfg.with_globals is False and cfg.prune_after_backup is True  # empty = default


def test_env_example_lists_every_variable_s_yaml_uses():
    s_yaml = re.sub(r"(?m)^\s*#.*$", "", (ROOT / "s.yaml").read_text())  # not the comments
    used = set(re.findall(r"\$\{env[.(]([A-Za-z_][A-Za-z0-9_]*)", s_yaml))
    listed = set(re.findall(r"(?m)^([A-Z_][A-Z0-9_]*)=", (ROOT / ".env.example").read_text()))
    assert used - listed == set()
    assert used >= set(SAMPLES)


def test_the_verify_trigger_follows_the_prefix_and_subscribes_only_completing_events(deployer):
    got = deployer.resolve((ROOT / "s.yaml").read_text(),
                           env_example(**SAMPLES, OSS_BACKUP_PREFIX="pg/backups/"))
    plain, encrypted = got["services"]["verify"]["props"]["triggers"]  # one per suffix
    for trigger, suffix in ((plain, ".sql.gz"), (encrypted, ".sql.gz.age")):
        assert trigger["config"]["events"] == COMPLETING_EVENTS
        assert trigger["config"]["filter"] == {"Key": {"Prefix": "pg/backups/", "Suffix": suffix}}
        assert trigger["sourceArn"] == f"acs:oss:cn-hangzhou:{ACCOUNT}:l2c-backups"
        assert trigger["role"] == f"acs:ram::{ACCOUNT}:role/AliyunOSSEventNotificationRole"


def test_the_weekly_backup_runs_on_sunday_in_fcs_day_of_week_names(resolved):
    crons = {t["name"]: t["config"]["cronExpression"] for t in resolved["services"]["backup"]["props"]["triggers"]}
    assert crons["weekly-sun-0300"] == "CRON_TZ=Asia/Shanghai 0 0 3 * * SUN"
    assert crons["daily-0200"] == "CRON_TZ=Asia/Shanghai 0 0 2 * * *"


def test_deploy_with_another_access_alias_takes_its_account(deployer):
    deployer.config_add("prod", "9876543210987654")
    got = deployer.resolve((ROOT / "s.yaml").read_text(), env_example(**SAMPLES), access="prod")
    assert unresolved_text(got) == []
    dest = got["services"]["backup"]["props"]["function"]["asyncConfiguration"]["destination"]
    assert dest["onFailure"] == "acs:fc:cn-hangzhou:9876543210987654:services/l2c-backup.LATEST/functions/alert"


def test_a_variable_missing_from_env_is_refused_with_the_line_to_add(deployer):
    got = deployer.resolve((ROOT / "s.yaml").read_text(), without(env_example(**SAMPLES), "BACKUP_GLOBALS"))
    environ = environments(got)["backup"]
    assert environ["BACKUP_GLOBALS"] == "${env.BACKUP_GLOBALS}"  # the parser's doing, not ours
    with pytest.raises(ConfigInvalid) as caught:
        config.load(environ, credentials=("sample-id", "sample-secret", ""))
    message = str(caught.value)
    assert "BACKUP_GLOBALS is the unresolved text ${env.BACKUP_GLOBALS}" in message
    assert "add BACKUP_GLOBALS= to .env" in message


@pytest.mark.parametrize("text", ["${env(GZIP_LEVEL)}", "${env('GZIP_LEVEL')}", "${env.GZIP_LEVEL}"])
def test_both_reference_forms_left_as_text_are_named(text):
    with pytest.raises(ConfigInvalid, match=rf"(?s)GZIP_LEVEL is the unresolved text {re.escape(text)}: .*"
                                            r"add GZIP_LEVEL= to \.env"):
        config.check_env({"GZIP_LEVEL": text})


def test_an_unresolved_variable_ends_the_cli_in_one_message_without_a_traceback(tmp_path):
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "OSS_ENDPOINT": "http://127.0.0.1:9",
           "OSS_BACKUP_BUCKET": "l2c-backups", "OSS_ACCESS_KEY_ID": "id", "OSS_ACCESS_KEY_SECRET": "secret",
           "KEEP_DAILY": "${env.KEEP_DAILY}"}
    done = subprocess.run([sys.executable, "-m", "l2c_backup.cli", "prune", "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == ConfigInvalid.exit_code
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(
        "l2c-backup prune: environment variable KEEP_DAILY is the unresolved text ${env.KEEP_DAILY}: "
        "KEEP_DAILY was not in .env when the functions were deployed; what to do: ")
    assert "add KEEP_DAILY= to .env" in line


def test_an_empty_value_still_means_the_default():
    cfg = config.load({"DATABASE_URL": SAMPLES["DATABASE_URL"], "OSS_ENDPOINT": SAMPLES["OSS_ENDPOINT"],
                       "OSS_BACKUP_BUCKET": "l2c-backups", "GZIP_LEVEL": "", "OSS_BACKUP_PREFIX": ""},
                      credentials=("sample-id", "sample-secret", ""))
    assert cfg.gzip_level == config.DEFAULT_GZIP_LEVEL and cfg.target == "oss://l2c-backups/db-backups/"


# -- the s.yaml before issue 11, through the same checks ------------------------------------

README_ENV = """\
L2C_ACCESS_ALIAS=default
DATABASE_URL=postgresql://backup:<password>@pgm-xxx.pg.rds.aliyuncs.com:5432/l2c?sslmode=require
OSS_ENDPOINT=https://oss-cn-hangzhou-internal.aliyuncs.com
OSS_BACKUP_BUCKET=l2c-backups
OSS_DR_BUCKET=l2c-backups-dr
OSS_DR_ENDPOINT=https://oss-cn-shanghai.aliyuncs.com
ALERT_DINGTALK_WEBHOOK=https://oapi.dingtalk.com/robot/send?access_token=...
ALERT_DINGTALK_SECRET=SEC...
L2C_VPC_ID=vpc-... L2C_VSWITCH_ID=vsw-... L2C_SECURITY_GROUP_ID=sg-...
L2C_LOG_PROJECT=l2c-logs L2C_LOG_STORE=l2c-backup
L2C_PG_LAYER_ARN=...  L2C_PY_LAYER_ARN=...   (from step 3)
"""  # the README's deploy step 1 before issue 11, verbatim


def test_the_s_yaml_before_issue_11_fails_these_checks(deployer):
    shown = subprocess.run(["git", "show", f"{OLD_COMMIT}:s.yaml"], cwd=ROOT, capture_output=True, text=True)
    if shown.returncode != 0:
        pytest.skip(f"commit {OLD_COMMIT} is not in this clone's history")
    got = deployer.resolve(shown.stdout, README_ENV)
    assert got["access"] == "${env.L2C_ACCESS_ALIAS}"  # the parser walks services only
    assert not any(s["credentials_found"] for s in got["services"].values())
    assert got["services"]["backup"]["props"]["service"]["role"] == "acs:ram::${config.AccountID}:role/l2c-backup-fc"
    environ = environments(got)["backup"]
    literal = sorted(k for k, v in environ.items() if v.startswith("${env."))
    assert (len(literal), len(environ)) == (31, 38)
    assert spec_errors(got["services"]["backup"]["props"])  # vpcConfig ids are not ids
    with pytest.raises(ConfigInvalid, match="unresolved text"):
        config.load(environ, credentials=("sample-id", "sample-secret", ""))


def test_the_code_package_serverless_devs_zips_leaves_caches_out_and_keeps_every_module(tmp_path):
    """functions/.fcignore, read by Serverless Devs' own zipper as `s deploy` uploads codeUri."""
    code = tmp_path / "functions"
    shutil.copytree(ROOT / "functions", code)
    (code / "l2c_backup" / "__pycache__").mkdir(exist_ok=True)
    (code / "l2c_backup" / "__pycache__" / "config.cpython-310.pyc").write_bytes(b"\x6f\x0d")
    (code / "stale.pyc").write_bytes(b"\x6f\x0d")

    done = subprocess.run(["node", str(SDEVS / "zip-code.js"), str(code), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    names = zipfile.ZipFile(done.stdout.strip().splitlines()[-1]).namelist()

    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    for handler in ("backup", "verify", "drill", "watchdog", "alert"):
        assert f"{handler}.py" in names
    assert "l2c_backup/storage/__init__.py" in names
