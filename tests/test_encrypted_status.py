"""`status` with encrypted backups, and key rotation (issue 15): backups written to key A,
then to A and B, then to B only. Each backup stays restorable with any identity it was
written for and with no other; status marks encrypted backups and lists, per configured
identity (a key file may hold several), exactly the backups it opens, by its public key
only. Real backups of a real cluster, restored with psql, on the local OSS server and a
directory; keys made by age-keygen; status through the CLI.
"""
import json
import subprocess
import sys
import uuid

import pytest

from l2c_backup import age, config, names
from l2c_backup.backup import run_backup
from l2c_backup.database import DatabaseSettings
from l2c_backup.errors import ConfigInvalid
from l2c_backup.restore import restore
from l2c_backup.status import survey
from l2c_backup.storage import open_storage
from l2c_local import resolve
from l2c_local.pgcluster import table_digests
from test_prune import oss_env


def keygen(path):
    """A new age key file written by age-keygen; (its secret line, its public key)."""
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    secret = next(line for line in path.read_text().splitlines()
                  if line.startswith("AGE-SECRET-KEY-1"))
    public = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True,
                            text=True).stdout.strip()
    return secret, public


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("rotation-keys")
    found = {}
    for name in ("a", "b"):
        found[name], found[name.upper()] = keygen(directory / f"{name}.txt")
    found["a_file"], found["b_file"] = directory / "a.txt", directory / "b.txt"
    both = directory / "both.txt"  # one key file holding both identities, as age allows
    both.write_text(found["a_file"].read_text() + "\n" + found["b_file"].read_text())
    found["both_file"] = both
    return found


@pytest.fixture(scope="module")
def small_db(pg_cluster):
    name = f"rotation_{uuid.uuid4().hex[:8]}"
    pg_cluster.create_database(name)
    pg_cluster.psql("CREATE TABLE notes (id int PRIMARY KEY, body text);"
                    "INSERT INTO notes SELECT i, 'note ' || i FROM generate_series(1, 500) i", name)
    return name


def identities(text):
    return age.parse_identities(text, "test")


def backup(env, recipients=None):
    if recipients:
        env = dict(env, BACKUP_AGE_RECIPIENTS=recipients)
    (done,) = run_backup(config.load(env), "manual")["backups"]
    return done["key"]


def rotate(env, keys):
    """One plain backup, two to A, one to A and B, two to B, in that order."""
    made = {"plain": [backup(env)],
            "a": [backup(env, keys["A"]), backup(env, keys["A"])],
            "ab": [backup(env, f"{keys['A']}, {keys['B']}")],
            "b": [backup(env, keys["B"]), backup(env, keys["B"])]}
    for group in ("a", "ab", "b"):
        assert all(names.is_encrypted_key(k) for k in made[group]), made
    assert not names.is_encrypted_key(made["plain"][0])
    return made


def run_status(env, *args):
    env = resolve.child_env(dict(env, PATH="/usr/bin:/bin"))
    return subprocess.run([sys.executable, "-m", "l2c_backup.cli", "status", *args],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(params=["oss", "directory"])
def target_env(request, tmp_path, pg_cluster, small_db):
    env = {"DATABASE_URL": pg_cluster.url(small_db), "PRUNE_AFTER_BACKUP": "false"}
    if request.param == "oss":
        env.update(oss_env(request.getfixturevalue("oss_server")))
    else:
        env["BACKUP_TARGET"] = str(tmp_path / "backups")
    return env


def storage_of(env):
    cfg = config.load(env)
    return open_storage(cfg.target, cfg.oss)


# -- key rotation: restores ------------------------------------------------------------------

def test_after_rotation_each_backup_restores_with_its_own_identities_and_no_other(
        target_env, keys, pg_cluster, small_db):
    made = rotate(target_env, keys)
    storage = storage_of(target_env)
    target = DatabaseSettings.from_url(pg_cluster.url("postgres"), {})
    expected = table_digests(pg_cluster, small_db)
    opens = {"a": ("a",), "ab": ("a", "b"), "b": ("b",)}

    for group, who in opens.items():
        key = made[group][-1]
        for name in ("a", "b"):
            db = f"r_{group}_{name}_{uuid.uuid4().hex[:6]}"
            ids = identities(keys[name])
            if name in who:
                restore(storage, key, target, create_db=db, identities=ids)
                assert table_digests(pg_cluster, db) == expected
                pg_cluster.psql(f'DROP DATABASE "{db}"')
            else:
                with pytest.raises(ConfigInvalid) as refused:
                    restore(storage, key, target, create_db=db, identities=ids)
                message = str(refused.value) + str(refused.value.hint)
                assert keys[name.upper()] in message  # named by its public key only
                assert keys[name] not in message and keys[name].lower() not in message
                exists = pg_cluster.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{db}'")
                assert exists.strip() == "0", "a refused restore left a database"


# -- key rotation: status --------------------------------------------------------------------

def opened_by(report):
    return {i["recipient"]: i["opens"] for i in report["encryption"]["identities"]}


def test_status_lists_exactly_the_backups_each_identity_of_a_key_file_opens(target_env, keys):
    made = rotate(target_env, keys)
    env = dict(target_env, BACKUP_AGE_IDENTITY_FILE=str(keys["both_file"]))

    result = run_status(env, "--json")

    assert result.returncode in (0, 20), result.stderr  # 20: not 3-2-1, no DR copy here
    report = json.loads(result.stdout)
    assert opened_by(report) == {keys["A"]: sorted(made["a"] + made["ab"]),
                                 keys["B"]: sorted(made["ab"] + made["b"])}
    e = report["encryption"]
    assert (e["encrypted"], e["plain"]) == (5, 1)
    assert e["recipients"] == {keys["A"]: 3, keys["B"]: 3}
    assert e["opened_by_none"] == [] and e["mismatches"] == [] and e["unreadable_headers"] == []
    assert report["kinds"]["manual"]["encrypted"] == 5
    assert report["kinds"]["manual"]["newest"] == made["b"][-1]
    assert report["kinds"]["manual"]["newest_encrypted"] is True
    assert_no_secret(result, keys)


def test_status_with_one_inline_identity_names_the_backups_it_cannot_open(target_env, keys):
    made = rotate(target_env, keys)
    env = dict(target_env, BACKUP_AGE_IDENTITY=keys["a"])  # inline, as FC passes it

    report = json.loads(run_status(env, "--json").stdout)
    text = run_status(env)

    assert opened_by(report) == {keys["A"]: sorted(made["a"] + made["ab"])}
    assert report["encryption"]["opened_by_none"] == sorted(made["b"])
    lines = text.stdout.splitlines()
    at = lines.index(f"  identity {keys['A']} opens 3 of 5:")
    assert lines[at + 1:at + 4] == [f"    {k}" for k in sorted(made["a"] + made["ab"])]
    assert lines[at + 4:at + 7] == ["  no configured identity opens 2:"] + \
        [f"    {k}" for k in sorted(made["b"])]
    assert f"newest: {made['b'][-1]} [encrypted]" in text.stdout
    assert "5 encrypted" in text.stdout
    assert_no_secret(text, keys)


def test_status_without_an_identity_marks_encrypted_backups_and_says_none_is_set(target_env, keys):
    made = rotate(target_env, keys)

    text = run_status(target_env)
    report = json.loads(run_status(target_env, "--json").stdout)

    assert report["encryption"]["identities"] is None
    assert report["encryption"]["recipients"] == {keys["A"]: 3, keys["B"]: 3}
    assert "no identity configured (BACKUP_AGE_IDENTITY_FILE or BACKUP_AGE_IDENTITY)" in text.stdout
    assert "encryption: 5 of 6 backups encrypted (age)" in text.stdout
    assert f"newest: {made['b'][-1]} [encrypted]" in text.stdout


def assert_no_secret(result, keys):
    out = result.stdout + result.stderr
    for name in ("a", "b"):
        body = keys[name][len("AGE-SECRET-KEY-1"):]
        for secret in (keys[name], keys[name].lower(), body, body.lower()):
            assert secret not in out, f"status printed the secret key {name}"


# -- status checks the headers, not only the manifests ---------------------------------------

def test_status_reports_a_manifest_that_lists_a_recipient_its_header_does_not_open(tmp_path, keys,
                                                                                    pg_cluster,
                                                                                    small_db):
    env = {"DATABASE_URL": pg_cluster.url(small_db), "BACKUP_TARGET": str(tmp_path),
           "PRUNE_AFTER_BACKUP": "false"}
    key = backup(env, keys["A"])
    path = tmp_path / names.manifest_key(key)
    doc = json.loads(path.read_text())
    doc["encryption"]["client_side"]["recipients"] = [keys["B"]]  # the manifest lies
    path.write_text(json.dumps(doc))

    found = {b.key: b for b in survey(open_storage(str(tmp_path)),
                                      identities(keys["a"] + "\n" + keys["b"]))}
    report = json.loads(run_status(dict(env, BACKUP_AGE_IDENTITY_FILE=str(keys["both_file"])),
                                   "--json").stdout)

    assert found[key].recipients == (keys["B"],) and found[key].opened_by == (keys["A"],)
    assert opened_by(report) == {keys["A"]: [key], keys["B"]: []}  # the header decides
    assert sorted(report["encryption"]["mismatches"]) == sorted([
        f"{key}: its header opens with {keys['A']}, its manifest does not list it",
        f"{key}: its header does not open with {keys['B']}, its manifest lists it"])


def test_status_names_an_encrypted_object_whose_header_is_damaged_and_goes_on(tmp_path, keys,
                                                                               pg_cluster,
                                                                               small_db):
    env = {"DATABASE_URL": pg_cluster.url(small_db), "BACKUP_TARGET": str(tmp_path),
           "PRUNE_AFTER_BACKUP": "false"}
    damaged, fine = backup(env, keys["A"]), backup(env, keys["A"])
    path = tmp_path / damaged
    data = bytearray(path.read_bytes())
    data[:3] = b"AGE"  # no longer "age-encryption.org/v1"
    path.write_bytes(bytes(data))

    result = run_status(dict(env, BACKUP_AGE_IDENTITY=keys["a"]), "--json")
    report = json.loads(result.stdout)

    assert "Traceback" not in result.stderr
    [problem] = report["encryption"]["unreadable_headers"]
    assert problem.startswith(f"{damaged}: its age header cannot be read (age-header)")
    # unread, it counts by its manifest; the sound one by its header
    assert opened_by(report) == {keys["A"]: sorted([damaged, fine])}
    assert_no_secret(result, keys)


def test_a_malformed_identity_stops_status_in_one_line_without_echoing_it(target_env, keys):
    broken = keys["a"][:-4] + "qqqq"  # a bech32 checksum that fails
    result = run_status(dict(target_env, BACKUP_AGE_IDENTITY=broken))
    assert result.returncode == ConfigInvalid.exit_code, result.stderr
    assert "Traceback" not in result.stderr
    [line] = [l for l in result.stderr.splitlines() if l.startswith("l2c-backup status:")]
    assert "BACKUP_AGE_IDENTITY" in line
    body = broken[len("AGE-SECRET-KEY-1"):]
    for secret in (broken, body, body.lower(), keys["a"][len("AGE-SECRET-KEY-1"):-6]):
        assert secret not in result.stdout + result.stderr
