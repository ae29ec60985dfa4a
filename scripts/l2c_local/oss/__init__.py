from .server import LocalOSS, Fault
