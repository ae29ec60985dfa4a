"""FC events for the backup function, validated with JSON schemas.

A timer delivers `{"triggerTime", "triggerName", "payload"}` with the payload a JSON
string; `s invoke -e '{"kind":"manual"}'` delivers the request itself. Both become one
request dict, or EventInvalid naming the field that is wrong.
"""
import json

import jsonschema

from .errors import EventInvalid
from .names import ISO_TIME, KINDS

BACKUP_REQUEST_SCHEMA = {
    "type": "object",
    "required": ["kind"],
    "additionalProperties": False,
    "properties": {
        "kind": {"enum": list(KINDS)},
        # One database of those configured (what fanout.py sends each invocation it
        # starts; a person may send it too). Without it: every configured database.
        "database": {"type": "string", "minLength": 1, "maxLength": 63,
                     "pattern": "^[^/\\x00-\\x1f]+$"},
        # The run this invocation belongs to, as the dispatcher named it (its folder
        # under <prefix>runs/<kind>/), and the dispatcher's time, which names the slot.
        "run": {"type": "string", "pattern": r"^[0-9A-Za-z][0-9A-Za-z_-]{0,79}$"},
        "when": {"type": "string", "pattern": ISO_TIME},
    },
    "dependencies": {"run": ["database", "when"]},
}

TIMER_EVENT_SCHEMA = {
    "type": "object",
    "required": ["triggerTime", "triggerName", "payload"],
    # a pattern, not "format": jsonschema checks date-time only with an extra package
    "properties": {"triggerTime": {"type": "string", "pattern": ISO_TIME},
                   "triggerName": {"type": "string"},
                   "payload": {"type": "string"}},
}


HINTS = {"OSS event": "attach the verify function to an OSS trigger on the events that complete "
                      "an object (oss:ObjectCreated:PutObject, PostObject, CopyObject, "
                      "CompleteMultipartUpload)"}


def _check(instance, schema, what):
    for err in jsonschema.Draft7Validator(schema).iter_errors(instance):
        field = ".".join(str(p) for p in err.absolute_path) or err.validator
        if err.validator == "required":
            field = err.message.split("'")[1]
        raise EventInvalid(f"{what}: field {field!r} is invalid: {err.message}",
                           HINTS.get(what, 'send {"kind": "daily" | "weekly" | "manual"}'))


def _json(data, what):
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise EventInvalid(f"{what} is not JSON: {err}",
                           'send JSON such as {"kind": "manual"}') from None
    except RecursionError:  # json's decoder recurses once per level of nesting
        raise EventInvalid(f"{what} is JSON nested too deeply to read ({len(data):,} bytes)",
                           'send JSON such as {"kind": "manual"}') from None


DRILL_REQUEST_SCHEMA = {
    "type": "object",
    "required": ["kind"],
    "additionalProperties": False,
    "properties": {"kind": {"enum": list(KINDS)},
                   "source": {"enum": ["primary", "dr"]}},  # PLAN: quarterly/yearly drills read DR
}


def parse_backup_event(event):
    """The backup request in an FC event (bytes or str of JSON, or an already parsed dict)."""
    return parse_request(event, BACKUP_REQUEST_SCHEMA)


def parse_drill_event(event):
    return parse_request(event, DRILL_REQUEST_SCHEMA)


def parse_request(event, schema):
    """The request in a timer event's payload or a direct invoke, checked against schema."""
    body = _json(event, "event") if isinstance(event, (bytes, str)) else event
    if not isinstance(body, dict):
        raise EventInvalid("event must be a JSON object", 'send {"kind": "manual"}')
    if "triggerName" in body or "triggerTime" in body:
        _check(body, TIMER_EVENT_SCHEMA, "timer event")
        body = _json(body["payload"], "timer payload")
        if not isinstance(body, dict):
            raise EventInvalid("timer payload must be a JSON object", 'set payload {"kind": "daily"}')
        _check(body, schema, "timer payload")
    else:
        _check(body, schema, "event")
    return body


OSS_EVENT_SCHEMA = {
    "type": "object",
    "required": ["events"],
    "properties": {"events": {"type": "array", "minItems": 1, "items": {
        "type": "object",
        "required": ["eventName", "oss"],
        "properties": {
            "eventName": {"type": "string"},
            "region": {"type": "string"},
            "oss": {"type": "object", "required": ["bucket", "object"], "properties": {
                "bucket": {"type": "object", "required": ["name"],
                           "properties": {"name": {"type": "string", "minLength": 3}}},
                "object": {"type": "object", "required": ["key"],
                           "properties": {"key": {"type": "string", "minLength": 1},
                                          "size": {"type": "integer"},
                                          "eTag": {"type": "string"}}}}},
        }}}},
}


# The OSS calls after which an object exists whole. FC's OSS trigger also counts
# InitiateMultipartUpload and every UploadPart as ObjectCreated events (one invocation
# per call; FC's FAQ "function triggered multiple times upon object uploads"), so a wide
# trigger (oss:ObjectCreated:*) would verify a multipart backup once per part, plus twice.
# Left out on purpose: AppendObject (fires on every append of an object that can keep
# growing: no call finishes it, and backups are never appended), PutSymlink (a link with
# no bytes of its own; the target had its own event), UploadPartCopy (a part).
OBJECT_COMPLETING_EVENTS = ("ObjectCreated:PutObject", "ObjectCreated:PostObject",
                            "ObjectCreated:CopyObject", "ObjectCreated:CompleteMultipartUpload")


def completes_an_object(event_name):
    return event_name in OBJECT_COMPLETING_EVENTS


def parse_oss_event(event):
    """[(bucket, key, eventName)] of an OSS trigger event (possibly several records); the
    caller acts only on those where completes_an_object(eventName)."""
    body = _json(event, "event") if isinstance(event, (bytes, str)) else event
    _check(body, OSS_EVENT_SCHEMA, "OSS event")
    return [(r["oss"]["bucket"]["name"], r["oss"]["object"]["key"], r["eventName"])
            for r in body["events"]]
