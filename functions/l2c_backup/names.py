"""Object names: `<prefix><kind>/backup_<stamp>.sql.gz`, stamped in the team's time zone;
`.sql.gz.age` when the backup is encrypted to age recipients (age.py).

The team reads dates in Asia/Shanghai (UTC+8, no daylight saving), so a fixed offset
serves without depending on tz data being installed in the FC runtime.
"""
import re
from datetime import datetime, timedelta, timezone

SHANGHAI = timezone(timedelta(hours=8), "Asia/Shanghai")
KINDS = ("daily", "weekly", "manual")
SUFFIX = ".sql.gz"
AGE_SUFFIX = SUFFIX + ".age"
SUFFIXES = (SUFFIX, AGE_SUFFIX)
_ANY_SUFFIX = r"\.sql\.gz(?:\.age)?"
ISO_TIME = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$"
MANIFEST_SUFFIX = ".manifest.json"

STAMP_PATTERNS = {
    "daily": r"\d{4}-\d{2}-\d{2}",
    "weekly": r"\d{4}-W\d{2}",
    "manual": r"\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}(?:-\d+)?",
}


def stamp(kind, when):
    local = when.astimezone(SHANGHAI)
    if kind == "daily":
        return local.strftime("%Y-%m-%d")
    if kind == "weekly":
        year, week, _ = local.isocalendar()
        return f"{year}-W{week:02d}"
    if kind == "manual":
        return local.strftime("%Y-%m-%dT%H-%M-%S")
    raise ValueError(f"unknown kind {kind!r}: expected one of {', '.join(KINDS)}")


def suffix(encrypted):
    return AGE_SUFFIX if encrypted else SUFFIX


def backup_key(prefix, kind, when, database=None, collision=0, encrypted=False):
    """The key of one backup. `database` is set only when several databases are backed
    up, each into its own folder; `collision` numbers a second manual backup within
    the same second, which must never overwrite the first."""
    folder = f"{prefix}{kind}/" + (f"{database}/" if database else "")
    extra = f"-{collision}" if collision else ""
    return f"{folder}backup_{stamp(kind, when)}{extra}{suffix(encrypted)}"


def globals_key(prefix, kind, when, encrypted=False):
    return f"{prefix}{kind}/globals_{stamp(kind, when)}{suffix(encrypted)}"


def is_backup_object(key):
    """A backup's object (plain or encrypted), not one of its sidecars."""
    return key.endswith(SUFFIXES)


def is_encrypted_key(key):
    return key.endswith(AGE_SUFFIX)


def is_globals_key(prefix, key):
    return re.fullmatch(rf"{re.escape(prefix)}(?:{'|'.join(KINDS)})/globals_[^/]+?{_ANY_SUFFIX}", key) is not None


def manifest_key(key):
    return key + MANIFEST_SUFFIX


def parse_backup_key(prefix, key):
    """(kind, database or None, stamp) for a backup key, or None for anything else."""
    pattern = (rf"^{re.escape(prefix)}(?P<kind>{'|'.join(KINDS)})/(?:(?P<db>[^/]+)/)?"
               rf"backup_(?P<stamp>[^/]+?){_ANY_SUFFIX}$")
    match = re.match(pattern, key)
    if not match or not re.fullmatch(STAMP_PATTERNS[match["kind"]], match["stamp"]):
        return None
    return match["kind"], match["db"], match["stamp"]


def now():
    return datetime.now(timezone.utc)
