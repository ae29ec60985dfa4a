"""pytest plugin loaded (`-p oss2_suite_plugin`) into the run of oss2's own test modules.

It starts the local OSS server in that process and points the suite at it through the
OSS_TEST_* variables its `tests/common.py` reads at import, so this must happen before the
test modules are collected. Nothing in the suite or in oss2 is patched: the only thing
given is an endpoint and a key pair, as a developer of oss2 gives a real account, and a
name lookup for the endpoint's test domain.
"""
import os

from l2c_local import resolve
from l2c_local.oss import LocalOSS

_server = None


def pytest_configure(config):
    global _server
    # The endpoint is a name (oss-local.test), so oss2 addresses buckets virtual-hosted as
    # on Aliyun; the name resolves to loopback inside this process only.
    resolve.install()
    _server = LocalOSS()
    _server.start()
    os.environ.update({
        "OSS_TEST_ENDPOINT": _server.endpoint,
        "OSS_TEST_ACCESS_KEY_ID": _server.access_key_id,
        "OSS_TEST_ACCESS_KEY_SECRET": _server.access_key_secret,
        "OSS_TEST_REGION": _server.region,
    })
    # The suite's STS, payer (request payment), RAM, CNAME and UID settings stay unset:
    # the tests that need them are out of scope (out_of_scope.txt says why, one by one).
    for name in ("OSS_TEST_BUCKET", "OSS_TEST_CNAME", "OSS_TEST_UID", "OSS_TEST_STS_ID",
                 "OSS_TEST_STS_KEY", "OSS_TEST_STS_ARN", "OSS_TEST_AUTH_SERVER_HOST"):
        os.environ.pop(name, None)


def pytest_deselected(items):
    # The runner checks that every out-of-scope name still names a test of this oss2.
    path = os.environ.get("OSS2_SUITE_DESELECTED")
    if path:
        with open(path, "a") as f:
            f.writelines(item.nodeid + "\n" for item in items)


def pytest_report_header(config):
    return f"oss2 conformance: local OSS server at {_server.endpoint}" if _server else None


def pytest_unconfigure(config):
    if _server is not None:
        _server.stop()
