"""The `l2c-backup` command as an operator runs it: a real subprocess each time."""
import json
import signal
import subprocess
import sys

import oss2
import pytest

from pg_fixtures import WAITING_ON_A_LOCK, table_locked

CLI = [sys.executable, "-m", "l2c_backup.cli"]


def run_cli(*args, **kwargs):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=300, **kwargs)


@pytest.mark.parametrize("command", [[], ["backup"], ["oss-server"], ["demo"]])
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
        # path style on the IP endpoint above, virtual-hosted on the named one here
        bucket = oss2.Bucket(auth, details["virtual_hosted_endpoint"], "l2c-backups")
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


def test_demo_backs_up_the_seeded_cluster_to_local_oss_and_proves_the_restore():
    result = run_cli("demo")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "backup: oss://l2c-backups/db-backups/manual/backup_" in result.stdout
    assert '"sales.orders": 119978' in result.stdout  # the manifest is shown
    assert "| gunzip | psql" in result.stdout
    assert "all 7 tables and the large objects equal the source" in result.stdout


def test_backup_command_writes_to_a_directory_and_prints_a_json_summary(pg_cluster, seeded_db,
                                                                        tmp_path):
    result = run_cli("backup", "--kind", "daily", "--database-url", pg_cluster.url(seeded_db),
                     "--to", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    (done,) = json.loads(result.stdout)["backups"]
    assert (tmp_path / done["key"]).stat().st_size == done["bytes"] > 0
    assert (tmp_path / (done["key"] + ".manifest.json")).exists()

    again = run_cli("backup", "--kind", "daily", "--database-url", pg_cluster.url(seeded_db),
                    "--to", str(tmp_path))
    assert again.returncode == 0 and "skipped: the daily backup" in again.stdout


def test_backup_command_without_a_target_says_which_variable_to_set(pg_cluster, seeded_db):
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": pg_cluster.url(seeded_db)}
    result = run_cli("backup", env=env)
    assert result.returncode == 2
    assert "OSS_BACKUP_BUCKET is not set" in result.stderr


def test_demo_with_an_unreachable_database_url_says_what_to_check(monkeypatch):
    env = {"DATABASE_URL": "postgresql://backup:s3cret-pw@127.0.0.1:1/app", "PATH": "/usr/bin:/bin"}
    result = run_cli("demo", env=env)
    assert result.returncode == 10  # DatabaseUnreachable
    assert "cannot connect to 127.0.0.1:1: connection refused" in result.stderr
    assert "s3cret-pw" not in result.stdout + result.stderr


# -- one line, the documented exit code, and an alert where nobody would hear (issue 12) -----

def error_line(result, command):
    """The one line a failed command ends with; never a traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"l2c-backup {command}:")]
    assert len(lines) == 1 and result.stderr.rstrip().endswith(lines[0]), result.stderr
    return lines[0]


def a_dump_without_manifest(root):
    """A whole, valid backup object whose manifest was never written."""
    import gzip
    key = "db-backups/daily/backup_2026-11-27.sql.gz"
    path = root / key
    path.parent.mkdir(parents=True)
    path.write_bytes(gzip.compress(b"--\n-- PostgreSQL database dump\n--\n\nSELECT 1;\n\n"
                                   b"--\n-- PostgreSQL database dump complete\n--\n\n"))
    return key


def test_verify_command_waits_verify_manifest_wait_seconds_for_a_missing_manifest(tmp_path):
    key = a_dump_without_manifest(tmp_path)
    env = {"PATH": "/usr/bin:/bin", "VERIFY_MANIFEST_WAIT_SECONDS": "1"}
    result = run_cli("verify", key, "--from", str(tmp_path), env=env)
    assert result.returncode == 15  # BackupCorrupt
    assert f"no {key}.manifest.json after 1s" in result.stdout
    flag = run_cli("verify", key, "--from", str(tmp_path), "--manifest-wait", "2", env=env)
    assert "after 2s" in flag.stdout  # the flag wins over the variable
    bad = run_cli("verify", key, "--from", str(tmp_path),
                  env=dict(env, VERIFY_MANIFEST_WAIT_SECONDS="soon"))
    assert bad.returncode == 2
    assert "VERIFY_MANIFEST_WAIT_SECONDS is invalid" in error_line(bad, "verify")


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_oss_server_refuses_a_port_out_of_range_in_one_line(port):
    result = run_cli("oss-server", "--port", port)
    assert result.returncode == 2  # ConfigInvalid
    line = error_line(result, "oss-server")
    assert f"--port {port} is out of range" in line and "0-65535" in line


def test_oss_server_names_a_data_path_that_is_a_file_not_the_port(tmp_path):
    data = tmp_path / "state"
    data.write_text("not a directory")
    result = run_cli("oss-server", "--port", "0", "--data", str(data))
    assert result.returncode == 2
    line = error_line(result, "oss-server")
    assert f"--data {data} is not a directory" in line and "port" not in line.split("what to do")[0]


def test_a_cli_backup_with_a_broken_setting_alerts_the_channels_once(receiver, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "GZIP_LEVEL": "fast", "ALERT_WEBHOOK_URL": receiver.url("/webhook/cron"),
           "DATABASE_URL": "postgresql://backup:Cron-S3cret-pw@127.0.0.1:9/app"}
    result = run_cli("backup", "--to", str(tmp_path), env=env)
    assert result.returncode == 2
    assert "GZIP_LEVEL is invalid" in error_line(result, "backup")
    [alert] = receiver.to("webhook")
    assert alert.body["title"] == "backup failed" and alert.body["severity"] == "urgent"
    assert "GZIP_LEVEL is invalid" in alert.body["reason"]
    assert "Cron-S3cret-pw" not in json.dumps(alert.body) + result.stderr + result.stdout


def test_a_cli_failure_the_operation_alerted_itself_is_not_alerted_twice(receiver, tmp_path):
    key = a_dump_without_manifest(tmp_path)
    env = {"PATH": "/usr/bin:/bin", "ALERT_WEBHOOK_URL": receiver.url("/webhook/cron")}
    result = run_cli("verify", key, "--from", str(tmp_path), "--manifest-wait", "1", env=env)
    assert result.returncode == 15
    [alert] = receiver.to("webhook")  # verify's own "verify failed", not a second "verify failed"
    assert alert.body["title"] == "verify failed" and alert.body["details"]["key"] == key


def test_a_failed_restore_sends_no_alert_the_person_running_it_reads_the_line(receiver, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "ALERT_WEBHOOK_URL": receiver.url("/webhook/cron")}
    result = run_cli("restore", "--latest", "--from", str(tmp_path), "--target-url",
                     "postgresql://u@127.0.0.1:9/x", env=env)
    assert result.returncode != 0
    error_line(result, "restore")
    assert receiver.to("webhook") == []


def test_a_cli_backup_stopped_by_sigterm_alerts_once_and_ctrl_c_does_not(pg_cluster, receiver, tmp_path):
    import time
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": pg_cluster.url("l2c_sigterm"),
           "ALERT_WEBHOOK_URL": receiver.url("/webhook/cron")}
    with table_locked(pg_cluster, "l2c_sigterm"):
        for signum, alerts in ((signal.SIGINT, 0), (signal.SIGTERM, 1)):
            backup = subprocess.Popen(CLI + ["backup", "--to", str(tmp_path)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 60
            while pg_cluster.psql(WAITING_ON_A_LOCK).strip() != "1":
                assert time.monotonic() < deadline and backup.poll() is None, backup.stderr.read()
                time.sleep(0.2)
            backup.send_signal(signum)
            _, stderr = backup.communicate(timeout=60)
            assert backup.returncode == 128 + signum
            assert stderr.rstrip().splitlines()[-1] == (
                f"l2c-backup backup: stopped by {signal.Signals(signum).name}; what was in "
                "progress was undone")
            assert "Traceback" not in stderr
            assert len(receiver.to("webhook")) == alerts  # Ctrl-C: the person is at the terminal
        [alert] = receiver.to("webhook")
        assert alert.body["title"] == "backup failed" and "stopped by SIGTERM" in alert.body["reason"]
