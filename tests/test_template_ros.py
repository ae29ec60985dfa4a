"""template.yml checked offline by Alibaba Cloud's own tools (tests/ros/validate-template.js):
the ROS CDK's L1 constructs, generated from ROS's resource specifications, rebuild every
resource and run their property validators; what they do not carry over (an unknown or
misspelled property) is a difference; trigger configs are checked against the FC 3.0 SDK's
structs and runtimes against the FC 3.0 SDK's list. Each broken variant below is a
mistake the check must catch, so none of them can pass silently."""
import copy
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHECKS = ROOT / "tests" / "ros"
VALIDATOR = CHECKS / "validate-template.js"
TEMPLATE = yaml.safe_load((ROOT / "template.yml").read_text())


def validate(template):
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: install Node.js 18+ (the ROS template check runs on it)",
                    pytrace=False)
    if not (CHECKS / "node_modules" / "@alicloud" / "ros-cdk-fc3").is_dir():
        pytest.fail("the ROS CDK is not installed: run `npm ci --prefix tests/ros --no-audit "
                    "--no-fund`", pytrace=False)
    result = subprocess.run([node, str(VALIDATOR)], input=json.dumps(template), text=True,
                            capture_output=True, timeout=120)
    assert not result.stderr.strip(), result.stderr  # a crash of the check is not a verdict
    return result.returncode, result.stdout


def broken(change):
    template = copy.deepcopy(TEMPLATE)
    change(template)
    return template


def props(template, resource):
    return template["Resources"][resource]["Properties"]


def test_template_yml_is_valid_for_ros_fc3():
    code, out = validate(TEMPLATE)
    assert code == 0, out
    assert out.strip() == ("valid: 54 parameters, 5 ALIYUN::FC3::Function, 7 ALIYUN::FC3::Trigger, "
                           "4 ALIYUN::FC3::AsyncInvokeConfig")


def test_the_funcraft_template_it_replaces_is_rejected():
    funcraft = broken(lambda t: t.update({
        "Transform": "Aliyun::Serverless-2018-04-03",
        "Resources": {"l2c-backup": {"Type": "Aliyun::Serverless::Service", "Properties": {}}}}))
    code, out = validate(funcraft)
    assert code == 1
    assert "Transform: not a section this check knows" in out
    assert 'Resources.l2c-backup: type "Aliyun::Serverless::Service" is not one of' in out


# (what is broken, how, what the check must say)
BROKEN = [
    ("unknown_function_property",
     lambda t: props(t, "BackupFunction").update(DiskSze=512),
     "Resources.BackupFunction.Properties.DiskSze: dropped by the ROS CDK"),
    ("misspelled_nested_property",
     lambda t: props(t, "VerifyFunction").update(VpcConfig={
         "VpcId": {"Ref": "VpcId"}, "VSwitchId": [{"Ref": "VSwitchId"}],
         "SecurityGroupId": {"Ref": "SecurityGroupId"}}),
     "Resources.VerifyFunction.Properties.VpcConfig.VSwitchId: dropped by the ROS CDK"),
    ("runtime_fc3_does_not_have",
     lambda t: props(t, "DrillFunction").update(Runtime="python3.6"),
     'Resources.DrillFunction.Properties.Runtime: FC 3.0 has no runtime "python3.6"'),
    ("runtime_of_the_wrong_type",
     lambda t: props(t, "DrillFunction").update(Runtime=3.10),
     "runtime: 3.1 should be a string"),
    ("missing_handler",
     lambda t: props(t, "WatchdogFunction").pop("Handler"),
     "WatchdogFunction: Supplied properties not correct for \"RosFunctionProps\" | handler: required but missing"),
    ("memory_below_ros_range",
     lambda t: props(t, "AlertFunction").update(MemorySize=64),
     "memorySize: 64 is less than min value(128)"),
    ("timeout_above_ros_range",
     lambda t: props(t, "BackupFunction").update(Timeout=86401),
     "timeout: 86401 is larger than"),
    ("async_retries_above_ros_range",
     lambda t: props(t, "BackupAsyncConfig").update(MaxAsyncRetryAttempts=9),
     "maxAsyncRetryAttempts: 9 is larger than"),
    ("timer_config_in_fc2_spelling",
     lambda t: props(t, "BackupDailyTrigger").update(TriggerConfig={
         "CronExpression": "CRON_TZ=Asia/Shanghai 0 0 2 * * *", "Enable": True,
         "Payload": '{"kind":"daily"}'}),
     "TriggerConfig.CronExpression: not a field of FC API TimerTriggerConfig"),
    ("oss_filter_in_fc2_spelling",
     lambda t: props(t, "VerifyObjectCreatedTrigger")["TriggerConfig"].update(
         filter={"Key": {"Prefix": "db-backups/", "Suffix": ".sql.gz"}}),
     "TriggerConfig.filter.Key: not a field of FC API Filter"),
    ("timer_payload_not_a_string",
     lambda t: props(t, "WatchdogHourlyTrigger")["TriggerConfig"].update(payload={}),
     "TriggerConfig.payload: must be a string"),
    ("unknown_trigger_type",
     lambda t: props(t, "BackupDailyTrigger").update(TriggerType="cron"),
     'no FC API struct known here for trigger type "cron"'),
    ("ref_to_a_missing_parameter",
     lambda t: props(t, "BackupFunction")["VpcConfig"].update(VpcId={"Ref": "Vpc"}),
     "Ref to 'Vpc', which is neither a parameter nor a resource"),
    ("getatt_of_a_missing_attribute",
     lambda t: props(t, "VerifyAsyncConfig").update(DestinationConfig={
         "OnFailure": {"Destination": {"Fn::GetAtt": ["AlertFunction", "Arnn"]}}}),
     "ALIYUN::FC3::Function has no attribute 'Arnn'"),
    ("parameter_of_an_unknown_type",
     lambda t: t["Parameters"]["DeploymentName"].update(Type="Text"),
     "Parameters.DeploymentName: The property type (value: Text) of Template/DeploymentName is not allowed"),
    ("fc2_resource_type_without_layers",
     lambda t: t["Resources"]["BackupFunction"].update(Type="ALIYUN::FC::Function"),
     'type "ALIYUN::FC::Function" is not one of'),
]


@pytest.mark.parametrize("change,expected", [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_a_broken_template_is_rejected_naming_the_mistake(change, expected):
    code, out = validate(broken(change))
    assert code == 1, out
    assert expected in out, out
