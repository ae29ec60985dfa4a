"""The local / host tier (PLAN §2, §3): a directory holding the newest backups of OSS.

`mirror` copies the newest `keep` backups of each kind (and database folder, and the
globals) with their manifests into a directory, in the same key layout, then prunes the
directory to `keep`. Safety rules:
- a file is kept only when its SHA-256 and size match its manifest and its content checks
  out as verify's does (every gzip member whole, the dump's header and completion
  marker): it is streamed into `.partial-<name>` beside its final name, hashed and
  inflated on the way by the reader restore and verify use (reading.py: whole members
  to the fast engine where the manifest lists them, on threads beside the copy), and
  renamed into place only when it matches (a mismatch is tried once more from scratch,
  then reported by key);
- what is already there and intact (same manifest, file hashing to it) is not fetched;
- an interrupted copy resumes: within a run the storage seam resumes a read cut short
  itself (a ranged GET from the last byte, retry.read_policy); across runs the partial
  keeps its deterministic name and a sidecar naming the source ETag, and the next run
  checks what is there again with the rest and asks only for the rest
  (`open(key, offset=)`); a different ETag means another object, so it starts over;
- a run in which any copy failed deletes nothing from the directory;
- one run at a time per directory (a lock file): two would append to the same partial;
- an encrypted backup (`.sql.gz.age`) is copied byte for byte, ciphertext only (a leaked
  mirror disk reveals no row): with an age identity that its manifest lists as a
  recipient (`identities`, BACKUP_AGE_IDENTITY_FILE for the command) its content is
  checked as above while it is decrypted in memory; without one, its size, SHA-256 and
  age header against the manifest (verify.StoredBytes), and its item says
  `content_checked: false`.
"""
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field

from . import archive, manifest, names, prune
from .errors import BackupCorrupt, ConfigInvalid, StorageFailed, UploadFailed
from .logs import bound
from .reading import READ_SIZE, Broken, backup_reader
from .retry import describe
from .storage.directory import PARTIAL, DirectoryStorage
from .verify import NEEDS_IDENTITY, StoredBytes, check_sealed

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one run at a time is then up to the operator
    fcntl = None

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
HELD = "status/mirror.json"  # beside the status page: what the last mirror run holds
SOURCE_SUFFIX = ".source.json"  # beside a partial: which source object its bytes belong to
LOCK_NAME = ".l2c-mirror.lock"

@dataclass
class Item:
    key: str
    action: str = ""  # copied / skipped / resumed / replaced / failed
    size: int = 0
    bytes: int = 0  # read from the source for this backup (0 when skipped)
    resumed_from: int = 0  # bytes of an earlier run's partial that were kept
    detail: str = ""
    hint: str = ""  # what to do, when the storage refused
    # False: an encrypted backup checked without its identity (stored bytes and header)
    content_checked: bool = True


@dataclass
class MirrorReport:
    source: str
    target: str
    keep: dict
    items: list = field(default_factory=list)
    pruned: list = field(default_factory=list)  # backup keys deleted from the directory
    without_manifest: list = field(default_factory=list)  # not (yet) complete in the source
    partials_removed: list = field(default_factory=list)
    seconds: float = 0.0

    def count(self, action):
        return sum(item.action == action for item in self.items)

    @property
    def failed(self):
        return [item for item in self.items if item.action == "failed"]

    def summary(self):
        return {"source": self.source, "target": self.target, "keep": self.keep,
                **{action: self.count(action)
                   for action in ("copied", "skipped", "resumed", "replaced", "failed")},
                "pruned": len(self.pruned),
                "bytes": sum(item.bytes for item in self.items),
                "seconds": round(self.seconds, 3),
                "objects": [asdict(item) for item in self.items],
                "pruned_keys": self.pruned, "without_manifest": self.without_manifest,
                "partials_removed": self.partials_removed}


class Mismatch(Exception):
    """The bytes read do not match the manifest (or the source changed while read)."""


def _etag(value):
    return (value or "").strip('"')


def select(source, kinds, keep):
    """(listed objects of the newest `keep` backups per kind and group, keys without a
    manifest). Chosen as prune would keep them, by the stamp in the name; a backup counts
    only once its manifest exists (it is written last)."""
    listed = {}
    for kind in kinds:
        for obj in source.list(f"{source.prefix}{kind}/"):
            listed[obj.key] = obj
    candidates, without_manifest = [], []
    for key in listed:
        backup = prune.parse(source.prefix, key)
        if backup is None:
            continue
        if names.manifest_key(key) in listed:
            candidates.append(backup)
        else:
            without_manifest.append(key)
    decisions = prune.plan(candidates, keep, prefix=source.prefix)
    chosen = {d.key for d in decisions if d.action == "keep"}
    # newest first: a run cut short has the copies that matter most
    order = sorted((b for b in candidates if b.key in chosen), key=lambda b: (b.stamp, b.key),
                   reverse=True)
    return [listed[b.key] for b in order], sorted(without_manifest)


def mirror(source, dest_root, keep, kinds=None, chunk_size=CHUNK_SIZE, wait_archive=True,
           identities=()):
    """Mirrors the newest `keep` (a number, or {kind: number}) backups of each kind from
    the `source` storage into the directory `dest_root`, then prunes the directory to the
    same count. Returns a MirrorReport; when a copy failed, raises BackupCorrupt (bytes
    that do not match their manifest) or StorageFailed (a storage refused or could not
    be reached, either side), naming each key, with the report as `.report`, after
    copying everything else. A source that cannot be listed is StorageFailed at once.
    Encrypted backups are checked whole with those of `identities` (age.Identity) that
    their manifests list as recipients, else as stored."""
    started = time.monotonic()
    kinds = list(kinds or names.KINDS)
    keep = dict.fromkeys(kinds, keep) if isinstance(keep, int) else {k: keep[k] for k in kinds}
    for kind, n in keep.items():
        if n < 1:
            raise ConfigInvalid(f"keep for {kind} must be at least 1, got {n}",
                                "a mirror always keeps a backup of each kind")
    dest = DirectoryStorage(dest_root, prefix=source.prefix)
    if (isinstance(source, DirectoryStorage)
            and os.path.realpath(source.root) == os.path.realpath(dest.root)):
        raise ConfigInvalid(f"--from and --to are the same directory ({dest.root})",
                            "mirror into another directory")
    report = MirrorReport(source.url, dest.url, keep)
    os.makedirs(dest.root, exist_ok=True)
    with _locked(dest.root):
        chosen, report.without_manifest = select(source, kinds, keep)
        # Archived backups and their manifests are restored by OSS first, all at once;
        # one already here at its full size is not asked for (archive.py).
        cold = [o for o in chosen if archive.cold(o) is not None]
        archive.ensure_readable(source, [names.manifest_key(o.key) for o in cold] + [
            o.key for o in cold if not (os.path.isfile(dest._path(o.key))
                                         and os.path.getsize(dest._path(o.key)) == o.size)],
            wait=wait_archive, command="`l2c-backup mirror`")
        for obj in chosen:
            with bound(key=obj.key):
                report.items.append(_mirror_one(source, dest, obj, chunk_size, identities))
        report.partials_removed = _remove_stale_partials(dest, kinds, {o.key for o in chosen})
        if not report.failed:
            decisions = prune.prune(dest, kinds, keep, remember=False)
            report.pruned = [d.key for d in decisions if d.outcome == "deleted"]
        report_held(source, dest)
    report.seconds = time.monotonic() - started
    log.info("mirrored %s -> %s: %s", report.source, report.target,
             {k: v for k, v in report.summary().items()
              if k in ("copied", "skipped", "resumed", "replaced", "failed", "pruned", "bytes")})
    if report.failed:
        corrupt = [i for i in report.failed if i.detail.startswith("corrupt")]
        listing = "; ".join(f"{i.key}: {i.detail}" for i in report.failed)
        what = (f"{len(report.failed)} of {len(report.items)} backups not mirrored "
                f"(nothing deleted from {dest.root}): {listing}")
        if corrupt:
            err = BackupCorrupt(what, "run `l2c-backup verify` on the source key(s) named; run "
                                "mirror again to retry (a partial copy resumes)")
        else:
            hints = list(dict.fromkeys(i.hint for i in report.failed if i.hint))
            err = StorageFailed(what, "; ".join(hints + ["run mirror again (a partial copy resumes)"]))
        err.report = report
        raise err
    return report


def report_held(source, dest):
    """Tells `source` which backups the mirror now holds (HELD, under its prefix): the
    watchdog's status page counts this local copy, which it cannot see, from it. Best
    effort: a key that may only read gets a warning, never a failed mirror."""
    listed = {o.key for o in dest.list(dest.prefix)}
    keys = sorted(k for k in listed if prune.parse(dest.prefix, k) is not None
                  and names.manifest_key(k) in listed)
    record = {"at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()), "keys": keys}
    try:
        source.put_bytes(f"{source.prefix}{HELD}", json.dumps(record).encode(),
                         content_type="application/json")
    except Exception as exc:
        log.warning("could not tell %s what the mirror holds (%s): the status page will not "
                    "count this copy", source.url, describe(exc))


def held(storage):
    """(when, [keys]) of the last report_held into `storage`, or None when there is none."""
    try:
        with storage.open(f"{storage.prefix}{HELD}") as reading:
            record = json.loads(b"".join(reading))
        return record["at"], [str(k) for k in record["keys"]]
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("%s%s is not a mirror report (%s); ignored", storage.prefix, HELD, exc)
        return None


def _mirror_one(source, dest, obj, chunk_size, identities=()):
    item = Item(obj.key)
    try:
        doc_bytes = b"".join(source.open(names.manifest_key(obj.key)))
        try:
            doc = manifest.loads(doc_bytes)
        except ValueError as err:
            raise Mismatch(f"its manifest is invalid: {err}") from None
        if doc["key"] != obj.key:
            raise Mismatch(f"its manifest describes {doc['key']}")
        expected = (doc["object"]["size"], doc["object"]["sha256"])
        item.size = expected[0]
        path = dest._path(obj.key)
        state = _local_state(dest, obj.key, path, doc_bytes, expected)
        if state == "intact":
            item.action = "skipped"
            return item
        if state == "bytes intact":  # an earlier run stopped between file and manifest
            dest.put_bytes(names.manifest_key(obj.key), doc_bytes)
            item.action, item.detail = "skipped", "manifest written"
            return item
        item.resumed_from = _fetch(source, obj, path, doc, chunk_size, item, identities)
        dest.put_bytes(names.manifest_key(obj.key), doc_bytes)  # last, as backup writes it
        if state == "damaged":
            item.action, item.detail = "replaced", "the local copy did not match its manifest"
        else:
            item.action = "resumed" if item.resumed_from else "copied"
        log.info("%s %s (%d bytes read)", item.action, obj.key, item.bytes)
    except Mismatch as err:
        item.action, item.detail = "failed", f"corrupt: {err}"
        log.error("not mirrored: %s", item.detail)
    except FileNotFoundError as err:
        item.action, item.detail = "failed", f"gone from the source while mirroring: {err}"
        log.error("not mirrored: %s", item.detail)
    except StorageFailed as err:
        item.action, item.detail, item.hint = "failed", err.args[0], err.hint
        log.error("not mirrored: %s", item.detail)
    except OSError as err:  # the directory: full, read-only, or a directory source's file
        item.action, item.detail = "failed", describe(err)
        item.hint = f"check free space and permissions of {dest.root}"
        log.error("not mirrored: %s", item.detail)
    return item


def _local_state(dest, key, path, doc_bytes, expected):
    """absent / intact / bytes intact (manifest missing or different) / damaged."""
    if not os.path.exists(path):
        return "absent"
    if (os.path.getsize(path), _sha256_file(path).hexdigest()) != expected:
        return "damaged"
    try:
        with open(dest._path(names.manifest_key(key)), "rb") as f:
            same_manifest = f.read() == doc_bytes
    except FileNotFoundError:
        same_manifest = False
    return "intact" if same_manifest else "bytes intact"


def _sha256_file(path):
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_SIZE), b""):
            sha.update(chunk)
    return sha


def _partial_paths(path):
    partial = os.path.join(os.path.dirname(path), PARTIAL + os.path.basename(path))
    return partial, partial + SOURCE_SUFFIX


def _fetch(source, obj, path, doc, chunk_size, item, identities=()):
    """Streams the object into its partial and renames it into place once it matches the
    manifest. Returns the bytes of an earlier run's partial that were kept; counts the
    bytes read from the source in item.bytes."""
    partial, sidecar = _partial_paths(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    expected = (doc["object"]["size"], doc["object"]["sha256"])
    check = _Check(doc, obj.size, identities)
    if not check.content:
        item.content_checked, item.detail = False, NEEDS_IDENTITY
    for round_ in (1, 2):  # a mismatch is tried once more, from scratch
        copy = _Partial(partial, sidecar, obj.key, _etag(obj.etag), expected)
        try:
            copy.fill(source, chunk_size, check)
            problem = copy.mismatch()
        except Mismatch as err:
            problem = str(err)
        finally:
            item.bytes += copy.read
        if problem is None:
            os.replace(partial, path)
            _fsync_dir(os.path.dirname(path))
            _unlink(sidecar)
            return copy.resumed_from
        _unlink(partial, sidecar)
        log.warning("%s: %s (attempt %d of 2)", obj.key, problem, round_)
    raise Mismatch(problem)


class _Partial:
    """The copy in progress of one object: `.partial-<name>` and its sidecar naming the
    source object. fill() checks the bytes already there and those appended in one pass."""

    def __init__(self, partial, sidecar, key, etag, expected):
        self.partial, self.sidecar, self.key, self.etag = partial, sidecar, key, etag
        self.expected_size, self.expected_sha = expected
        self.read = 0  # bytes read from the source by this copy
        self.sha256 = ""  # of all its bytes, once fill() has read them
        self.size = self.resumed_from = _resume_point(partial, sidecar, key, etag, expected)
        if not self.size:
            self._start_over()

    def _start_over(self):
        with open(self.sidecar, "w", encoding="utf-8") as f:
            json.dump({"key": self.key, "etag": self.etag, "size": self.expected_size,
                       "sha256": self.expected_sha}, f)
        open(self.partial, "wb").close()
        self.size = 0

    def fill(self, source, chunk_size, check):
        """Appends the rest of the object, from where the partial ends (the storage
        resumes a read cut short on its own, from the same object), and checks all of it:
        the bytes already there and the new ones go through one reader (`check`: SHA-256,
        every gzip member, the dump's ends, on threads; an encrypted object decrypted in
        memory, or only hashed without its identity) while they are written. Damage
        stops the copy at once (Mismatch)."""
        reading = None
        try:
            if self.size < self.expected_size:  # else all there: the check decides
                reading = source.open(self.key, chunk_size, offset=self.size)
                if self.etag and reading.etag and _etag(reading.etag) != self.etag:
                    raise Mismatch(f"the source object changed while it was copied "
                                   f"(ETag {self.etag} -> {_etag(reading.etag)})")
                if reading.start != self.size:  # the whole object was sent: start over with it
                    self._start_over()
                    self.resumed_from = 0
            with check.reader(self._chunks(reading), self.key) as content:
                content.run()
            check.finish(content)
            self.sha256 = content.sha256
        except Broken as broken:
            raise Mismatch(f"{broken.reason}: {broken.detail}") from None
        except ConfigInvalid:  # the identity the manifest names does not open the header
            listed = ", ".join(i.recipient for i in check.openers)
            raise Mismatch(f"age-header: its manifest lists {listed} among its recipients, "
                           "but the header does not open with that identity") from None
        finally:
            if reading is not None:
                reading.close()

    def _chunks(self, reading):
        """The partial's bytes, then the source's, each appended to the partial before it
        is passed on (runs on the reader's thread)."""
        with open(self.partial, "rb") as f:
            left = self.size
            while left:
                chunk = f.read(min(READ_SIZE, left))
                if not chunk:
                    raise Mismatch(f"the partial copy {self.partial} shrank while read")
                left -= len(chunk)
                yield chunk
        if reading is None:
            return
        with open(self.partial, "ab") as f:
            try:
                for chunk in reading:
                    f.write(chunk)
                    self.size += len(chunk)
                    self.read += len(chunk)
                    if self.size > self.expected_size:
                        raise Mismatch(f"the object is longer than the {self.expected_size} "
                                       "bytes its manifest says")
                    yield chunk
            finally:
                f.flush()
                os.fsync(f.fileno())

    def mismatch(self):
        """None when the bytes match the manifest, else what differs."""
        if self.size != self.expected_size:
            return f"read {self.size} bytes, the manifest says {self.expected_size}"
        if self.sha256 != self.expected_sha:
            return f"SHA-256 {self.sha256} read, the manifest says {self.expected_sha}"
        return None


class _Check:
    """How a copy's bytes are checked, from its manifest: a plain backup or an encrypted
    one opened by one of `identities` through an ObjectReader (whole), an encrypted one
    without such an identity by its stored bytes and age header (`content` False)."""

    def __init__(self, doc, size, identities):
        self.doc, self.size = doc, size
        self.sealed = manifest.client_side(doc)
        self.openers = ([i for i in identities if i.recipient in self.sealed["recipients"]]
                        if self.sealed else [])
        self.content = not self.sealed or bool(self.openers)

    def reader(self, chunks, key):
        if not self.content:
            return StoredBytes(chunks)
        return backup_reader(chunks, self.doc, key, self.size, self.openers)

    def finish(self, content):
        """The age header against the manifest, once read without the identity (with it,
        the decryptor has opened and authenticated it, SHA-256 covers the rest)."""
        if not self.content:
            check_sealed(self.doc, self.sealed, content.header, content.bytes)


def _resume_point(partial, sidecar, key, etag, expected):
    """Bytes of an earlier partial that can be kept: those of the same source object
    (same ETag and manifest), else 0 (and the leftovers go)."""
    try:
        with open(sidecar, encoding="utf-8") as f:
            recorded = json.load(f)
        size = os.path.getsize(partial)
    except (FileNotFoundError, ValueError):
        _unlink(partial, sidecar)
        return 0
    same = (recorded.get("key") == key and recorded.get("etag") == etag and etag
            and recorded.get("sha256") == expected[1] and size <= expected[0])
    if not same:
        log.info("%s: the partial copy is of another version of the object; starting over", key)
        _unlink(partial, sidecar)
        return 0
    log.info("%s: resuming after %d bytes of %d", key, size, expected[0])
    return size


def _remove_stale_partials(dest, kinds, chosen):
    """Partials (and their sidecars) of backups no longer mirrored: they would never
    be resumed."""
    removed = []
    for kind in kinds:
        base = dest._path(f"{dest.prefix}{kind}")
        for folder, _, files in os.walk(base):
            for name in files:
                if not name.startswith(PARTIAL) or name.endswith(SOURCE_SUFFIX):
                    continue
                key = os.path.relpath(os.path.join(folder, name[len(PARTIAL):]),
                                      dest.root).replace(os.sep, "/")
                if key in chosen or prune.parse(dest.prefix, key) is None:
                    continue  # in use, or not one of ours (put_stream's own temp files)
                path = os.path.join(folder, name)
                _unlink(path, path + SOURCE_SUFFIX)
                removed.append(key)
    return sorted(removed)


class _locked:
    """An exclusive lock on the directory for one run (advisory; released by the OS if
    the process dies)."""

    def __init__(self, root):
        self.path = os.path.join(root, LOCK_NAME)

    def __enter__(self):
        self.f = open(self.path, "a")
        if fcntl is not None:
            try:
                fcntl.flock(self.f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.f.close()
                raise UploadFailed(f"another mirror is running into {os.path.dirname(self.path)}",
                                   "wait for it to finish (or end it), then run again") from None
        return self

    def __exit__(self, *exc):
        self.f.close()  # closing releases the lock


def _unlink(*paths):
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not every platform opens directories
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
