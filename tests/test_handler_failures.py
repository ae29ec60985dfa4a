"""What every FC handler does with an event it cannot use: one EventInvalid, logged and
alerted once, never a RecursionError or a crash without a word (issue 12)."""
import json

import pytest

from fc_handlers import fc_context, load_handler
from l2c_backup import events
from l2c_backup.errors import EventInvalid

DEEP = b"[" * 100_000 + b"]" * 100_000  # valid JSON, deeper than Python's recursion limit


@pytest.mark.parametrize("parse", [events.parse_backup_event, events.parse_drill_event,
                                   events.parse_oss_event])
def test_json_nested_too_deep_is_an_invalid_event(parse):
    with pytest.raises(EventInvalid, match="nested too deeply"):
        parse(DEEP)
    timer = json.dumps({"triggerTime": "2026-11-27T02:00:00Z", "triggerName": "daily",
                        "payload": DEEP.decode()})
    if parse is not events.parse_oss_event:
        with pytest.raises(EventInvalid, match="timer payload is JSON nested too deeply to read"):
            parse(timer)


@pytest.mark.parametrize("name", ["backup", "drill", "verify"])
def test_every_handler_reports_a_too_deep_event_in_one_line_and_one_alert(
        name, alerts_sent, capsys, monkeypatch):
    monkeypatch.setenv("OSS_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OSS_BACKUP_BUCKET", "l2c-backups")
    handler = load_handler(name).handler
    with pytest.raises(EventInvalid) as err:
        handler(DEEP, fc_context(name=name, access_key_id="ak", access_key_secret="sk"))
    assert "\n" not in str(err.value).split("\n  what to do:")[0]
    assert [a.title for a in alerts_sent] == [f"{name} failed"]
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["message"] for line in logged if line["level"] == "error"
            and "EventInvalid" in line["message"]]


def test_the_alert_function_takes_a_too_deep_destination_event_as_raw_text(alerts_sent):
    result = json.loads(load_handler("alert").handler(DEEP, fc_context(name="alert")))
    assert result == {"alerted": "unknown function"}
    [alert] = alerts_sent
    assert alert.severity == "urgent"


def test_the_alert_function_takes_a_too_deep_response_payload_as_raw_text(alerts_sent):
    event = json.dumps({"requestContext": {"requestId": "r-1", "functionArn":
                                           "acs:fc:cn-hangzhou:1:services/l2c.LATEST/functions/backup"},
                        "responsePayload": DEEP.decode()})
    assert json.loads(load_handler("alert").handler(event.encode(), fc_context(name="alert"))) == {
        "alerted": "backup"}
    [alert] = alerts_sent
    assert alert.title == "backup failed"
