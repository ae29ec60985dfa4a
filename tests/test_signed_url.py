"""The status page's way out of a private bucket: put_bytes stores it with its headers
(private as the bucket is), signed_url makes a time-limited link a browser opens without credentials.

The real oss2 client signs, the local OSS server rebuilds the signature from the request
it receives, and the page is fetched with urllib as a browser would fetch it: no key, no
SDK, only the URL.
"""
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import oss2
import pytest

from l2c_backup.errors import ConfigInvalid
from l2c_backup.storage import open_storage
from l2c_backup.storage.oss import OSSSettings
from l2c_local.oss import LocalOSS
from oss_fixtures import BUCKET, bucket_for

PAGE_KEY = "db-backups/status/index.html"
PAGE = "<!doctype html><title>L2C</title><p>备份 daily: ok</p>".encode()
HTML = "text/html; charset=utf-8"

# urllib as a browser: no proxy from the environment between it and the local server.
BROWSER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch(url, method="GET"):
    """(status, headers, body) of a plain, unsigned-by-us HTTP request to `url`."""
    try:
        with BROWSER.open(urllib.request.Request(url, method=method), timeout=10) as answer:
            return answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as refused:
        with refused:
            return refused.code, refused.headers, refused.read()


def oss_storage(server, endpoint=None, status_domain="", **credentials):
    settings = OSSSettings(endpoint or server.endpoint,
                           credentials.get("access_key_id", server.access_key_id),
                           credentials.get("access_key_secret", server.access_key_secret),
                           security_token=credentials.get("security_token", ""),
                           status_domain=status_domain)
    return open_storage(f"oss://{BUCKET}/db-backups/", settings)


def put_page(storage, disposition="inline"):
    return storage.put_bytes(PAGE_KEY, PAGE, content_type=HTML, content_disposition=disposition)


def error_code(body):
    return body.split(b"<Code>")[1].split(b"</Code>")[0].decode()


def with_query(url, **changes):
    """`url` with query parameters replaced (as someone editing the link would)."""
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


# A custom domain must be a name for oss2 to sign for it (it addresses `localhost` and
# IPs path style); this one resolves here (l2c_local.resolve) and is no bucket's.
STATUS_DOMAIN = "status.example.oss-local.test"


@pytest.fixture
def custom_domain_server():
    """A server with STATUS_DOMAIN bound to the bucket, while its default addressing is
    the IP (path style) and oss-local.test (virtual-hosted)."""
    with LocalOSS(buckets=[BUCKET], cnames={STATUS_DOMAIN: BUCKET}) as server:
        yield server


def test_a_page_inherits_the_private_bucket_and_anonymous_readers_are_refused(oss_server):
    storage = oss_storage(oss_server)
    put_page(storage)

    status, _, body = fetch(f"http://{BUCKET}.oss-local.test:{oss_server.port}/{PAGE_KEY}")
    assert (status, error_code(body)) == (403, "AccessDenied")
    with oss_server.store.lock:
        # no object ACL of its own: that would need oss:PutObjectAcl (policies.py)
        assert oss_server.store.latest(oss_server.store.bucket(BUCKET), PAGE_KEY).acl == "default"
    assert bucket_for(oss_server).head_object(PAGE_KEY).content_type == HTML


def test_the_signed_url_opens_the_page_for_a_while_and_on_oss_own_domain_as_a_download(oss_server):
    storage = oss_storage(oss_server)
    put_page(storage)

    before = time.time()
    url = storage.signed_url(PAGE_KEY, 3600)
    status, headers, body = fetch(url)

    assert url.startswith(f"http://{BUCKET}.oss-local.test:{oss_server.port}/{PAGE_KEY}?")
    assert int(parse_qs(urlsplit(url).query)["Expires"][0]) - before == pytest.approx(3600, abs=2)
    assert (status, body) == (200, PAGE)
    assert headers["Content-Type"] == HTML
    # OSS's own domain makes every web page a download, whatever was stored.
    assert headers["Content-Disposition"] == "attachment"
    assert headers["x-oss-force-download"] == "true"


def test_on_the_bound_custom_domain_the_page_keeps_its_own_disposition(custom_domain_server):
    server = custom_domain_server
    storage = oss_storage(server, endpoint=server.endpoint_ip,
                          status_domain=f"http://{STATUS_DOMAIN}:{server.port}")
    put_page(storage)

    url = storage.signed_url(PAGE_KEY, 600)
    status, headers, body = fetch(url)

    assert url.startswith(f"http://{STATUS_DOMAIN}:{server.port}/{PAGE_KEY}?")
    assert (status, body) == (200, PAGE)
    assert headers["Content-Type"] == HTML
    assert headers["Content-Disposition"] == "inline"
    assert "x-oss-force-download" not in headers
    # The same object by the default addressing (path style on the IP) is still a download.
    default = oss_storage(server, endpoint=server.endpoint_ip).signed_url(PAGE_KEY, 600)
    assert fetch(default)[1]["Content-Disposition"] == "attachment"


def test_an_expired_url_is_refused_with_its_expiry_and_the_server_time(oss_server):
    put_page(oss_storage(oss_server))
    # oss2 signs a URL whose Expires has passed already (ours refuse such a lifetime).
    url = bucket_for(oss_server).sign_url("GET", PAGE_KEY, -5, slash_safe=True)

    status, _, body = fetch(url)

    assert (status, error_code(body)) == (403, "AccessDenied")
    assert b"<Message>Request has expired.</Message>" in body
    assert b"<Expires>" in body and b"<ServerTime>" in body


def test_a_tampered_url_is_refused_as_a_bad_signature(oss_server):
    storage = oss_storage(oss_server)
    put_page(storage)
    storage.put_bytes("db-backups/daily/backup_2026-01-01.sql.gz.manifest.json", b"{}")
    url = storage.signed_url(PAGE_KEY, 600)
    expires = int(parse_qs(urlsplit(url).query)["Expires"][0])

    other_key = url.replace("status/index.html", "daily/backup_2026-01-01.sql.gz.manifest.json")
    later = with_query(url, Expires=str(expires + 86400))

    for tampered in (other_key, later):
        status, _, body = fetch(tampered)
        assert (status, error_code(body)) == (403, "SignatureDoesNotMatch"), tampered
    assert fetch(url)[0] == 200


def test_a_url_signed_with_sts_credentials_carries_the_token_and_needs_it(oss_server):
    oss_server.add_credentials("STS.status-role", "role-secret", security_token="role-token")
    storage = oss_storage(oss_server, access_key_id="STS.status-role",
                          access_key_secret="role-secret", security_token="role-token")
    put_page(storage)

    url = storage.signed_url(PAGE_KEY, 600)
    assert parse_qs(urlsplit(url).query)["security-token"] == ["role-token"]
    status, _, body = fetch(url)
    assert (status, body) == (200, PAGE)

    other_token = fetch(with_query(url, **{"security-token": "stolen-token"}))
    assert (other_token[0], error_code(other_token[2])) == (403, "InvalidSecurityToken")


def test_a_head_through_a_signed_url_is_served_and_a_put_is_refused(oss_server):
    put_page(oss_storage(oss_server))
    bucket = bucket_for(oss_server)

    status, headers, _ = fetch(bucket.sign_url("HEAD", PAGE_KEY, 600, slash_safe=True), "HEAD")
    assert (status, headers["Content-Length"]) == (200, str(len(PAGE)))
    status, _, body = fetch(bucket.sign_url("PUT", PAGE_KEY, 600, slash_safe=True), "PUT")
    assert (status, error_code(body)) == (501, "NotImplemented")
    assert bucket.get_object(PAGE_KEY).read() == PAGE


def test_a_v4_signed_url_is_refused_as_not_implemented_not_served(oss_server):
    put_page(oss_storage(oss_server))
    auth = oss2.AuthV4(oss_server.access_key_id, oss_server.access_key_secret)
    url = bucket_for(oss_server, auth=auth, region=oss_server.region).sign_url(
        "GET", PAGE_KEY, 600, slash_safe=True)

    status, _, body = fetch(url)
    assert "x-oss-signature-version=OSS4-HMAC-SHA256" in url
    assert (status, error_code(body)) == (501, "NotImplemented")


@pytest.mark.parametrize("acl, code", [("public-read", "NotImplemented"),
                                       ("public-read-write", "NotImplemented"),
                                       ("everyone", "InvalidArgument")])
def test_an_object_is_never_made_public_by_its_acl(bucket, acl, code):
    with pytest.raises(oss2.exceptions.ServerError) as refused:
        bucket.put_object(PAGE_KEY, PAGE, headers={"x-oss-object-acl": acl})

    assert (refused.value.status, refused.value.code) == (400, code)
    assert not bucket.object_exists(PAGE_KEY)


def test_stored_headers_come_back_on_get_and_head_and_travel_with_a_copy(bucket):
    key, copy = "db-backups/status/history.csv", "db-backups/status/history-copy.csv"
    bucket.put_object(key, b"at,kind\n", headers={
        "Content-Type": "text/csv", "Content-Disposition": 'attachment; filename="h.csv"',
        "Cache-Control": "no-cache", "x-oss-object-acl": "default"})
    bucket.copy_object(BUCKET, key, copy)

    for stored in (key, copy):
        for headers in (bucket.head_object(stored).headers, bucket.get_object(stored).headers):
            assert headers["Content-Disposition"] == 'attachment; filename="h.csv"'
            assert headers["Cache-Control"] == "no-cache"
            assert headers["Content-Type"] == "text/csv"
            assert "x-oss-force-download" not in headers  # not a web page


@pytest.mark.parametrize("seconds", [59, 0, -1, 7 * 24 * 3600 + 1])
def test_a_url_lifetime_outside_a_minute_to_a_week_is_refused(oss_server, seconds):
    with pytest.raises(ConfigInvalid, match="60 seconds to 7 days"):
        oss_storage(oss_server).signed_url(PAGE_KEY, seconds)


@pytest.mark.parametrize("seconds", [60, 7 * 24 * 3600])
def test_the_lifetime_limits_themselves_are_signed(oss_server, seconds):
    storage = oss_storage(oss_server)
    put_page(storage)
    assert fetch(storage.signed_url(PAGE_KEY, seconds))[0] == 200


def test_a_directory_backend_gives_a_file_uri_that_opens(tmp_path):
    storage = open_storage(str(tmp_path / "backups"))
    storage.put_bytes(PAGE_KEY, PAGE, content_type=HTML, content_disposition="inline")

    url = storage.signed_url(PAGE_KEY, 600)

    assert url == (tmp_path / "backups" / PAGE_KEY).as_uri()
    with urllib.request.urlopen(url) as opened:
        assert opened.read() == PAGE


def test_the_oss_server_command_binds_a_custom_domain_to_a_bucket():
    proc = subprocess.Popen([sys.executable, "-m", "l2c_backup.cli", "oss-server", "--port", "0",
                             "--cname", f"{STATUS_DOMAIN}={BUCKET}", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        details = json.loads(proc.stdout.readline() or proc.stderr.read())
        assert details["cnames"] == {STATUS_DOMAIN: BUCKET}
        port = details["endpoint"].rsplit(":", 1)[1]
        settings = OSSSettings(details["endpoint"], details["access_key_id"],
                               details["access_key_secret"],
                               status_domain=f"http://{STATUS_DOMAIN}:{port}")
        storage = open_storage(f"oss://{BUCKET}/db-backups/", settings)
        put_page(storage)

        status, headers, body = fetch(storage.signed_url(PAGE_KEY, 600))
        assert (status, body, headers["Content-Disposition"]) == (200, PAGE, "inline")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.parametrize("binding", [STATUS_DOMAIN, "=l2c-backups", "oss-local.test=l2c-backups",
                                     "l2c-backups.oss-local.test=l2c-backups"])
def test_the_oss_server_command_names_a_bad_custom_domain_in_one_line(binding):
    result = subprocess.run([sys.executable, "-m", "l2c_backup.cli", "oss-server", "--port", "0",
                             "--cname", binding], capture_output=True, text=True, timeout=60)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("l2c-backup oss-server: --cname")
