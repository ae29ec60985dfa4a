"""Verify on encrypted backups (issue 15), against real backups that the backup code wrote
to a key from the real `age-keygen`: without an identity (the OSS-trigger function holds
none) it reads the object once, decrypts nothing, and checks size, SHA-256, CRC64 and the
age header against the manifest, saying that the content was not checked; with one it
checks everything it checks on a plain backup, on the plaintext. Every damage is caught
either way, by its own reason where the identity lets it tell."""
import json
import pathlib
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest
import yaml

from fc_handlers import fc_context, load_handler
from l2c_backup import age, alerts, config, manifest, names, status
from l2c_backup.backup import run_backup
from l2c_backup.verify import REASONS, check_object, recorded_verdict, verify
from l2c_local import resolve
from l2c_local.fc import LocalFC
from l2c_local.oss import Fault
from test_invoke import FUNCTIONS, ROLE, client_for, invoke, point_cli_at
from test_verify import storage, store  # noqa: F401 (the fixture: OSS and a directory)

verify_fn = load_handler("verify")
REPO = pathlib.Path(__file__).resolve().parent.parent


@dataclass
class Key:
    path: pathlib.Path
    recipient: str

    def identities(self):
        return config.load_identities({"BACKUP_AGE_IDENTITY_FILE": str(self.path)})


def keygen(path):
    """A key file written by the reference tool, and its public key."""
    done = subprocess.run(["age-keygen", "-o", str(path)], capture_output=True, text=True,
                          check=True)
    return Key(path, re.search(r"age1[0-9a-z]+", done.stderr).group(0))


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("age-keys")
    return {name: keygen(root / f"{name}.txt") for name in ("ops", "other")}


@pytest.fixture(scope="module")
def sealed_backup(pg_cluster, seeded_db, tmp_path_factory, keys):
    """One real backup of the seed encrypted to the `ops` key, in a directory: its key,
    stored bytes and manifest, reused by every test."""
    root = tmp_path_factory.mktemp("sealed-src")
    env = {"DATABASE_URL": pg_cluster.url(seeded_db), "BACKUP_TARGET": str(root),
           "BACKUP_AGE_RECIPIENTS": keys["ops"].recipient}
    (done,) = run_backup(config.load(env), "daily")["backups"]
    data = (root / done["key"]).read_bytes()
    doc = json.loads((root / (done["key"] + ".manifest.json")).read_bytes())
    assert done["key"].endswith(names.AGE_SUFFIX) and data.startswith(b"age-encryption.org/v1\n")
    assert manifest.client_side(doc)["recipients"] == [keys["ops"].recipient]
    return done["key"], data, doc


def chunk_at(doc, number, into=1000):
    """The offset of a byte `into` the `number`th sealed chunk (negative: from the end)."""
    sealed = manifest.client_side(doc)
    base = sealed["header_length"] + age.NONCE_SIZE
    chunks = -(-sealed["payload_size"] // age.CHUNK) or 1
    number = number % chunks
    start = base + number * age.SEALED
    end = min(start + age.SEALED, doc["object"]["size"])
    return min(start + into, end - 1)


def flipped(data, at):
    damaged = bytearray(data)
    damaged[at] ^= 0x20
    return bytes(damaged)


# -- without the identity ---------------------------------------------------------------

def test_without_an_identity_the_stored_bytes_and_header_pass_and_the_verdict_says_the_content_was_not_checked(
        storage, sealed_backup, monkeypatch):
    key, data, doc = sealed_backup
    store(storage, key, data, doc)
    # nothing may be decrypted without the identity: a decryptor made would fail the test
    monkeypatch.setattr(age, "Decryptor", lambda *a, **k: pytest.fail("a Decryptor was made"))
    verdict = check_object(storage, key, 1)
    assert (verdict.reason, verdict.ok, verdict.content_checked) == ("ok", True, False)
    assert "not checked: it needs an age identity" in verdict.detail
    assert (verdict.bytes, verdict.sha256) == (len(data), doc["object"]["sha256"])
    assert (verdict.members, verdict.sql_bytes) == (0, 0)  # nothing inflated either
    assert verdict.summary()["content_checked"] is False


def test_without_an_identity_the_object_is_read_once_in_one_request(
        oss_server, sealed_backup):
    key, data, doc = sealed_backup
    _, settings = config.storage_target({"OSS_ENDPOINT": oss_server.endpoint,
                                         "OSS_BACKUP_BUCKET": "l2c-backups",
                                         "OSS_ACCESS_KEY_ID": oss_server.access_key_id,
                                         "OSS_ACCESS_KEY_SECRET": oss_server.access_key_secret})
    from l2c_backup.storage import open_storage
    oss = open_storage("oss://l2c-backups/db-backups/", settings)
    store(oss, key, data, doc)
    gets = oss_server.inject(Fault(method="GET", key_prefix=key, skip=10**9, times=None))
    verdict = check_object(oss, key, 1)
    assert verdict.reason == "ok" and verdict.crc64  # OSS reports a CRC64: it was compared
    assert gets.seen == 2  # the manifest (key + ".manifest.json") and the object, once


def test_identities_that_are_not_recipients_are_named_and_the_check_is_as_without(
        storage, sealed_backup, keys):
    key, data, doc = sealed_backup
    store(storage, key, data, doc)
    verdict = check_object(storage, key, 1, identities=keys["other"].identities())
    assert (verdict.reason, verdict.content_checked) == ("ok", False)
    assert keys["other"].recipient in verdict.detail and "not among its recipients" in verdict.detail
    assert "AGE-SECRET-KEY" not in json.dumps(verdict.summary()) + repr(verdict)


@pytest.mark.parametrize("chunk", [0, 1, -1], ids=["first-chunk", "second-chunk", "last-chunk"])
def test_a_flipped_byte_in_any_chunk_fails_as_sha256_mismatch_without_the_identity_and_as_age_chunk_with_it(
        storage, sealed_backup, keys, chunk):
    key, data, doc = sealed_backup
    store(storage, key, flipped(data, chunk_at(doc, chunk)), doc)
    without = check_object(storage, key, 1)
    assert (without.reason, without.content_checked) == ("sha256-mismatch", False)
    with_identity = check_object(storage, key, 1, identities=keys["ops"].identities())
    assert with_identity.reason == "age-chunk", with_identity.detail
    assert re.search(r"chunk \d+", with_identity.detail)


def test_a_cut_object_is_truncated_either_way(storage, sealed_backup, keys):
    key, data, doc = sealed_backup
    store(storage, key, data[:len(data) // 2], doc)
    without = check_object(storage, key, 1)
    assert without.reason == "truncated" and f"of the {len(data)} bytes" in without.detail
    assert check_object(storage, key, 1, identities=keys["ops"].identities()).reason == "truncated"


def test_a_header_that_is_not_the_manifests_is_age_header_without_the_identity(
        storage, sealed_backup, keys):
    """Another header (two recipients) in front of the same chunks: well formed, so only
    the manifest's header_length and recipients tell, and they do."""
    key, data, doc = sealed_backup
    length = manifest.client_side(doc)["header_length"]
    other = age.Encryptor([keys["ops"].recipient, keys["other"].recipient]).header
    store(storage, key, other + data[length:], doc)
    verdict = check_object(storage, key, 1)
    assert verdict.reason == "age-header", verdict.detail
    assert f"the manifest says {length}" in verdict.detail


def test_a_header_for_another_recipient_is_caught_without_and_age_header_with_the_identity(
        storage, sealed_backup, keys):
    """Same length, one stanza: only the SHA-256 tells without the identity; with it, the
    identity the manifest names does not open the header, which is damage, not a wrong
    identity."""
    key, data, doc = sealed_backup
    length = manifest.client_side(doc)["header_length"]
    other = age.Encryptor([keys["other"].recipient]).header
    assert len(other) == length
    store(storage, key, other + data[length:], doc)
    assert check_object(storage, key, 1).reason == "sha256-mismatch"
    verdict = check_object(storage, key, 1, identities=keys["ops"].identities())
    assert verdict.reason == "age-header" and "does not open" in verdict.detail


def test_a_malformed_header_is_age_header_without_the_identity(storage, sealed_backup):
    key, data, doc = sealed_backup
    store(storage, key, data.replace(b"\n-> X25519 ", b"\n=> X25519 ", 1), doc)
    verdict = check_object(storage, key, 1)
    assert verdict.reason == "age-header" and "malformed age header" in verdict.detail


def test_a_broken_header_mac_is_caught_without_and_named_with_the_identity(
        storage, sealed_backup, keys):
    key, data, doc = sealed_backup
    mac_line = data.index(b"\n--- ") + len(b"\n--- ")
    damaged = bytearray(data)
    damaged[mac_line] = ord("A") if damaged[mac_line] != ord("A") else ord("B")
    store(storage, key, bytes(damaged), doc)
    assert check_object(storage, key, 1).reason == "sha256-mismatch"
    with_identity = check_object(storage, key, 1, identities=keys["ops"].identities())
    assert with_identity.reason == "age-header" and "MAC" in with_identity.detail


def test_an_encrypted_object_without_its_manifest_has_its_header_checked_then_is_manifest_missing(
        storage, sealed_backup):
    key, data, doc = sealed_backup
    store(storage, key, data, doc, manifest=False)
    verdict = check_object(storage, key, 1)
    assert (verdict.reason, verdict.bytes) == ("manifest-missing", len(data))
    store(storage, key, b"PGDMP not age", doc, manifest=False)
    assert check_object(storage, key, 1).reason == "age-header"


def test_the_new_reasons_are_described():
    assert {"age-header", "age-chunk", "truncated"} <= set(REASONS)
    assert "age chunk" in REASONS["truncated"]


# -- with the identity ------------------------------------------------------------------

def test_with_the_identity_everything_is_checked_on_the_plaintext(storage, sealed_backup, keys):
    key, data, doc = sealed_backup
    store(storage, key, data, doc)
    verdict = check_object(storage, key, 1, identities=keys["other"].identities()
                           + keys["ops"].identities())
    assert (verdict.reason, verdict.content_checked, verdict.detail) == ("ok", True, "")
    assert verdict.members == doc["compression"]["members"]
    assert verdict.sql_bytes == doc["sql_bytes"]
    assert verdict.extra["sections"] == len(doc["index"]["sections"])  # the index, held too
    assert (verdict.bytes, verdict.sha256) == (len(data), doc["object"]["sha256"])
    assert "content_checked" not in verdict.summary()


def test_with_the_identity_a_lie_in_the_index_is_an_index_mismatch(storage, sealed_backup, keys):
    key, data, doc = sealed_backup
    lied = json.loads(json.dumps(doc))
    table = next(s for s in lied["index"]["sections"] if s["kind"] == "table-data")
    table["sha256"] = "0" * 64
    store(storage, key, data, lied)
    assert check_object(storage, key, 1).reason == "ok"  # the index is in the plaintext
    verdict = check_object(storage, key, 1, identities=keys["ops"].identities())
    assert verdict.reason == "index-mismatch" and table["table"] in verdict.detail


def test_swapped_chunks_fail_as_age_chunk_with_the_identity(storage, sealed_backup, keys):
    key, data, doc = sealed_backup
    first, second = chunk_at(doc, 0, 0), chunk_at(doc, 1, 0)
    assert second - first == age.SEALED and second + age.SEALED < len(data), \
        "the seeded backup holds three chunks or more"
    swapped = (data[:first] + data[second:second + age.SEALED] + data[first:second]
               + data[second + age.SEALED:])
    store(storage, key, swapped, doc)
    assert check_object(storage, key, 1).reason == "sha256-mismatch"
    assert check_object(storage, key, 1, identities=keys["ops"].identities()).reason == "age-chunk"


# -- the recorded verdict and those who read it ----------------------------------------

def test_the_recorded_verdict_counts_as_verified_and_says_what_was_not_checked(
        storage, sealed_backup, keys):
    key, data, doc = sealed_backup
    store(storage, key, data, doc)
    sent = []
    sink = alerts.add_sink(sent.append)
    try:
        first = verify(storage, key, 1)
        assert storage.get_tags(key) == {"verify": "ok", "verify-reason": "ok",
                                         "verify-content": "needs-identity"}
        assert recorded_verdict(storage, key).content_checked is False
        # status, prune, the watchdog and the drill read the tag: verified
        (info,) = status.survey(storage)
        assert info.verdict == "ok" and status.newest(status.survey(storage), "daily",
                                                      verified=True).key == key
        full = verify(storage, key, 1, recheck=True, identities=keys["ops"].identities())
        assert full.content_checked and storage.get_tags(key) == {"verify": "ok",
                                                                  "verify-reason": "ok"}
    finally:
        alerts.remove_sink(sink)
    assert first.ok and sent == []


# -- the command ------------------------------------------------------------------------

def run_verify(env, *args):
    env = resolve.child_env(dict(env, PATH="/usr/bin:/bin"))
    return subprocess.run([sys.executable, "-m", "l2c_backup.cli", "verify", *args],
                          capture_output=True, text=True, env=env)


def test_the_command_checks_whole_with_the_identity_file_and_says_so_without(
        tmp_path, sealed_backup, keys):
    key, data, doc = sealed_backup
    from l2c_backup.storage import open_storage
    store(open_storage(str(tmp_path)), key, data, doc)

    without = run_verify({}, key, "--from", str(tmp_path))
    assert without.returncode == 0, without.stderr
    assert "content (gzip members, dump markers, index) not checked" in without.stdout

    identity = {"BACKUP_AGE_IDENTITY_FILE": str(keys["ops"].path)}
    whole = run_verify(identity, key, "--from", str(tmp_path), "--json")
    assert whole.returncode == 0, whole.stderr
    (result,) = json.loads(whole.stdout)["results"]
    assert result["verdict"] == "ok" and "content_checked" not in result and result["sql_bytes"]

    (tmp_path / key).write_bytes(flipped(data, chunk_at(doc, 1)))
    damaged = run_verify(identity, key, "--from", str(tmp_path))
    assert damaged.returncode == 15 and "age-chunk" in damaged.stdout  # BackupCorrupt
    secret = next(line for line in keys["ops"].path.read_text().splitlines()
                  if line.startswith("AGE-SECRET-KEY-"))
    for done in (without, whole, damaged):
        assert secret not in done.stdout + done.stderr


def test_the_command_names_an_unreadable_identity_file_in_one_line(tmp_path, sealed_backup):
    key, data, doc = sealed_backup
    done = run_verify({"BACKUP_AGE_IDENTITY_FILE": str(tmp_path / "missing.txt")}, key,
                      "--from", str(tmp_path))
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "BACKUP_AGE_IDENTITY_FILE" in done.stderr


# -- the OSS trigger --------------------------------------------------------------------

def verify_triggers():
    """The verify function's OSS triggers as s.yaml and template.yml deploy them."""
    s_yaml = yaml.safe_load((REPO / "s.yaml").read_text())["services"]["verify"]["props"]["triggers"]
    template = yaml.safe_load((REPO / "template.yml").read_text())["Resources"]
    t_yaml = [r["Properties"] for r in template.values() if r["Type"] == "ALIYUN::FC3::Trigger"
              and r["Properties"]["TriggerType"] == "oss"]
    return s_yaml, t_yaml


def test_both_templates_trigger_verify_on_plain_and_encrypted_backups_alike():
    s_yaml, t_yaml = verify_triggers()
    assert sorted(t["config"]["filter"]["Key"]["Suffix"] for t in s_yaml) == sorted(names.SUFFIXES)
    assert sorted(t["TriggerConfig"]["filter"]["key"]["suffix"] for t in t_yaml) == sorted(names.SUFFIXES)
    # one event list and prefix for both: the suffixes alone tell them apart
    assert len({json.dumps(t["config"]["events"]) for t in s_yaml}) == 1
    assert len({json.dumps(t["TriggerConfig"]["events"]) for t in t_yaml}) == 1
    assert len({t["config"]["filter"]["Key"]["Prefix"] for t in s_yaml}) == 1
    # a native OSS trigger filters on one suffix; neither ends with the other, so no
    # object matches both triggers (each is verified once)
    a, b = names.SUFFIXES
    assert not a.endswith(b) and not b.endswith(a)


def test_the_oss_trigger_verifies_an_encrypted_backup_once_without_an_identity(
        monkeypatch, oss_server, bucket, pg_cluster, seeded_db, keys):
    for name in ("OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET", "BACKUP_TARGET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OSS_ENDPOINT", oss_server.endpoint)
    monkeypatch.setenv("OSS_BACKUP_BUCKET", "l2c-backups")
    monkeypatch.setenv("VERIFY_MANIFEST_WAIT_SECONDS", "10")
    events = []
    s_yaml, _ = verify_triggers()
    for trigger in s_yaml:  # each trigger of s.yaml, as OSS would deliver it
        oss_server.subscribe("l2c-backups", callback=events.append, prefix="db-backups/",
                             suffix=trigger["config"]["filter"]["Key"]["Suffix"],
                             events=trigger["config"]["events"])
    env = {"DATABASE_URL": pg_cluster.url(seeded_db), "OSS_ENDPOINT": oss_server.endpoint,
           "OSS_BACKUP_BUCKET": "l2c-backups", "OSS_ACCESS_KEY_ID": oss_server.access_key_id,
           "OSS_ACCESS_KEY_SECRET": oss_server.access_key_secret,
           "BACKUP_AGE_RECIPIENTS": keys["ops"].recipient}
    (sealed,) = run_backup(config.load(env), "daily")["backups"]
    env.pop("BACKUP_AGE_RECIPIENTS")
    (plain,) = run_backup(config.load(env), "manual")["backups"]
    oss_server.wait_idle()
    keys_in = [json.loads(e)["events"][0]["oss"]["object"]["key"] for e in events]
    assert sorted(keys_in) == sorted([sealed["key"], plain["key"]])  # manifests match neither

    context = fc_context("req-verify", oss_server.access_key_id, oss_server.access_key_secret,
                         name="verify")
    results = {}
    for event in events + events:  # OSS delivers at least once
        (result,) = json.loads(verify_fn.handler(event, context))["results"]
        results.setdefault(result["key"], []).append(result)
    first, repeat = results[sealed["key"]]
    assert (first["verdict"], first["content_checked"]) == ("ok", False)
    assert repeat.get("repeated") is True
    assert "content_checked" not in results[plain["key"]][0]
    assert bucket.get_object_tagging(sealed["key"]).tag_set.tagging_rule == {
        "verify": "ok", "verify-reason": "ok", "verify-content": "needs-identity"}


def test_through_the_local_fc_endpoint_an_encrypted_backup_fires_the_verify_function(
        monkeypatch, pg_cluster, seeded_db, oss_server, keys, capsys):
    """backup -> OSS notification of the s.yaml trigger for `.sql.gz.age` -> the verify
    function invoked async through fc2 on the local FC endpoint (no identity there)."""
    oss_server.add_credentials(*ROLE)
    env = {"DATABASE_URL": pg_cluster.url(seeded_db), "OSS_ENDPOINT": oss_server.endpoint,
           "OSS_BACKUP_BUCKET": "l2c-backups", "BACKUP_AGE_RECIPIENTS": keys["ops"].recipient}
    with LocalFC(FUNCTIONS, env=env, role_credentials=ROLE) as fc:
        point_cli_at(monkeypatch, fc)
        trigger = client_for(fc)
        for wired in verify_triggers()[0]:
            oss_server.subscribe(
                "l2c-backups", prefix="db-backups/",
                suffix=wired["config"]["filter"]["Key"]["Suffix"], events=wired["config"]["events"],
                callback=lambda event: trigger.invoke_function(
                    fc.service, "verify", payload=event, headers={"x-fc-invocation-type": "Async"}))
        assert invoke("backup", "--kind", "daily") == 0
        key = json.loads(capsys.readouterr().out)["backups"][0]["key"]
        oss_server.wait_idle()
        fc.wait_idle()
    assert key.endswith(names.AGE_SUFFIX)
    (verified,) = [i for i in fc.invocations if i.function == "verify"]
    assert verified.status == "Succeeded", verified.error
    (result,) = json.loads(verified.result)["results"]
    assert (result["key"], result["verdict"], result["content_checked"]) == (key, "ok", False)
