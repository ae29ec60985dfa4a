"""What happens after an object is created: FC OSS-trigger notifications and replication.

Both run on one background thread, as OSS does them asynchronously; `wait_idle` lets a
test wait for them instead of sleeping.

Which API calls notify: FC's OSS trigger counts every successful call of these as an
`ObjectCreated` event, one invocation each (FC docs, "OSS trigger events" and the FAQ
"What do I do if a function is triggered multiple times when an object is uploaded":
a multipart upload fires InitiateMultipartUpload, one UploadPart per part, then
CompleteMultipartUpload; EventBridge's OSS event list has the same names). A
subscription's `events` use the trigger's syntax, `oss:ObjectCreated:*` or one name.
"""
import fnmatch
import json
import logging
import queue
import threading
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import NamedTuple

log = logging.getLogger(__name__)

ACCOUNT_ID = "1234567890123456"  # the local server's make-believe Aliyun account

# Every ObjectCreated event an FC OSS trigger may name (FC's OSS trigger event list).
OBJECT_CREATED_EVENTS = ("PutObject", "PutSymlink", "PostObject", "CopyObject", "AppendObject",
                         "InitiateMultipartUpload", "UploadPart", "UploadPartCopy",
                         "CompleteMultipartUpload")
# The ones this server emits: the operations it implements.
EMITTED_EVENTS = ("PutObject", "CopyObject", "InitiateMultipartUpload", "UploadPart",
                  "CompleteMultipartUpload")
ALL_OBJECT_CREATED = "oss:ObjectCreated:*"  # a trigger's usual (and widest) setting


class ObjectState(NamedTuple):
    """What an event reports of the object: for InitiateMultipartUpload nothing exists yet
    (size 0, no ETag); for UploadPart the part (see README, deviations)."""
    size: int
    etag: str


def event_patterns(events=None):
    """The trigger's `events` list, checked: each `oss:ObjectCreated:*` or
    `oss:ObjectCreated:<name>` of a documented event. Anything else is refused, loudly,
    rather than subscribed to and never delivered."""
    if events is None:
        return (ALL_OBJECT_CREATED,)
    if isinstance(events, str) or not events:
        raise ValueError("events must be a non-empty list such as [\"oss:ObjectCreated:*\"]")
    for pattern in events:
        family, _, name = str(pattern).partition(":")[2].partition(":")
        if not str(pattern).startswith("oss:") or family != "ObjectCreated":
            raise ValueError(f"event {pattern!r}: the local OSS server emits only "
                             "oss:ObjectCreated:* events")
        if name != "*" and name not in OBJECT_CREATED_EVENTS:
            raise ValueError(f"event {pattern!r} is not an OSS trigger event; use one of "
                             + ", ".join(f"oss:ObjectCreated:{n}" for n in ("*",) + OBJECT_CREATED_EVENTS))
    return tuple(events)


@dataclass
class Subscription:
    bucket: str
    callback: object = None
    url: str = None
    prefix: str = ""
    suffix: str = ""
    events: tuple = (ALL_OBJECT_CREATED,)

    def __post_init__(self):
        self.events = event_patterns(self.events)

    def wants(self, bucket, key, event_name):
        """event_name as in the event's eventName, e.g. "ObjectCreated:UploadPart"."""
        return (bucket == self.bucket and key.startswith(self.prefix) and key.endswith(self.suffix)
                and any(fnmatch.fnmatchcase(f"oss:{event_name}", p) for p in self.events))


def object_created_event(region, bucket, key, state, event_name, request_id, source_ip):
    """The event FC hands an OSS-triggered function (bytes of JSON), for one API call.
    `state` has the size and ETag to report (an object version, a part, or ObjectState)."""
    record = {
        "eventName": f"ObjectCreated:{event_name}",
        "eventSource": "acs:oss",
        "eventTime": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "eventVersion": "1.0",
        "oss": {
            "bucket": {"arn": f"acs:oss:{region}:{ACCOUNT_ID}:{bucket}", "name": bucket,
                       "ownerIdentity": ACCOUNT_ID, "virtualBucket": ""},
            "object": {"deltaSize": state.size, "eTag": state.etag, "key": key,
                       "size": state.size},
            "ossSchemaVersion": "1.0",
            "ruleId": uuid.uuid4().hex,
        },
        "region": region,
        "requestParameters": {"sourceIPAddress": source_ip},
        "responseElements": {"requestId": request_id},
        "userIdentity": {"principalId": ACCOUNT_ID},
    }
    return json.dumps({"events": [record]}).encode("utf-8")


class Dispatcher:
    """Runs queued jobs (deliveries, replication copies) in order on one thread."""

    def __init__(self):
        self.jobs = queue.Queue()
        self.errors = []
        self.thread = threading.Thread(target=self._run, name="local-oss-events", daemon=True)
        self.thread.start()

    def submit(self, job, *args):
        self.jobs.put((job, args))

    def _run(self):
        while True:
            job, args = self.jobs.get()
            try:
                if job is None:
                    return
                job(*args)
            except Exception as exc:  # a failing receiver must not stop later deliveries
                log.warning("local OSS background job failed: %s", exc)
                self.errors.append(exc)
            finally:
                self.jobs.task_done()

    def wait_idle(self, timeout=10.0):
        done = threading.Event()
        waiter = threading.Thread(target=lambda: (self.jobs.join(), done.set()), daemon=True)
        waiter.start()
        if not done.wait(timeout):
            raise TimeoutError(f"background OSS jobs still running after {timeout}s")

    def stop(self):
        self.jobs.put((None, ()))
        self.thread.join(timeout=5)


def deliver(subscription, event):
    if subscription.callback is not None:
        subscription.callback(event)
    else:
        request = urllib.request.Request(subscription.url, data=event, method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
