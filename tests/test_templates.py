"""s.yaml and template.yml: they parse, declare real handlers, schedule what PLAN says,
agree with each other and with the config schema, and hold no secret."""
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
SERVICE = T["Resources"]["l2c-backup"]
S_FUNCS = {name: svc["props"] for name, svc in S["services"].items()}
T_FUNCS = {k: v for k, v in SERVICE.items() if isinstance(v, dict) and v.get("Type") == "Aliyun::Serverless::Function"}


def test_both_declare_the_same_functions_on_the_fc2_model():
    assert S["edition"] == "1.0.0" and T["Transform"] == "Aliyun::Serverless-2018-04-03"
    assert all(svc["component"] == "devsapp/fc" for svc in S["services"].values())
    assert set(S_FUNCS) == set(T_FUNCS) == {"backup", "verify", "drill", "watchdog", "alert"}


@pytest.mark.parametrize("name", sorted(S_FUNCS))
def test_every_handler_exists_is_callable_and_sized_the_same_in_both(name):
    fn, props = S_FUNCS[name]["function"], T_FUNCS[name]["Properties"]
    module, attr = fn["handler"].split(".")
    assert callable(getattr(load_handler(module), attr))
    assert props["Handler"] == fn["handler"] and fn["runtime"] == props["Runtime"] == "python3.10"
    assert (fn["memorySize"], fn["timeout"], fn["diskSize"]) == \
        (props["MemorySize"], props["Timeout"], props["DiskSize"])
    assert fn["codeUri"] == props["CodeUri"] == "./functions"
    assert len(fn["layers"]) == len(props["Layers"]) == 2


def s_timers(name):
    return {(t["config"]["cronExpression"], t["config"]["payload"])
            for t in S_FUNCS[name].get("triggers", []) if t["type"] == "timer"}


def t_timers(name):
    return {(e["Properties"]["CronExpression"], e["Properties"]["Payload"])
            for e in T_FUNCS[name].get("Events", {}).values() if e["Type"] == "Timer"}


def test_schedules_and_payloads_follow_the_plan():
    assert s_timers("backup") == t_timers("backup") == {
        ("CRON_TZ=Asia/Shanghai 0 0 2 * * *", '{"kind":"daily"}'),   # daily 02:00
        ("CRON_TZ=Asia/Shanghai 0 0 3 * * 0", '{"kind":"weekly"}')}  # Sundays 03:00
    for cron, payload in s_timers("backup"):
        parse_backup_event({"triggerTime": "2026-11-27T18:00:00Z", "triggerName": "t", "payload": payload})
    drills = s_timers("drill")
    assert drills == t_timers("drill")
    assert ("CRON_TZ=Asia/Shanghai 0 0 4 1 * *", '{"kind":"daily"}') in drills  # monthly
    assert any(json.loads(p).get("source") == "dr" for _, p in drills)  # PLAN: quarterly from DR
    for _, payload in drills:
        parse_drill_event(payload)
    assert s_timers("watchdog") == t_timers("watchdog") == {("CRON_TZ=Asia/Shanghai 0 0 * * * *", "{}")}
    for cron, _ in s_timers("backup") | drills:
        assert len(cron.split()) == 7  # CRON_TZ=... + six fields (seconds first)


def test_verify_runs_on_every_new_backup_object():
    (trigger,) = S_FUNCS["verify"]["triggers"]
    (event,) = T_FUNCS["verify"]["Events"].values()
    assert trigger["type"] == "oss" and event["Type"] == "OSS"
    assert trigger["config"]["events"] == event["Properties"]["Events"] == ["oss:ObjectCreated:*"]
    assert trigger["config"]["filter"] == event["Properties"]["Filter"] == \
        {"Key": {"Prefix": "db-backups/", "Suffix": ".sql.gz"}}


def test_declared_environment_equals_what_the_config_schema_accepts():
    for name in S_FUNCS:
        s_env = S_FUNCS[name]["function"]["environmentVariables"]
        t_env = T_FUNCS[name]["Properties"]["EnvironmentVariables"]
        assert sorted(s_env) == sorted(t_env) == function_variables(), name
        assert all(v == f"${{env.{k}}}" for k, v in s_env.items())  # from the deployer's env
        assert all(set(v) == {"Ref"} for v in t_env.values())  # from parameters


def test_async_invocations_never_retry_a_backup_blindly_and_failures_reach_the_alert_function():
    for name in ("backup", "verify", "drill", "watchdog"):
        s_async = S_FUNCS[name]["function"]["asyncConfiguration"]
        t_async = T_FUNCS[name]["Properties"]["AsyncConfiguration"]
        assert s_async["maxAsyncRetryAttempts"] == t_async["MaxAsyncRetryAttempts"] == 0
        assert s_async["destination"]["onFailure"].endswith("/functions/alert")
        assert t_async["Destination"]["OnFailure"]["Fn::Sub"].endswith("/functions/alert")


def test_the_service_reaches_the_database_through_its_vpc_and_logs_to_sls():
    s_service = S["vars"]["service"]
    assert s_service["vpcConfig"]["vpcId"] and s_service["logConfig"]["logstore"]
    assert SERVICE["Properties"]["VpcConfig"]["VpcId"] == {"Ref": "VpcId"}
    assert s_service["internetAccess"] is False and SERVICE["Properties"]["InternetAccess"] is False


SECRET_PATTERNS = [r"LTAI[0-9A-Za-z]{8,}", r"postgres(ql)?://[^$\s'\"]*:[^$\s'\"]+@",
                   r"(?i)(secret|password|token)\s*:\s*['\"]?[A-Za-z0-9+/=]{8,}"]


@pytest.mark.parametrize("path", ["s.yaml", "template.yml", "deploy/ram-policy.json",
                                  "deploy/bucket-policy.json"])
def test_no_secret_literal_anywhere(path):
    text = (ROOT / path).read_text()
    for pattern in SECRET_PATTERNS:
        assert not re.search(pattern, text), (path, pattern)
    for name, p in T["Parameters"].items():
        if "URL" in p.get("Description", ""):
            assert p.get("NoEcho") is True, name  # database URLs carry passwords


def test_the_policies_are_least_privilege_documents():
    ram = json.loads((ROOT / "deploy/ram-policy.json").read_text())
    actions = {a for st in ram["Statement"] for a in st["Action"]}
    assert "oss:*" not in actions and not any(a.endswith(":*") for a in actions)
    assert all(st["Effect"] == "Allow" for st in ram["Statement"])
    bucket = json.loads((ROOT / "deploy/bucket-policy.json").read_text())
    assert all(r.endswith("/db-backups/*") for st in bucket["Statement"] for r in st["Resource"])
