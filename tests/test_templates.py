"""s.yaml (FC 2.0, Serverless Devs) and template.yml (ROS, FC 3.0): they declare real handlers,
schedule what PLAN says, agree with each other and with the config schema, and hold no
secret. Their formats are checked by the platform's own tools elsewhere: template.yml in
test_template_ros.py."""
import json
import re

import pytest
import yaml

from fc_handlers import FUNCTIONS, load_handler
from l2c_backup.config import function_variables
from l2c_backup.events import parse_backup_event, parse_drill_event

ROOT = FUNCTIONS.parent
S = yaml.safe_load((ROOT / "s.yaml").read_text())
T = yaml.safe_load((ROOT / "template.yml").read_text())
S_FUNCS = {name: svc["props"] for name, svc in S["services"].items()}
NAMES = ("backup", "verify", "drill", "watchdog", "alert")
PARAMETERS = T["Parameters"]


def resources(kind):
    return {name: r for name, r in T["Resources"].items() if r["Type"] == f"ALIYUN::FC3::{kind}"}


def function_name(props):
    """backup for {'Fn::Sub': '${DeploymentName}-backup'}: one deployment, five functions."""
    sub = props["FunctionName"]["Fn::Sub"]
    assert sub.startswith("${DeploymentName}-"), sub
    return sub.removeprefix("${DeploymentName}-")


T_FUNCS = {function_name(r["Properties"]): r["Properties"] for r in resources("Function").values()}
LOGICAL = {logical: function_name(r["Properties"]) for logical, r in resources("Function").items()}


def of_function(props):
    """The function a trigger or async config belongs to ({'Fn::GetAtt': [X, FunctionName]})."""
    logical, attribute = props["FunctionName"]["Fn::GetAtt"]
    assert attribute == "FunctionName"
    return LOGICAL[logical]


T_TRIGGERS = [r["Properties"] for r in resources("Trigger").values()]
T_ASYNC = {of_function(r["Properties"]): r["Properties"] for r in resources("AsyncInvokeConfig").values()}


def test_s_yaml_is_fc2_and_template_yml_is_ros_fc3_with_the_same_functions():
    assert S["edition"] == "1.0.0"
    assert all(svc["component"] == "devsapp/fc" for svc in S["services"].values())
    assert T["ROSTemplateFormatVersion"] == "2015-09-01" and "Transform" not in T
    assert {r["Type"] for r in T["Resources"].values()} == {
        "ALIYUN::FC3::Function", "ALIYUN::FC3::Trigger", "ALIYUN::FC3::AsyncInvokeConfig"}
    assert set(S_FUNCS) == set(T_FUNCS) == set(NAMES)
    assert len(resources("Function")) == len(NAMES)


@pytest.mark.parametrize("name", sorted(S_FUNCS))
def test_every_handler_exists_is_callable_and_sized_the_same_in_both(name):
    fn, props = S_FUNCS[name]["function"], T_FUNCS[name]
    module, attr = fn["handler"].split(".")
    assert callable(getattr(load_handler(module), attr))
    assert props["Handler"] == fn["handler"] and fn["runtime"] == props["Runtime"] == "python3.10"
    assert (fn["memorySize"], fn["timeout"], fn["diskSize"]) == \
        (props["MemorySize"], props["Timeout"], props["DiskSize"])
    # FC 3.0 allows 1 to 4 GB of memory per vCPU; 1 GB per vCPU as FC 2.0 gave
    assert props["MemorySize"] / 1024 == props["Cpu"]
    assert fn["codeUri"] == "./functions"  # the zip of functions/ for ROS:
    assert props["Code"] == {"OssBucketName": {"Ref": "CodeBucket"}, "OssObjectName": {"Ref": "CodeObject"}}
    assert fn["layers"] == ["${env.L2C_PG_LAYER_ARN}", "${env.L2C_PY_LAYER_ARN}"]
    assert props["Layers"] == [{"Ref": "L2cPgLayerArn"}, {"Ref": "L2cPyLayerArn"}]  # same order: first wins


def s_timers(name):
    return {(t["config"]["cronExpression"], t["config"]["payload"])
            for t in S_FUNCS[name].get("triggers", []) if t["type"] == "timer"}


def t_timers(name):
    return {(t["TriggerConfig"]["cronExpression"], t["TriggerConfig"]["payload"])
            for t in T_TRIGGERS if t["TriggerType"] == "timer" and of_function(t) == name}


def test_schedules_and_payloads_follow_the_plan():
    assert s_timers("backup") == t_timers("backup") == {
        ("CRON_TZ=Asia/Shanghai 0 0 2 * * *", '{"kind":"daily"}'),     # daily 02:00
        ("CRON_TZ=Asia/Shanghai 0 0 3 * * SUN", '{"kind":"weekly"}')}  # Sundays 03:00 (FC: 1-7 or MON-SUN)
    for cron, payload in s_timers("backup"):
        parse_backup_event({"triggerTime": "2026-11-27T18:00:00Z", "triggerName": "t", "payload": payload})
    drills = s_timers("drill")
    assert drills == t_timers("drill") == {
        ("CRON_TZ=Asia/Shanghai 0 0 4 1 * *", '{"kind":"daily"}'),                    # monthly
        ("CRON_TZ=Asia/Shanghai 0 0 5 1 1,4,7,10 *", '{"kind":"daily","source":"dr"}')}  # quarterly, DR
    for _, payload in drills:
        parse_drill_event(payload)
    assert s_timers("watchdog") == t_timers("watchdog") == {("CRON_TZ=Asia/Shanghai 0 0 * * * *", "{}")}
    assert not s_timers("verify") and not t_timers("verify") and not t_timers("alert")
    assert all(t["TriggerConfig"]["enable"] is True for t in T_TRIGGERS if t["TriggerType"] == "timer")
    for cron, _ in s_timers("backup") | drills:
        assert len(cron.split()) == 7  # CRON_TZ=... + six fields (seconds first)


COMPLETING = ["oss:ObjectCreated:PutObject", "oss:ObjectCreated:PostObject",
              "oss:ObjectCreated:CopyObject", "oss:ObjectCreated:CompleteMultipartUpload"]


def test_verify_runs_once_per_backup_object_under_the_configured_prefix():
    # one trigger per suffix, plain and encrypted (age): a trigger filters on one suffix
    triggers = S_FUNCS["verify"]["triggers"]
    osses = [t for t in T_TRIGGERS if t["TriggerType"] == "oss"]
    assert len(triggers) == len(osses) == 2
    for trigger, oss, suffix in zip(triggers, osses, (".sql.gz", ".sql.gz.age")):
        assert trigger["type"] == "oss" and of_function(oss) == "verify"
        assert trigger["config"]["events"] == oss["TriggerConfig"]["events"] == COMPLETING
        # both take the prefix from the same setting the functions read, OSS_BACKUP_PREFIX
        assert trigger["config"]["filter"] == {"Key": {"Prefix": "${env.OSS_BACKUP_PREFIX}", "Suffix": suffix}}
        assert oss["TriggerConfig"]["filter"] == {"key": {"prefix": {"Ref": "OssBackupPrefix"}, "suffix": suffix}}
        assert trigger["sourceArn"].endswith(":${env.OSS_BACKUP_BUCKET}")
        assert oss["SourceArn"]["Fn::Sub"].endswith(":${OssBackupBucket}")
        assert trigger["role"].endswith(":role/AliyunOSSEventNotificationRole")
        assert oss["InvocationRole"]["Fn::Sub"].endswith(":role/AliyunOSSEventNotificationRole")
    assert T_FUNCS["verify"]["EnvironmentVariables"]["OSS_BACKUP_PREFIX"] == {"Ref": "OssBackupPrefix"}
    assert PARAMETERS["OssBackupPrefix"]["Default"] == "db-backups/"


def test_declared_environment_equals_what_the_config_schema_accepts():
    for name in S_FUNCS:
        s_env = S_FUNCS[name]["function"]["environmentVariables"]
        t_env = T_FUNCS[name]["EnvironmentVariables"]
        assert sorted(s_env) == sorted(t_env) == function_variables(name), name
        assert all(v == f"${{env.{k}}}" for k, v in s_env.items())  # from the deployer's env
        assert all(set(v) == {"Ref"} and v["Ref"] in PARAMETERS for v in t_env.values())  # parameters


def test_only_the_drill_function_is_given_the_age_identity():
    holders = [name for name in S_FUNCS if "BACKUP_AGE_IDENTITY" in S_FUNCS[name]["function"]["environmentVariables"]]
    assert holders == [name for name in T_FUNCS if "BACKUP_AGE_IDENTITY" in T_FUNCS[name]["EnvironmentVariables"]] == ["drill"]
    assert PARAMETERS["BackupAgeIdentity"]["NoEcho"] is True


def test_with_several_databases_the_backup_function_invokes_itself_through_its_own_api():
    """fanout.py: template.yml's functions are FC 3.0 ones, s.yaml's FC 2.0 (the default)."""
    assert PARAMETERS["BackupFanoutApi"]["Default"] == "fc3"
    assert T_FUNCS["backup"]["EnvironmentVariables"]["BACKUP_FANOUT_API"] == {"Ref": "BackupFanoutApi"}
    env_example = (ROOT / ".env.example").read_text()
    assert "\nBACKUP_FANOUT_API=\n" in env_example  # empty: fc2, s.yaml's service


def test_async_invocations_never_retry_a_backup_blindly_and_failures_reach_the_alert_function():
    assert set(T_ASYNC) == {"backup", "verify", "drill", "watchdog"}  # alert is the destination
    for name in T_ASYNC:
        s_async = S_FUNCS[name]["function"]["asyncConfiguration"]
        t_async = T_ASYNC[name]
        assert s_async["maxAsyncRetryAttempts"] == t_async["MaxAsyncRetryAttempts"] == 0
        assert s_async["maxAsyncEventAgeInSeconds"] == t_async["MaxAsyncEventAgeInSeconds"]
        # async tasks, so `l2c-backup invoke --wait` can follow one
        assert s_async["statefulInvocation"] is True and t_async["AsyncTask"] is True
        assert s_async["destination"]["onFailure"].endswith("/functions/alert")
        assert t_async["DestinationConfig"] == {"OnFailure": {"Destination": {"Fn::GetAtt": ["AlertFunction", "Arn"]}}}
    assert LOGICAL["AlertFunction"] == "alert"


def test_the_functions_reach_the_database_through_the_vpc_and_log_to_sls():
    s_service = S["vars"]["service"]
    assert s_service["vpcConfig"]["vpcId"] and s_service["logConfig"]["logstore"]
    assert s_service["internetAccess"] is False
    for name, props in T_FUNCS.items():
        assert props["InternetAccess"] is False, name
        assert props["VpcConfig"] == {"VpcId": {"Ref": "VpcId"}, "VSwitchIds": [{"Ref": "VSwitchId"}],
                                      "SecurityGroupId": {"Ref": "SecurityGroupId"}}, name
        assert props["LogConfig"]["Project"] == {"Ref": "LogProject"}
        assert props["LogConfig"]["Logstore"] == {"Ref": "LogStore"}
        assert props["Role"] == {"Fn::Sub": "acs:ram::${ALIYUN::AccountId}:role/${RoleName}"}
    assert s_service["role"].endswith(":role/l2c-backup-fc") and PARAMETERS["RoleName"]["Default"] == "l2c-backup-fc"


SECRETS = ("DATABASE_URL", "DRILL_DATABASE_URL", "ALERT_DINGTALK_WEBHOOK", "ALERT_DINGTALK_SECRET",
           "ALERT_WECOM_WEBHOOK", "ALERT_SLACK_WEBHOOK", "ALERT_WEBHOOK_URL", "ALERT_SMS_WEBHOOK_URL",
           "ALERT_SMS_PHONES")


def test_secret_parameters_are_no_echo_and_have_no_default_value():
    for variable, ref in T_FUNCS["backup"]["EnvironmentVariables"].items():
        parameter = PARAMETERS[ref["Ref"]]
        if variable in SECRETS:
            assert parameter.get("NoEcho") is True, variable
            assert parameter.get("Default", "") == "", variable


SECRET_PATTERNS = [r"LTAI[0-9A-Za-z]{8,}", r"postgres(ql)?://[^$\s'\"]*:[^$\s'\"]+@",
                   r"(?i)(secret|password|token)\s*:\s*['\"]?[A-Za-z0-9+/=]{8,}"]


@pytest.mark.parametrize("path", ["s.yaml", "template.yml", "deploy/ram-policy.json",
                                  "deploy/bucket-policy.json"])
def test_no_secret_literal_anywhere(path):
    text = (ROOT / path).read_text()
    for pattern in SECRET_PATTERNS:
        assert not re.search(pattern, text), (path, pattern)
    for name, p in PARAMETERS.items():
        if "URL" in p.get("Description", ""):
            assert p.get("NoEcho") is True, name  # database URLs carry passwords


def test_the_policies_are_least_privilege_documents():
    ram = json.loads((ROOT / "deploy/ram-policy.json").read_text())
    actions = {a for st in ram["Statement"] for a in st["Action"]}
    assert "oss:*" not in actions and not any(a.endswith(":*") for a in actions)
    assert all(st["Effect"] == "Allow" for st in ram["Statement"])
    bucket = json.loads((ROOT / "deploy/bucket-policy.json").read_text())
    assert all(r.endswith("/db-backups/*") for st in bucket["Statement"] for r in st["Resource"])
