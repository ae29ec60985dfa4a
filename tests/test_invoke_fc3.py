"""`l2c-backup invoke --api fc3`: the FC 3.0 functions template.yml deploys (named
<FC_SERVICE>-<function>, no service), reached through the FC 3.0 API. The local FC endpoint
checks FC 3.0's ACS3-HMAC-SHA256 signatures; that it checks them as FC does is shown with
Alibaba Cloud's official FC 3.0 SDK (@alicloud/fc20230330, tests/ros/fc3-invoke.js), and
the CLI's own client is then held to the same endpoint, end to end with the real handlers."""
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from l2c_backup import fc3api
from l2c_backup.errors import ConfigInvalid, EventInvalid, InvocationFailed, NotCompliant
from l2c_backup.invoke import FC3Invoker, FCSettings
from l2c_local.fc import LocalFC
from test_invoke import ROLE, fc, hello_dir, hello_fc, invoke, keys, light_fc  # noqa: F401 (fixtures)

SDK_INVOKE = Path(__file__).resolve().parent / "ros" / "fc3-invoke.js"


def official_sdk_invoke(server, function, payload, kind="Sync", key=None, secret=None, token=""):
    """InvokeFunction through the official FC 3.0 SDK: its JSON answer."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: install Node.js 18+", pytrace=False)
    if not (SDK_INVOKE.parent / "node_modules" / "@alicloud" / "fc20230330").is_dir():
        pytest.fail("the FC 3.0 SDK is not installed: run `npm ci --prefix tests/ros --no-audit "
                    "--no-fund`", pytrace=False)
    env = {**os.environ, "ALIBABA_CLOUD_ACCESS_KEY_ID": key or server.access_key_id,
           "ALIBABA_CLOUD_ACCESS_KEY_SECRET": secret or server.access_key_secret,
           "ALIBABA_CLOUD_SECURITY_TOKEN": token}
    done = subprocess.run([node, str(SDK_INVOKE), server.endpoint, function, kind, payload],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    return json.loads(done.stdout)


# -- the local endpoint against the official SDK -------------------------------------------------
def test_the_official_fc3_sdk_invokes_a_function_named_service_dash_function(hello_fc):
    answer = official_sdk_invoke(hello_fc, "l2c-backup-hello", "one")
    (call,) = hello_fc.invocations
    assert answer["status"] == 200 and answer["requestId"] == call.request_id
    assert json.loads(answer["body"])["event"] == "one" and call.payload == b"one"

    failed = official_sdk_invoke(hello_fc, "l2c-backup-hello", "boom")
    assert failed["status"] == 200 and failed["errorType"] == "UnhandledInvocationError"
    assert json.loads(failed["body"])["errorType"] == "ValueError"

    queued = official_sdk_invoke(hello_fc, "l2c-backup-hello", "two", kind="Async")
    assert queued["status"] == 202
    hello_fc.wait_idle()
    assert [c.status for c in hello_fc.invocations] == ["Succeeded", "Failed", "Succeeded"]


def test_the_official_sdk_with_a_wrong_secret_or_sts_token_is_refused_before_anything_runs(hello_dir):
    with LocalFC(hello_dir, credentials=("STS.caller", "caller-secret", "caller-token")) as server:
        ok = official_sdk_invoke(server, "l2c-backup-hello", "x", token="caller-token")
        assert ok["status"] == 200
        wrong_secret = official_sdk_invoke(server, "l2c-backup-hello", "x", secret="nope",
                                           token="caller-token")
        assert wrong_secret["error"]["code"] == "SignatureNotMatch"
        wrong_token = official_sdk_invoke(server, "l2c-backup-hello", "x", token="other-token")
        assert wrong_token["error"]["code"] == "InvalidSecurityToken"
        unknown = official_sdk_invoke(server, "l2c-backup-nothere", "x", token="caller-token")
        assert unknown["error"]["code"] == "FunctionNotFound"
        assert [c.payload for c in server.invocations] == [b"x"]


def test_a_request_with_an_unsigned_acs_header_a_changed_body_or_a_skewed_clock_is_refused(hello_fc):
    client = fc3api.Client(hello_fc.endpoint, hello_fc.access_key_id, hello_fc.access_key_secret)
    path = "/2023-03-30/functions/l2c-backup-hello/invocations"

    def send(headers, body=b"x"):
        import http.client
        conn = http.client.HTTPConnection(hello_fc.host, hello_fc.port, timeout=30)
        conn.request("POST", path, body=body, headers=headers)
        answer = conn.getresponse()
        raw = answer.read()
        return answer.status, json.loads(raw) if raw else {}

    headers = client.signed_headers("POST", path, "InvokeFunction", b"x")
    status, error = send({**headers, "x-acs-extra": "1"})
    assert (status, error["Code"]) == (400, "IncompleteSignature") and "x-acs-extra" in error["Message"]
    status, error = send(headers, body=b"y")
    assert (status, error["Code"]) == (400, "InvalidArgument") and "x-acs-content-sha256" in error["Message"]
    status, error = send({**headers, "x-fc-invocation-type": "Async"})  # x-fc-* is not signed by FC 3.0
    assert status == 202
    skewed = fc3api.Client(hello_fc.endpoint, hello_fc.access_key_id, hello_fc.access_key_secret,
                           now=lambda: time.time() - 3600)
    status, error = send(skewed.signed_headers("POST", path, "InvokeFunction", b"x"))
    assert (status, error["Code"]) == (403, "RequestTimeTooSkewed") and set(error) == {"Code", "Message", "RequestId"}
    hello_fc.wait_idle()
    assert len(hello_fc.invocations) == 1


# -- the CLI through FC 3.0, end to end --------------------------------------------------------
def test_fc3_sync_invoke_runs_the_real_backup_handler_and_the_backup_lands_in_oss(fc, bucket, capsys):
    assert invoke("backup", "--kind", "manual", "--api", "fc3") == 0

    summary = json.loads(capsys.readouterr().out)
    (call,) = fc.invocations
    assert call.invocation_type == "Sync" and call.status == "Succeeded" and call.function == "backup"
    assert summary["request_id"] == call.request_id
    (done,) = summary["backups"]
    assert keys(bucket) == sorted([done["key"], done["key"] + ".manifest.json"])


def test_fc3_wait_follows_the_async_task_until_it_ends(fc, bucket, capsys, monkeypatch):
    monkeypatch.setenv("FC_API_VERSION", "fc3")  # the setting instead of --api
    assert invoke("backup", "--kind", "daily", "--wait", "--poll", "0.2") == 0

    out, err = capsys.readouterr()
    (call,) = fc.invocations
    assert call.invocation_type == "Async" and call.invocation_id.startswith("l2c_backup_")
    assert f"async task {call.invocation_id}" in err
    assert json.loads(out)["backups"][0]["key"] in keys(bucket)


def test_fc3_remote_errors_keep_their_type_and_exit_code(light_fc):
    with pytest.raises(EventInvalid, match="backup function failed on FC with EventInvalid"):
        invoke("backup", "--event", '{"kind":"hourly"}', "--api", "fc3")
    with pytest.raises(EventInvalid, match="failed on FC with EventInvalid"):
        invoke("backup", "--event", '{"kind":"hourly"}', "--api", "fc3", "--wait", "--poll", "0.1")
    with pytest.raises(NotCompliant) as err:
        invoke("watchdog", "--api", "fc3")
    assert err.value.exit_code == 20


def test_fc3_refusals_are_named_with_what_to_do(light_fc, monkeypatch):
    with pytest.raises(ConfigInvalid, match="function other-backup: 404 FunctionNotFound") as err:
        invoke("backup", "--api", "fc3", "--service", "other")
    assert "FC_API_VERSION=fc2" in str(err.value) and "DeploymentName" in str(err.value)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "not-the-secret")
    with pytest.raises(ConfigInvalid, match="SignatureNotMatch") as err:
        invoke("watchdog", "--api", "fc3")
    assert "ALIBABA_CLOUD_ACCESS_KEY_SECRET" in str(err.value) and "not-the-secret" not in str(err.value)
    monkeypatch.setenv("FC_API_VERSION", "v3")
    with pytest.raises(ConfigInvalid, match="FC_API_VERSION is 'v3'"):
        invoke("watchdog")
    assert light_fc.invocations == []


def test_fc3_no_answer_in_time_says_the_function_may_still_be_running(hello_fc):
    invoker = FC3Invoker(FCSettings(hello_fc.endpoint, hello_fc.service, hello_fc.access_key_id,
                                    hello_fc.access_key_secret, api="fc3"))
    with pytest.raises(InvocationFailed, match="may still be running"):
        invoker.invoke_sync("hello", b"sleep 1.5", timeout=0.3)
    hello_fc.wait_idle()
    assert [c.status for c in hello_fc.invocations] == ["Succeeded"]
