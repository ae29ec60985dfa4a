"""The README's "cron on a server" path: `pip install .` (a wheel, not an editable install)
into a fresh virtual environment, then the installed `l2c-backup` does a real backup.

Editable installs import from the source tree and hide a package missing from the wheel;
this builds the wheel and runs only what it installed, from outside the checkout.
"""
import json
import os
import subprocess
import sys
import zipfile

import oss2
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{command}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The bin/ of a fresh venv holding only the project's wheel and its dependencies."""
    work = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"), ROOT)
    (wheel,) = (work / "dist").glob("l2c_backup-*.whl")
    run(sys.executable, "-m", "venv", str(work / "venv"))
    bin_dir = work / "venv" / "bin"
    run(str(bin_dir / "python"), "-m", "pip", "install", "-q", str(wheel))
    return {"bin": bin_dir, "wheel": wheel, "cwd": work}


def test_the_wheel_carries_every_package_of_the_source_tree(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for top, source in (("l2c_backup", "functions/l2c_backup"), ("l2c_local", "scripts/l2c_local")):
        for folder, _, files in os.walk(os.path.join(ROOT, source)):
            if "__init__.py" in files:
                package = os.path.relpath(folder, os.path.join(ROOT, source))
                path = os.path.normpath(os.path.join(top, package, "__init__.py"))
                assert path in names, f"{path} is missing from the wheel"
    assert {"l2c_local/seed.sql", "l2c_local/resolve_hook/sitecustomize.py"} <= names


def test_the_installed_command_answers_help_from_outside_the_checkout(installed):
    result = run(str(installed["bin"] / "l2c-backup"), "--help", cwd=installed["cwd"])
    assert "usage: l2c-backup" in result.stdout and "backup" in result.stdout


def test_the_installed_command_backs_up_to_oss_and_verifies_the_object(installed, pg_cluster,
                                                                      seeded_db, oss_server):
    endpoint = oss_server.endpoint_ip  # a fresh venv has no test resolver: path style by IP
    env = {"PATH": f"{installed['bin']}:/usr/bin:/bin", "DATABASE_URL": pg_cluster.url(seeded_db),
           "OSS_ENDPOINT": endpoint, "OSS_BACKUP_BUCKET": "l2c-backups",
           "OSS_ACCESS_KEY_ID": oss_server.access_key_id,
           "OSS_ACCESS_KEY_SECRET": oss_server.access_key_secret,
           "PG_BIN_DIR": str(pg_cluster.bin("pg_dump").parent)}
    cli = str(installed["bin"] / "l2c-backup")
    backup = run(cli, "backup", "--kind", "manual", "--json", env=env, cwd=installed["cwd"])
    (done,) = json.loads(backup.stdout)["backups"]

    bucket = oss2.Bucket(oss2.Auth(oss_server.access_key_id, oss_server.access_key_secret),
                         endpoint, "l2c-backups")
    assert bucket.head_object(done["key"]).content_length == done["bytes"] > 0
    assert bucket.object_exists(done["key"] + ".manifest.json")
    verify = run(cli, "verify", done["key"], "--json", env=env, cwd=installed["cwd"])
    assert '"ok"' in verify.stdout
