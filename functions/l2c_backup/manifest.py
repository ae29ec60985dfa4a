"""The manifest written beside every backup, last: what the backup holds and how to check it.

Readers (verify, prune, restore) validate it against MANIFEST_SCHEMA and tolerate its
short absence right after the object appears.
"""
import json

import jsonschema

from .names import ISO_TIME

FORMAT = "l2c-backup-manifest/1"

_SIZE = {"type": "integer", "minimum": 0}
_TEXT = {"type": "string"}
MANIFEST_SCHEMA = {
    "type": "object",
    "required": ["format", "kind", "key", "storage", "database", "object", "sql_bytes",
                 "compression", "started_at", "finished_at", "duration_seconds", "server",
                 "pg_dump_version", "table_rows", "encryption", "request_id", "tool"],
    "properties": {
        "format": {"const": FORMAT},
        "kind": {"enum": ["daily", "weekly", "manual"]},
        "content": {"enum": ["database", "globals"]},
        "key": {"type": "string", "pattern": r"\.sql\.gz(\.age)?$"},
        "storage": _TEXT,
        "database": _TEXT,
        "object": {
            "type": "object",
            "required": ["size", "sha256", "crc64ecma"],
            "properties": {"size": _SIZE, "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                           "crc64ecma": {"type": "string", "pattern": "^[0-9]+$"},
                           "etag": _TEXT, "version_id": _TEXT, "parts": _SIZE, "part_size": _SIZE},
        },
        "sql_bytes": _SIZE,
        "compression": {"type": "object", "required": ["format", "level"],
                        "properties": {"format": {"const": "gzip"},
                                       "level": {"type": "integer", "minimum": 0, "maximum": 9},
                                       "members": _SIZE, "block_size": _SIZE,
                                       # deflate_engine.ENGINE: the level means what it
                                       # does in this engine, and gives these bytes
                                       "engine": _TEXT,
                                       # every member's compressed size, in order: readers
                                       # inflate whole members (a gzip member is >= 18 bytes)
                                       "member_sizes": {"type": "array",
                                                        "items": {"type": "integer",
                                                                  "minimum": 18}}}},
        "started_at": {"type": "string", "pattern": ISO_TIME},
        "finished_at": {"type": "string", "pattern": ISO_TIME},
        "duration_seconds": {"type": "number", "minimum": 0},
        "server": {"type": "object", "required": ["version", "version_num"],
                   "properties": {"host": _TEXT, "port": {"type": "integer"}, "version": _TEXT,
                                  "version_num": {"type": "integer"}}},
        "pg_dump_version": _TEXT,
        "database_size": _SIZE,
        "table_rows": {"type": "object", "additionalProperties": _SIZE},
        "encryption": {"type": "object", "properties": {
            "server_side": {"enum": [None, "AES256", "KMS", "SM4"]},
            "kms_key_id": {"type": ["string", "null"]},
            # age.py: the object is the gzip stream (the payload) encrypted to these
            # public keys; member sizes and the index count the payload's bytes
            "client_side": {"type": ["object", "null"],
                            "required": ["format", "recipients", "header_length",
                                         "payload_size", "payload_sha256"],
                            "properties": {
                                "format": {"const": "age-encryption.org/v1"},
                                "recipients": {"type": "array", "minItems": 1, "items": {
                                    "type": "string", "pattern": "^age1[02-9ac-hj-np-z]{58}$"}},
                                "header_length": {"type": "integer", "minimum": 1},
                                "payload_size": _SIZE,
                                "payload_sha256": {"type": "string",
                                                   "pattern": "^[0-9a-f]{64}$"}}}}},
        "request_id": _TEXT,
        "tool": {"type": "object", "required": ["name", "version"]},
        # sections.py: where each section (pre-data, a table's data, ...) is in the object
        "index": {"type": "object", "required": ["format", "sections"], "properties": {
            "format": {"const": 1},
            "sections": {"type": "array", "minItems": 1, "items": {
                "type": "object",
                "required": ["kind", "offset", "length", "sql_offset", "sql_length",
                             "first_member", "members", "sha256"],
                "properties": {
                    "kind": {"enum": ["pre-data", "table-data", "sequence-values",
                                      "large-objects", "post-data"]},
                    "schema": _TEXT, "table": _TEXT, "rows": _SIZE,
                    "offset": _SIZE, "length": {"type": "integer", "minimum": 1},
                    "sql_offset": _SIZE, "sql_length": {"type": "integer", "minimum": 1},
                    "first_member": _SIZE, "members": {"type": "integer", "minimum": 1},
                    "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
                "if": {"properties": {"kind": {"const": "table-data"}}},
                "then": {"required": ["schema", "table", "rows"]}}}}},
    },
}


def validate(manifest):
    """Raises ValueError naming the first field that is wrong."""
    try:
        jsonschema.validate(manifest, MANIFEST_SCHEMA)
    except jsonschema.ValidationError as err:
        where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        raise ValueError(f"manifest field {where}: {err.message}") from None
    _check_client_side(manifest)
    compression, size = manifest["compression"], payload_size(manifest)
    sizes = compression.get("member_sizes")
    # Readers slice the payload by these sizes: they must tile it exactly.
    if sizes is not None and sum(sizes) != size:
        raise ValueError(f"manifest field compression/member_sizes: they add up to "
                         f"{sum(sizes)} bytes, the {_payload(manifest)} has {size}")
    if sizes is not None and compression.get("members", len(sizes)) != len(sizes):
        raise ValueError(f"manifest field compression/member_sizes: {len(sizes)} sizes "
                         f"for {compression['members']} members")
    if "index" in manifest:
        _check_index(manifest)
    return manifest


def _check_index(manifest):
    """Readers take a section's bytes by its offsets and inflate its members alone: the
    sections must tile the object, the SQL and the members, in order."""
    sections = manifest["index"]["sections"]
    sizes = manifest["compression"].get("member_sizes")
    offset = sql_offset = member = 0
    for number, section in enumerate(sections):
        where = f"manifest field index/sections/{number}"
        if (section["offset"], section["sql_offset"], section["first_member"]) != (offset, sql_offset, member):
            raise ValueError(f"{where}: starts at byte {section['offset']}, SQL byte "
                             f"{section['sql_offset']}, member {section['first_member']}; "
                             f"the section before it ends at {offset}, {sql_offset}, {member}")
        if sizes is not None:
            taken = sizes[member:member + section["members"]]
            if len(taken) != section["members"] or sum(taken) != section["length"]:
                raise ValueError(f"{where}: its {section['members']} members do not take "
                                 f"its {section['length']} bytes")
        offset += section["length"]
        sql_offset += section["sql_length"]
        member += section["members"]
    if (offset, sql_offset) != (payload_size(manifest), manifest["sql_bytes"]):
        raise ValueError(f"manifest field index/sections: they take {offset} bytes and "
                         f"{sql_offset} of SQL; the {_payload(manifest)} has "
                         f"{payload_size(manifest)} and {manifest['sql_bytes']}")
    if member != manifest["compression"].get("members", member):
        raise ValueError(f"manifest field index/sections: they take {member} members of "
                         f"{manifest['compression']['members']}")


def _check_client_side(manifest):
    """An encrypted object is named .age, and its size is what age makes of the payload:
    readers map the payload's offsets to its chunks by these numbers."""
    sealed, key = client_side(manifest), manifest["key"]
    if bool(sealed) != key.endswith(".age"):
        raise ValueError(f"manifest field encryption/client_side: {'set' if sealed else 'absent'} "
                         f"for the key {key}; encrypted objects, and only they, end .sql.gz.age")
    if sealed:
        from . import age
        expected = sealed["header_length"] + age.NONCE_SIZE + age.sealed_size(sealed["payload_size"])
        if manifest["object"]["size"] != expected:
            raise ValueError(f"manifest field object/size: {manifest['object']['size']} bytes; "
                             f"an age header of {sealed['header_length']} and a payload of "
                             f"{sealed['payload_size']} make {expected}")


def client_side(doc):
    """encryption.client_side of a manifest: how the object is encrypted, or None."""
    return ((doc or {}).get("encryption") or {}).get("client_side") or None


def payload_size(doc):
    """The gzip stream's size: the object's, or the encrypted object's payload."""
    sealed = client_side(doc)
    return sealed["payload_size"] if sealed else doc["object"]["size"]


def _payload(doc):
    return "encrypted object's payload" if client_side(doc) else "object"


def sections_of(doc):
    """The index's sections (see sections.py), or None for a backup made without one."""
    index = (doc or {}).get("index")
    return index["sections"] if index else None


def dumps(manifest):
    return json.dumps(validate(manifest), indent=2, sort_keys=True, ensure_ascii=False).encode("utf-8")


def loads(data):
    try:
        manifest = json.loads(data)
    except ValueError as err:
        raise ValueError(f"manifest is not JSON: {err}") from None
    return validate(manifest)
