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
        "key": {"type": "string", "pattern": r"\.sql\.gz$"},
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
            "kms_key_id": {"type": ["string", "null"]}}},
        "request_id": _TEXT,
        "tool": {"type": "object", "required": ["name", "version"]},
    },
}


def validate(manifest):
    """Raises ValueError naming the first field that is wrong."""
    try:
        jsonschema.validate(manifest, MANIFEST_SCHEMA)
    except jsonschema.ValidationError as err:
        where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        raise ValueError(f"manifest field {where}: {err.message}") from None
    compression, size = manifest["compression"], manifest["object"]["size"]
    sizes = compression.get("member_sizes")
    # Readers slice the object by these sizes: they must tile it exactly.
    if sizes is not None and sum(sizes) != size:
        raise ValueError(f"manifest field compression/member_sizes: they add up to "
                         f"{sum(sizes)} bytes, the object has {size}")
    if sizes is not None and compression.get("members", len(sizes)) != len(sizes):
        raise ValueError(f"manifest field compression/member_sizes: {len(sizes)} sizes "
                         f"for {compression['members']} members")
    return manifest


def dumps(manifest):
    return json.dumps(validate(manifest), indent=2, sort_keys=True, ensure_ascii=False).encode("utf-8")


def loads(data):
    try:
        manifest = json.loads(data)
    except ValueError as err:
        raise ValueError(f"manifest is not JSON: {err}") from None
    return validate(manifest)
