"""No secret ever leaves a backup run: not the database password, not the OSS AccessKey
secret, not the STS token, not the age identity. Not in a log line, an error message, the
CLI's output, the FC handler's answer or a manifest, whether the run succeeds or fails, and
however it fails.

The age identity (issue 15) is configured inline (BACKUP_AGE_IDENTITY, as FC passes it:
the riskiest case) in every run here, and backups are encrypted to its public key; it is
looked for in every spelling it could leak in (identity_forms). Verify, restore and
status, the commands that read it, are run with it too, failures included (a wrong or
malformed identity, a damaged object).

Every secret is distinctive (a fixed prefix and random hex), so a leak is found anywhere
by plain substring search. Each scenario runs through three doors: the library in this
process (logs captured at DEBUG from every logger), the CLI as a subprocess (`--log-json
-v`, so at DEBUG too) and the FC handler with the role's credentials in its context.
"""
import base64
import importlib.util
import json
import logging
import os
import pathlib
import subprocess
import sys
import uuid
from types import SimpleNamespace
from urllib.parse import quote

import oss2
import pytest

from l2c_backup import alerts, config, logs, names
from l2c_backup.backup import run_backup
from l2c_backup.errors import (ConfigInvalid, DatabaseUnreachable, DumpFailed, L2CError,
                               UploadFailed)
from l2c_local import resolve
from l2c_local.oss import Fault

FUNCTIONS = pathlib.Path(__file__).resolve().parent.parent / "functions"
PREFIX = "db-backups/"
CLI = [sys.executable, "-m", "l2c_backup.cli", "--log-json", "-v", "backup", "--kind", "manual"]

# Every variable config reads, so the FC handler (which reads os.environ) sees only ours.
CONFIG_VARIABLES = (
    "DATABASE_URL", "BACKUP_DATABASES", "BACKUP_GLOBALS", "BACKUP_NO_ROLE_PASSWORDS",
    "BACKUP_TARGET", "OSS_ENDPOINT", "OSS_BACKUP_BUCKET", "OSS_BACKUP_PREFIX", "OSS_REGION",
    "OSS_SERVER_SIDE_ENCRYPTION", "OSS_SSE_KMS_KEY_ID", "GZIP_LEVEL", "GZIP_WORKERS",
    "UPLOAD_CONCURRENCY", "UPLOAD_MIN_PART_MB", "BACKUP_TIMEOUT_SECONDS", "OSS_ACCESS_KEY_ID",
    "OSS_ACCESS_KEY_SECRET", "OSS_SECURITY_TOKEN", "ALIBABA_CLOUD_ACCESS_KEY_ID",
    "ALIBABA_CLOUD_ACCESS_KEY_SECRET", "ALIBABA_CLOUD_SECURITY_TOKEN", "PG_BIN_DIR",
    "PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSSLMODE", "PGPASSFILE",
    "PGSERVICE", "BACKUP_AGE_RECIPIENTS", "BACKUP_AGE_IDENTITY", "BACKUP_AGE_IDENTITY_FILE",
)


def tag():
    return uuid.uuid4().hex[:16]


# -- the secrets --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def db_role(pg_cluster, seeded_db):
    """A login role with a distinctive password, owning a copy of the seeded database.
    The password needs percent-encoding in a URL, as real ones often do."""
    t = tag()
    core = f"S3cretDbPw-{t}"
    password = core + "!@x"
    role, dbname = f"l2c_secret_{t}", f"secrets_{t}"
    pg_cluster.psql(f"CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{password}'")
    pg_cluster.psql(f"CREATE DATABASE {dbname} TEMPLATE {seeded_db} OWNER {role}")
    return SimpleNamespace(role=role, password=password, core=core, dbname=dbname,
                           host=pg_cluster.host, port=pg_cluster.port,
                           url=url_for(role, password, pg_cluster.host, pg_cluster.port, dbname))


def url_for(user, password, host, port, dbname):
    return f"postgresql://{user}:{quote(password, safe='')}@{host}:{port}/{dbname}"


@pytest.fixture
def sts(oss_server):
    """An STS key on the local OSS server: id, secret and token, all distinctive."""
    t = tag()
    creds = SimpleNamespace(access_key_id=f"STS.L2cTest{t[:8]}",
                            access_key_secret=f"OssSecret-{t}", security_token=f"StsToken-{t}")
    oss_server.add_credentials(creds.access_key_id, creds.access_key_secret,
                               security_token=creds.security_token)
    return creds


def age_keygen(directory):
    """A key file age-keygen wrote: (its path, the AGE-SECRET-KEY-1... line, the public key)."""
    path = directory / f"key-{tag()}.txt"
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    secret = next(line for line in path.read_text().splitlines()
                  if line.startswith("AGE-SECRET-KEY-1"))
    public = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True,
                            text=True).stdout.strip()
    return path, secret, public


def identity_forms(secret):
    """Every spelling an age identity could leak in: as written, lower-cased (bech32's other
    case), its bech32 body after `AGE-SECRET-KEY-1` in both cases, and the 32-byte scalar in
    hex and base64 (a repr of the key bytes, a debug dump)."""
    from l2c_backup.age import bech32_decode
    body = secret[len("AGE-SECRET-KEY-1"):]
    _, scalar = bech32_decode(secret)
    return [secret, secret.lower(), body, body.lower(), bytes(scalar).hex(),
            base64.b64encode(bytes(scalar)).decode().rstrip("=")]


@pytest.fixture(scope="module")
def age_key(tmp_path_factory):
    path, secret, public = age_keygen(tmp_path_factory.mktemp("age"))
    return SimpleNamespace(path=path, secret=secret, public=public, forms=identity_forms(secret))


@pytest.fixture
def base_env(db_role, sts, oss_server, age_key):
    return resolve.child_env({  # the CLI subprocess resolves the server's named endpoint
        "DATABASE_URL": db_role.url, "OSS_ENDPOINT": oss_server.endpoint,
        "OSS_BACKUP_BUCKET": "l2c-backups", "OSS_ACCESS_KEY_ID": sts.access_key_id,
        "OSS_ACCESS_KEY_SECRET": sts.access_key_secret,
        "OSS_SECURITY_TOKEN": sts.security_token, "UPLOAD_MIN_PART_MB": "1",
        "BACKUP_AGE_RECIPIENTS": age_key.public, "BACKUP_AGE_IDENTITY": age_key.secret,
        "PATH": os.environ["PATH"]})


@pytest.fixture
def secrets(db_role, sts, age_key):
    return [db_role.core, sts.access_key_secret, sts.security_token, *age_key.forms]


def assert_clean(where, text, secrets):
    for secret in secrets:
        assert secret not in text, f"{where} leaks a secret starting {secret[:8]!r}:\n{text}"


# -- scenarios: one success and several ways to fail --------------------------------------

def killing_pg_dump(directory, real_pg_dump):
    """A pg_dump stand-in that streams 2 MiB of the real dump, then is SIGKILLed (as FC's
    OOM killer would), for PG_BIN_DIR: works in every process, the CLI's included."""
    directory.mkdir(exist_ok=True)
    script = directory / "pg_dump"
    script.write_text(f"""#!{sys.executable}
import os, signal, subprocess, sys
real = {str(real_pg_dump)!r}
if "--version" in sys.argv:
    os.execv(real, [real] + sys.argv[1:])
dump = subprocess.Popen([real] + sys.argv[1:], stdout=subprocess.PIPE)
sent = 0
while sent < 2 * 1024 * 1024:
    data = dump.stdout.read(65536)
    if not data:
        break
    sys.stdout.buffer.write(data)
    sent += len(data)
sys.stdout.buffer.flush()
dump.kill()
dump.wait()
os.kill(os.getpid(), signal.SIGKILL)
""")
    script.chmod(0o755)
    return directory


def arrange(name, env, ctx):
    """Sets up scenario `name`: returns (env, extra secrets, expected error type or None)."""
    db = ctx.db_role
    if name == "success":
        return env, [], None
    if name == "plain_success":  # not encrypted, the identity still configured
        del env["BACKUP_AGE_RECIPIENTS"]
        return env, [], None
    if name == "wrong_db_password":
        wrong = f"WrongDbPw-{tag()}"
        env["DATABASE_URL"] = url_for(db.role, wrong, db.host, db.port, db.dbname)
        return env, [wrong], DatabaseUnreachable
    if name == "oss_403_on_parts":
        ctx.oss_server.inject(Fault(method="PUT", query="partNumber", status=403,
                                    code="AccessDenied", times=None))
        return env, [], UploadFailed
    if name == "wrong_sts_token":
        wrong = f"BadStsToken-{tag()}"
        env["OSS_SECURITY_TOKEN"] = wrong
        return env, [wrong], UploadFailed
    if name == "pg_dump_killed":
        env["PG_BIN_DIR"] = str(killing_pg_dump(ctx.tmp_path / "bin",
                                                ctx.pg_cluster.bin("pg_dump")))
        return env, [], DumpFailed
    if name == "malformed_port":
        env["DATABASE_URL"] = f"postgresql://{db.role}:{quote(db.password, safe='')}@" \
                              f"{db.host}:54x32/{db.dbname}"
        return env, [], ConfigInvalid
    raise AssertionError(name)


SCENARIOS = ["success", "plain_success", "wrong_db_password", "oss_403_on_parts", "wrong_sts_token",
             "pg_dump_killed", "malformed_port"]


@pytest.fixture
def ctx(db_role, oss_server, pg_cluster, tmp_path, bucket, base_env, secrets):
    return SimpleNamespace(db_role=db_role, oss_server=oss_server, pg_cluster=pg_cluster,
                           tmp_path=tmp_path, bucket=bucket, base_env=base_env,
                           secrets=secrets)


def manifests_text(bucket):
    keys = [o.key for o in oss2.ObjectIteratorV2(bucket, prefix=PREFIX)
            if o.key.endswith(".manifest.json")]
    return keys, "\n".join(bucket.get_object(k).read().decode("utf-8") for k in keys)


def check_manifests(ctx, secrets, succeeded):
    keys, text = manifests_text(ctx.bucket)
    assert len(keys) == (1 if succeeded else 0), keys
    assert_clean("a manifest", text, secrets)


def debug_everywhere(caplog):
    """DEBUG on the root logger and on every logger with a level of its own (logs.setup
    turns 'oss2' down to WARNING, and that outlives the test that called it)."""
    caplog.set_level(logging.DEBUG)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET:
            caplog.set_level(logging.DEBUG, logger=name)


def record_texts(records):
    """Each record raw (as any handler would get it) and as the project's formatters
    render it (what the CLI and FC actually emit)."""
    plain = logs.RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    as_json = logs.JsonFormatter()
    for record in records:
        raw = record.getMessage()
        if record.exc_info:
            raw += "\n" + logging.Formatter().formatException(record.exc_info)
        yield record, raw, plain.format(record) + "\n" + as_json.format(record)


def check_records(records, secrets):
    for record, raw, emitted in record_texts(records):
        assert_clean(f"log line of {record.name} as emitted", emitted, secrets)
        if record.name.startswith("l2c_backup"):  # ours must not need the mask at all
            assert_clean(f"log record of {record.name}", raw, secrets)


# -- door 1: the library, in this process -------------------------------------------------

@pytest.mark.parametrize("name", SCENARIOS)
def test_library_run_leaks_no_secret(name, ctx, caplog, monkeypatch):
    debug_everywhere(caplog)
    env, extra, expected = arrange(name, dict(ctx.base_env), ctx)
    secrets = ctx.secrets + extra
    if "PG_BIN_DIR" in env:  # find_pg_tool reads os.environ
        monkeypatch.setenv("PG_BIN_DIR", env["PG_BIN_DIR"])
    error = None
    try:
        summary = run_backup(config.load(env), "manual")
    except L2CError as err:
        error = err

    if expected is None:
        assert error is None, str(error)
        assert summary["backups"][0]["key"].endswith(
            names.AGE_SUFFIX if "BACKUP_AGE_RECIPIENTS" in env else names.SUFFIX)
        assert_clean("the summary", json.dumps(summary), secrets)
    else:
        assert type(error) is expected, repr(error)
        assert_clean("the error", str(error) + "\n" + repr(error), secrets)
    if expected is not ConfigInvalid:  # a config error stops the run before any log line
        assert caplog.records, "nothing was logged: the capture is not working"
    check_records(caplog.records, secrets)
    check_manifests(ctx, secrets, expected is None)


def test_raw_log_records_of_every_logger_carry_no_secret(ctx, caplog):
    debug_everywhere(caplog)
    run_backup(config.load(dict(ctx.base_env)), "manual")
    for record, raw, _ in record_texts(caplog.records):
        assert_clean(f"log record of {record.name}", raw, ctx.secrets)


# -- door 2: the CLI, a real subprocess ---------------------------------------------------

@pytest.mark.parametrize("name", SCENARIOS)
def test_cli_run_leaks_no_secret(name, ctx):
    env, extra, expected = arrange(name, dict(ctx.base_env), ctx)
    secrets = ctx.secrets + extra

    result = subprocess.run(CLI, env=env, capture_output=True, text=True, timeout=300)

    output = result.stdout + "\n" + result.stderr
    if expected is None:
        assert result.returncode == 0, output
    else:
        assert result.returncode == expected.exit_code, output
        assert "Traceback" not in result.stderr, result.stderr
    if expected is not ConfigInvalid:  # a config error stops the run before any log line
        lines = [line for line in result.stderr.splitlines() if line.startswith("{")]
        assert lines, f"no JSON log line: {result.stderr}"
    assert_clean("the CLI's stdout/stderr", output, secrets)
    check_manifests(ctx, secrets, expected is None)


# -- door 3: the FC handler ---------------------------------------------------------------

def load_handler():
    spec = importlib.util.spec_from_file_location("fc_backup_secrets", FUNCTIONS / "backup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", SCENARIOS)
def test_fc_handler_run_leaks_no_secret(name, ctx, caplog, capsys, monkeypatch):
    env, extra, expected = arrange(name, dict(ctx.base_env), ctx)
    secrets = ctx.secrets + extra
    # As on FC: the function's config in the environment, the role's keys in the context.
    credentials = SimpleNamespace(access_key_id=env.pop("OSS_ACCESS_KEY_ID"),
                                  access_key_secret=env.pop("OSS_ACCESS_KEY_SECRET"),
                                  security_token=env.pop("OSS_SECURITY_TOKEN"))
    for variable in CONFIG_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    context = SimpleNamespace(request_id="req-1", credentials=credentials,
                              function=SimpleNamespace(timeout=600, name="backup"))
    root = logging.getLogger()
    real_setup = logs.setup

    def setup(*args, **kwargs):  # the handler's own logging, plus caplog, at DEBUG
        real_setup(*args, **kwargs)
        root.addHandler(caplog.handler)
        debug_everywhere(caplog)

    monkeypatch.setattr(logs, "setup", setup)
    handler = load_handler().handler

    error, answer = None, ""
    saved = root.handlers[:], root.level  # logs.setup replaces the root logger's handlers
    try:
        answer = handler(b'{"kind":"manual"}', context)
    except L2CError as err:
        error = err
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])

    captured = capsys.readouterr()
    if expected is None:
        assert error is None, str(error)
        assert json.loads(answer)["backups"][0]["bytes"] > 0
    else:
        assert type(error) is expected, repr(error)
        assert_clean("the error FC records", str(error) + "\n" + repr(error), secrets)
    assert_clean("the handler's answer", answer, secrets)
    assert '"request_id": "req-1"' in captured.err, captured.err[-2000:]
    assert_clean("the handler's log output", captured.out + captured.err, secrets)
    assert caplog.records, "nothing was logged: the capture is not working"
    check_records(caplog.records, secrets)
    check_manifests(ctx, secrets, expected is None)


# -- DATABASE_URL values that do not parse ------------------------------------------------

def bad_url(db, password):
    """The URL a user writes who forgot to percent-encode the password."""
    return f"postgresql://{db.role}:{password}@{db.host}:{db.port}/{db.dbname}"


@pytest.mark.parametrize("password, extra_secrets", [
    pytest.param("Hash#Pw-{t}", ["Pw-{t}"], id="unencoded-hash"),
    pytest.param("Slash/Pw-{t}", ["Pw-{t}"], id="unencoded-slash"),
    pytest.param("Query?Pw-{t}", ["Pw-{t}"], id="unencoded-question-mark"),
    pytest.param("20240101?Pw-{t}", ["Pw-{t}"], id="digits-then-question-mark"),
    pytest.param("Bracket[Pw-{t}", ["Pw-{t}"], id="unencoded-bracket"),
])
def test_a_malformed_database_url_is_config_invalid_and_echoes_no_password(
        password, extra_secrets, db_role, base_env, secrets):
    t = tag()
    password = password.format(t=t)
    env = dict(base_env, DATABASE_URL=bad_url(db_role, password))

    with pytest.raises(Exception) as caught:
        config.load(env)

    assert type(caught.value) is ConfigInvalid, repr(caught.value)
    assert "DATABASE_URL" in str(caught.value)
    assert_clean("the error", str(caught.value),
                 secrets + [password] + [s.format(t=t) for s in extra_secrets])
    # and so the CLI prints nothing of it either
    result = subprocess.run(CLI, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == ConfigInvalid.exit_code, result.stderr
    assert_clean("the CLI's output", result.stdout + result.stderr,
                 [password] + [s.format(t=t) for s in extra_secrets])


# -- door 4: the commands that read the identity: verify, restore, status ------------------

def flip_a_middle_byte(bucket, key):
    """One byte changed in the object's middle 64 KiB chunk, as bit rot would."""
    data = bytearray(bucket.get_object(key).read())
    data[len(data) // 2] ^= 0x01
    bucket.put_object(key, bytes(data))


def arrange_reader(name, env, ctx, key):
    """Sets up reader scenario `name` on the encrypted backup `key`: (env, extra secrets)."""
    if name == "ok":
        return env, []
    if name == "wrong_identity":
        _, other, _ = age_keygen(ctx.tmp_path)
        env["BACKUP_AGE_IDENTITY"] = other
        return env, identity_forms(other)
    if name == "malformed_identity":  # one character off: its checksum fails
        secret = env["BACKUP_AGE_IDENTITY"]
        typo = secret[:-1] + ("Q" if secret[-1] != "Q" else "P")
        env["BACKUP_AGE_IDENTITY"] = typo
        body = typo[len("AGE-SECRET-KEY-1"):]
        return env, [typo, typo.lower(), body, body.lower()]
    if name == "corrupt_object":
        flip_a_middle_byte(ctx.bucket, key)
        return env, []
    raise AssertionError(name)


def must_fail(command, name):
    """Status with an identity that opens nothing still reports (that it opens nothing);
    verify with it checks what it can and says the content check needs the identity."""
    return name != "ok" and not (command == "status" and name == "wrong_identity")


def stored_text(bucket):
    """Every object but the backups themselves (manifests, verify files, claims) and
    every object's tags (verify's verdict)."""
    texts = []
    for obj in oss2.ObjectIteratorV2(bucket, prefix=PREFIX):
        if not names.is_backup_object(obj.key):
            texts.append(bucket.get_object(obj.key).read().decode("utf-8", "replace"))
        texts.append(repr(bucket.get_object_tagging(obj.key).tag_set.tagging_rule))
    return "\n".join(texts)


READERS = [("verify", "ok"), ("verify", "wrong_identity"), ("verify", "malformed_identity"),
           ("verify", "corrupt_object"),
           ("restore", "ok"), ("restore", "wrong_identity"), ("restore", "malformed_identity"),
           ("restore", "corrupt_object"),
           ("status", "ok"), ("status", "wrong_identity"), ("status", "malformed_identity")]


@pytest.fixture
def sealed_key(ctx):
    """One backup encrypted to the identity's public key, on the local OSS server."""
    (done,) = run_backup(config.load(dict(ctx.base_env)), "manual")["backups"]
    assert done["key"].endswith(names.AGE_SUFFIX)
    return done["key"]


def reader_cli(command, key, ctx):
    if command == "verify":
        return [sys.executable, "-m", "l2c_backup.cli", "--log-json", "-v", "verify", key, "--json"]
    if command == "restore":
        return [sys.executable, "-m", "l2c_backup.cli", "--log-json", "-v", "restore", key,
                "--target-url", ctx.pg_cluster.url("postgres"), "--create-db", f"r_{tag()}",
                "--json"]
    return [sys.executable, "-m", "l2c_backup.cli", "--log-json", "-v", "status", "--json"]


def run_reader_library(command, key, env, ctx):
    """The command's library call as the CLI makes it (identities from the environment);
    returns the text of its result."""
    from l2c_backup.database import DatabaseSettings
    from l2c_backup.restore import restore
    from l2c_backup.status import Location, report, survey
    from l2c_backup.storage import open_storage
    from l2c_backup.verify import verify
    identities = config.load_identities(env)
    target, settings = config.storage_target(env)
    storage = open_storage(target, settings)
    if command == "verify":
        verdict = verify(storage, key, 5, recheck=True, identities=identities)
        return (json.dumps(verdict.summary()) + "\n" + repr(verdict),
                verdict.ok and verdict.content_checked)
    if command == "restore":
        target_db = DatabaseSettings.from_url(ctx.pg_cluster.url("postgres"), {})
        done = restore(storage, key, target_db, create_db=f"r_{tag()}", identities=identities)
        return json.dumps(done, default=str), True
    primary = Location("primary", storage.url, "OSS", False, survey(storage, identities))
    found = report([primary], names.KINDS, {k: 10 for k in names.KINDS},
                   identities=[i.recipient for i in identities])
    return json.dumps(found) + "\n" + repr(primary), True


@pytest.mark.parametrize("command, name", READERS)
def test_library_reader_leaks_no_identity(command, name, ctx, sealed_key, caplog):
    env, extra = arrange_reader(name, dict(ctx.base_env), ctx, sealed_key)
    secrets = ctx.secrets + extra
    sent = []
    sink = alerts.add_sink(sent.append)
    debug_everywhere(caplog)
    out, ok, error = "", False, None
    try:
        out, ok = run_reader_library(command, sealed_key, env, ctx)
    except L2CError as err:
        error = err
    finally:
        alerts.remove_sink(sink)

    if must_fail(command, name):
        assert error is not None or not ok, f"{command} {name} did not fail: {out}"
    else:
        assert error is None and ok, f"{error}\n{out}"
    if command == "status" and error is None:  # it names the identity by its public key
        assert env["BACKUP_AGE_RECIPIENTS"] in out or name != "ok", out
    if error is not None:
        assert_clean("the error", str(error) + "\n" + repr(error), secrets)
    assert_clean(f"the result of {command}", out, secrets)
    for alert in sent:
        assert_clean("an alert", alert.text() + "\n" + repr(alert), secrets)
    check_records(caplog.records, secrets)
    assert_clean("a stored sidecar or tag", stored_text(ctx.bucket), secrets)


@pytest.mark.parametrize("command, name", READERS)
def test_cli_reader_leaks_no_identity(command, name, ctx, sealed_key):
    env, extra = arrange_reader(name, dict(ctx.base_env), ctx, sealed_key)
    secrets = ctx.secrets + extra

    result = subprocess.run(reader_cli(command, sealed_key, ctx), env=env, capture_output=True,
                            text=True, timeout=300)

    output = result.stdout + "\n" + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    if command == "verify" and result.returncode == 0:
        [verdict] = json.loads(result.stdout)["results"]
        succeeded = verdict["verdict"] == "ok" and verdict.get("content_checked", True)
    else:  # status: 20 is its verdict "not 3-2-1" (no DR copy here), not a failure
        succeeded = result.returncode in ((0, 20) if command == "status" else (0,))
    assert succeeded != must_fail(command, name), output
    assert_clean(f"the CLI's {command} stdout/stderr", output, secrets)
    assert_clean("a stored sidecar or tag", stored_text(ctx.bucket), secrets)
