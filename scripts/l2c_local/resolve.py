"""Names under `oss-local.test` resolve to 127.0.0.1, so oss2 addresses the local OSS
server virtual-hosted (`Host: <bucket>.oss-local.test:PORT`) as it addresses Aliyun.

oss2 uses path style only for an IP or `localhost` endpoint; every real endpoint is a
name, and the bucket goes in front of it. To test that shape the bucket's name must
resolve, but `*.localhost` does not on hosts whose resolver is plain `files dns`, and
/etc/hosts takes no wildcards. So this module maps one reserved test domain (`.test`,
RFC 6761: never delegated in public DNS) to the loopback address inside the Python
process, by wrapping `socket.getaddrinfo` and friends. The HTTP is real: a real socket
to 127.0.0.1, the real Host header; only the name lookup is answered here.

- `install()`: in this process (idempotent).
- `child_env(env)`: the environment for a Python subprocess: it puts `resolve_hook/`
  on PYTHONPATH, whose sitecustomize.py calls `install()` at interpreter start.
"""
import os
import socket

TEST_DOMAIN = "oss-local.test"
LOOPBACK = "127.0.0.1"
HOOK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resolve_hook")

_real = {}


def maps(host):
    """True for the test domain and every name under it (case-insensitive)."""
    if not isinstance(host, str):
        host = host.decode("ascii", "replace") if isinstance(host, bytes) else ""
    host = host.rstrip(".").lower()
    return host == TEST_DOMAIN or host.endswith("." + TEST_DOMAIN)


def _getaddrinfo(host, *args, **kwargs):
    return _real["getaddrinfo"](LOOPBACK if host and maps(host) else host, *args, **kwargs)


def _gethostbyname(host):
    return LOOPBACK if maps(host) else _real["gethostbyname"](host)


def _gethostbyname_ex(host):
    if maps(host):
        return host, [], [LOOPBACK]
    return _real["gethostbyname_ex"](host)


def install():
    """Maps `*.oss-local.test` to 127.0.0.1 in this process; other names are untouched."""
    if _real:
        return
    for name, hook in (("getaddrinfo", _getaddrinfo), ("gethostbyname", _gethostbyname),
                       ("gethostbyname_ex", _gethostbyname_ex)):
        _real[name] = getattr(socket, name)
        setattr(socket, name, hook)


def installed():
    return bool(_real)


def child_env(env=None):
    """`env` (default: this process's) with the hook on PYTHONPATH, for Python subprocesses."""
    env = dict(os.environ if env is None else env)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != HOOK_DIR]
    env["PYTHONPATH"] = os.pathsep.join([HOOK_DIR] + paths)
    return env
