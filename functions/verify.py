"""FC handler of the `verify` function (OSS trigger on the backup prefix, subscribed to
the events that complete an object: PutObject, PostObject, CopyObject,
CompleteMultipartUpload).

It acts only on the configured backup bucket and prefix (BACKUP_TARGET, else
OSS_BACKUP_BUCKET + OSS_BACKUP_PREFIX): an event naming another bucket (a trigger wired to
the DR bucket, a copied event) is logged and listed under `ignored` as oss://BUCKET/KEY,
and nothing is read or written there.

Every backup object under the prefix in the event (`.sql.gz`, or `.sql.gz.age` when
encrypted: s.yaml and template.yml wire one trigger per suffix, as a trigger filters on
one) is checked end to end and its verdict recorded; anything else (manifests, verify
files) is ignored even when the trigger's filter is wide. So is every event that does
not complete an object (InitiateMultipartUpload, UploadPart, ...: `oss:ObjectCreated:*`
sends those too), so a multipart backup is verified once, not once per part. A failed verdict has already
alerted; the invocation then fails too, so FC records it. Delivery is at least once: a
repeated event finds the recorded verdict and neither alerts again nor changes it.

This function holds no age identity, by design: it runs on every object anyone with
write access to the bucket creates. An encrypted backup is checked by its stored bytes
(size, SHA-256, CRC64) and its age header against the manifest; its verdict says the
content was not checked (l2c_backup/verify.py), which the drill and `l2c-backup verify`
with the identity do.
"""
import json
import logging

from l2c_backup import config, events, logs, names
from l2c_backup.errors import BackupCorrupt, L2CError
from l2c_backup.fc import already_alerted, credentials_from, report_failure
from l2c_backup.storage import open_storage
from l2c_backup.verify import verify

log = logging.getLogger("l2c_backup.handler.verify")


def handler(event, context):
    logs.setup(json_lines=True)
    request_id = getattr(context, "request_id", "") or ""
    results, ignored = [], []
    with logs.bound(request_id=request_id, function="verify"):
        try:
            records = events.parse_oss_event(event)
            target, oss = config.storage_target(credentials=credentials_from(context))
            own_bucket = target[len("oss://"):].partition("/")[0] if oss else None
            storage = open_storage(target, oss) if oss else None
            wait = int(config.environment().get("VERIFY_MANIFEST_WAIT_SECONDS", 60))
            for bucket, key, event_name in records:
                if bucket != own_bucket:
                    log.warning("%s in bucket %s ignored: this function verifies only the "
                                "backup target %s; point the OSS trigger at that bucket", key,
                                bucket, storage.url if storage else target)
                    ignored.append(f"oss://{bucket}/{key}")
                    continue
                if not events.completes_an_object(event_name):
                    log.info("%s: %s does not complete an object; nothing to verify yet",
                             key, event_name)
                    ignored.append(key)
                    continue
                if not (key.startswith(storage.prefix) and names.is_backup_object(key)):
                    ignored.append(key)
                    continue
                try:
                    results.append(verify(storage, key, wait, request_id=request_id,
                                          identities=()).summary())
                except FileNotFoundError:
                    log.warning("%s is gone (deleted before it was verified)", key)
                    ignored.append(key)
        except L2CError as err:
            report_failure(log, "verify", err)
            raise
        failed = [r for r in results if r["verdict"] != "ok"]
        if failed:
            raise already_alerted(BackupCorrupt(f"{len(failed)} backup(s) failed verification: " +
                                ", ".join(f"{r['key']} ({r['reason']})" for r in failed),
                                "see the alert and <key>.verify.json; take a manual backup now"))
    return json.dumps({"results": results, "ignored": ignored})
