"""The storage seam's failures as an operator meets them: `l2c-backup` run as a real
subprocess against the local OSS server (or a closed port), each failure ending in one
line on stderr that names endpoint, bucket and key or prefix and what to do, with its
documented exit code, no traceback and no secret."""
import gzip
import json
import os
import socket
import subprocess
import sys

import pytest

from l2c_local.oss import Fault

CLI = [sys.executable, "-m", "l2c_backup.cli"]
BUCKET = "l2c-backups"
KEY = "db-backups/daily/backup_2026-01-20.sql.gz"
WRONG_SECRET = "wrong-secret-Zx9QvT3mKp"


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(server, **overrides):
    """A clean environment: the server's settings, nothing inherited that names OSS,
    alert channels or a database (the resolver hook for oss-local.test stays)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OSS_", "ALERT_", "BACKUP_", "DATABASE_", "ALIBABA_CLOUD_"))}
    env.update({"OSS_ENDPOINT": server.endpoint, "OSS_BACKUP_BUCKET": BUCKET,
                "OSS_ACCESS_KEY_ID": server.access_key_id,
                "OSS_ACCESS_KEY_SECRET": server.access_key_secret})
    env.update(overrides)
    return env


def run_cli(args, env):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=300, env=env)


def the_line(result, command):
    """The one failure line of `command` on stderr (log lines may come before it)."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"l2c-backup {command}:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def stored(oss_server, bucket):
    bucket.put_object(KEY, b"not reached")
    return oss_server


def wrong_secret(server):
    return environment(server, OSS_ACCESS_KEY_SECRET=WRONG_SECRET), server.endpoint, BUCKET, \
        "SignatureDoesNotMatch", "OSS_ACCESS_KEY_SECRET"


def missing_bucket(server):
    return environment(server, OSS_BACKUP_BUCKET="no-such-bucket"), server.endpoint, \
        "no-such-bucket", "NoSuchBucket", "OSS_BACKUP_BUCKET"


def dead_endpoint(server):
    endpoint = f"http://{server.hostname}:{closed_port()}"
    return environment(server, OSS_ENDPOINT=endpoint), endpoint, BUCKET, \
        "connection refused", "OSS_ENDPOINT"


COMMANDS = {
    "verify KEY": (["verify", KEY], KEY),
    "verify --all": (["verify", "--all"], "db-backups/"),
    "mirror": (["mirror", "--to", "{tmp}/mirror"], "db-backups/"),
    "restore --latest": (["restore", "--latest", "--target-url",
                          "postgresql://nobody@127.0.0.1:1/none"], "db-backups/"),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("failure", [wrong_secret, missing_bucket, dead_endpoint],
                         ids=lambda f: f.__name__)
def test_a_storage_failure_ends_in_one_line_with_exit_21(stored, tmp_path, failure, command):
    env, endpoint, bucket, cause, what_to_do = failure(stored)
    args, subject = COMMANDS[command]
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]

    result = run_cli(args, env)

    line = the_line(result, args[0])
    assert result.returncode == 21, result.stderr
    assert endpoint in line and bucket in line and subject in line, line
    assert cause in line and "what to do:" in line and what_to_do in line, line
    everything = result.stdout + result.stderr
    assert stored.access_key_secret not in everything and WRONG_SECRET not in everything


def test_verify_of_a_key_that_does_not_exist_is_one_line_with_exit_22(stored):
    missing = "db-backups/daily/backup_2020-01-01.sql.gz"
    result = run_cli(["verify", missing], environment(stored))
    line = the_line(result, "verify")
    assert result.returncode == 22, result.stderr
    assert f"no object {missing} in oss://{BUCKET}/db-backups/" in line


@pytest.mark.parametrize("target", ["oss://", "oss:///x", "oss://Bad_Bucket/x"])
@pytest.mark.parametrize("command", [["verify", "--all", "--from"], ["mirror", "--to", "/tmp/x", "--from"]])
def test_a_bad_bucket_name_in_from_is_one_config_line_with_exit_2(stored, command, target):
    result = run_cli(command + [target], environment(stored))
    line = the_line(result, command[0])
    assert result.returncode == 2, result.stderr
    assert target in line and "3-63 characters" in line, line


def test_a_bad_bucket_name_in_backup_target_is_one_config_line(stored):
    result = run_cli(["verify", "--all"], environment(stored, BACKUP_TARGET="oss://Bad_Bucket/x"))
    line = the_line(result, "verify")
    assert result.returncode == 2 and "oss://Bad_Bucket/x" in line and "3-63" in line, line


def test_verify_through_drops_that_outlast_the_retries_is_one_line_and_no_verdict(stored, bucket):
    data = gzip.compress(os.urandom(3 << 20), compresslevel=1)  # gzip: read to its end
    bucket.put_object(KEY, data)

    class KeyGet(Fault):
        def matches(self, method, bucket_name, key, params):
            return super().matches(method, bucket_name, key, params) and key == KEY and not params

    stored.inject(KeyGet(method="GET", drop_response_after=len(data) // 2))
    stored.inject(KeyGet(method="GET", drop_response_after=0, times=None))

    result = run_cli(["verify", KEY, "--manifest-wait", "0"], environment(stored))

    line = the_line(result, "verify")
    assert result.returncode == 21, result.stderr
    assert KEY in line and BUCKET in line and stored.endpoint in line and "dropped" in line, line
    assert bucket.get_object_tagging(KEY).tag_set.tagging_rule == {}
    assert not bucket.object_exists(KEY + ".verify.json")


def test_verify_through_one_dropped_connection_still_gives_the_verdict(stored, bucket):
    data = os.urandom(3 << 20)  # not gzip: the verdict is "not-gzip"
    bucket.put_object(KEY, data)

    class KeyGet(Fault):
        def matches(self, method, bucket_name, key, params):
            return super().matches(method, bucket_name, key, params) and key == KEY and not params

    drop = stored.inject(KeyGet(method="GET", drop_response_after=100))

    result = run_cli(["verify", KEY, "--manifest-wait", "0", "--json"], environment(stored))

    assert result.returncode == 15, result.stderr  # BackupCorrupt: the object is not a backup
    assert "Traceback" not in result.stderr
    assert json.loads(result.stdout)["results"][0]["reason"] == "not-gzip"
    assert drop.hits == 1
