"""Faults a test can script into the local OSS server: errors, dropped connections, delays."""
import threading
from dataclasses import dataclass, field, fields

DEFAULT_CODES = {403: "AccessDenied", 404: "NoSuchKey", 500: "InternalError",
                 502: "BadGateway", 503: "ServiceUnavailable", 504: "GatewayTimeout"}


@dataclass
class Fault:
    """Acts on matching requests: lets the first `skip` through, then the next `times`
    (None: all). A request matches when every criterion that is set matches; `query` is a
    parameter that must be in the query string (such as "partNumber" or "uploads")."""

    method: str = None
    bucket: str = None
    key_prefix: str = None
    query: str = None
    skip: int = 0
    times: int = 1
    status: int = None
    code: str = None
    drop_request_after: int = None
    drop_response_after: int = None
    delay: float = 0.0
    hits: int = 0
    seen: int = field(default=0, repr=False)

    @classmethod
    def from_json(cls, data):
        names = {f.name for f in fields(cls)} - {"hits", "seen"}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}; known: {sorted(names)}")
        return cls(**data)

    def matches(self, method, bucket, key, params):
        return ((self.method is None or self.method == method)
                and (self.bucket is None or self.bucket == bucket)
                and (self.key_prefix is None or (key is not None and key.startswith(self.key_prefix)))
                and (self.query is None or any(name == self.query for name, _ in params)))

    @property
    def error_code(self):
        return self.code or DEFAULT_CODES.get(self.status, "InternalError")


class FaultPlan:
    def __init__(self):
        self._faults = []
        self._lock = threading.Lock()

    def add(self, fault):
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self):
        with self._lock:
            self._faults.clear()

    def take(self, method, bucket, key, params):
        """The fault that acts on this request, if any (counting it as a hit)."""
        with self._lock:
            for fault in self._faults:
                if not fault.matches(method, bucket, key, params):
                    continue
                fault.seen += 1
                if fault.seen <= fault.skip:
                    continue
                if fault.times is not None and fault.hits >= fault.times:
                    continue
                fault.hits += 1
                return fault
        return None
