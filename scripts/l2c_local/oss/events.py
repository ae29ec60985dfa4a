"""What happens after an object is created: FC OSS-trigger notifications and replication.

Both run on one background thread, as OSS does them asynchronously; `wait_idle` lets a
test wait for them instead of sleeping.
"""
import json
import logging
import queue
import threading
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

log = logging.getLogger(__name__)

ACCOUNT_ID = "1234567890123456"  # the local server's make-believe Aliyun account


@dataclass
class Subscription:
    bucket: str
    callback: object = None
    url: str = None
    prefix: str = ""
    suffix: str = ""

    def wants(self, bucket, key):
        return bucket == self.bucket and key.startswith(self.prefix) and key.endswith(self.suffix)


def object_created_event(region, bucket, key, version, event_name, request_id, source_ip):
    """The event FC hands an OSS-triggered function (bytes of JSON), for one new object."""
    record = {
        "eventName": f"ObjectCreated:{event_name}",
        "eventSource": "acs:oss",
        "eventTime": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "eventVersion": "1.0",
        "oss": {
            "bucket": {"arn": f"acs:oss:{region}:{ACCOUNT_ID}:{bucket}", "name": bucket,
                       "ownerIdentity": ACCOUNT_ID, "virtualBucket": ""},
            "object": {"deltaSize": version.size, "eTag": version.etag, "key": key,
                       "size": version.size},
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
