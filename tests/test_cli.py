"""The `l2c-backup` command as an operator runs it: a real subprocess each time."""
import json
import signal
import subprocess
import sys

import oss2
import pytest

CLI = [sys.executable, "-m", "l2c_backup.cli"]


def run_cli(*args, **kwargs):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=300, **kwargs)


@pytest.mark.parametrize("command", [[], ["oss-server"], ["demo"]])
def test_every_command_has_help(command):
    result = run_cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: l2c-backup" in result.stdout


def test_unknown_command_is_refused_with_the_list_of_commands():
    result = run_cli("backpu")
    assert result.returncode == 2
    assert "invalid choice: 'backpu'" in result.stderr
    assert "oss-server" in result.stderr


def start_oss_server(data_dir):
    proc = subprocess.Popen(CLI + ["oss-server", "--port", "0", "--data", str(data_dir), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    return proc, json.loads(line)


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


def test_oss_server_command_prints_its_details_serves_oss2_and_keeps_state_across_restarts(tmp_path):
    proc, details = start_oss_server(tmp_path / "oss")
    try:
        assert details["buckets"] == ["l2c-backups", "l2c-backups-dr"]
        auth = oss2.Auth(details["access_key_id"], details["access_key_secret"])
        oss2.Bucket(auth, details["endpoint"], "l2c-backups").put_object("db-backups/k", b"kept")
    finally:
        stop(proc)

    proc, details = start_oss_server(tmp_path / "oss")
    try:
        auth = oss2.Auth(details["access_key_id"], details["access_key_secret"])
        bucket = oss2.Bucket(auth, details["endpoint"], "l2c-backups")
        assert bucket.get_object("db-backups/k").read() == b"kept"
    finally:
        stop(proc)


def test_oss_server_command_names_a_port_in_use(tmp_path):
    proc, details = start_oss_server(tmp_path / "a")
    try:
        port = details["endpoint"].rsplit(":", 1)[1]
        result = run_cli("oss-server", "--port", port, "--data", str(tmp_path / "b"))
        assert result.returncode != 0
        assert f"port {port}" in result.stderr
    finally:
        stop(proc)


def test_demo_runs_the_local_setup_end_to_end():
    result = run_cli("demo")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "multipart upload of 3 parts completed" in result.stdout
    assert "seeded database l2c_demo" in result.stdout


def test_demo_with_an_unreachable_database_url_says_what_to_check(monkeypatch):
    env = {"DATABASE_URL": "postgresql://backup:s3cret-pw@127.0.0.1:1/app", "PATH": "/usr/bin:/bin"}
    result = run_cli("demo", env=env)
    assert result.returncode == 1
    assert "cannot connect to DATABASE_URL (127.0.0.1:1/app)" in result.stderr
    assert "s3cret-pw" not in result.stdout + result.stderr
