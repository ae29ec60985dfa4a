"""The local OSS server: HTTP front end, request routing and the LocalOSS handle.

A request names its bucket as OSS does: in the Host header (`<bucket>.oss-local.test:PORT`,
virtual-hosted, how oss2 addresses every named endpoint), or in the path
(`/bucket/url-encoded-key`) when the Host is an IP or localhost, how oss2 addresses those,
or by a custom domain bound to the bucket (`cnames`), where the whole path is the key.
Each is matched against scripted faults, authenticated, checked against what this server
implements (surface.py) and what OSS refuses (validate.py), then served from the Store.
Bodies are streamed to and from blob files, so large backups pass through with flat memory.
"""
import base64
import ipaddress
import json
import logging
import os
import socket
import threading
import time
import uuid
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlsplit
from xml.etree import ElementTree

from .. import resolve
from . import surface, validate, xmlbody
from .auth import Authenticator
from .events import ALL_OBJECT_CREATED, Dispatcher, ObjectState, Subscription, deliver, object_created_event
from .faults import Fault, FaultPlan
from .store import (CHUNK, FROZEN_CLASSES, BlobWriter, OSSError, Store, decode_token,
                    encode_token, invalid_object_state)

log = logging.getLogger(__name__)

TEST_ACCESS_KEY_ID = "LTAI5tL2CLocalTestKey01"
TEST_ACCESS_KEY_SECRET = "l2c-local-test-secret-not-for-production"

SERVER_SIDE_ENCRYPTION = ("x-oss-server-side-encryption", "x-oss-server-side-encryption-key-id",
                          "x-oss-server-side-data-encryption")
# The account's default KMS key, which OSS uses and names when a KMS request gives none.
DEFAULT_KMS_KEY_ID = "0e7f9c7a-3b1d-4c55-9b5e-6f2c10ca1e75"
# GetObject query parameters that override response headers (response-content-type=...).
RESPONSE_OVERRIDES = ("content-type", "content-language", "expires", "cache-control",
                      "content-disposition", "content-encoding")
# Standard headers PutObject (InitiateMultipartUpload, CopyObject with REPLACE) stores with
# the object, and GET / HEAD send back.
STORED_HEADERS = ("cache-control", "content-disposition", "content-encoding",
                  "content-language", "expires")
# Web pages OSS serves as downloads on its own domains (since 2018-08-13: mimetype
# text/html, or one of these extensions); a custom domain bound to the bucket serves them
# as they are.
WEB_PAGE_EXTENSIONS = ("htm", "html", "jsp", "plg", "htx", "stm")
CONFIG_MISSING = {
    "lifecycle": (404, "NoSuchLifecycle", "The lifecycle configuration does not exist."),
    "policy": (404, "NoSuchBucketPolicy", "The bucket policy does not exist."),
    "encryption": (404, "NoSuchServerSideEncryptionRule",
                   "The server side encryption configuration was not found."),
    "tagging": (404, "NoSuchTagSet", "There is no tag set."),
    "replication": (404, "NoSuchReplicationConfiguration",
                    "The replication configuration does not exist."),
}
# RestoreObject's delay here: OSS restores an Archive object in about a minute, Cold
# Archive in 1 to 12 hours by priority; tests want seconds (README: deviations).
DEFAULT_RESTORE_DELAY_SECONDS = 2.0
CONFIG_ROOTS = {"lifecycle": "LifecycleConfiguration", "encryption": "ServerSideEncryptionRule",
                "tagging": "Tagging"}


class Dropped(Exception):
    """The connection was closed on purpose (a scripted fault)."""


def _request_id():
    return uuid.uuid4().hex[:24].upper()


def _parse_tags(text):
    return validate.tagging_header(text)


def _tags_xml(tags):
    return xmlbody.build("Tagging", [("TagSet", [("Tag", [("Key", k), ("Value", v)])
                                                 for k, v in tags.items()])])


def _tags_from_xml(body):
    root = xmlbody.parse(body, "Tagging")
    return validate.tags([(t.findtext("Key", ""), t.findtext("Value", "")) for t in root.iter("Tag")])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "AliyunOSS"
    sys_version = ""
    timeout = 120

    # -- plumbing -------------------------------------------------------------------
    def log_message(self, fmt, *args):
        log.debug("%s " + fmt, self.address_string(), *args)

    def do_GET(self):
        self._handle()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    @property
    def oss(self):
        return self.server.oss

    def _handle(self):
        self.request_id = _request_id()
        self.chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        # bytes of request body not read yet; None while a chunked body is unread
        self.body_left = None if self.chunked else int(self.headers.get("Content-Length") or 0)
        self.response_limit = None
        url = urlsplit(self.path)
        self.params = parse_qsl(url.query, keep_blank_values=True)
        self.query = dict(self.params)
        self.bucket, self.key = "", None
        self.via_custom_domain = False
        try:
            host_bucket = self._bucket_from_host()
            if host_bucket is None and url.path.startswith("/-/"):
                return self._admin(url.path)
            self._address(host_bucket, url.path)
            self._apply_fault()
            self.oss.auth.verify(self.command, self.headers, self.bucket, self.key or "",
                                 self.params)
            level = "object" if self.key is not None else "bucket" if self.bucket else "service"
            surface.check(level, self.command, self.params, self.headers)
            if self.key is not None:
                validate.object_name(self.key)
            validate.version_id(self.query.get("versionId"))
            self._route()
        except OSSError as err:
            self._send_error(err)
        except Dropped:
            self.close_connection = True
        except (ConnectionError, socket.timeout):
            self.close_connection = True

    def _bucket_from_host(self):
        """The bucket named by a virtual-hosted Host header; None for the endpoint itself or
        an IP / localhost (then the path names the bucket)."""
        host = self.headers.get("Host", "")
        name = host.rsplit("]", 1)[0].lstrip("[") if host.startswith("[") else host.rsplit(":", 1)[0]
        name = name.rstrip(".").lower()
        if name in self.oss.cnames:
            self.via_custom_domain = True
            return self.oss.cnames[name]
        endpoint = self.oss.hostname
        if name.endswith("." + endpoint):
            return name[:-len(endpoint) - 1]
        if name == endpoint:
            self.path_style_refused = True
            return None
        try:
            ipaddress.ip_address(name)
        except ValueError:
            if name != "localhost":
                raise OSSError(400, "InvalidRequest", f"The Host {host!r} is neither this endpoint "
                               f"({endpoint}), a bucket under it, nor an IP address.") from None
        self.path_style_refused = False
        return None

    def _address(self, host_bucket, path):
        rest = path[1:] if path.startswith("/") else path
        if host_bucket is not None:
            self.bucket, self.key = host_bucket, unquote(rest) if rest else None
            return
        bucket, _, key = rest.partition("/")
        if bucket and self.path_style_refused:
            # OSS refuses path style on its named endpoints (buckets are virtual-hosted).
            raise OSSError(403, "SecondLevelDomainForbidden", "Please use virtual hosted style to "
                           "access.", "0003-00001703")
        self.bucket, self.key = unquote(bucket), unquote(key) if key else None

    def _apply_fault(self):
        fault = self.oss.faults.take(self.command, self.bucket, self.key, self.params)
        if fault is None:
            return
        if fault.delay:
            time.sleep(fault.delay)
        if fault.drop_request_after is not None:
            self._read_body_bytes(fault.drop_request_after)
            self._drop()
        if fault.drop_response_after is not None:
            self.response_limit = fault.drop_response_after
        if fault.status:
            raise OSSError(fault.status, fault.error_code, "Injected fault (local OSS server).")

    def _drop(self):
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        raise Dropped()

    def body_chunks(self):
        """Yields the request body as it arrives (plain or chunked transfer encoding)."""
        if not self.chunked:
            while self.body_left:
                data = self.rfile.read(min(CHUNK, self.body_left))
                if not data:
                    raise ConnectionError("client closed the connection mid-body")
                self.body_left -= len(data)
                yield data
            return
        while True:
            line = self.rfile.readline(1024)
            if not line:
                raise ConnectionError("client closed the connection mid-body")
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                self.chunked = False
                self.body_left = 0
                return
            while size:
                data = self.rfile.read(min(CHUNK, size))
                if not data:
                    raise ConnectionError("client closed the connection mid-body")
                size -= len(data)
                yield data
            self.rfile.readline(16)

    def _read_body_bytes(self, limit):
        got = 0
        for data in self.body_chunks():
            got += len(data)
            if got >= limit:
                return

    def read_body(self):
        return b"".join(self.body_chunks())

    def body_to_blob(self):
        writer = BlobWriter(self.oss.store)
        try:
            for data in self.body_chunks():
                writer.write(data)
        except BaseException:
            writer.discard()
            raise
        writer.close()
        md5 = self.headers.get("Content-MD5")
        if md5 and md5 != base64.b64encode(writer.md5.digest()).decode():
            writer.discard()
            raise OSSError(400, "InvalidDigest", "The Content-MD5 you specified was invalid.")
        return writer

    def _drain(self):
        try:
            for _ in self.body_chunks():
                pass
        except (ConnectionError, ValueError):
            self.close_connection = True

    def send_response(self, code, message=None):
        # BaseHTTPRequestHandler's also adds a Date header; _common_headers adds the one.
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Server", self.version_string())

    def send(self, status, body=b"", headers=None, content_type="application/xml"):
        self._drain()
        self.send_response(status)
        self._common_headers(headers)
        if body or status not in (204, 304):
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self._write(body)

    def _common_headers(self, headers):
        self.send_header("x-oss-request-id", self.request_id)
        self.send_header("Date", formatdate(usegmt=True))
        for name, value in (headers or {}).items():
            self.send_header(name, value)

    def _write(self, data):
        if self.response_limit is not None:
            if len(data) >= self.response_limit:
                self.wfile.write(data[:self.response_limit])
                self.wfile.flush()
                self._drop()
            self.response_limit -= len(data)
        self.wfile.write(data)

    def _send_error(self, err):
        if err.status == 304:
            return self.send(304, headers=err.headers)
        body = xmlbody.error(err, self.request_id, self.headers.get("Host", ""))
        headers = dict(err.headers, **({"x-oss-ec": err.ec} if err.ec else {}))
        if self.command == "HEAD":
            # A HEAD answer has no body: OSS carries the error document in x-oss-err.
            headers["x-oss-err"] = base64.b64encode(body).decode("ascii")
            body = b""
        self.send(err.status, body, headers)

    # -- routing --------------------------------------------------------------------
    def _route(self):
        q, method = self.query, self.command
        if not self.bucket:
            if method == "GET":
                return self.list_buckets()
            raise OSSError(405, "MethodNotAllowed", "The specified method is not allowed.")
        if self.key is None:
            for sub in ("worm", "wormId", "versioning", "versions", "lifecycle", "replication",
                        "policy", "encryption", "tagging", "uploads", "delete", "location",
                        "bucketInfo", "live"):
                if sub in q:
                    return getattr(self, f"bucket_{sub}")()
            return {"PUT": self.create_bucket, "DELETE": self.delete_bucket,
                    "GET": self.list_objects}.get(method, self._not_allowed)()
        if "tagging" in q:
            return self.object_tagging()
        if "objectMeta" in q:
            return self.object_meta()
        if "uploads" in q and method == "POST":
            return self.initiate_upload()
        if "restore" in q:
            return self.restore_object() if method == "POST" else self._not_allowed()
        if "uploadId" in q:
            return {"PUT": self.upload_part, "POST": self.complete_upload,
                    "DELETE": self.abort_upload, "GET": self.list_parts}.get(method, self._not_allowed)()
        if method == "PUT":
            if "x-oss-copy-source" in self.headers:
                return self.copy_object()
            return self.put_object()
        return {"GET": self.get_object, "HEAD": self.get_object,
                "DELETE": self.delete_object}.get(method, self._not_allowed)()

    def _not_allowed(self):
        raise OSSError(405, "MethodNotAllowed", "The specified method is not allowed against "
                       "this resource.")

    # -- service and bucket ---------------------------------------------------------
    def list_buckets(self):
        store, q = self.oss.store, self.query
        prefix, marker = q.get("prefix", ""), q.get("marker", "")
        max_keys = self._max("max-keys")
        with store.lock:
            names = sorted(n for n in store.buckets if n.startswith(prefix) and n > marker)
            shown = [store.buckets[n] for n in names[:max_keys]]
            buckets = [("Bucket", [("CreationDate", xmlbody.iso8601(b.created)),
                                   ("ExtranetEndpoint", self.headers.get("Host", "")),
                                   ("IntranetEndpoint", self.headers.get("Host", "")),
                                   ("Location", f"oss-{b.region}"), ("Name", b.name),
                                   ("Region", b.region), ("StorageClass", b.storage_class)])
                       for b in shown]
        paging = [("Prefix", prefix), ("Marker", marker), ("MaxKeys", max_keys),
                  ("IsTruncated", len(names) > max_keys)]
        if len(names) > max_keys:
            paging.append(("NextMarker", shown[-1].name))
        self.send(200, xmlbody.build("ListAllMyBucketsResult", paging + [
            ("Owner", xmlbody.OWNER), ("Buckets", buckets)]))

    def create_bucket(self):
        # CreateBucketConfiguration: the storage class objects get by default is kept (a
        # bucket that exists keeps its own); the redundancy type is ignored.
        body = self.read_body()
        storage_class = None
        if body.strip():
            storage_class = validate.storage_class(
                xmlbody.parse(body, "CreateBucketConfiguration").findtext("StorageClass"),
                "0013-00000101")
        self.oss.store.create_bucket(self.bucket, storage_class or "Standard")
        self.send(200, headers={"Location": f"/{self.bucket}"})

    def delete_bucket(self):
        self.oss.store.delete_bucket(self.bucket)
        self.send(204)

    def bucket_live(self):
        # No live channel can be created here (PUT ?live is NotImplemented), so the listing
        # is OSS's answer for a bucket without channels, which SDK clean-ups rely on (oss2's
        # own tests list and delete live channels before deleting every bucket).
        self.oss.store.bucket(self.bucket)
        q = self.query
        self.send(200, xmlbody.build("ListLiveChannelResult", [
            ("Prefix", q.get("prefix", "")), ("Marker", q.get("marker", "")),
            ("MaxKeys", self._max("max-keys")), ("IsTruncated", False), ("NextMarker", "")]))

    def bucket_location(self):
        self.oss.store.bucket(self.bucket)
        self.send(200, xmlbody.build("LocationConstraint", []).replace(
            b"<LocationConstraint />", f"<LocationConstraint>oss-{self.oss.region}"
            "</LocationConstraint>".encode()))

    def bucket_bucketInfo(self):
        b = self.oss.store.bucket(self.bucket)
        host = self.headers.get("Host", "")
        self.send(200, xmlbody.build("BucketInfo", [("Bucket", [
            ("CreationDate", xmlbody.iso8601(b.created)), ("ExtranetEndpoint", host),
            ("IntranetEndpoint", host), ("Location", f"oss-{b.region}"), ("Name", b.name),
            ("StorageClass", b.storage_class), ("Versioning", b.versioning or None),
            ("Owner", xmlbody.OWNER), ("AccessControlList", [("Grant", "private")]),
            ("ServerSideEncryptionRule", [("SSEAlgorithm", self._default_sse() or "None")])])]))

    def bucket_versioning(self):
        store = self.oss.store
        if self.command == "PUT":
            root = xmlbody.parse(self.read_body(), "VersioningConfiguration")
            store.set_versioning(self.bucket, root.findtext("Status", ""))
            return self.send(200)
        status = store.bucket(self.bucket).versioning
        self.send(200, xmlbody.build("VersioningConfiguration",
                                     [("Status", status)] if status else []))

    def bucket_worm(self):
        store = self.oss.store
        if self.command == "POST":
            root = xmlbody.parse(self.read_body(), "InitiateWormConfiguration")
            worm_id = store.worm_initiate(self.bucket, _int(root.findtext("RetentionPeriodInDays")))
            return self.send(200, headers={"x-oss-worm-id": worm_id})
        if self.command == "DELETE":
            store.worm_abort(self.bucket)
            return self.send(204)
        worm = store.worm_get(self.bucket)
        self.send(200, xmlbody.build("WormConfiguration", [
            ("WormId", worm["id"]), ("State", worm["state"]),
            ("RetentionPeriodInDays", worm["days"]),
            ("CreationDate", time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(worm["created"])))]))

    def bucket_wormId(self):
        if self.command != "POST":
            self._not_allowed()
        if "wormExtend" in self.query:
            root = xmlbody.parse(self.read_body(), "ExtendWormConfiguration")
            self.oss.store.worm_extend(self.bucket, self.query["wormId"],
                                       _int(root.findtext("RetentionPeriodInDays")))
        else:
            self.oss.store.worm_complete(self.bucket, self.query["wormId"])
        self.send(200)

    def _stored_config(self, kind):
        store = self.oss.store
        if self.command == "PUT":
            body = self.read_body()
            if kind == "policy":
                try:
                    json.loads(body)
                except ValueError:
                    raise OSSError(400, "InvalidPolicyDocument", "The policy is not valid JSON.") from None
            else:
                root = xmlbody.parse(body, CONFIG_ROOTS[kind])
                if kind == "lifecycle":
                    validate.lifecycle(root)
            store.set_config(self.bucket, kind, body.decode("utf-8"))
            return self.send(200)
        if self.command == "DELETE":
            store.delete_config(self.bucket, kind)
            return self.send(204)
        text = store.get_config(self.bucket, kind, OSSError(*CONFIG_MISSING[kind]))
        self.send(200, text.encode("utf-8"),
                  content_type="application/json" if kind == "policy" else "application/xml")

    def bucket_lifecycle(self):
        self._stored_config("lifecycle")

    def bucket_policy(self):
        self._stored_config("policy")

    def bucket_encryption(self):
        self._stored_config("encryption")

    def bucket_tagging(self):
        self._stored_config("tagging")

    def bucket_replication(self):
        store = self.oss.store
        rules = json.loads(store.bucket(self.bucket).configs.get("replication", "[]"))
        if self.command == "GET":
            if not rules:
                raise OSSError(*CONFIG_MISSING["replication"])
            return self.send(200, xmlbody.build("ReplicationConfiguration", [
                ("Rule", [("ID", r["id"]), ("Destination", [
                    ("Bucket", r["bucket"]), ("Location", r["location"]),
                    ("TransferType", r["transfer_type"])]),
                    ("Status", "doing"), ("Action", r["action"]),
                    ("HistoricalObjectReplication", r["historical"])]
                 + ([("PrefixSet", [("Prefix", p) for p in r["prefixes"]])] if r["prefixes"] else []))
                for r in rules]))
        if self.command != "POST":
            self._not_allowed()
        if self.query.get("comp") == "delete":
            root = xmlbody.parse(self.read_body(), "ReplicationRules")
            rules = [r for r in rules if r["id"] != root.findtext("ID")]
        else:
            root = xmlbody.parse(self.read_body(), "ReplicationConfiguration")
            for rule in root.iter("Rule"):
                target = rule.findtext("Destination/Bucket")
                if not target:
                    raise OSSError(400, "MalformedXML", "A replication rule needs Destination/Bucket.")
                rules.append({
                    "id": rule.findtext("ID") or uuid.uuid4().hex, "bucket": target,
                    "location": rule.findtext("Destination/Location") or f"oss-{self.oss.region}",
                    "transfer_type": rule.findtext("Destination/TransferType") or "internal",
                    "action": rule.findtext("Action") or "ALL",
                    "historical": rule.findtext("HistoricalObjectReplication") or "enabled",
                    "prefixes": [p.text or "" for p in rule.iter("Prefix")]})
        store.set_config(self.bucket, "replication", json.dumps(rules))
        self.send(200)

    # -- listing --------------------------------------------------------------------
    def _max(self, name, default=100):
        value = _int(self.query.get(name, default), name)
        if not 1 <= value <= 1000:
            raise OSSError(400, "InvalidArgument", f"{name} must be between 1 and 1000.")
        return value

    def list_objects(self):
        q, enc = self.query, xmlbody.encoder(self.params)
        v2 = q.get("list-type") == "2"
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        after = decode_token(q["continuation-token"]) if q.get("continuation-token") else \
            q.get("start-after" if v2 else "marker", "")
        max_keys = self._max("max-keys")
        objects, prefixes, truncated, last = self.oss.store.list_keys(
            self.bucket, prefix, delimiter, after, max_keys)
        items = [("Name", self.bucket), ("Prefix", enc(prefix)), ("MaxKeys", max_keys),
                 ("Delimiter", enc(delimiter)), ("IsTruncated", truncated)]
        if v2:
            items += [("StartAfter", enc(q.get("start-after", ""))), ("KeyCount", len(objects) + len(prefixes))]
            if q.get("continuation-token"):
                items.append(("ContinuationToken", q["continuation-token"]))
            if truncated:
                items.append(("NextContinuationToken", encode_token(last)))
        else:
            items.append(("Marker", enc(q.get("marker", ""))))
            if truncated:
                items.append(("NextMarker", enc(last)))
        if q.get("encoding-type") == "url":
            items.append(("EncodingType", "url"))
        # ListObjectsV2 names owners only when asked (fetch-owner=true); v1 always does.
        owner = not v2 or q.get("fetch-owner", "").lower() == "true"
        store = self.oss.store
        items += [("Contents", xmlbody.object_entry(k, v, enc, owner, store.restore_header(v)))
                  for k, v in objects]
        items += [("CommonPrefixes", [("Prefix", enc(p))]) for p in prefixes]
        self.send(200, xmlbody.build("ListBucketResult", items))

    def bucket_versions(self):
        q, enc = self.query, xmlbody.encoder(self.params)
        prefix, delimiter, marker = q.get("prefix", ""), q.get("delimiter", ""), q.get("key-marker", "")
        for name in ("prefix", "delimiter", "key-marker", "version-id-marker"):
            if len(q.get(name, "").encode()) > 1024:
                raise OSSError(400, "InvalidArgument", f"{name} is longer than 1024 bytes.")
        max_keys = self._max("max-keys")
        entries, prefixes, truncated, last = self.oss.store.list_versions(
            self.bucket, prefix, delimiter, marker, max_keys)
        items = [("Name", self.bucket), ("Prefix", enc(prefix)), ("KeyMarker", enc(marker)),
                 ("VersionIdMarker", q.get("version-id-marker", "")), ("MaxKeys", max_keys),
                 ("Delimiter", enc(delimiter)), ("IsTruncated", truncated)]
        if truncated:
            items += [("NextKeyMarker", enc(last)), ("NextVersionIdMarker", "")]
        if q.get("encoding-type") == "url":
            items.append(("EncodingType", "url"))
        for key, versions in entries:
            for version, latest in versions:
                common = [("Key", enc(key)), ("VersionId", version.version_id),
                          ("IsLatest", latest), ("LastModified", xmlbody.iso8601(version.last_modified))]
                if version.delete_marker:
                    items.append(("DeleteMarker", common + [("Owner", xmlbody.OWNER)]))
                else:
                    restore_info = self.oss.store.restore_header(version)
                    items.append(("Version", common + [
                        ("ETag", f'"{version.etag}"'), ("Type", version.object_type),
                        ("Size", version.size), ("StorageClass", version.storage_class),
                        ("Owner", xmlbody.OWNER)]
                        + ([("RestoreInfo", restore_info)] if restore_info else [])))
        items += [("CommonPrefixes", [("Prefix", enc(p))]) for p in prefixes]
        self.send(200, xmlbody.build("ListVersionsResult", items))

    def bucket_uploads(self):
        if self.command != "GET":
            self._not_allowed()
        q, enc = self.query, xmlbody.encoder(self.params)
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        key_marker, id_marker = q.get("key-marker", ""), q.get("upload-id-marker", "")
        max_uploads = self._max("max-uploads", 1000)
        uploads, prefixes, truncated = [], [], False
        # Ordered by key, then upload id; a marker pair resumes after that upload (or, with
        # no upload id, after every upload of that key), and a delimiter rolls keys up.
        for u in self.oss.store.list_uploads(self.bucket, prefix):
            if ((u.key, u.upload_id) <= (key_marker, id_marker)) if id_marker else u.key <= key_marker:
                continue
            cut = u.key.find(delimiter, len(prefix)) if delimiter else -1
            common = u.key[:cut + len(delimiter)] if cut >= 0 else None
            if common is not None and (common <= key_marker or (prefixes and prefixes[-1] == common)):
                continue
            if len(uploads) + len(prefixes) >= max_uploads:
                truncated = True
                break
            if common is not None:
                prefixes.append(common)
                last = (common, "")
            else:
                uploads.append(u)
                last = (u.key, u.upload_id)
        items = [("Bucket", self.bucket), ("KeyMarker", enc(key_marker)), ("UploadIdMarker", id_marker),
                 ("NextKeyMarker", enc(last[0]) if truncated else ""),
                 ("NextUploadIdMarker", last[1] if truncated else ""),
                 ("Delimiter", enc(delimiter)), ("Prefix", enc(prefix)),
                 ("MaxUploads", max_uploads), ("IsTruncated", truncated)]
        if q.get("encoding-type") == "url":
            items.append(("EncodingType", "url"))
        items += [("Upload", [("Key", enc(u.key)), ("UploadId", u.upload_id),
                              ("Initiated", xmlbody.iso8601(u.initiated))]) for u in uploads]
        items += [("CommonPrefixes", [("Prefix", enc(p))]) for p in prefixes]
        self.send(200, xmlbody.build("ListMultipartUploadsResult", items))

    def bucket_delete(self):
        if self.command != "POST":
            self._not_allowed()
        root = xmlbody.parse(self.read_body(), "Delete")
        quiet = root.findtext("Quiet", "false").lower() == "true"
        wanted = [(o.findtext("Key", ""), validate.version_id(o.findtext("VersionId")))
                  for o in root.iter("Object")]
        if len(wanted) > 1000:
            raise OSSError(400, "MalformedXML", "At most 1000 objects can be deleted at once.")
        store, enc = self.oss.store, xmlbody.encoder(self.params)
        with store.lock:  # all or nothing: a protected object fails the whole request
            bucket = store.bucket(self.bucket)
            for key, version_id in wanted:
                versions = bucket.objects.get(key) or []
                target = [v for v in versions if v.version_id == version_id] if version_id \
                    else versions[-1:]
                if any(store._protected(bucket, v) for v in target):
                    raise OSSError(409, "FileImmutable", "Object is protected by the bucket "
                                   "retention policy.", "0026-00000202", extra={"Key": key})
            results = [(key, asked, *store.delete(self.bucket, key, asked)) for key, asked in wanted]
        items = [] if quiet else [
            ("Deleted", [("Key", enc(key))]
             + ([("VersionId", asked)] if asked else [])
             + ([("DeleteMarker", True), ("DeleteMarkerVersionId", vid)] if marker and not asked else []))
            for key, asked, vid, marker in results]
        if self.query.get("encoding-type") == "url":
            items.append(("EncodingType", "url"))
        for key, asked, _, _ in results:
            self.oss.object_removed(self.bucket, key)
        self.send(200, xmlbody.build("DeleteResult", items))

    # -- objects --------------------------------------------------------------------
    def _meta(self):
        return {k.lower(): v for k, v in self.headers.items()
                if k.lower().startswith("x-oss-meta-") or k.lower() in STORED_HEADERS}

    def _acl(self):
        return surface.object_acl(self.headers.get("x-oss-object-acl"))

    def _sse(self):
        sse = {k: self.headers[k] for k in SERVER_SIDE_ENCRYPTION if k in self.headers}
        algorithm = sse.get("x-oss-server-side-encryption")
        if algorithm and algorithm not in ("AES256", "KMS", "SM4"):
            raise OSSError(400, "InvalidEncryptionAlgorithmError",
                           "The encryption request you specified is not valid. Supported value: "
                           "AES256/KMS/SM4.")
        if not sse and self._default_sse():
            # A bucket default applies to objects uploaded without their own header.
            sse = {"x-oss-server-side-encryption": self._default_sse()}
        if sse.get("x-oss-server-side-encryption") == "KMS":
            sse.setdefault("x-oss-server-side-encryption-key-id", DEFAULT_KMS_KEY_ID)
        return sse

    def _default_sse(self):
        rule = self.oss.store.bucket(self.bucket).configs.get("encryption")
        if rule is None:
            return ""
        return ElementTree.fromstring(rule).findtext("ApplyServerSideEncryptionByDefault/SSEAlgorithm", "")

    def _forbid_overwrite(self):
        # x-oss-forbid-overwrite only works while versioning is off, as on OSS.
        store = self.oss.store
        if self.headers.get("x-oss-forbid-overwrite", "").lower() == "true":
            bucket = store.bucket(self.bucket)
            current = store.latest(bucket, self.key)
            if not bucket.versioning and current is not None and not current.delete_marker:
                raise OSSError(409, "FileAlreadyExists", "The object you specified already exists "
                               "and can not be overwritten.", "0026-00000010")

    def _version_headers(self, version):
        headers = {"ETag": f'"{version.etag}"', "x-oss-hash-crc64ecma": version.crc64}
        if self.oss.store.bucket(self.bucket).versioning:
            headers["x-oss-version-id"] = version.version_id
        headers.update(version.sse)
        return headers

    def put_object(self):
        self.oss.store.bucket(self.bucket)
        self._forbid_overwrite()
        sse = self._sse()
        storage_class = validate.storage_class(self.headers.get("x-oss-storage-class"))
        writer = self.body_to_blob()
        with self.oss.store.lock:  # checked again, atomically: of racing PUTs one wins, as on OSS
            try:
                self._forbid_overwrite()
            except OSSError:
                writer.discard()
                raise
            version = self.oss.store.put(
                self.bucket, self.key, writer, self.headers.get("Content-Type", ""), self._meta(),
                _parse_tags(self.headers.get("x-oss-tagging")), sse, storage_class=storage_class,
                acl=self._acl())
        self.oss.object_created(self.bucket, self.key, version, "PutObject", self.request_id,
                                self.client_address[0])
        self.send(200, headers=self._version_headers(version))

    def copy_object(self):
        store = self.oss.store
        source = self.headers["x-oss-copy-source"]
        path, _, query = source.partition("?")
        src_bucket, _, src_key = path.lstrip("/").partition("/")
        src_key = unquote(src_key)
        src_version_id = validate.version_id(dict(parse_qsl(query, keep_blank_values=True)).get("versionId"))
        storage_class = validate.storage_class(self.headers.get("x-oss-storage-class"), "0013-00000101")
        self._forbid_overwrite()
        with store.lock:
            src = store.find_version(store.bucket(src_bucket), src_key, src_version_id)
            if not store.readable(src):
                # Converting an Archive object (to Standard, say) needs it restored first.
                raise invalid_object_state(src_key)
            writer = store.copy_blob(src)
        replace_meta = self.headers.get("x-oss-metadata-directive", "COPY").upper() == "REPLACE"
        replace_tags = self.headers.get("x-oss-tagging-directive", "COPY").upper() == "REPLACE"
        version = store.put(
            self.bucket, self.key, writer,
            self.headers.get("Content-Type", "") if replace_meta else src.content_type,
            self._meta() if replace_meta else dict(src.meta),
            _parse_tags(self.headers.get("x-oss-tagging")) if replace_tags else dict(src.tags),
            self._sse() or dict(src.sse), etag=src.etag, crc64=src.crc64,
            storage_class=storage_class, acl=self._acl())
        self.oss.object_created(self.bucket, self.key, version, "CopyObject", self.request_id,
                                self.client_address[0])
        self.send(200, xmlbody.build("CopyObjectResult", [
            ("ETag", f'"{version.etag}"'), ("LastModified", xmlbody.iso8601(version.last_modified))]),
            headers=self._version_headers(version))

    def _range(self, size):
        spec = self.headers.get("Range", "")
        if not spec.startswith("bytes=") or "," in spec:
            return None
        first, _, last = spec[6:].partition("-")
        try:
            if first == "":
                start, end = max(size - int(last), 0), size - 1
            else:
                start, end = int(first), min(int(last), size - 1) if last else size - 1
        except ValueError:
            return None  # OSS ignores a malformed Range and answers with the whole object
        if start >= size:
            raise OSSError(416, "InvalidRange", "The requested range cannot be satisfied.",
                           headers={"Content-Range": f"bytes */{size}"})
        if end < start:
            return None
        return start, end

    def get_object(self):
        store = self.oss.store
        with store.lock:
            version = store.find_version(store.bucket(self.bucket), self.key,
                                         self.query.get("versionId"))
            if self.command == "GET" and not store.readable(version):
                raise invalid_object_state(self.key)  # HEAD still answers, as on OSS
            self._check_conditions(version)
            restore_info = store.restore_header(version)
            path = store.blob_path(version.blob)
            blob = open(path, "rb")  # open under the lock: a delete may unlink it right after
        with blob:
            headers = self._version_headers(version)
            headers.update(version.meta)
            headers.update({"Last-Modified": formatdate(version.last_modified, usegmt=True),
                            "x-oss-object-type": version.object_type, "Accept-Ranges": "bytes",
                            "x-oss-storage-class": version.storage_class})
            if restore_info:
                headers["x-oss-restore"] = restore_info
            if version.tags:
                headers["x-oss-tagging-count"] = str(len(version.tags))
            content_type = self.query.get("response-content-type", version.content_type)
            headers.update({name: self.query[f"response-{name}"] for name in RESPONSE_OVERRIDES[1:]
                            if f"response-{name}" in self.query})
            if not self.via_custom_domain and _web_page(self.key, version.content_type):
                headers.update({"content-disposition": "attachment", "x-oss-force-download": "true"})
            byte_range = self._range(version.size) if self.command == "GET" else None
            status, start, length = 200, 0, version.size
            if byte_range:
                start, end = byte_range
                status, length = 206, end - start + 1
                headers["Content-Range"] = f"bytes {start}-{end}/{version.size}"
            self._drain()
            self.send_response(status)
            self._common_headers(headers)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            if self.command == "HEAD":
                return
            blob.seek(start)
            while length:
                data = blob.read(min(CHUNK, length))
                if not data:
                    raise ConnectionError("blob shorter than recorded")
                length -= len(data)
                self._write(data)

    def object_meta(self):
        """GetObjectMeta: the few headers OSS returns for it, without the user metadata."""
        store = self.oss.store
        with store.lock:
            version = store.find_version(store.bucket(self.bucket), self.key,
                                         self.query.get("versionId"))
        headers = self._version_headers(version)
        headers["Last-Modified"] = formatdate(version.last_modified, usegmt=True)
        self._drain()
        self.send_response(200)
        self._common_headers(headers)
        self.send_header("Content-Length", str(version.size))
        self.end_headers()

    def _check_conditions(self, version):
        """If-Match / If-Unmodified-Since (412), If-None-Match / If-Modified-Since (304), in
        the order of RFC 7232 section 6."""
        etag, modified = version.etag, int(version.last_modified)

        def etags(header):
            # OSS matches an ETag quoted or bare (oss2's resumable download sends it bare).
            return {t.strip().strip('"') for t in self.headers[header].split(",")}

        def since(header):
            try:
                return parsedate_to_datetime(self.headers[header]).timestamp()
            except (TypeError, ValueError):
                return None  # an unreadable date is ignored, as HTTP says

        failed = OSSError(412, "PreconditionFailed", "At least one of the pre-conditions you "
                          "specified did not hold.", "0017-00001001")
        if "If-Match" in self.headers:
            if not etags("If-Match") & {etag, "*"}:
                failed.extra["Condition"] = "If-Match"
                raise failed
        elif "If-Unmodified-Since" in self.headers:
            limit = since("If-Unmodified-Since")
            if limit is not None and modified > limit:
                failed.extra["Condition"] = "If-Unmodified-Since"
                raise failed
        not_modified = OSSError(304, "NotModified", "", headers={
            "ETag": f'"{etag}"', "Last-Modified": formatdate(version.last_modified, usegmt=True)})
        if "If-None-Match" in self.headers:
            if etags("If-None-Match") & {etag, "*"}:
                raise not_modified
        elif "If-Modified-Since" in self.headers:
            limit = since("If-Modified-Since")
            if limit is not None and modified <= limit:
                raise not_modified

    def delete_object(self):
        version_id, marker = self.oss.store.delete(self.bucket, self.key, self.query.get("versionId"))
        headers = {}
        if version_id:
            headers["x-oss-version-id"] = version_id
        if marker:
            headers["x-oss-delete-marker"] = "true"
        self.oss.object_removed(self.bucket, self.key)
        self.send(204, headers=headers)

    def object_tagging(self):
        store, version_id = self.oss.store, self.query.get("versionId")
        if self.command == "PUT":
            tags = _tags_from_xml(self.read_body())
            if len(tags) > 10:
                raise OSSError(400, "BadRequest", "An object can have at most 10 tags.")
            store.set_tags(self.bucket, self.key, tags, version_id)
            return self.send(200)
        if self.command == "DELETE":
            store.set_tags(self.bucket, self.key, {}, version_id)
            return self.send(204)
        with store.lock:
            version = store.find_version(store.bucket(self.bucket), self.key, version_id)
            tags = dict(version.tags)
        self.send(200, _tags_xml(tags))

    def restore_object(self):
        """RestoreObject (POST ?restore): 202 for a new restore, 200 once restored (its
        copy kept longer), 409 while one is under way; the copy is readable after the
        server's restore_delay_seconds and for the Days asked (default 1)."""
        store = self.oss.store
        body = self.read_body()
        with store.lock:
            version = store.find_version(store.bucket(self.bucket), self.key,
                                         self.query.get("versionId"))
            storage_class = version.storage_class
        root = xmlbody.parse(body, "RestoreRequest") if body.strip() else None
        days, tier = (validate.restore_request(root, storage_class)
                      if storage_class in FROZEN_CLASSES else (1, ""))
        status, version = store.restore(self.bucket, self.key, self.query.get("versionId"), days,
                                        tier, self.oss.restore_delay_seconds)
        headers = {}
        if store.bucket(self.bucket).versioning:
            headers["x-oss-version-id"] = version.version_id
        if tier:
            headers["x-oss-object-restore-priority"] = tier
        self.send(status, headers=headers)

    # -- multipart ------------------------------------------------------------------
    def initiate_upload(self):
        self._forbid_overwrite()
        upload = self.oss.store.initiate(self.bucket, self.key, self.headers.get("Content-Type", ""),
                                         self._meta(), _parse_tags(self.headers.get("x-oss-tagging")),
                                         self._sse(),
                                         validate.storage_class(self.headers.get("x-oss-storage-class")),
                                         self._acl())
        self.oss.notify(self.bucket, self.key, ObjectState(0, ""), "InitiateMultipartUpload",
                        self.request_id, self.client_address[0])
        enc = xmlbody.encoder(self.params)
        self.send(200, xmlbody.build("InitiateMultipartUploadResult", [
            ("Bucket", self.bucket), ("Key", enc(self.key)), ("UploadId", upload.upload_id)]
            + ([("EncodingType", "url")] if self.query.get("encoding-type") == "url" else [])),
            headers=upload.sse)

    def upload_part(self):
        number = _int(self.query.get("partNumber"), "partNumber")
        self.oss.store.upload(self.bucket, self.key, self.query["uploadId"])  # fail before reading
        writer = self.body_to_blob()
        part = self.oss.store.put_part(self.bucket, self.key, self.query["uploadId"], number, writer)
        self.oss.notify(self.bucket, self.key, ObjectState(part.size, part.etag), "UploadPart",
                        self.request_id, self.client_address[0])
        self.send(200, headers={"ETag": f'"{part.etag}"', "x-oss-hash-crc64ecma": part.crc64})

    def complete_upload(self):
        body = self.read_body()
        wanted = None
        if self.headers.get("x-oss-complete-all", "").lower() != "yes":
            root = xmlbody.parse(body, "CompleteMultipartUpload")
            wanted = [(_int(p.findtext("PartNumber"), "PartNumber"), p.findtext("ETag", ""))
                      for p in root.iter("Part")]
        self._forbid_overwrite()
        version = self.oss.store.complete(self.bucket, self.key, self.query["uploadId"], wanted)
        self.oss.object_created(self.bucket, self.key, version, "CompleteMultipartUpload",
                                self.request_id, self.client_address[0])
        enc = xmlbody.encoder(self.params)
        self.send(200, xmlbody.build("CompleteMultipartUploadResult", [
            ("Location", f"{self.bucket}/{self.key}"), ("Bucket", self.bucket),
            ("Key", enc(self.key)), ("ETag", f'"{version.etag}"')]
            + ([("EncodingType", "url")] if self.query.get("encoding-type") == "url" else [])),
            headers=self._version_headers(version))

    def abort_upload(self):
        self.oss.store.abort(self.bucket, self.key, self.query["uploadId"])
        self.send(204)

    def list_parts(self):
        store = self.oss.store
        marker = _int(self.query.get("part-number-marker") or 0, "part-number-marker")
        max_parts = _int(self.query.get("max-parts") or 1000, "max-parts")
        with store.lock:
            upload = store.upload(self.bucket, self.key, self.query["uploadId"])
            numbers = [n for n in sorted(upload.parts) if n > marker]
            shown = [upload.parts[n] for n in numbers[:max_parts]]
        truncated = len(numbers) > max_parts
        items = [("Bucket", self.bucket), ("Key", self.key), ("UploadId", upload.upload_id),
                 ("PartNumberMarker", marker),
                 ("NextPartNumberMarker", shown[-1].number if shown else marker),
                 ("MaxParts", max_parts), ("IsTruncated", truncated)]
        items += [("Part", [("PartNumber", p.number), ("LastModified", xmlbody.iso8601(p.last_modified)),
                            ("ETag", f'"{p.etag}"'), ("HashCrc64ecma", p.crc64), ("Size", p.size)])
                  for p in shown]
        self.send(200, xmlbody.build("ListPartsResult", items))

    # -- control endpoints (tests and scripts in other processes) --------------------
    def _admin(self, path):
        try:
            body = json.loads(self.read_body() or b"{}")
            result = self.oss.admin(self.command, path[3:], body)
            self.send(200, json.dumps(result).encode(), content_type="application/json")
        except (ValueError, TypeError, KeyError) as exc:
            self.send(400, json.dumps({"error": str(exc)}).encode(), content_type="application/json")


def _web_page(key, content_type):
    """Whether OSS forces a download of this object on its own domains."""
    media_type = content_type.partition(";")[0].strip().lower()
    name = key.rpartition("/")[2]
    extension = name.rpartition(".")[2].lower() if "." in name else ""
    return media_type == "text/html" or extension in WEB_PAGE_EXTENSIONS


def _int(text, name="value"):
    try:
        return int(text)
    except (TypeError, ValueError):
        raise OSSError(400, "InvalidArgument", f"{name} must be an integer, got {text!r}.") from None


class LocalOSS:
    """A running local OSS endpoint; see README.md beside this file."""

    def __init__(self, data_dir=None, host="127.0.0.1", port=0, region="cn-hangzhou",
                 buckets=(), access_key_id=TEST_ACCESS_KEY_ID,
                 access_key_secret=TEST_ACCESS_KEY_SECRET, hostname=resolve.TEST_DOMAIN,
                 restore_delay_seconds=DEFAULT_RESTORE_DELAY_SECONDS, cnames=None):
        self.data_dir, self.host, self.port, self.region = data_dir, host, port, region
        # How long a RestoreObject takes here (any frozen class); may be changed any time.
        self.restore_delay_seconds = restore_delay_seconds
        self.hostname = hostname.lower()
        self.cnames = {}  # custom domain (host name, no port) -> the bucket bound to it
        for domain, bucket in (cnames or {}).items():
            self.bind_domain(domain, bucket)
        self.access_key_id, self.access_key_secret = access_key_id, access_key_secret
        self.initial_buckets = list(buckets)
        self.faults = FaultPlan()
        self.subscriptions = []
        self.store = None
        self.http = None

    # -- lifecycle ------------------------------------------------------------------
    def start(self):
        if self.data_dir:
            os.makedirs(self.data_dir, exist_ok=True)
        self.store = Store(self.data_dir, self.region)
        self.auth = Authenticator(self.region)
        self.auth.add(self.access_key_id, self.access_key_secret)
        for name in self.initial_buckets:
            self.store.create_bucket(name)
        self.dispatcher = Dispatcher()
        self.http = ThreadingHTTPServer((self.host, self.port), Handler)
        self.http.daemon_threads = True
        self.http.oss = self
        self.port = self.http.server_address[1]
        self.thread = threading.Thread(target=self.http.serve_forever, name="local-oss", daemon=True,
                                       kwargs={"poll_interval": 0.05})  # quick stop() in tests
        self.thread.start()
        return self

    def stop(self):
        if self.http is None:
            return
        self.http.shutdown()
        self.http.server_close()
        self.dispatcher.stop()
        self.store.close()
        self.http = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def endpoint(self):
        """The named endpoint: oss2 addresses buckets under it virtual-hosted, as on Aliyun.
        The name resolves where l2c_local.resolve is installed (tests, the demo)."""
        return f"http://{self.hostname}:{self.port}"

    @property
    def endpoint_ip(self):
        """The IP endpoint: oss2 addresses it path style; it resolves everywhere."""
        return f"http://{self.host}:{self.port}"

    # -- test controls --------------------------------------------------------------
    def add_credentials(self, access_key_id, access_key_secret, security_token=None):
        self.auth.add(access_key_id, access_key_secret, security_token)

    def create_bucket(self, name):
        self.store.create_bucket(name)

    def bind_domain(self, domain, bucket):
        """Binds custom domain `domain` (a host name) to `bucket`, as OSS's CNAME binding
        does: a request whose Host is that name addresses the bucket, its whole path is
        the key, and web pages are served as they are (no forced download).

        oss2 signs for a custom domain (is_cname) only when it is a name: it addresses
        an IP or `localhost` path style whatever it is told. A name under the endpoint
        with a dot in front (`status.example.oss-local.test`) resolves where
        l2c_local.resolve is installed and can never be a bucket (bucket names have no
        dots). ValueError for a name that is not a bare host name, or that is the
        endpoint or one of its buckets."""
        name = domain.strip().rstrip(".").lower()
        if not name or ":" in name or "/" in name:
            raise ValueError(f"custom domain {domain!r}: give a host name, without port or path")
        if name == self.hostname or (name.endswith("." + self.hostname)
                                     and "." not in name[:-len(self.hostname) - 1]):
            raise ValueError(f"custom domain {name}: that is this server's endpoint or one of "
                             f"its buckets; a name like status.example.{self.hostname} is free")
        self.cnames[name] = bucket

    def bucket_names(self):
        with self.store.lock:
            return sorted(self.store.buckets)

    def inject(self, fault):
        return self.faults.add(fault)

    def clear_faults(self):
        self.faults.clear()

    def subscribe(self, bucket, callback=None, url=None, prefix="", suffix="",
                  events=(ALL_OBJECT_CREATED,)):
        if (callback is None) == (url is None):
            raise ValueError("subscribe needs exactly one of callback= or url=")
        subscription = Subscription(bucket, callback, url, prefix, suffix, events)
        self.subscriptions.append(subscription)
        return subscription

    def wait_idle(self, timeout=10.0):
        self.dispatcher.wait_idle(timeout)

    def advance_time(self, seconds):
        self.store.advance_time(seconds)

    def run_lifecycle(self):
        """Runs the buckets' lifecycle transitions once (OSS runs them daily); with
        advance_time, objects reach IA / Archive as they would after that many days.
        Returns [(bucket, key, new storage class)]."""
        return self.store.run_lifecycle()

    def admin(self, method, path, body):
        if path == "health":
            return {"status": "ok", "endpoint": self.endpoint, "endpoint_ip": self.endpoint_ip,
                    "buckets": self.bucket_names(), "cnames": dict(self.cnames)}
        if path == "faults" and method == "POST":
            fault = self.inject(Fault.from_json(body))
            return {"added": repr(fault)}
        if path == "faults" and method == "DELETE":
            self.clear_faults()
            return {"cleared": True}
        if path == "subscriptions" and method == "POST":
            self.subscribe(body["bucket"], url=body["url"], prefix=body.get("prefix", ""),
                           suffix=body.get("suffix", ""),
                           events=body.get("events", [ALL_OBJECT_CREATED]))
            return {"subscribed": body["bucket"]}
        if path == "advance-time" and method == "POST":
            self.advance_time(float(body["seconds"]))
            return {"advanced": body["seconds"]}
        if path == "run-lifecycle" and method == "POST":
            return {"transitioned": [list(m) for m in self.run_lifecycle()]}
        if path == "settings" and method == "POST":
            unknown = set(body) - {"restore_delay_seconds"}
            if unknown:
                raise ValueError(f"unknown settings: {sorted(unknown)}; known: restore_delay_seconds")
            if "restore_delay_seconds" in body:
                delay = float(body["restore_delay_seconds"])
                if delay < 0:
                    raise ValueError("restore_delay_seconds must be 0 or more")
                self.restore_delay_seconds = delay
            return {"restore_delay_seconds": self.restore_delay_seconds}
        raise KeyError(f"no control endpoint {method} /-/{path}")

    # -- what follows a change ------------------------------------------------------
    def object_created(self, bucket, key, version, event_name, request_id, source_ip):
        """An object exists now: notify, and replicate it."""
        self.notify(bucket, key, version, event_name, request_id, source_ip)
        for rule in self._replication_rules(bucket, key):
            self.dispatcher.submit(self._replicate, rule["bucket"], bucket, key, version)

    def notify(self, bucket, key, state, event_name, request_id, source_ip):
        """One successful API call (event_name, e.g. "UploadPart"): one event per
        subscription that wants it, as an OSS trigger invokes its function once per call."""
        for subscription in list(self.subscriptions):
            if subscription.wants(bucket, key, f"ObjectCreated:{event_name}"):
                event = object_created_event(self.region, bucket, key, state, event_name,
                                             request_id, source_ip)
                self.dispatcher.submit(deliver, subscription, event)

    def object_removed(self, bucket, key):
        for rule in self._replication_rules(bucket, key):
            if any(a in rule["action"].split(",") for a in ("ALL", "DELETE")):
                self.dispatcher.submit(self._replicate_delete, rule["bucket"], key)

    def _replication_rules(self, bucket, key):
        with self.store.lock:
            rules = json.loads(self.store.bucket(bucket).configs.get("replication", "[]"))
        return [r for r in rules if not r["prefixes"] or any(key.startswith(p) for p in r["prefixes"])]

    def _replicate(self, target, source_bucket, key, version):
        store = self.store
        with store.lock:
            if target not in store.buckets:
                log.warning("replication target bucket %s does not exist", target)
                return
            try:
                writer = store.copy_blob(version)
            except FileNotFoundError:
                return  # the source version was deleted before its copy ran
        copy = store.put(target, key, writer, version.content_type, dict(version.meta),
                         dict(version.tags), dict(version.sse), version.object_type,
                         etag=version.etag, crc64=version.crc64,
                         storage_class=version.storage_class, acl=version.acl)
        self.object_created(target, key, copy, "PutObject", _request_id(), "127.0.0.1")

    def _replicate_delete(self, target, key):
        if target in self.store.buckets:
            self.store.delete(target, key)
