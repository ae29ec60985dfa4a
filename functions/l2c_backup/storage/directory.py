"""Backups in a local directory (PLAN's local tier): the same key layout as OSS.

An object is written to a hidden temporary file beside its final name, flushed to disk,
then renamed into place, so a reader never sees half a backup; a crash leaves only a
`.partial-*` file, which `list` ignores.
"""
import hashlib
import json
import os
import pathlib
import uuid

from oss2.utils import Crc64

from . import Deleted, Reading, StoredObject, check_range, read_chunks

PARTIAL = ".partial-"
TAGS_SUFFIX = ".tags.json"


class DirectoryStorage:
    def __init__(self, root, prefix="db-backups/"):
        self.root = os.path.abspath(root)
        self.prefix = prefix
        self.url = self.root

    def _path(self, key):
        path = os.path.normpath(os.path.join(self.root, key))
        if not path.startswith(self.root + os.sep):
            raise ValueError(f"key {key!r} points outside {self.root}")
        return path

    def put_stream(self, key, chunks, expected_size=0, overwrite=True):
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = os.path.join(os.path.dirname(path), f"{PARTIAL}{uuid.uuid4().hex}-{os.path.basename(path)}")
        crc, md5, size = Crc64(0), hashlib.md5(), 0
        try:
            with open(tmp, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                    crc.update(chunk)
                    md5.update(chunk)
                    size += len(chunk)
                f.flush()
                os.fsync(f.fileno())
            if overwrite:
                os.replace(tmp, path)
            else:
                os.link(tmp, path)  # fails with FileExistsError instead of replacing
                os.unlink(tmp)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return StoredObject(key, size, md5.hexdigest().upper(), str(crc.crc))

    def put_bytes(self, key, data, overwrite=True, content_type=None, content_disposition=None):
        # A file keeps no headers: a browser takes the type from the name (index.html).
        return self.put_stream(key, [data], len(data), overwrite)

    def signed_url(self, key, expires_seconds):
        """The file's file:// URI: a local file needs no signature and never expires."""
        return pathlib.Path(self._path(key)).as_uri()

    def head(self, key):
        try:
            st = os.stat(self._path(key))
        except FileNotFoundError:
            return None
        # No MD5 to hand: size and mtime tell one file from its replacement, as an ETag does.
        return StoredObject(key, st.st_size, f"{st.st_size}-{st.st_mtime_ns}", last_modified=st.st_mtime)

    def open(self, key, chunk_size=1 << 20, offset=0, length=None):
        check_range(offset, length)
        # open now, so a missing file fails here rather than at the first chunk
        f = open(self._path(key), "rb")
        st = os.fstat(f.fileno())
        if length is not None:  # a range: its own bytes, none past its end
            start = offset
        else:
            start = offset if 0 < offset <= st.st_size else 0  # past the end: all of it
        f.seek(start)
        return Reading(read_chunks(f, chunk_size, length), start,
                       f"{st.st_size}-{st.st_mtime_ns}", f.close)

    def list(self, prefix):
        base = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        found = []
        for folder, _, files in os.walk(base if os.path.isdir(base) else os.path.dirname(base)):
            for name in files:
                if name.startswith(PARTIAL) or name.endswith(TAGS_SUFFIX):
                    continue
                key = os.path.relpath(os.path.join(folder, name), self.root).replace(os.sep, "/")
                if key.startswith(prefix):
                    found.append(key)
        for key in sorted(found):
            info = self.head(key)
            if info is not None:  # not deleted since the walk
                yield info

    def unfinished_writes(self, prefix):
        """`.partial-*` files under prefix: a write in progress, or what a killed run left.
        key = the partial file's own key, last_modified = its last write (a live write
        keeps it fresh), extra["for_key"] = the key it was being written as."""
        base = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        for folder, _, files in os.walk(base if os.path.isdir(base) else os.path.dirname(base)):
            for name in sorted(files):
                if not name.startswith(PARTIAL):
                    continue
                path = os.path.join(folder, name)
                key = os.path.relpath(path, self.root).replace(os.sep, "/")
                try:
                    st = os.stat(path)
                except FileNotFoundError:  # its write just ended
                    continue
                final = name[len(PARTIAL):].partition("-")[2]
                yield StoredObject(key, st.st_size, last_modified=st.st_mtime,
                                   extra={"for_key": key[:-len(name)] + final})

    def discard_unfinished(self, unfinished):
        """Removes a partial file unfinished_writes() listed; one gone already is fine."""
        try:
            os.unlink(self._path(unfinished.key))
        except FileNotFoundError:
            pass

    def delete(self, key):
        for path in (self._path(key), self._path(key) + TAGS_SUFFIX):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        return Deleted(key)

    # A directory has no object tags: they live in a hidden sidecar beside the file.
    def get_tags(self, key):
        if not os.path.exists(self._path(key)):
            raise FileNotFoundError(key)
        try:
            with open(self._path(key) + TAGS_SUFFIX, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    def set_tags(self, key, tags):
        if not os.path.exists(self._path(key)):
            raise FileNotFoundError(key)
        self.put_bytes(key + TAGS_SUFFIX, json.dumps(tags, sort_keys=True).encode())
