"""What OSS refuses in a request, refused here the same way: object names, tags, version
ids, storage classes, restore requests and lifecycle rules, by the limits the OSS
documentation gives (cited in README.md)."""
import re
from datetime import datetime
from urllib.parse import parse_qsl

from .store import RESTORE_MAX_DAYS, RESTORE_TIERS, STORAGE_CLASSES, OSSError

MAX_KEY_BYTES = 1023
MAX_OBJECT_TAGS = 10
MAX_TAG_KEY, MAX_TAG_VALUE = 128, 256
TAG_PUNCTUATION = frozenset(" +-=._:/")
# "null" (an object written before versioning), or what OSS hands out: base64 of its
# version record, which always starts "CAEQ" (every id in the OSS docs does); oss2's own
# suite expects "234" to be InvalidArgument, not NoSuchVersion.
VERSION_ID = re.compile(r"(null|CAEQ[A-Za-z0-9+/=_\-]{4,})\Z")
TRANSITION_ORDER = ("IA", "Archive", "ColdArchive", "DeepColdArchive")
MAX_LIFECYCLE_RULES = 1000


def object_name(key):
    """OSS object naming: 1-1023 bytes of UTF-8, not starting with / or \\."""
    if len(key.encode("utf-8", "surrogateescape")) > MAX_KEY_BYTES:
        raise OSSError(400, "InvalidObjectName", "The object name must be 1 to 1023 bytes long.",
                       "0016-00000002", extra={"ObjectName": key[:64]})
    if key.startswith(("/", "\\")):
        raise OSSError(400, "InvalidObjectName", "The object name cannot start with / or \\.",
                       "0016-00000005", extra={"ObjectName": key[:64]})


def _invalid_tag(message, ec="0010-00000217"):
    return OSSError(400, "InvalidTag", message, ec)


def tags(pairs):
    """Object tags [(key, value)] as OSS allows them; returns them as a dict. Letters are
    those of any script (OSS asks only that tags be UTF-8: EC 0010-00000216)."""
    if len(pairs) > MAX_OBJECT_TAGS:
        raise _invalid_tag(f"An object can have at most {MAX_OBJECT_TAGS} tags, got {len(pairs)}.")
    seen = set()
    for key, value in pairs:
        if not 1 <= len(key) <= MAX_TAG_KEY:
            raise _invalid_tag(f"A tag key must be 1 to {MAX_TAG_KEY} characters.", "0010-00000209"
                               if key else "0010-00000217")
        if len(value) > MAX_TAG_VALUE:
            raise _invalid_tag(f"A tag value must be at most {MAX_TAG_VALUE} characters.")
        if not all(c.isalnum() or c in TAG_PUNCTUATION for c in key + value):
            raise _invalid_tag("Tag keys and values may hold letters, digits, spaces and + - = . _ : / only.")
        if key in seen:
            raise _invalid_tag(f"The tag key {key!r} appears twice.")
        seen.add(key)
    return dict(pairs)


def tagging_header(text):
    """The x-oss-tagging header (URL-encoded `k1=v1&k2=v2`) as a dict of valid tags."""
    return tags(parse_qsl(text or "", keep_blank_values=True))


def version_id(value):
    """A versionId parameter: None when absent; InvalidArgument when empty or malformed."""
    if value is None:
        return None
    if value == "":
        raise OSSError(400, "InvalidArgument", "The versionId parameter is empty.", "0012-00000201",
                       extra={"ArgumentName": "versionId"})
    if not VERSION_ID.match(value):
        raise OSSError(400, "InvalidArgument", "Invalid version id specified.", "0012-00000202",
                       extra={"ArgumentName": "versionId", "ArgumentValue": value[:64]})
    return value


def storage_class(value, ec="0017-00000132"):
    """An x-oss-storage-class header (None when absent): one of the classes OSS documents.
    Empty is EC 0017-00000131; anything else unknown is EC 0017-00000132 on PutObject and
    InitiateMultipartUpload, 0013-00000101 on CopyObject and PutBucket."""
    if value is None:
        return None
    if value == "":
        raise OSSError(400, "InvalidArgument", "The x-oss-storage-class header cannot be empty.",
                       "0017-00000131", extra={"ArgumentName": "x-oss-storage-class"})
    if value not in STORAGE_CLASSES:
        raise OSSError(400, "InvalidArgument", f"Invalid storage class {value[:64]!r}: one of "
                       f"{', '.join(STORAGE_CLASSES)}.", ec,
                       extra={"ArgumentName": "x-oss-storage-class", "ArgumentValue": value[:64]})
    return value


def restore_request(root, storage_class):
    """(days, tier) of a RestoreRequest document (None: no body, 1 day, no tier) for an
    object of that frozen class: Days 1-7 for Archive, 1-365 for the colder classes; Tier
    (JobParameters) for the colder classes only (Expedited / Standard / Bulk; Deep Cold
    Archive has no Bulk), EC 0016-00000703 when unknown."""
    if root is None:
        return 1, ""
    days_text = root.findtext("Days")
    try:
        days = int(days_text) if days_text is not None else 1
    except ValueError:
        days = 0
    limit = RESTORE_MAX_DAYS[storage_class]
    if not 1 <= days <= limit:
        raise OSSError(400, "InvalidArgument", f"Days must be 1 to {limit} for a {storage_class} "
                       f"object, got {days_text!r}.", extra={"ArgumentName": "Days"})
    job = root.find("JobParameters")
    if job is None:
        return days, ""
    if not RESTORE_TIERS[storage_class]:
        raise OSSError(400, "MalformedXML", "JobParameters apply to Cold Archive and Deep Cold "
                       "Archive objects only.")
    tier = job.findtext("Tier") or ""
    if tier not in RESTORE_TIERS[storage_class]:
        raise OSSError(400, "InvalidArgument", f"Tier {tier[:32]!r} is not one of "
                       f"{', '.join(RESTORE_TIERS[storage_class])} for a {storage_class} object.",
                       "0016-00000703", extra={"ArgumentName": "Tier"})
    return days, tier


def _bad_rule(message, ec):
    return OSSError(400, "InvalidArgument", message, ec)


def _when(node, where):
    """Days (a positive integer) or CreatedBeforeDate (UTC midnight), never both."""
    days, date = node.findtext("Days"), node.findtext("CreatedBeforeDate")
    if days is not None and date is not None:
        raise _bad_rule(f"{where} cannot have both Days and CreatedBeforeDate.", "0014-00000061")
    if days is None and date is None:
        raise OSSError(400, "MalformedXML", f"{where} needs Days or CreatedBeforeDate.")
    if days is not None:
        try:
            number = int(days)
        except ValueError:
            number = 0
        if number <= 0:
            raise _bad_rule(f"{where}/Days must be a positive integer, got {days!r}.", "0014-00000023")
        return ("days", number)
    try:
        when = datetime.strptime(date, "%Y-%m-%dT%H:%M:%S.000Z")
    except ValueError:
        when = None
    if when is None or (when.hour, when.minute, when.second) != (0, 0, 0):
        raise _bad_rule(f"{where}/CreatedBeforeDate must be a UTC midnight in ISO 8601, got {date!r}.",
                        "0014-00000024")
    return ("date", when)


def lifecycle(root):
    """The rules of a LifecycleConfiguration OSS accepts (the order of its actions checked)."""
    rules = root.findall("Rule")
    if not rules or len(rules) > MAX_LIFECYCLE_RULES:
        raise OSSError(400, "MalformedXML", f"A lifecycle configuration has 1 to {MAX_LIFECYCLE_RULES} rules.")
    for rule in rules:
        if rule.findtext("Status") not in ("Enabled", "Disabled"):
            raise OSSError(400, "MalformedXML", "A lifecycle rule's Status is Enabled or Disabled.")
        if len((rule.findtext("ID") or "").encode()) > 255:
            raise _bad_rule("A lifecycle rule ID is at most 255 bytes.", "0014-00000011")
        times = []
        for transition in rule.findall("Transition"):
            storage_class = transition.findtext("StorageClass")
            if storage_class not in TRANSITION_ORDER:
                raise _bad_rule(f"Transition/StorageClass {storage_class!r} is not one of "
                                f"{', '.join(TRANSITION_ORDER)}.", "0014-00000044")
            times.append((TRANSITION_ORDER.index(storage_class), _when(transition, "Transition")))
        expiration = rule.find("Expiration")
        if expiration is not None and expiration.find("ExpiredObjectDeleteMarker") is None:
            times.append((len(TRANSITION_ORDER), _when(expiration, "Expiration")))
        abort = rule.find("AbortMultipartUpload")
        if abort is not None:
            _when(abort, "AbortMultipartUpload")
        for kind in ("days", "date"):
            ordered = [value for _, (k, value) in sorted(times, key=lambda t: t[0]) if k == kind]
            if ordered != sorted(ordered) or len(set(ordered)) != len(ordered):
                raise _bad_rule("A rule's colder transitions come after warmer ones, and its "
                                "expiration after every transition.", "0014-00000082")
    return rules
