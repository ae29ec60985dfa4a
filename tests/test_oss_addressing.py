"""How requests reach the local OSS server: the bucket in the Host header as oss2 sends it
to every named endpoint, path style for IP endpoints, V1 dates, and the shape of answers
(one Date header; HEAD errors that still name their error)."""

import time
from urllib.parse import unquote, urlsplit

import oss2
import pytest
import requests
from oss2 import http as oss2_http
from oss2 import utils

from oss_fixtures import BUCKET, bucket_for

KEY = "db-backups/daily/backup_2026-01-01.sql.gz"


def sent_url(result):
    """The URL oss2 really requested (requests' prepared request)."""
    return result.resp.response.request.url


def test_oss2_on_the_named_endpoint_puts_the_bucket_in_the_host_and_is_served(oss_server):
    assert oss_server.endpoint == "http://oss-local.test:{}".format(oss_server.port)
    bucket = bucket_for(oss_server)

    put = bucket.put_object(KEY, b"virtual")
    got = bucket.get_object(KEY)

    sent = urlsplit(sent_url(put))
    assert (sent.netloc, unquote(sent.path)) == (
        "{}.oss-local.test:{}".format(BUCKET, oss_server.port), "/" + KEY)
    assert got.read() == b"virtual"
    assert [o.key for o in bucket.list_objects_v2(prefix="db-backups/").object_list] == [KEY]


def test_oss2_on_the_ip_endpoint_uses_path_style_and_sees_the_same_objects(oss_server):
    bucket_for(oss_server).put_object(KEY, b"same store")
    by_ip = oss2.Bucket(oss2.Auth(oss_server.access_key_id, oss_server.access_key_secret),
                        oss_server.endpoint_ip, BUCKET)

    got = by_ip.get_object(KEY)

    assert sent_url(got).startswith("http://127.0.0.1:{}/{}/".format(oss_server.port, BUCKET))
    assert got.read() == b"same store"


def test_v4_signed_requests_are_served_virtual_hosted(oss_server):
    bucket = bucket_for(oss_server, auth=oss2.AuthV4(oss_server.access_key_id,
                                                     oss_server.access_key_secret),
                        region=oss_server.region)

    bucket.put_object(KEY, b"v4")

    assert bucket.get_object(KEY).read() == b"v4"


def test_path_style_on_the_named_endpoint_is_refused_as_oss_refuses_it(oss_server):
    bucket = bucket_for(oss_server, is_path_style=True)

    with pytest.raises(oss2.exceptions.ServerError) as refused:
        bucket.put_object(KEY, b"x")

    assert (refused.value.status, refused.value.code) == (403, "SecondLevelDomainForbidden")


def test_a_host_outside_the_endpoint_domain_is_refused(oss_server):
    answer = requests.get("{}/{}".format(oss_server.endpoint_ip, BUCKET),
                          headers={"Host": "l2c-backups.elsewhere.example"}, timeout=5)

    assert answer.status_code == 400
    assert b"<Code>InvalidRequest</Code>" in answer.content


def test_listing_buckets_on_the_named_endpoint_needs_no_bucket_in_the_host(oss_server):
    service = oss2.Service(oss2.Auth(oss_server.access_key_id, oss_server.access_key_secret),
                           oss_server.endpoint)

    assert [b.name for b in service.list_buckets().buckets] == [BUCKET]


def test_a_v1_request_dated_only_by_x_oss_date_is_served(oss_server, bucket):
    bucket.put_object(KEY, b"dated")
    req = oss2_http.Request("GET", "{}/{}/{}".format(oss_server.endpoint_ip, BUCKET, KEY),
                            headers={"x-oss-date": utils.http_date()})
    bucket.auth._sign_request(req, BUCKET, KEY)  # oss2 signs the x-oss-date in the Date line
    del req.headers["date"]

    resp = oss2_http.Session().do_request(req, timeout=10)

    assert resp.status == 200
    assert resp.read() == b"dated"


def test_a_skewed_x_oss_date_outweighs_a_correct_date_header(bucket):
    # The official oss2 suite's test_sign_v1_x_oss_date: x-oss-date wins over Date.
    headers = {"x-oss-date": utils.http_date(int(time.time()) + 24 * 3600)}

    with pytest.raises(oss2.exceptions.ServerError) as refused:
        bucket.list_objects("db-backups/", headers=headers)

    assert refused.value.status == 403
    assert refused.value.code == "RequestTimeTooSkewed"


def dates(result):
    return result.resp.response.raw.headers.getlist("Date")


def test_every_answer_carries_exactly_one_date_header(bucket):
    put = bucket.put_object(KEY, b"once")
    get = bucket.get_object(KEY)
    head = bucket.head_object(KEY)
    with pytest.raises(oss2.exceptions.NoSuchKey) as missing:
        bucket.get_object("db-backups/missing")

    assert [len(dates(r)) for r in (put, get, head)] == [1, 1, 1]
    assert missing.value.headers["Date"].count("GMT") == 1  # requests joins repeats with ", "


def test_head_of_a_missing_key_raises_no_such_key(bucket):
    with pytest.raises(oss2.exceptions.NoSuchKey) as missing:
        bucket.head_object("db-backups/missing")

    assert missing.value.headers["x-oss-ec"] == "0026-00000001"


def test_head_in_a_missing_bucket_raises_no_such_bucket(oss_server):
    with pytest.raises(oss2.exceptions.NoSuchBucket):
        bucket_for(oss_server, name="no-such-bucket").head_object(KEY)


def test_object_meta_of_a_missing_key_raises_no_such_key(bucket):
    with pytest.raises(oss2.exceptions.NoSuchKey):
        bucket.get_object_meta("db-backups/missing")
