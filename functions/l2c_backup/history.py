"""What happened that leaves no backup behind: failed backup attempts and drill results.

Why: a failed backup writes no object and a drill's restore time lives only in its alert,
so the status page (issue 16) would have nothing to show for either. Each is one small
JSON record beside the backups, under the prefix, in keys no backup operation matches
(prune, verify, mirror and the leftovers clean-up read only backup keys):

    <prefix>history/backup/<kind>/<UTC yyyymmddThhmmssZ>-<8 hex>.json   a failed attempt
    <prefix>history/drill/<kind>/<UTC yyyymmddThhmmssZ>-<8 hex>.json    every drill run
    <prefix>history/pruned/<kind>/<UTC yyyymmddThhmmssZ>-<8 hex>.json   a backup retention
        deleted: its size, time, duration and verdict, so the page's 90 days outlive
        KEEP_DAILY's 30

What it guarantees: writing a record never raises and never changes the error or report
it records; it waits at most WRITE_WAIT_SECONDS (an OSS that is failing retries for a
minute, and FC leaves a handler 60 s past its budget to report), and what it cannot write
is a warning in the log. A record's text is one line with no secret (logs.redact), no
database host, port, user or URL, and no storage endpoint (`scrub`). Records older than
KEEP_DAYS are deleted when a new one is written.
"""
import json
import logging
import re
import secrets
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

from . import bounded, logs, names
from .fc import ALERTED_MARK
from .storage import ObjectLocked, open_storage

log = logging.getLogger(__name__)

HISTORY = "history/"
KEEP_DAYS = 100  # the page shows 90 days
WRITE_WAIT_SECONDS = 20
DATABASE, ENDPOINT = "[database]", "[endpoint]"
_STAMP = "%Y%m%dT%H%M%SZ"
_RECORD = re.compile(r"(?P<folder>backup|drill|pruned)/[^/]+/(?P<stamp>\d{8}T\d{6}Z)-[0-9a-f]{8}\.json")
# Whatever a caller did not think to scrub: connection URLs and IPv4 addresses.
_URL_END = r"[^\s'\"),;]+"
_URLS = ((re.compile(r"postgres(?:ql)?://" + _URL_END), DATABASE),
         (re.compile(r"https?://" + _URL_END), ENDPOINT),
         (re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?![\w.]*\w)"), "[address]"))


def record_key(prefix, folder, kind, when):
    """A new record's key: unique by its random suffix, ordered by its UTC time."""
    return f"{prefix}{HISTORY}{folder}/{kind}/{when.strftime(_STAMP)}-{secrets.token_hex(4)}.json"


def scrub_of(database=None, oss=None):
    """The `scrub` pairs (text, replacement) that hide `database` (DatabaseSettings: host,
    port, user) and `oss` (OSSSettings: the endpoint) on the status page."""
    pairs = []
    if database is not None:
        host = f"[{database.host}]" if ":" in database.host else database.host
        pairs += [(f"{host}:{database.port}", DATABASE), (database.host, DATABASE),
                  (f"port {database.port}", f"port {DATABASE}")]
        # The user where a message names it as one: a user called "backup" must not
        # blank every "backup" on the page.
        pairs += [(f"{word} {quote}{database.user}{quote}", f"{word} {quote}{DATABASE}{quote}")
                  for word in ("user", "role") for quote in ('"', "'", "")]
    if oss is not None:
        pairs += _endpoint_pairs(oss.endpoint)
    return tuple(pairs)


def scrub_for(config):
    """scrub_of the backup configuration's database and OSS settings."""
    return scrub_of(config.database, config.oss)


def one_line(text, scrub=()):
    """`text` as the status page may show it: one line, no secret, nothing of `scrub`
    (strings, or (text, replacement) pairs), no connection URL or IP address."""
    text = str(text)
    if text.startswith(ALERTED_MARK):  # fc.report_failure's mark, not part of the error
        text = text[len(ALERTED_MARK):]
    text = logs.redact(" ".join(text.split()))
    pairs = [(s, "[hidden]") if isinstance(s, str) else tuple(s) for s in scrub]
    for needle, replacement in sorted(pairs, key=lambda p: len(p[0]), reverse=True):
        if needle and len(needle) >= 2:  # one letter would blank every word that is one
            # Whole names only: user "postgres" must not cut "postgresql" in two.
            text = re.sub(rf"(?<![\w.-]){re.escape(needle)}(?![\w-])", replacement, text)
    for pattern, replacement in _URLS:
        text = pattern.sub(replacement, text)
    return text


def record_backup_failure(storage, kind, database, err, request_id="", scrub=()):
    """Records a failed backup attempt of `database` ("" = the single database, or the
    run as a whole) in `storage`, once per error: a failure recorded where it happened
    (one database of several) is not recorded again by a caller it reaches next. Never
    raises; `err` keeps its message, type and exit code (it is only marked recorded)."""
    if getattr(err, "history_recorded", False):
        return
    err.history_recorded = True

    def record():
        message = err.args[0] if err.args else ""
        return {"event": "backup-failed", "kind": kind, "database": database or "",
                "error": type(err).__name__, "exit_code": getattr(err, "exit_code", 1),
                "message": one_line(message, tuple(scrub) + _storage_scrub(storage)),
                "request_id": request_id or ""}
    _write(storage, "backup", record)


def record_failed_run(config, kind, database, err, request_id=""):
    """record_backup_failure in the backup target of `config` (BackupConfig), its
    database and endpoint scrubbed. Never raises."""
    if getattr(err, "history_recorded", False):
        return
    try:
        storage = open_storage(config.target, config.oss)
    except Exception as exc:
        log.warning("could not record the failed backup in history (%s)", _reason(exc))
        return
    record_backup_failure(storage, kind, database, err, request_id, scrub_for(config))


def record_drill(storage, report, scrub=()):
    """Records a drill's report (drill.run_drill's, ok or not) in the storage it drilled.
    Never raises; `report` is left as it is."""
    def record():
        hide = tuple(scrub) + _storage_scrub(storage)
        return {"event": "drill", "kind": report.get("kind", ""), "key": report.get("key") or "",
                "ok": bool(report.get("ok")), "restore_seconds": report.get("restore_seconds"),
                "rto_seconds": report.get("rto_seconds"),
                "one_stream_seconds": report.get("one_stream_seconds"),
                "restore_jobs": report.get("restore_jobs"),
                "failures": [one_line(f, hide) for f in report.get("failures") or []],
                "request_id": report.get("request_id") or ""}
    _write(storage, "drill", record)


def describe_backup(storage, key):
    """What record_pruned keeps of a backup about to be deleted: its size, verdict, finish
    time and duration (from its manifest). Never raises: what cannot be read is None."""
    from .prune import parse
    found = {"key": key, "bytes": None, "verdict": "", "finished_at": None, "seconds": None}
    b = parse(storage.prefix, key)
    found.update(kind=b.kind if b else "", database=b.group if b else "")
    for read in (_head_size, _verdict, _manifest_times):
        try:
            found.update(read(storage, key))
        except Exception as exc:  # a page with less detail, never a prune that fails
            log.debug("could not read %s for its history: %s", key, _reason(exc))
    return found


def _head_size(storage, key):
    obj = storage.head(key)
    return {"bytes": obj.size} if obj else {}


def _verdict(storage, key):
    return {"verdict": storage.get_tags(key).get("verify", "")}


def _manifest_times(storage, key):
    with storage.open(names.manifest_key(key)) as reading:
        doc = json.loads(b"".join(reading))
    return {"finished_at": doc.get("finished_at"), "seconds": doc.get("duration_seconds")}


def record_pruned(storage, described):
    """Records a backup retention deleted (describe_backup's dict). Never raises."""
    _write(storage, "pruned", lambda: dict(described, event="pruned", kind=described["kind"] or "-"))


def recent(storage, since_ts):
    """{"backup_failures": [...], "drills": [...], "pruned": [...]}: the records made at or after
    `since_ts` (epoch seconds or a datetime), each list oldest first. A record that cannot
    be read or is not one is skipped with a warning; a storage that cannot be listed
    raises (StorageFailed), as every survey of it does."""
    since = since_ts if isinstance(since_ts, datetime) else datetime.fromtimestamp(since_ts, timezone.utc)
    found = {"backup": [], "drill": [], "pruned": []}
    for key, folder, when in _records(storage):
        if when < since:
            continue
        record = _read(storage, key)
        expected = {"backup": "backup-failed"}.get(folder, folder)
        if record is None or record.get("event") != expected or not isinstance(record.get("at"), str):
            log.warning("history record %s is unreadable or not a %s record; left out", key, expected)
            continue
        found[folder].append((when, key, record))
    return {"backup_failures": [r for *_, r in sorted(found["backup"])],
            "drills": [r for *_, r in sorted(found["drill"])],
            "pruned": [r for *_, r in sorted(found["pruned"])]}


def clean(storage, now=None):
    """Deletes the records older than KEEP_DAYS (nothing else under history/). Returns
    their keys; never raises."""
    cutoff = (now or names.now()) - timedelta(days=KEEP_DAYS)
    deleted = []
    try:
        for key, _, when in list(_records(storage)):
            if when < cutoff:
                try:
                    storage.delete(key)
                except ObjectLocked:  # under WORM retention: its turn comes later
                    continue
                deleted.append(key)
    except Exception as exc:
        log.warning("could not remove old history records under %s%s (%s)", storage.prefix,
                    HISTORY, _reason(exc))
    return deleted


def _records(storage):
    """(key, folder, UTC time) of every record under the prefix's history/."""
    base = f"{storage.prefix}{HISTORY}"
    for obj in storage.list(base):
        match = _RECORD.fullmatch(obj.key[len(base):])
        if match:
            when = datetime.strptime(match["stamp"], _STAMP).replace(tzinfo=timezone.utc)
            yield obj.key, match["folder"], when


def _read(storage, key):
    try:
        with storage.open(key) as reading:
            record = json.loads(b"".join(reading))
    except Exception as exc:  # gone since listed, unreadable, not JSON
        log.debug("could not read %s: %s", key, _reason(exc))
        return None
    return record if isinstance(record, dict) else None


def _write(storage, folder, make_record):
    """Writes make_record() (with "at" added) as a new record of `folder`, then the
    clean-up, waited for at most WRITE_WAIT_SECONDS (bounded.within). Logs what stops it,
    raises nothing; a write still running then finishes (or fails) on its own."""
    now, state = names.now(), {"what": f"the {folder} record"}

    def write():
        record = dict(make_record(), at=now.isoformat(timespec="seconds"))
        key = state["what"] = record_key(storage.prefix, folder, record["kind"] or "-", now)
        storage.put_bytes(key, json.dumps(record, sort_keys=True).encode(), overwrite=False)
        clean(storage, now)

    outcome = bounded.within(write, WRITE_WAIT_SECONDS, "l2c-history")
    if not outcome.done:
        log.warning("could not record %s within %ds; going on without it", state["what"],
                    WRITE_WAIT_SECONDS)
    elif outcome.error is not None:
        log.warning("could not record %s (%s); the status page will miss it", state["what"],
                    _reason(outcome.error))


def _storage_scrub(storage):
    """Pairs hiding the storage's own endpoint, when it has one (OSS)."""
    settings = getattr(storage, "settings", None)
    if settings is None or not getattr(settings, "endpoint", ""):
        return ()
    return tuple(_endpoint_pairs(settings.endpoint, getattr(storage, "bucket_name", "")))


def _endpoint_pairs(endpoint, bucket=""):
    parts = urlsplit(endpoint)
    pairs = [(endpoint, ENDPOINT), (parts.netloc, ENDPOINT), (parts.hostname or "", ENDPOINT)]
    if bucket and parts.hostname:  # oss2 addresses the bucket virtual-hosted
        pairs.append((f"{bucket}.{parts.hostname}", ENDPOINT))
    return [(text, label) for text, label in pairs if text]


def _reason(exc):
    return str(exc).split("\n", 1)[0] or type(exc).__name__
