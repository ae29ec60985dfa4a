"""`l2c-backup invoke` through the real aliyun-fc2 client against the local FC endpoint,
which checks fc2's signatures as FC does and runs the real handlers of functions/."""
import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import fc2
import oss2
import pytest
import requests

from l2c_backup.commands import invoke as invoke_cmd
from l2c_backup.errors import ConfigInvalid, EventInvalid, NotCompliant
from l2c_backup.errors import InvocationFailed
from l2c_backup.events import OBJECT_COMPLETING_EVENTS
from l2c_local.fc import LocalFC

FUNCTIONS = Path(__file__).resolve().parent.parent / "functions"
ROLE = ("STS.role-key", "role-secret", "role-token")  # the function role's STS credentials


def parse(*argv):
    parser = argparse.ArgumentParser(prog="l2c-backup")
    invoke_cmd.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["invoke", *argv])


def invoke(*argv):
    return invoke_cmd.run(parse(*argv))


def client_for(fc, secret=None, key=None, token=""):
    return fc2.Client(endpoint=fc.endpoint, accessKeyID=key or fc.access_key_id,
                      accessKeySecret=secret or fc.access_key_secret, securityToken=token)


def point_cli_at(monkeypatch, fc):
    for name in ("ALIBABA_CLOUD_SECURITY_TOKEN", "OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET",
                 "OSS_SECURITY_TOKEN", "FC_SERVICE", "DATABASE_URL", "OSS_ENDPOINT",
                 "OSS_BACKUP_BUCKET", "BACKUP_TARGET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FC_ENDPOINT", fc.endpoint)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", fc.access_key_id)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", fc.access_key_secret)


@pytest.fixture
def fc(monkeypatch, pg_cluster, seeded_db, oss_server):
    """The service as s.yaml deploys it: the functions' settings in their environment,
    OSS credentials only from the role (an STS key the OSS server knows)."""
    oss_server.add_credentials(*ROLE)
    env = {"DATABASE_URL": pg_cluster.url(seeded_db), "OSS_ENDPOINT": oss_server.endpoint,
           "OSS_BACKUP_BUCKET": "l2c-backups"}
    with LocalFC(FUNCTIONS, env=env, role_credentials=ROLE) as server:
        point_cli_at(monkeypatch, server)
        yield server
        server.wait_idle()


@pytest.fixture
def light_fc(monkeypatch, oss_server):
    """The real functions without a database: enough for watchdog and bad events."""
    oss_server.add_credentials(*ROLE)
    env = {"OSS_ENDPOINT": oss_server.endpoint, "OSS_BACKUP_BUCKET": "l2c-backups",
           # never the server on 5432, should an event get past validation
           "DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none?connect_timeout=2"}
    with LocalFC(FUNCTIONS, env=env, role_credentials=ROLE) as server:
        point_cli_at(monkeypatch, server)
        yield server
        server.wait_idle()


HELLO = '''
import json, os, time
LOADS = []
LOADS.append(1)

def handler(event, context):
    if event == b"boom":
        raise ValueError("boom!")
    if event.startswith(b"sleep"):
        time.sleep(float(event.split()[1]))
    return json.dumps({
        "event": event.decode(), "loads": len(LOADS), "request_id": context.request_id,
        "credentials": [context.credentials.access_key_id, context.credentials.access_key_secret,
                        context.credentials.security_token],
        "function": [context.function.name, context.function.handler, context.function.memory,
                     context.function.timeout],
        "service": context.service.name, "region": context.region,
        "FUNCTION_SETTING": os.environ.get("FUNCTION_SETTING"),
        "TEST_PROCESS_ONLY": os.environ.get("TEST_PROCESS_ONLY"),
        "has_path": "PATH" in os.environ})
'''


@pytest.fixture
def hello_dir(tmp_path):
    (tmp_path / "hello.py").write_text(textwrap.dedent(HELLO))
    return tmp_path


@pytest.fixture
def hello_fc(hello_dir, monkeypatch):  # stopped (after its handlers end) before env is undone
    with LocalFC(hello_dir, env={"FUNCTION_SETTING": "from-fc"}, role_credentials=ROLE) as server:
        yield server
        server.wait_idle()


def keys(bucket, prefix="db-backups/"):
    return sorted(o.key for o in oss2.ObjectIteratorV2(bucket, prefix=prefix))


# -- the backup function end to end ---------------------------------------------------------
def test_sync_invoke_runs_the_real_backup_handler_and_the_backup_lands_in_oss(fc, bucket, capsys):
    assert invoke("backup", "--kind", "manual") == 0

    summary = json.loads(capsys.readouterr().out)
    (call,) = fc.invocations
    assert call.invocation_type == "Sync" and call.status == "Succeeded"
    assert call.payload == b'{"kind": "manual"}' and call.access_key_id == fc.access_key_id
    assert summary["kind"] == "manual" and summary["request_id"] == call.request_id
    (done,) = summary["backups"]
    assert done["key"].startswith("db-backups/manual/backup_") and done["bytes"] > 0
    assert keys(bucket) == sorted([done["key"], done["key"] + ".manifest.json"])
    # the handler's environment came and went with the invocation
    assert "DATABASE_URL" not in os.environ and "OSS_BACKUP_BUCKET" not in os.environ


def test_async_prints_the_request_id_and_the_backup_lands_when_it_has_run(fc, bucket, capsys):
    assert invoke("backup", "--kind", "manual", "--async") == 0

    request_id = capsys.readouterr().out.strip()
    (call,) = fc.invocations
    assert request_id == call.request_id and call.invocation_type == "Async"
    fc.wait_idle()
    (call,) = fc.invocations
    assert call.status == "Succeeded", call.error
    (key,) = [k for k in keys(bucket) if k.endswith(".sql.gz")]
    assert key.startswith("db-backups/manual/backup_")
    assert json.loads(call.result)["backups"][0]["key"] == key


def test_wait_polls_the_fc_async_task_until_it_ends_and_prints_the_summary(fc, bucket, capsys):
    assert invoke("backup", "--kind", "daily", "--wait", "--poll", "0.2") == 0

    out, err = capsys.readouterr()
    summary = json.loads(out)
    (call,) = fc.invocations
    assert call.invocation_type == "Async" and call.invocation_id.startswith("l2c_backup_")
    assert f"async task {call.invocation_id}" in err
    assert summary["request_id"] == call.request_id and summary["kind"] == "daily"
    assert summary["backups"][0]["key"] in keys(bucket)


def test_backup_then_oss_trigger_verify_then_drill_all_through_fc(fc, oss_server, bucket, capsys):
    # the OSS trigger of the verify function: each new object, invoked async through fc2
    trigger = client_for(fc)
    oss_server.subscribe("l2c-backups", prefix="db-backups/", suffix=".sql.gz",
                         events=["oss:" + e for e in OBJECT_COMPLETING_EVENTS],
                         callback=lambda event: trigger.invoke_function(
                             fc.service, "verify", payload=event,
                             headers={"x-fc-invocation-type": "Async"}))
    assert invoke("backup", "--kind", "daily") == 0
    key = json.loads(capsys.readouterr().out)["backups"][0]["key"]
    oss_server.wait_idle()
    fc.wait_idle()
    (verified,) = [i for i in fc.invocations if i.function == "verify"]
    assert verified.status == "Succeeded", verified.error
    assert json.loads(verified.result)["results"][0]["verdict"] == "ok"

    assert invoke("drill", "--kind", "daily") == 0

    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["key"] == key and report["failures"] == []


# -- refusals: FC checks the request before anything runs ------------------------------------
def test_a_wrong_secret_is_refused_with_SignatureNotMatch(light_fc, monkeypatch):
    with pytest.raises(fc2.FcError) as refused:
        client_for(light_fc, secret="not-the-secret").invoke_function(
            light_fc.service, "watchdog", payload=b"{}")
    assert refused.value.status_code == 403 and refused.value.err_code == "SignatureNotMatch"
    assert json.loads(refused.value.message)["ErrorMessage"].startswith(
        "The request signature we calculated does not match")

    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "not-the-secret")
    with pytest.raises(ConfigInvalid, match="SignatureNotMatch") as err:
        invoke("watchdog")
    assert err.value.exit_code == 2 and "ALIBABA_CLOUD_ACCESS_KEY_SECRET" in str(err.value)
    assert light_fc.invocations == []


def test_an_unknown_key_a_wrong_sts_token_and_a_skewed_clock_are_refused(hello_dir):
    with LocalFC(hello_dir, credentials=("STS.caller", "caller-secret", "caller-token")) as fc:
        good = client_for(fc, token="caller-token")
        assert json.loads(good.invoke_function(fc.service, "hello", payload=b"hi").data)["event"] == "hi"
        for client, code in [(client_for(fc, key="LTAI-unknown"), "InvalidAccessKeyID"),
                             (client_for(fc, token="stale-token"), "InvalidSecurityToken"),
                             (client_for(fc, token=""), "InvalidSecurityToken")]:
            with pytest.raises(fc2.FcError) as refused:
                client.invoke_function(fc.service, "hello", payload=b"hi")
            assert (refused.value.status_code, refused.value.err_code) == (403, code)
        assert len(fc.invocations) == 1

    with LocalFC(hello_dir, now=lambda: time.time() + 16 * 60) as fc:
        with pytest.raises(fc2.FcError) as refused:
            client_for(fc).invoke_function(fc.service, "hello", payload=b"hi")
        assert refused.value.err_code == "RequestTimeTooSkewed" and fc.invocations == []
    with LocalFC(hello_dir, now=lambda: time.time() + 14 * 60) as fc:
        client_for(fc).invoke_function(fc.service, "hello", payload=b"hi")


def test_the_signature_covers_the_path_and_the_x_fc_headers(hello_fc):
    client = client_for(hello_fc)
    path = f"/2016-08-15/services/{hello_fc.service}/functions/hello/invocations"
    signed = client._build_common_headers("POST", path, {"x-fc-invocation-type": "Sync",
                                                         "x-fc-trace-id": "trace-1"})
    url = hello_fc.endpoint + path
    assert requests.post(url, headers=signed, data=b"hi").status_code == 200  # as signed
    for headers, target in [(dict(signed, **{"x-fc-invocation-type": "Async"}), url),
                            (dict(signed, **{"x-fc-trace-id": "trace-2"}), url),
                            (dict(signed, **{"content-type": "text/plain"}), url),
                            (signed, url.replace("/hello/", "/other/"))]:
        answer = requests.post(target, headers=headers, data=b"hi")
        assert answer.status_code == 403 and answer.json()["ErrorCode"] == "SignatureNotMatch"
    assert len(hello_fc.invocations) == 1


def test_unknown_service_and_function_are_fc_404s(hello_fc):
    client = client_for(hello_fc)
    for service, function, code in [("other", "hello", "ServiceNotFound"),
                                     (hello_fc.service, "nope", "FunctionNotFound")]:
        with pytest.raises(fc2.FcError) as refused:
            client.invoke_function(service, function, payload=b"{}")
        assert (refused.value.status_code, refused.value.err_code) == (404, code)


# -- failing functions -------------------------------------------------------------------------
def test_a_failing_handler_is_a_clear_cli_error_naming_the_remote_error_type(light_fc):
    with pytest.raises(EventInvalid) as err:
        invoke("backup", "--event", '{"kind":"hourly"}')
    (call,) = light_fc.invocations
    message = str(err.value)
    assert err.value.exit_code == 2  # what `l2c-backup backup` exits with for a bad event
    assert "backup function failed on FC with EventInvalid" in message
    assert f"request id {call.request_id}" in message and "'kind'" in message
    assert call.status == "Failed" and call.error["errorType"] == "EventInvalid"


def test_a_failing_handler_answers_as_fc_does_unhandled_invocation_error(light_fc):
    response = requests.Session()
    client = client_for(light_fc)
    path = f"/2016-08-15/services/{light_fc.service}/functions/backup/invocations"
    answer = response.post(light_fc.endpoint + path, data=b'{"kind":"hourly"}',
                           headers=client._build_common_headers("POST", path, {}))
    assert answer.status_code == 200
    assert answer.headers["x-fc-error-type"] == "UnhandledInvocationError"
    body = answer.json()
    assert set(body) == {"errorMessage", "errorType", "stackTrace"}
    assert body["errorType"] == "EventInvalid" and "'kind'" in body["errorMessage"]
    frame = body["stackTrace"][-1]  # FC python: ['File "..."', 'line N', 'in name', 'source']
    assert frame[0].startswith('File "') and frame[1].startswith("line ") and frame[2].startswith("in ")
    assert any("functions/backup.py" in f[0] for f in body["stackTrace"])
    with pytest.raises(fc2.FcError) as raised:  # and fc2 turns that into an FcError
        client.invoke_function(light_fc.service, "backup", payload=b'{"kind":"hourly"}')
    assert raised.value.status_code == 200 and json.loads(raised.value.message)["errorType"] == "EventInvalid"


def test_a_failing_async_task_fails_wait_with_the_remote_error(light_fc):
    with pytest.raises(EventInvalid, match="failed on FC with EventInvalid"):
        invoke("backup", "--event", '{"kind":"hourly"}', "--wait", "--poll", "0.1")


def test_watchdog_on_an_empty_bucket_exits_not_compliant(light_fc, capsys):
    with pytest.raises(NotCompliant) as err:
        invoke("watchdog")
    assert err.value.exit_code == 20 and "failed on FC with NotCompliant" in str(err.value)


def test_a_remote_error_that_is_not_ours_is_invocation_failed(hello_fc, monkeypatch):
    point_cli_at(monkeypatch, hello_fc)
    client = client_for(hello_fc)
    from l2c_backup.invoke import FCSettings, Invoker
    invoker = Invoker(FCSettings(hello_fc.endpoint, hello_fc.service, hello_fc.access_key_id,
                                 hello_fc.access_key_secret), client=client)
    with pytest.raises(InvocationFailed, match="failed on FC with ValueError") as err:
        invoker.invoke_sync("hello", b"boom")
    assert err.value.exit_code == 18


def test_no_answer_in_time_says_the_function_may_still_be_running(hello_fc, monkeypatch):
    point_cli_at(monkeypatch, hello_fc)
    from l2c_backup.invoke import FCSettings, Invoker
    invoker = Invoker(FCSettings(hello_fc.endpoint, hello_fc.service, hello_fc.access_key_id,
                                 hello_fc.access_key_secret))
    with pytest.raises(InvocationFailed, match="may still be running"):
        invoker.invoke_sync("hello", b"sleep 1.5", timeout=0.3)
    hello_fc.wait_idle()
    (call,) = hello_fc.invocations
    assert call.status == "Succeeded"  # FC does not stop a function the caller gave up on


def test_missing_settings_are_named(monkeypatch):
    for name in ("FC_ENDPOINT", "ALIBABA_CLOUD_ACCESS_KEY_ID", "OSS_ACCESS_KEY_ID"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigInvalid, match="FC_ENDPOINT"):
        invoke("backup")
    monkeypatch.setenv("FC_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(ConfigInvalid, match="ALIBABA_CLOUD_ACCESS_KEY_ID"):
        invoke("backup")
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "s")
    with pytest.raises(ConfigInvalid, match="--kind and --source do not apply to watchdog"):
        invoke("watchdog", "--kind", "daily")
    with pytest.raises(ConfigInvalid, match="--event is not JSON"):
        invoke("backup", "--event", "kind=manual")


# -- the runtime the handlers see ---------------------------------------------------------------
def test_handlers_get_fc_s_context_and_only_the_function_environment(hello_fc, monkeypatch):
    monkeypatch.setenv("TEST_PROCESS_ONLY", "leak")
    client = client_for(hello_fc)
    first = client.invoke_function(hello_fc.service, "hello", payload=b"one")
    seen = json.loads(first.data)
    assert seen["request_id"] == first.headers["x-fc-request-id"]
    assert seen["credentials"] == list(ROLE)
    assert seen["function"] == ["hello", "hello.handler", 1024, 600]
    assert (seen["service"], seen["region"]) == ("l2c-backup", "cn-hangzhou")
    assert seen["FUNCTION_SETTING"] == "from-fc" and seen["TEST_PROCESS_ONLY"] is None
    assert seen["has_path"]
    assert os.environ["TEST_PROCESS_ONLY"] == "leak" and "FUNCTION_SETTING" not in os.environ
    # a warm instance: the module is loaded once
    assert json.loads(client.invoke_function(hello_fc.service, "hello", payload=b"two").data)["loads"] == 1
    assert client.get_function(hello_fc.service, "hello").data["timeout"] == 600


def test_fc_server_command_serves_the_functions_until_sigterm(hello_dir):
    script = ("import argparse, sys\n"
              "from l2c_backup.commands import fc_server\n"
              "p = argparse.ArgumentParser(); fc_server.add_parser(p.add_subparsers())\n"
              "args = p.parse_args(['fc-server'] + sys.argv[1:])\n"
              "sys.exit(args.run(args))\n")
    proc = subprocess.Popen([sys.executable, "-c", script, "--port", "0", "--json",
                             "--functions", str(hello_dir), "--env", "FUNCTION_SETTING=cli"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        details = json.loads(proc.stdout.readline() or proc.stderr.read())
        assert details["functions"] == ["hello"] and details["service"] == "l2c-backup"
        client = fc2.Client(endpoint=details["endpoint"], accessKeyID=details["access_key_id"],
                            accessKeySecret=details["access_key_secret"])
        seen = json.loads(client.invoke_function("l2c-backup", "hello", payload=b"x").data)
        assert seen["FUNCTION_SETTING"] == "cli"
        assert seen["credentials"][0] == details["role_access_key_id"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, proc.stderr.read()


def test_failed_async_invocations_are_retried_as_configured(hello_dir):
    with LocalFC(hello_dir, async_retries=2) as fc:
        client_for(fc).invoke_function(fc.service, "hello", payload=b"boom",
                                       headers={"x-fc-invocation-type": "Async"})
        fc.wait_idle()
        (call,) = fc.invocations
        assert (call.status, call.retried, call.error["errorType"]) == ("Failed", 2, "ValueError")


def test_wait_names_the_missing_async_task_feature(hello_dir):
    from l2c_backup.invoke import FCSettings, Invoker
    ticks = iter(range(0, 10_000, 7))
    with LocalFC(hello_dir, stateful_async=False) as fc:
        invoker = Invoker(FCSettings(fc.endpoint, fc.service, fc.access_key_id,
                                     fc.access_key_secret),
                          sleep=lambda s: None, clock=lambda: next(ticks))
        _, task_id = invoker.invoke_async("hello", b"x", "l2c_hello_task")
        with pytest.raises(ConfigInvalid, match="statefulInvocation: true"):
            invoker.wait("hello", task_id, timeout=600, poll=1)
        fc.wait_idle()
