"""One urgent alert per failure. A handler alerts its own failure and raises; FC then hands
the failed async invocation to the `alert` function (the failure destination). Run through
the local FC endpoint with the real handlers and counted as POSTs at the alert receiver:
a failure the function reported is not alerted again; one it could not report (a crash at
import, a timeout kill, a dropped event) is alerted exactly once, by the destination.

The local FC endpoint has no destinations, so the test does FC's part: it builds the
destination event (FC "result callback": requestContext, responsePayload ...) from what
the endpoint recorded of the failed invocation, and invokes `alert` with it, async."""
import json
from pathlib import Path

import fc2
import pytest

from l2c_backup import channels
from l2c_backup.fc import ALERTED_MARK
from l2c_local.fc import FunctionSpec, LocalFC

FUNCTIONS = Path(__file__).resolve().parent.parent / "functions"
ROLE = ("STS.role-key", "role-secret", "role-token")
SLACK_TOKEN = "xoxbHookT0k3nZ9qW8eR7tY6u"


@pytest.fixture(autouse=True)
def fresh_channels():
    """Each function reads its channels from its own environment, as a new FC instance."""
    channels.reset()
    yield
    channels.reset()


def service_env(oss_server, receiver):
    oss_server.add_credentials(*ROLE)
    return {"OSS_ENDPOINT": oss_server.endpoint, "OSS_BACKUP_BUCKET": "l2c-backups",
            "DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none?connect_timeout=2",  # refused
            "ALERT_WEBHOOK_URL": receiver.url("/webhook/l2c"),
            "ALERT_SLACK_WEBHOOK": receiver.url(f"/slack/services/T0AAAA/B0BBBB/{SLACK_TOKEN}"),
            "ALERT_TIMEOUT_SECONDS": "2"}


def invoke_async(fc, function, payload):
    client = fc2.Client(endpoint=fc.endpoint, accessKeyID=fc.access_key_id,
                        accessKeySecret=fc.access_key_secret)
    client.invoke_function(fc.service, function, payload=payload,
                           headers={"x-fc-invocation-type": "Async"})
    fc.wait_idle()
    return [i for i in fc.invocations if i.function == function][-1]


def destination_event(fc, function, request_id, condition, response_payload, payload=""):
    return json.dumps({
        "timestamp": "2026-11-27T02:00:03.000Z",
        "requestContext": {
            "requestId": request_id, "condition": condition, "approximateInvokeCount": 1,
            "functionArn": f"acs:fc:{fc.region}:{fc.account_id}:services/{fc.service}.LATEST"
                           f"/functions/{function}"},
        "requestPayload": payload,
        "responseContext": {"statusCode": 200, "functionError": "UnhandledInvocationError"},
        "responsePayload": response_payload,
    }).encode()


def fail_then_destination(fc, function, payload):
    """The function's async invocation fails; FC calls the destination with it."""
    failed = invoke_async(fc, function, payload)
    assert failed.status == "Failed"
    channels.reset()  # the destination runs in the alert function's own instance
    handled = invoke_async(fc, "alert", destination_event(
        fc, function, failed.request_id, "UnhandledInvocationError", json.dumps(failed.error),
        payload.decode()))
    assert handled.status == "Succeeded", handled.error
    return failed, json.loads(handled.result)


def test_a_failure_the_backup_function_alerted_itself_is_not_alerted_again_by_the_destination(
        oss_server, receiver):
    with LocalFC(FUNCTIONS, env=service_env(oss_server, receiver), role_credentials=ROLE) as fc:
        failed, outcome = fail_then_destination(fc, "backup", b'{"kind": "manual"}')

    [alert] = receiver.to("webhook")  # one urgent alert: the function's own, with its facts
    assert alert.body["title"] == "backup failed" and alert.body["details"]["kind"] == "manual"
    assert len(receiver.to("slack")) == 1
    assert failed.error["errorType"] == "DatabaseUnreachable"
    assert failed.error["errorMessage"].startswith(ALERTED_MARK)
    assert outcome == {"alerted": None, "already_alerted_by": "backup"}


def test_a_failure_the_watchdog_alerted_itself_is_not_alerted_again(oss_server, receiver):
    # no daily backup at all: the watchdog's RPO alert, then its invocation fails
    env = dict(service_env(oss_server, receiver), WATCHDOG_KINDS="daily")
    with LocalFC(FUNCTIONS, env=env, role_credentials=ROLE) as fc:
        failed, outcome = fail_then_destination(fc, "watchdog", b"{}")

    assert failed.error["errorType"] == "NotCompliant"
    assert outcome == {"alerted": None, "already_alerted_by": "watchdog"}
    assert [r.body["title"] for r in receiver.to("webhook")] == ["backup missing"]


def test_a_crash_before_the_handler_runs_is_alerted_once_by_the_destination(oss_server, receiver):
    functions = [FunctionSpec("backup", handler="backup_missing_from_the_package.handler"), "alert"]
    with LocalFC(FUNCTIONS, env=service_env(oss_server, receiver), role_credentials=ROLE,
                 functions=functions) as fc:
        failed, outcome = fail_then_destination(fc, "backup", b'{"kind": "daily"}')

    assert failed.error["errorType"] == "ImportError"
    assert outcome == {"alerted": "backup"}
    [alert] = receiver.to("webhook")
    assert alert.body["title"] == "backup failed" and alert.body["severity"] == "urgent"
    assert "ImportError" in alert.body["reason"]
    assert alert.body["details"]["request_id"] == failed.request_id


@pytest.mark.parametrize("condition, response", [
    # killed at its timeout: FC answers for the function (wording illustrative)
    ("UnhandledInvocationError", {"errorMessage": "Function timed out after 7200 seconds",
                                  "errorType": "FunctionTimeout"}),
    # never ran: the event aged out in the queue
    ("EventAgeExceeded", ""),
])
def test_failures_the_function_could_not_report_are_alerted_exactly_once(
        oss_server, receiver, condition, response):
    with LocalFC(FUNCTIONS, env=service_env(oss_server, receiver), role_credentials=ROLE) as fc:
        event = destination_event(fc, "backup", "req-lost", condition,
                                  json.dumps(response) if response else "")
        handled = invoke_async(fc, "alert", event)

    assert json.loads(handled.result) == {"alerted": "backup"}
    [alert] = receiver.to("webhook")
    assert alert.body["reason"].startswith(condition)
    assert alert.body["details"] == {"function": "backup", "request_id": "req-lost", "attempts": 1}
    assert len(receiver.to("slack")) == 1
    assert SLACK_TOKEN not in json.dumps(alert.body)


def test_a_failure_whose_own_alert_reached_no_channel_is_left_to_the_destination(oss_server, receiver):
    for channel in ("webhook", "slack"):  # every attempt of the function's own alert fails
        receiver.fail(channel, status=503, times=channels.ATTEMPTS)
    with LocalFC(FUNCTIONS, env=service_env(oss_server, receiver), role_credentials=ROLE) as fc:
        failed, outcome = fail_then_destination(fc, "backup", b'{"kind": "manual"}')

    assert failed.error["errorType"] == "DatabaseUnreachable"
    assert not failed.error["errorMessage"].startswith(ALERTED_MARK)
    assert outcome == {"alerted": "backup"}
    delivered = receiver.to("webhook")[channels.ATTEMPTS:]
    assert [a.body["details"]["request_id"] for a in delivered] == [failed.request_id]
