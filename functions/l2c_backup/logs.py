"""Log lines: JSON with the run's keys (request id, function, database, kind, key) added
once per run, and a last line of defence that masks any registered secret value."""
import contextlib
import contextvars
import json
import logging
import time

_context = contextvars.ContextVar("l2c_log_context", default={})
_secrets = set()
MASK = "***"


@contextlib.contextmanager
def bound(**keys):
    """Adds keys to every log line inside the block."""
    token = _context.set({**_context.get(), **{k: v for k, v in keys.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def bound_value(key):
    """A key bound by the enclosing `bound` blocks (e.g. the request id), or None."""
    return _context.get().get(key)


def register_secret(*values):
    """Values that must never appear in a log line (passwords, keys, tokens)."""
    _secrets.update(v for v in values if v and len(v) >= 4)


def redact(text):
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def _redacting_record_factory(base):
    # Masks secrets when a record is made, so no handler anywhere (FC's, a test's, an
    # embedding app's) sees one: oss2 at DEBUG logs request headers and the STS token.
    def make(*args, **kwargs):
        record = base(*args, **kwargs)
        if _secrets:
            message = record.getMessage()
            clean = redact(message)
            if clean != message:
                record.msg, record.args = clean, None
        return record
    make.l2c_redacting = True
    return make


if not getattr(logging.getLogRecordFactory(), "l2c_redacting", False):
    logging.setLogRecordFactory(_redacting_record_factory(logging.getLogRecordFactory()))


class JsonFormatter(logging.Formatter):
    def format(self, record):
        line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z",
                "level": record.levelname.lower(), "logger": record.name,
                "message": record.getMessage(), **_context.get()}
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return redact(json.dumps(line, ensure_ascii=False, default=str))


class RedactingFormatter(logging.Formatter):
    def format(self, record):
        keys = " ".join(f"{k}={v}" for k, v in _context.get().items())
        return redact(super().format(record) + (f" [{keys}]" if keys else ""))


def setup(json_lines=False, level=logging.INFO):
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_lines else
                         RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # oss2 logs every request and every 404 at INFO: keep that for -v only.
    logging.getLogger("oss2").setLevel(logging.DEBUG if level <= logging.DEBUG else logging.WARNING)
