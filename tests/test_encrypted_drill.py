"""The drill of an encrypted backup, through the FC drill handler: with the identity of
BACKUP_AGE_IDENTITY (FC's secret) it restores, checks and drops the scratch database; with
none, or one the backup was not written to, it fails naming the public keys it needs,
makes no scratch database, and alerts. The secret never reaches the report or the alert."""
import json

import pytest

from fc_handlers import fc_context, load_handler
from l2c_backup.errors import ConfigInvalid
from test_drill import alerts_sent, databases, drill_env, verified_backup  # noqa: F401 - fixtures
from test_encrypted_restore import keys  # noqa: F401 - a fixture

drill_fn = load_handler("drill")


@pytest.fixture
def sealed_backup(drill_env, keys, monkeypatch):  # noqa: F811 - the fixtures imported
    """A verified daily backup in the local OSS server, encrypted to the key of `keys`;
    BACKUP_AGE_IDENTITY holds that key's text (verify reads it too)."""
    monkeypatch.setenv("BACKUP_AGE_IDENTITY", keys["file"].read_text())
    env = dict(drill_env, BACKUP_AGE_RECIPIENTS=keys["recipient"])
    _, key = verified_backup(env)
    assert key.endswith(".sql.gz.age")
    return key


def test_a_drill_restores_an_encrypted_backup_with_the_identity_of_its_secret(
        sealed_backup, pg_cluster, alerts_sent, keys, monkeypatch):  # noqa: F811
    monkeypatch.setenv("DRILL_RESTORE_JOBS", "2")
    monkeypatch.setenv("DRILL_CHECKS", json.dumps(["SELECT count(*) > 100000 FROM sales.orders"]))
    before = databases(pg_cluster)

    answer = drill_fn.handler(b'{"kind": "daily"}', fc_context(name="drill"))

    report = json.loads(answer)
    assert report["ok"] and report["key"] == sealed_backup and report["failures"] == []
    assert report["restore_mode"] == "parallel"
    assert databases(pg_cluster) == before
    assert [a.severity for a in alerts_sent] == ["info"]
    assert "AGE-SECRET-KEY" not in answer + alerts_sent[0].text()


@pytest.mark.parametrize("identity", ["none", "wrong"])
def test_a_drill_without_an_identity_that_opens_the_backup_fails_naming_its_keys(
        sealed_backup, pg_cluster, alerts_sent, keys, monkeypatch, identity):  # noqa: F811
    if identity == "none":
        monkeypatch.delenv("BACKUP_AGE_IDENTITY")
    else:
        monkeypatch.setenv("BACKUP_AGE_IDENTITY", keys["other_file"].read_text())
    before = databases(pg_cluster)

    with pytest.raises(ConfigInvalid) as raised:
        drill_fn.handler(b'{"kind": "daily"}', fc_context(name="drill"))

    assert keys["recipient"] in str(raised.value) and "BACKUP_AGE_IDENTITY" in str(raised.value)
    assert databases(pg_cluster) == before
    assert alerts_sent[-1].severity == "urgent" and keys["recipient"] in alerts_sent[-1].text()
    assert all("AGE-SECRET-KEY" not in a.text() for a in alerts_sent)
    assert "AGE-SECRET-KEY" not in str(raised.value)
