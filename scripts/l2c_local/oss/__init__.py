from .server import Fault, LocalOSS

__all__ = ["Fault", "LocalOSS"]
