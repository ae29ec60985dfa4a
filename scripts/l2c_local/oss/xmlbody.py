"""XML documents of the OSS API: building responses, reading request bodies."""
import re
import time
from urllib.parse import quote
from xml.etree import ElementTree

from .store import OSSError

OWNER = {"ID": "1234567890123456", "DisplayName": "1234567890123456"}


def iso8601(seconds):
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(seconds))


def build(root, items):
    """Serialises nested (tag, value) pairs: a value is text, a list of pairs, or a dict."""
    node = ElementTree.Element(root)
    _fill(node, items)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ElementTree.tostring(node, encoding="utf-8")


def _fill(node, items):
    if isinstance(items, dict):
        items = list(items.items())
    for tag, value in items:
        child = ElementTree.SubElement(node, tag)
        if isinstance(value, (list, dict)):
            _fill(child, value)
        elif value is not None:
            child.text = value if isinstance(value, str) else str(value).lower() \
                if isinstance(value, bool) else str(value)


# OSS reads control characters in names (oss2 sends a key holding \x0C as that raw byte
# in a batch delete), raw or as character references; XML 1.0 forbids both and
# ElementTree refuses them. They stand in as characters of plane 15's private-use area
# while parsing, then go back. (A byte under 0x20 is never part of a UTF-8 sequence.)
CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]|&#(?:x([0-9a-fA-F]+)|([0-9]+));")
STAND_IN = 0xF0000
BACK = {STAND_IN + c: c for c in range(0x20) if chr(c) not in "\t\n\r"}


def _stand_in(match):
    if not match[0].startswith(b"&"):
        return b"&#%d;" % (STAND_IN + match[0][0])
    code = int(match[1], 16) if match[1] else int(match[2])
    return b"&#%d;" % (STAND_IN + code) if STAND_IN + code in BACK else match[0]


def parse(body, root):
    try:
        node = ElementTree.fromstring(CONTROL.sub(_stand_in, body))
        for element in node.iter():
            if element.text:
                element.text = element.text.translate(BACK)
    except ElementTree.ParseError:
        raise OSSError(400, "MalformedXML", "The XML you provided was not well-formed or did not "
                       "validate against our published schema.") from None
    if node.tag != root:
        raise OSSError(400, "MalformedXML", f"Expected a <{root}> document, got <{node.tag}>.")
    return node


def error(err, request_id, host):
    items = [("Code", err.code), ("Message", err.message), ("RequestId", request_id),
             ("HostId", host)]
    items += [(k, str(v)) for k, v in err.extra.items()]
    if err.ec:
        items.append(("EC", err.ec))
    return build("Error", items)


def encoder(params):
    """Names in listings are URL-encoded when the client asks (oss2 always does)."""
    if dict(params).get("encoding-type") == "url":
        return lambda s: quote(s, safe="/")
    return lambda s: s


def object_entry(key, version, enc, owner=True, restore_info=""):
    """A listing's <Contents>; RestoreInfo (x-oss-restore's value) only when a restore
    of a frozen object was asked for, as OSS lists it."""
    return [("Key", enc(key)), ("LastModified", iso8601(version.last_modified)),
            ("ETag", f'"{version.etag}"'), ("Type", version.object_type), ("Size", version.size),
            ("StorageClass", version.storage_class)] + ([("Owner", OWNER)] if owner else []) \
        + ([("RestoreInfo", restore_info)] if restore_info else [])
