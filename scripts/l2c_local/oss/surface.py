"""What the local OSS server implements, as whitelists: (level, method, sub-resource)
operations, the query parameters that qualify them, and the x-oss-* request headers each
honours. Anything else is refused with NotImplemented, never served as a plain object or
bucket operation (a PUT ?acl that silently rewrote the object as 0 bytes, say).
"""
from oss2.auth import ProviderAuth

from .store import OSSError

# Every query parameter OSS treats as a sub-resource (oss2 signs exactly these in V1),
# plus any x-oss-* parameter. Other parameters (prefix, max-keys, ...) are plain options.
SUB_RESOURCES = frozenset(ProviderAuth._subresource_key_set)

# Parameters in that set that refine an operation rather than name one.
# GetObject's response-* parameters override response headers (server.RESPONSE_OVERRIDES).
RESPONSE_PARAMETERS = frozenset(f"response-{name}" for name in (
    "content-type", "content-language", "expires", "cache-control", "content-disposition",
    "content-encoding"))
QUALIFIERS = frozenset({"versionId", "partNumber", "comp", "wormExtend", "continuation-token"}
                       | RESPONSE_PARAMETERS)
# A signed URL's own parameters (auth.py checks them): they name no operation.
SIGNED_URL_PARAMETERS = frozenset({"OSSAccessKeyId", "Expires", "Signature", "security-token"})

ALWAYS_HONOURED = frozenset({"x-oss-date", "x-oss-security-token", "x-oss-content-sha256"})
SERVER_SIDE_ENCRYPTION = frozenset({"x-oss-server-side-encryption", "x-oss-server-side-encryption-key-id",
                                    "x-oss-server-side-data-encryption"})
OBJECT_WRITE = frozenset({"x-oss-tagging", "x-oss-forbid-overwrite", "x-oss-storage-class",
                          "x-oss-object-acl"}) | SERVER_SIDE_ENCRYPTION
# x-oss-object-acl values OSS takes; the public ones are refused here (OBJECT_ACL_SERVED).
OBJECT_ACLS = ("default", "private", "public-read", "public-read-write")
OBJECT_ACL_SERVED = ("default", "private")
COPY = OBJECT_WRITE | {"x-oss-copy-source", "x-oss-metadata-directive", "x-oss-tagging-directive"}
CONDITIONS = ("if-match", "if-none-match", "if-modified-since", "if-unmodified-since")

# (level, method, operation sub-resource) -> (allowed qualifiers, honoured x-oss-* headers);
# level is "service", "bucket" or "object"; "" is the plain operation.
NONE = frozenset()
OPERATIONS = {
    ("service", "GET", ""): (NONE, NONE),
    ("bucket", "GET", ""): ({"continuation-token"}, NONE),  # ListObjects / ListObjectsV2
    ("bucket", "PUT", ""): (NONE, {"x-oss-acl"}),
    ("bucket", "DELETE", ""): (NONE, NONE),
    ("bucket", "GET", "bucketInfo"): (NONE, NONE),
    ("bucket", "GET", "live"): (NONE, NONE),  # ListLiveChannel: always empty (none can be made)
    ("bucket", "GET", "location"): (NONE, NONE),
    ("bucket", "GET", "versioning"): (NONE, NONE),
    ("bucket", "PUT", "versioning"): (NONE, NONE),
    ("bucket", "GET", "versions"): (NONE, NONE),
    ("bucket", "GET", "uploads"): (NONE, NONE),
    ("bucket", "POST", "delete"): (NONE, NONE),
    ("bucket", "GET", "worm"): (NONE, NONE),
    ("bucket", "POST", "worm"): (NONE, NONE),
    ("bucket", "DELETE", "worm"): (NONE, NONE),
    ("bucket", "POST", "wormId"): ({"wormExtend"}, NONE),
    ("bucket", "GET", "replication"): (NONE, NONE),
    ("bucket", "POST", "replication"): ({"comp"}, NONE),
    **{("bucket", method, kind): (NONE, NONE) for kind in ("lifecycle", "policy", "encryption", "tagging")
       for method in ("GET", "PUT", "DELETE")},
    ("object", "GET", ""): ({"versionId"} | RESPONSE_PARAMETERS, NONE),
    ("object", "HEAD", ""): ({"versionId"}, NONE),
    ("object", "HEAD", "objectMeta"): ({"versionId"}, NONE),  # GetObjectMeta
    ("object", "PUT", ""): (NONE, OBJECT_WRITE),  # PutObject; CopyObject when x-oss-copy-source
    ("object", "DELETE", ""): ({"versionId"}, NONE),
    ("object", "GET", "tagging"): ({"versionId"}, NONE),
    ("object", "PUT", "tagging"): ({"versionId"}, NONE),
    ("object", "DELETE", "tagging"): ({"versionId"}, NONE),
    ("object", "POST", "uploads"): (NONE, OBJECT_WRITE),
    ("object", "POST", "restore"): ({"versionId"}, NONE),  # RestoreObject
    ("object", "PUT", "uploadId"): ({"partNumber"}, NONE),
    # CompleteMultipartUpload: OSS documents no SSE headers here, but oss2 callers (L2C
    # among them) pass the initiate's headers again; they are taken and ignored, the
    # object keeps the encryption its upload was initiated with.
    ("object", "POST", "uploadId"): (NONE, {"x-oss-complete-all", "x-oss-forbid-overwrite",
                                            *SERVER_SIDE_ENCRYPTION}),
    ("object", "DELETE", "uploadId"): (NONE, NONE),
    ("object", "GET", "uploadId"): (NONE, NONE),
}


def not_implemented(what, element, status=501):
    return OSSError(status, "NotImplemented", f"{what} is not implemented by the local OSS "
                    "server (see scripts/l2c_local/oss/README.md).", extra=element)


def check(level, method, params, headers):
    """Refuses a request outside the whitelists; returns the operation's sub-resource."""
    names = {name for name, _ in params}
    subs = {n for n in names if n in SUB_RESOURCES or n.startswith("x-oss-")} - SIGNED_URL_PARAMETERS
    operation = subs - QUALIFIERS
    if len(operation) > 1:
        raise not_implemented("A request naming several sub-resources "
                              f"({', '.join(sorted(operation))})", {"SubResource": sorted(operation)[0]})
    op = operation.pop() if operation else ""
    entry = OPERATIONS.get((level, method, op))
    if entry is None:
        if op == "" or any((level, m, op) in OPERATIONS for m in ("GET", "PUT", "POST", "DELETE", "HEAD")):
            raise OSSError(405, "MethodNotAllowed", "The specified method is not allowed against "
                           "this resource.", extra={"Method": method, "ResourceType": level.title()})
        raise not_implemented(f"{method} ?{op} ({level})", {"SubResource": op})
    qualifiers, honoured = entry
    for extra in sorted(subs & QUALIFIERS - set(qualifiers)):
        raise not_implemented(f"{method} ?{op or extra}{'&' + extra if op else ''} ({level})",
                              {"SubResource": extra})
    if level == "object" and method == "PUT" and op == "" and "x-oss-copy-source" in headers:
        honoured = COPY
    for name in sorted(h.lower() for h in headers.keys()):
        if name.startswith("x-oss-") and not (
                name in ALWAYS_HONOURED or name in honoured
                or (name.startswith("x-oss-meta-") and "x-oss-tagging" in honoured)):
            raise not_implemented(f"The {name} header on {method} ?{op} ({level})",
                                  {"Header": name}, status=400)
        if name in CONDITIONS and method not in ("GET", "HEAD"):
            # OSS answers conditional headers on PutObject so (EC 0017-00000245).
            raise not_implemented(f"The {name} header on {method}", {"Header": name}, status=400)
    if "x-oss-acl" in honoured and headers.get("x-oss-acl", "private") != "private":
        raise not_implemented(f"x-oss-acl: {headers['x-oss-acl']} (buckets here are private)",
                              {"Header": "x-oss-acl"}, status=400)
    if "x-oss-object-acl" in honoured:
        object_acl(headers.get("x-oss-object-acl"))
    return op


def object_acl(value):
    """The ACL an x-oss-object-acl header gives a new object ("default" without one).
    Everything here is private: a public ACL is refused, never recorded and ignored."""
    if value is None:
        return "default"
    if value not in OBJECT_ACLS:
        raise OSSError(400, "InvalidArgument", f"x-oss-object-acl {value!r} is not one of "
                       f"{', '.join(OBJECT_ACLS)}.", extra={"ArgumentName": "x-oss-object-acl",
                                                           "ArgumentValue": value})
    if value not in OBJECT_ACL_SERVED:
        raise not_implemented(f"x-oss-object-acl: {value} (objects here are private)",
                              {"Header": "x-oss-object-acl"}, status=400)
    return value
