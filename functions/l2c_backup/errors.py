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
