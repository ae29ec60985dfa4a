"""The local OSS server's state: buckets, object versions, multipart uploads, WORM,
storage classes and the restores of frozen (Archive, Cold Archive) objects.

Object bytes live in blob files (under `data_dir`, or a temp dir thrown away at stop);
the metadata lives in memory and, with a `data_dir`, in `state.json` rewritten after
every change, so a restarted server sees what the last one stored. One lock guards it
all: the server is for tests and demos, not for throughput under contention.
"""
import base64
import calendar
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from email.utils import formatdate
from xml.etree import ElementTree

from oss2.utils import Crc64

NOT_VERSIONED = "null"
MIN_PART_SIZE = 100 * 1024  # OSS refuses smaller parts, except the last one
WORM_INPROGRESS_SECONDS = 24 * 3600  # an unlocked WORM policy lapses after a day
CHUNK = 1024 * 1024
DAY = 86400

# Storage classes OSS documents for x-oss-storage-class (Overview of storage classes);
# the last three are "frozen": unreadable until a RestoreObject completes.
STORAGE_CLASSES = ("Standard", "IA", "Archive", "ColdArchive", "DeepColdArchive")
FROZEN_CLASSES = ("Archive", "ColdArchive", "DeepColdArchive")
COLDNESS = {name: rank for rank, name in enumerate(STORAGE_CLASSES)}
# RestoreObject: how many days a restored copy may stay readable (RestoreObject: Days
# 1-7 for Archive, 1-365 for Cold Archive and Deep Cold Archive) and the priorities each
# class takes (JobParameters/Tier; Archive takes none: oss2's own suite expects a
# MalformedXML for an Archive restore with JobParameters).
RESTORE_MAX_DAYS = {"Archive": 7, "ColdArchive": 365, "DeepColdArchive": 365}
RESTORE_TIERS = {"Archive": (), "ColdArchive": ("Expedited", "Standard", "Bulk"),
                 "DeepColdArchive": ("Expedited", "Standard")}


class OSSError(Exception):
    """An error answered as OSS answers it: HTTP status, error code, message."""

    def __init__(self, status, code, message, ec="", headers=None, extra=None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.ec = ec
        self.headers = headers or {}
        self.extra = extra or {}


def no_such_bucket(name):
    return OSSError(404, "NoSuchBucket", "The specified bucket does not exist.", "0015-00000101",
                    extra={"BucketName": name})


def no_such_key(key, delete_marker=None):
    headers = {}
    if delete_marker is not None:
        headers = {"x-oss-delete-marker": "true", "x-oss-version-id": delete_marker.version_id}
    return OSSError(404, "NoSuchKey", "The specified key does not exist.", "0026-00000001",
                    headers=headers, extra={"Key": key})


def no_such_upload(upload_id):
    return OSSError(404, "NoSuchUpload", "The specified upload does not exist. The upload ID may "
                    "be invalid, or the upload may have been aborted or completed.",
                    "0042-00000002", extra={"UploadId": upload_id})


def invalid_object_state(key):
    # OSS EC 0016-00000404: an Archive / Cold Archive object read before it is restored.
    return OSSError(403, "InvalidObjectState", "The operation is not valid for the object's "
                    "state", "0016-00000404", extra={"Key": key})


def file_immutable(key):
    # OSS EC 0026-00000202: delete or overwrite inside a bucket retention (WORM) period.
    return OSSError(409, "FileImmutable", "Object is protected by the bucket retention policy "
                    "and cannot be deleted or overwritten before its retention period ends.",
                    "0026-00000202", extra={"Key": key})


@dataclass
class Version:
    version_id: str
    last_modified: float
    delete_marker: bool = False
    blob: str = ""
    size: int = 0
    etag: str = ""
    crc64: str = ""
    content_type: str = ""
    object_type: str = "Normal"
    # x-oss-meta-* and the standard headers stored with the object (Content-Disposition,
    # Cache-Control, ...), as GET and HEAD send them back; names in lower case.
    meta: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    sse: dict = field(default_factory=dict)
    storage_class: str = "Standard"
    acl: str = "default"  # x-oss-object-acl: "default" (the bucket's: private) or "private"
    # RestoreObject of a frozen class: the copy is readable from restore_ready (store
    # time) until restore_expiry; 0 when no restore was asked for (or it expired).
    restore_ready: float = 0.0
    restore_expiry: float = 0.0
    restore_tier: str = ""


@dataclass
class Part:
    number: int
    blob: str
    size: int
    etag: str
    crc64: str
    last_modified: float


@dataclass
class Upload:
    upload_id: str
    key: str
    initiated: float
    content_type: str = ""
    meta: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    sse: dict = field(default_factory=dict)
    parts: dict = field(default_factory=dict)  # number -> Part
    storage_class: str = ""  # x-oss-storage-class of the initiate ("": the bucket's)
    acl: str = "default"  # x-oss-object-acl of the initiate


@dataclass
class Bucket:
    name: str
    created: float
    region: str
    storage_class: str = "Standard"  # what objects get when a request names none
    versioning: str = ""  # "", "Enabled" or "Suspended"
    worm: dict = field(default_factory=dict)  # id, state, days, created
    configs: dict = field(default_factory=dict)  # lifecycle, replication, policy, ... -> text
    objects: dict = field(default_factory=dict)  # key -> [Version], oldest first
    uploads: dict = field(default_factory=dict)  # upload id -> Upload


class BlobWriter:
    """Streams bytes into a new blob file, hashing MD5 and CRC64 as they pass."""

    def __init__(self, store):
        self.name = uuid.uuid4().hex
        self.path = store.blob_path(self.name)
        self.file = open(self.path, "wb")
        self.md5 = hashlib.md5()
        self.crc = Crc64(0)
        self.size = 0

    def write(self, data):
        self.file.write(data)
        self.md5.update(data)
        self.crc.update(data)
        self.size += len(data)

    def close(self):
        self.file.close()

    def discard(self):
        self.file.close()
        os.unlink(self.path)

    @property
    def etag(self):
        return self.md5.hexdigest().upper()


class Store:
    def __init__(self, data_dir=None, region="cn-hangzhou"):
        self.region = region
        self.persistent = data_dir is not None
        self.root = data_dir or tempfile.mkdtemp(prefix="l2c-oss-")
        os.makedirs(os.path.join(self.root, "blobs"), exist_ok=True)
        self.lock = threading.RLock()
        self.buckets = {}
        self.time_offset = 0.0  # advance_time() ages everything by raising "now"
        self._load()

    # -- persistence --------------------------------------------------------------
    def _state_path(self):
        return os.path.join(self.root, "state.json")

    def _load(self):
        if not self.persistent or not os.path.exists(self._state_path()):
            return
        with open(self._state_path(), encoding="utf-8") as f:
            state = json.load(f)
        self.time_offset = state.get("time_offset", 0.0)
        for raw in state["buckets"]:
            bucket = Bucket(**{k: v for k, v in raw.items() if k not in ("objects", "uploads")})
            bucket.objects = {k: [Version(**v) for v in vs] for k, vs in raw["objects"].items()}
            for upload_id, u in raw["uploads"].items():
                parts = {int(n): Part(**p) for n, p in u.pop("parts").items()}
                bucket.uploads[upload_id] = Upload(parts=parts, **u)
            self.buckets[bucket.name] = bucket

    def save(self):
        if not self.persistent:
            return
        state = {"time_offset": self.time_offset,
                 "buckets": [asdict(b) for b in self.buckets.values()]}
        tmp = self._state_path() + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(state, f)
        os.replace(tmp, self._state_path())  # never a half-written state file

    def close(self):
        if not self.persistent:
            shutil.rmtree(self.root, ignore_errors=True)

    def blob_path(self, name):
        return os.path.join(self.root, "blobs", name)

    def now(self):
        return time.time() + self.time_offset

    def advance_time(self, seconds):
        with self.lock:
            self.time_offset += seconds
            self.save()

    # -- buckets ------------------------------------------------------------------
    def bucket(self, name):
        try:
            return self.buckets[name]
        except KeyError:
            raise no_such_bucket(name) from None

    def create_bucket(self, name, storage_class="Standard"):
        with self.lock:
            if name not in self.buckets:
                self.buckets[name] = Bucket(name=name, created=self.now(), region=self.region,
                                            storage_class=storage_class)
                self.save()
            return self.buckets[name]

    def delete_bucket(self, name):
        with self.lock:
            bucket = self.bucket(name)
            if bucket.objects or bucket.uploads:
                raise OSSError(409, "BucketNotEmpty", "The bucket you tried to delete is not empty.",
                               "0015-00000301", extra={"BucketName": name})
            # An empty bucket can be deleted, retention policy and all (OSS AbortBucketWorm
            # usage notes); its objects are what a policy protects.
            del self.buckets[name]
            self.save()

    def set_config(self, name, kind, text):
        with self.lock:
            self.bucket(name).configs[kind] = text
            self.save()

    def get_config(self, name, kind, missing):
        with self.lock:
            text = self.bucket(name).configs.get(kind)
            if text is None:
                raise missing
            return text

    def delete_config(self, name, kind):
        with self.lock:
            self.bucket(name).configs.pop(kind, None)
            self.save()

    # -- versioning ---------------------------------------------------------------
    def set_versioning(self, name, status):
        if status not in ("Enabled", "Suspended"):
            raise OSSError(400, "MalformedXML", "Versioning status must be Enabled or Suspended.")
        with self.lock:
            bucket = self.bucket(name)
            if status == "Suspended" and self._worm_active(bucket):
                raise OSSError(409, "InvalidBucketState",
                               "Versioning cannot be suspended on a bucket with a retention policy.")
            bucket.versioning = status
            self.save()

    # -- WORM ---------------------------------------------------------------------
    def _worm_active(self, bucket):
        worm = bucket.worm
        if not worm:
            return False
        if worm["state"] == "InProgress" and self.now() > worm["created"] + WORM_INPROGRESS_SECONDS:
            bucket.worm = {}  # never locked within a day: the policy lapses, as on OSS
            return False
        return True

    def _protected(self, bucket, version):
        if version.delete_marker or not self._worm_active(bucket):
            return False
        return self.now() < version.last_modified + bucket.worm["days"] * 86400

    def worm_initiate(self, name, days):
        if not 1 <= days <= 25550:
            raise OSSError(400, "InvalidWORMConfiguration", "RetentionPeriodInDays must be 1 to 25550.")
        with self.lock:
            bucket = self.bucket(name)
            if bucket.versioning == "Suspended":
                raise OSSError(409, "InvalidBucketState",
                               "A retention policy cannot be set while versioning is suspended.")
            if self._worm_active(bucket):
                raise OSSError(409, "WORMConfigurationExists", "The bucket already has a retention policy.")
            bucket.worm = {"id": uuid.uuid4().hex.upper()[:20], "state": "InProgress",
                           "days": days, "created": self.now()}
            self.save()
            return bucket.worm["id"]

    def worm_get(self, name):
        with self.lock:
            bucket = self.bucket(name)
            if not self._worm_active(bucket):
                raise OSSError(404, "NoSuchWORMConfiguration", "The WORM configuration does not exist.")
            return dict(bucket.worm)

    def _worm_by_id(self, bucket, worm_id):
        if not self._worm_active(bucket) or bucket.worm["id"] != worm_id:
            raise OSSError(404, "NoSuchWORMConfiguration", "The WORM configuration does not exist.")
        return bucket.worm

    def worm_complete(self, name, worm_id):
        with self.lock:
            self._worm_by_id(self.bucket(name), worm_id)["state"] = "Locked"
            self.save()

    def worm_extend(self, name, worm_id, days):
        with self.lock:
            worm = self._worm_by_id(self.bucket(name), worm_id)
            if worm["state"] != "Locked":
                raise OSSError(400, "InvalidWORMConfiguration", "Only a locked retention policy "
                               "can be extended.")
            if days <= worm["days"] or days > 25550:
                raise OSSError(400, "InvalidWORMConfiguration",
                               "The new retention period must be longer than the current one.")
            worm["days"] = days
            self.save()

    def worm_abort(self, name):
        with self.lock:
            bucket = self.bucket(name)
            if not self._worm_active(bucket):
                raise OSSError(404, "NoSuchWORMConfiguration", "The WORM configuration does not exist.")
            if bucket.worm["state"] == "Locked":
                raise OSSError(403, "WORMConfigurationLocked", "A locked retention policy cannot be removed.")
            bucket.worm = {}
            self.save()

    # -- objects ------------------------------------------------------------------
    def latest(self, bucket, key):
        versions = bucket.objects.get(key)
        return versions[-1] if versions else None

    def find_version(self, bucket, key, version_id=None):
        """The version asked for; NoSuchKey for a missing key or a delete marker on top."""
        versions = bucket.objects.get(key) or []
        if version_id is None:
            if not versions:
                raise no_such_key(key)
            if versions[-1].delete_marker:
                raise no_such_key(key, versions[-1])
            return versions[-1]
        for v in versions:
            if v.version_id == version_id:
                if v.delete_marker:
                    raise OSSError(405, "MethodNotAllowed", "The specified method is not allowed "
                                   "against this resource.", headers={
                                       "x-oss-delete-marker": "true", "x-oss-version-id": version_id})
                return v
        raise OSSError(404, "NoSuchVersion", "The specified version does not exist.",
                       extra={"Key": key, "VersionId": version_id})

    def _new_version_id(self, bucket):
        if bucket.versioning == "Enabled":
            return "CAEQ" + uuid.uuid4().hex.upper()
        return NOT_VERSIONED

    def _add_version(self, bucket, key, version):
        """Adds a version on top; where unversioned or suspended it replaces the "null" one."""
        versions = bucket.objects.setdefault(key, [])
        if version.version_id == NOT_VERSIONED:
            for old in [v for v in versions if v.version_id == NOT_VERSIONED]:
                versions.remove(old)
                self._drop_blob(old)
        versions.append(version)

    def _drop_blob(self, version):
        if version.blob:
            try:
                os.unlink(self.blob_path(version.blob))
            except FileNotFoundError:
                pass

    def _check_overwrite(self, bucket, key):
        # Where versioning is on the old bytes stay as a version, so only the unversioned
        # overwrite destroys data, and WORM forbids it.
        current = self.latest(bucket, key)
        if bucket.versioning != "Enabled" and current is not None and self._protected(bucket, current):
            raise file_immutable(key)

    def put(self, name, key, writer, content_type="", meta=None, tags=None, sse=None,
            object_type="Normal", etag=None, crc64=None, storage_class=None, acl="default"):
        """Stores a finished blob as the newest version of key; returns that Version.
        `storage_class` None: the bucket's."""
        with self.lock:
            bucket = self.bucket(name)
            try:
                self._check_overwrite(bucket, key)
            except OSSError:
                os.unlink(self.blob_path(writer.name))
                raise
            version = Version(
                version_id=self._new_version_id(bucket), last_modified=self.now(),
                blob=writer.name, size=writer.size, etag=etag or writer.etag,
                crc64=crc64 or str(writer.crc.crc), content_type=content_type or
                "application/octet-stream", object_type=object_type, meta=meta or {},
                tags=tags or {}, sse=sse or {}, storage_class=storage_class or bucket.storage_class,
                acl=acl)
            self._add_version(bucket, key, version)
            self.save()
            return version

    def copy_blob(self, src_version):
        """A new blob with the same bytes (copies never share files, so deletes stay simple)."""
        writer = BlobWriter(self)
        with open(self.blob_path(src_version.blob), "rb") as src:
            shutil.copyfileobj(src, writer.file, CHUNK)
        writer.size = src_version.size
        writer.close()
        return writer

    def delete(self, name, key, version_id=None):
        """Deletes as OSS does. Returns (version_id, is_delete_marker) for the response."""
        with self.lock:
            bucket = self.bucket(name)
            versions = bucket.objects.get(key) or []
            if version_id is not None:
                for v in versions:
                    if v.version_id == version_id:
                        if self._protected(bucket, v):
                            raise file_immutable(key)
                        versions.remove(v)
                        self._drop_blob(v)
                        if not versions:
                            del bucket.objects[key]
                        self.save()
                        return version_id, v.delete_marker
                return version_id, False  # deleting what is not there succeeds, as on OSS
            current = versions[-1] if versions else None
            if current is not None and self._protected(bucket, current):
                # Strict where OSS is not documented: even a delete marker is refused.
                raise file_immutable(key)
            if not bucket.versioning:
                if current is not None:
                    versions.remove(current)
                    self._drop_blob(current)
                    del bucket.objects[key]
                    self.save()
                return None, False
            marker = Version(version_id=self._new_version_id(bucket), last_modified=self.now(),
                             delete_marker=True)
            self._add_version(bucket, key, marker)
            self.save()
            return marker.version_id, True

    def set_tags(self, name, key, tags, version_id=None):
        with self.lock:
            version = self.find_version(self.bucket(name), key, version_id)
            version.tags = dict(tags)
            self.save()
            return version

    # -- multipart ----------------------------------------------------------------
    def initiate(self, name, key, content_type="", meta=None, tags=None, sse=None,
                 storage_class=None, acl="default"):
        with self.lock:
            bucket = self.bucket(name)
            upload = Upload(upload_id=uuid.uuid4().hex.upper(), key=key, initiated=self.now(),
                            content_type=content_type, meta=meta or {}, tags=tags or {},
                            sse=sse or {}, storage_class=storage_class or "", acl=acl)
            bucket.uploads[upload.upload_id] = upload
            self.save()
            return upload

    def upload(self, name, key, upload_id):
        bucket = self.bucket(name)
        upload = bucket.uploads.get(upload_id)
        if upload is None or upload.key != key:
            raise no_such_upload(upload_id)
        return upload

    def put_part(self, name, key, upload_id, number, writer):
        if not 1 <= number <= 10000:
            writer.discard()
            raise OSSError(400, "InvalidArgument", "Part number must be an integer between 1 and 10000.")
        with self.lock:
            try:
                upload = self.upload(name, key, upload_id)
            except OSSError:
                writer.discard()
                raise
            old = upload.parts.get(number)
            if old:
                os.unlink(self.blob_path(old.blob))
            part = Part(number=number, blob=writer.name, size=writer.size, etag=writer.etag,
                        crc64=str(writer.crc.crc), last_modified=self.now())
            upload.parts[number] = part
            self.save()
            return part

    def abort(self, name, key, upload_id):
        with self.lock:
            upload = self.upload(name, key, upload_id)
            for part in upload.parts.values():
                os.unlink(self.blob_path(part.blob))
            del self.bucket(name).uploads[upload_id]
            self.save()

    def complete(self, name, key, upload_id, wanted):
        """Joins the listed parts [(number, etag)] into the object; None takes all parts."""
        with self.lock:
            upload = self.upload(name, key, upload_id)
            if wanted is None:
                wanted = [(n, upload.parts[n].etag) for n in sorted(upload.parts)]
            if not wanted:
                raise OSSError(400, "MalformedXML", "The XML you provided was not well-formed.")
            numbers = [n for n, _ in wanted]
            if numbers != sorted(set(numbers)):
                raise OSSError(400, "InvalidPartOrder", "The list of parts was not in ascending order.")
            parts = []
            for i, (number, etag) in enumerate(wanted):
                part = upload.parts.get(number)
                if part is None or part.etag != etag.strip('"').upper():
                    raise OSSError(400, "InvalidPart", "One or more of the specified parts could "
                                   "not be found or the specified entity tag might not have "
                                   "matched the part's entity tag.", extra={"PartNumber": number})
                if i < len(wanted) - 1 and part.size < MIN_PART_SIZE:
                    raise OSSError(400, "EntityTooSmall", "Your proposed upload is smaller than the "
                                   "minimum allowed size (100 KB) for a part that is not the last.",
                                   extra={"PartNumber": number})
                parts.append(part)
            writer = BlobWriter(self)
            crc = Crc64(0)
            combined, md5s = 0, b""
            for part in parts:
                with open(self.blob_path(part.blob), "rb") as src:
                    shutil.copyfileobj(src, writer.file, CHUNK)
                combined = crc.combine(combined, int(part.crc64), part.size)
                md5s += bytes.fromhex(part.etag)
                writer.size += part.size
            writer.close()
            etag = f"{hashlib.md5(md5s).hexdigest().upper()}-{len(parts)}"
            version = self.put(name, key, writer, upload.content_type, upload.meta, upload.tags,
                               upload.sse, object_type="Multipart", etag=etag, crc64=str(combined),
                               storage_class=upload.storage_class or None, acl=upload.acl)
            for part in upload.parts.values():
                os.unlink(self.blob_path(part.blob))
            del self.bucket(name).uploads[upload_id]
            self.save()
            return version

    # -- storage classes and RestoreObject -------------------------------------------
    def restore_state(self, version):
        """"" for a class that is always readable; else "frozen", "ongoing" (a restore
        is under way) or "restored" (readable until restore_expiry). An expired copy is
        frozen again, as on OSS."""
        if version.storage_class not in FROZEN_CLASSES:
            return ""
        now = self.now()
        if not version.restore_ready or now >= version.restore_expiry:
            return "frozen"
        return "ongoing" if now < version.restore_ready else "restored"

    def readable(self, version):
        return self.restore_state(version) in ("", "restored")

    def restore_header(self, version):
        """x-oss-restore as HEAD / GET / listings give it; "" when there is nothing to say."""
        state = self.restore_state(version)
        if state == "ongoing":
            return 'ongoing-request="true"'
        if state == "restored":
            # in the server's clock, as Last-Modified (advance_time moves both)
            expiry = formatdate(version.restore_expiry, usegmt=True)
            return f'ongoing-request="false", expiry-date="{expiry}"'
        return ""

    def restore(self, name, key, version_id=None, days=1, tier="", delay=0.0):
        """RestoreObject: 202 for a new restore (readable after `delay` seconds), 200 for
        one already restored (its copy kept longer), 409 RestoreAlreadyInProgress while
        one is under way, 400 OperationNotSupported for a class that needs none.
        Returns (status, version)."""
        with self.lock:
            version = self.find_version(self.bucket(name), key, version_id)
            state = self.restore_state(version)
            if not state:
                raise OSSError(400, "OperationNotSupported", "The operation is not supported "
                               f"for the {version.storage_class} storage class.", "0016-00000702",
                               extra={"Key": key})
            if state == "ongoing":
                raise OSSError(409, "RestoreAlreadyInProgress", "The restore operation is in "
                               "progress.", "0016-00000701", extra={"Key": key})
            now = self.now()
            if state == "restored":
                # A repeat extends the copy (OSS: by the days asked, up to the class's limit).
                limit = version.restore_ready + RESTORE_MAX_DAYS[version.storage_class] * DAY
                version.restore_expiry = min(max(version.restore_expiry, now + days * DAY), limit)
                self.save()
                return 200, version
            version.restore_ready = now + max(delay, 0.0)
            version.restore_expiry = version.restore_ready + days * DAY
            version.restore_tier = tier
            self.save()
            return 202, version

    def set_storage_class(self, version, storage_class):
        """A lifecycle transition: the same bytes in another class, frozen if it is one."""
        version.storage_class = storage_class
        version.restore_ready = version.restore_expiry = 0.0
        version.restore_tier = ""

    def run_lifecycle(self):
        """Applies the buckets' lifecycle Transition actions once, as OSS's daily run does:
        the current version of each object under an Enabled rule's prefix (and tags) whose
        age (Days) or date (CreatedBeforeDate) is reached moves to that rule's coldest due
        class, never to a warmer one. Returns [(bucket, key, new class)]. Expiration,
        noncurrent-version and multipart rules are not run (README: deviations)."""
        moved = []
        with self.lock:
            now = self.now()
            for bucket in self.buckets.values():
                text = bucket.configs.get("lifecycle")
                if not text:
                    continue
                for rule in ElementTree.fromstring(text).findall("Rule"):
                    if rule.findtext("Status") != "Enabled":
                        continue
                    prefix = rule.findtext("Prefix") or rule.findtext("Filter/Prefix") or ""
                    tags = {t.findtext("Key"): t.findtext("Value") or ""
                            for t in rule.findall("Tag")}
                    for key, versions in sorted(bucket.objects.items()):
                        current = versions[-1]
                        if current.delete_marker or not key.startswith(prefix):
                            continue
                        if any(current.tags.get(k) != v for k, v in tags.items()):
                            continue
                        target = _due_class(rule, current, now)
                        if target and COLDNESS[target] > COLDNESS[current.storage_class]:
                            self.set_storage_class(current, target)
                            moved.append((bucket.name, key, target))
            if moved:
                self.save()
        return moved

    # -- listing ------------------------------------------------------------------
    def list_keys(self, name, prefix="", delimiter="", after="", max_keys=100):
        """Live keys (latest version not a delete marker) in order, OSS-style.

        Returns (objects [(key, Version)], common prefixes, truncated, last entry name)."""
        with self.lock:
            bucket = self.bucket(name)
            entries = []
            for key in sorted(bucket.objects):
                latest = bucket.objects[key][-1]
                if not key.startswith(prefix) or latest.delete_marker:
                    continue
                entries.append((key, latest))
            return group_entries(entries, prefix, delimiter, after, max_keys)

    def list_versions(self, name, prefix="", delimiter="", key_marker="", max_keys=100):
        with self.lock:
            bucket = self.bucket(name)
            entries = []
            for key in sorted(bucket.objects):
                if key.startswith(prefix):
                    versions = bucket.objects[key]
                    entries.append((key, [(v, v is versions[-1]) for v in reversed(versions)]))
            return group_entries(entries, prefix, delimiter, key_marker, max_keys)

    def list_uploads(self, name, prefix=""):
        with self.lock:
            uploads = [u for u in self.bucket(name).uploads.values() if u.key.startswith(prefix)]
            return sorted(uploads, key=lambda u: (u.key, u.upload_id))


def _due_class(rule, version, now):
    """The coldest class among a rule's Transitions that are due for this version."""
    due = ""
    for transition in rule.findall("Transition"):
        days, date = transition.findtext("Days"), transition.findtext("CreatedBeforeDate")
        if days is not None:
            reached = now - version.last_modified >= int(days) * DAY
        else:
            limit = calendar.timegm(time.strptime(date, "%Y-%m-%dT%H:%M:%S.000Z"))
            reached = version.last_modified < limit
        target = transition.findtext("StorageClass")
        if reached and target in COLDNESS and (not due or COLDNESS[target] > COLDNESS[due]):
            due = target
    return due


def group_entries(entries, prefix, delimiter, after, max_keys):
    """Applies start-after, delimiter roll-up and max-keys to sorted (name, value) pairs."""
    objects, prefixes, last = [], [], ""
    for name, value in entries:
        if name <= after:
            continue
        if delimiter:
            cut = name.find(delimiter, len(prefix))
            if cut >= 0:
                common = name[:cut + len(delimiter)]
                if common <= after or (prefixes and prefixes[-1] == common):
                    continue
                if len(objects) + len(prefixes) >= max_keys:
                    return objects, prefixes, True, last
                prefixes.append(common)
                last = common
                continue
        if len(objects) + len(prefixes) >= max_keys:
            return objects, prefixes, True, last
        objects.append((name, value))
        last = name
    return objects, prefixes, False, last


def encode_token(name):
    return base64.urlsafe_b64encode(name.encode("utf-8")).decode("ascii")


def decode_token(token):
    try:
        return base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8")
    except (ValueError, UnicodeError):
        raise OSSError(400, "InvalidArgument", "The continuation token is not valid.") from None
