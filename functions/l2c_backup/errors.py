"""Every failure L2C backup reports, in one place: what it is, what to do, how loud.

Each error names what went wrong and how to fix it; `exit_code` is what the CLI returns
and `severity` routes alerts (urgent / warning / notice). Messages never carry secrets.
"""


class L2CError(Exception):
    exit_code = 1
    severity = "urgent"

    def __init__(self, message, hint=""):
        super().__init__(message)
        self.hint = hint

    def __str__(self):
        message = super().__str__()
        return f"{message}\n  what to do: {self.hint}" if self.hint else message


class ConfigInvalid(L2CError):
    """A setting is missing or malformed (names the variable or flag)."""
    exit_code = 2


class ToolMissing(L2CError):
    """A PostgreSQL binary (initdb, pg_dump, psql) cannot be found or run."""
    exit_code = 3


class LocalServiceFailed(L2CError):
    """A local stand-in (OSS server, throwaway cluster) did not start or answer."""
    exit_code = 4
    severity = "warning"


class DatabaseUnreachable(L2CError):
    """The database server cannot be reached, or refused the login."""
    exit_code = 10


class PgDumpTooOld(L2CError):
    """The bundled pg_dump is older than the server: pg_dump would abort with
    "server version mismatch", so we refuse before starting."""
    exit_code = 11


class DumpFailed(L2CError):
    """pg_dump exited with an error, was killed, or its output was incomplete."""
    exit_code = 12


class UploadFailed(L2CError):
    """The backup could not be written to its target (OSS or a directory). PLAN §6: a
    warning; the watchdog escalates when no verified backup follows within the RPO."""
    exit_code = 13
    severity = "warning"


class EventInvalid(L2CError):
    """An FC event did not match its schema (names the field)."""
    exit_code = 2


class BackupTimeout(L2CError):
    """The backup ran past its time budget (the FC function timeout less a margin)."""
    exit_code = 14


class BackupCorrupt(L2CError):
    """A stored backup failed verification (names the check that failed)."""
    exit_code = 15


class RestoreRefused(L2CError):
    """A restore that would be unsafe: a non-empty target, an unsupported psql, a
    production name for a drill. Nothing was changed."""
    exit_code = 16


class RestoreFailed(L2CError):
    """psql stopped with an error, or the backup turned out damaged mid-restore; the
    target was left as it was (the transaction rolled back, a new database dropped)."""
    exit_code = 17


class NotCompliant(L2CError):
    """The 3-2-1 rule or the RPO is not met (status, watchdog)."""
    exit_code = 20


class InvocationFailed(L2CError):
    """The function failed on FC with an error that is not one of ours, or its outcome is
    unknown (no answer in time, FC unreachable or failing). The remote error type and
    the FC request id are in the message."""
    exit_code = 18


class SetupFailed(L2CError):
    """A set-up step failed: OSS refused a change (names the step and OSS's answer)."""
    exit_code = 19


class StorageFailed(L2CError):
    """The backup storage (OSS or a directory) refused or could not be reached: names
    endpoint, bucket and key (or prefix), and what to do. Raised after the retries."""
    exit_code = 21
    severity = "warning"


class BackupNotFound(L2CError):
    """The backup named (a key, a date) is not in the storage: "no object KEY in TARGET"."""
    exit_code = 22
    severity = "warning"


class PageNotFound(L2CError):
    """The status page (`<prefix>status/index.html`) was not written yet: the hourly
    watchdog writes it."""
    exit_code = 24
    severity = "warning"


class ArchiveNotReadable(L2CError):
    """A backup (or its manifest) is in OSS's Archive / Cold Archive storage class and
    cannot be read until OSS restores it: the restore was requested; the message says how
    long OSS takes and what to run again (with --no-wait-archive, or when the wait ran out)."""
    exit_code = 23
    severity = "warning"
