"""XML documents of the OSS API: building responses, reading request bodies."""
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


def parse(body, root):
    try:
        node = ElementTree.fromstring(body)
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


def object_entry(key, version, enc, owner=True):
    return [("Key", enc(key)), ("LastModified", iso8601(version.last_modified)),
            ("ETag", f'"{version.etag}"'), ("Type", version.object_type), ("Size", version.size),
            ("StorageClass", "Standard")] + ([("Owner", OWNER)] if owner else [])
