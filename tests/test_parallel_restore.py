"""`restore --jobs N --create-db NAME`: the tricky dataset comes back equal through N
sessions (tables, large objects, sequences' values, materialized views, indexes,
constraints, triggers), and a failure, a damaged section or a signal leaves no database and
no psql behind; SIGKILL leaves a marked database that the next run replaces.

Real clusters, real pg_dump/psql, real backups in the local OSS server and a directory.
The signal tests hold the data phase deterministically: a table's CHECK calls a function
that waits (pg_sleep steps) until a gate file exists, so a COPY is surely in flight, and
waiting for the gate, when the signal comes."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pytest

from l2c_backup import config, names
from l2c_backup.backup import run_backup
from l2c_backup.database import DatabaseSettings
from l2c_backup.errors import BackupCorrupt, RestoreFailed, RestoreRefused
from l2c_backup.manifest import sections_of
from l2c_backup.parallel_restore import restore_parallel
from l2c_backup.storage import open_storage
from l2c_local import resolve
from l2c_local.pgcluster import table_digests
from test_restore_signals import wait_for

WHEN = datetime(2026, 11, 26, 18, 30, tzinfo=timezone.utc)
KEY = "db-backups/daily/backup_2026-11-27.sql.gz"
MARK = "l2c-backup: restore in progress since "


def settings_for(pg, db="postgres"):
    return DatabaseSettings.from_url(pg.url(db), {})


def backup_to(directory, pg, db):
    run_backup(config.load({"DATABASE_URL": pg.url(db), "BACKUP_TARGET": str(directory),
                            "PRUNE_AFTER_BACKUP": "false"}), "daily", when=WHEN)
    return open_storage(str(directory))


def fingerprint(pg, db):
    """What must come back equal besides the tables' rows: sequences' values, materialized
    views (populated, their rows), index, constraint and trigger definitions, comments."""
    queries = {
        "sequences": "SELECT format('%s.%s', schemaname, sequencename), last_value "
                     "FROM pg_sequences ORDER BY 1",
        "matviews": "SELECT format('%s.%s', schemaname, matviewname), ispopulated "
                    "FROM pg_matviews ORDER BY 1",
        "monthly_revenue": "SELECT md5(string_agg(m::text, E'\\n' ORDER BY m::text)) "
                           "FROM sales.monthly_revenue m",
        "indexes": "SELECT indexdef FROM pg_indexes WHERE schemaname NOT IN "
                   "('pg_catalog', 'information_schema') ORDER BY 1",
        "constraints": "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), "
                       "convalidated FROM pg_constraint WHERE connamespace::regnamespace::text "
                       "NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2",
        "triggers": "SELECT tgrelid::regclass::text, pg_get_triggerdef(oid) FROM pg_trigger "
                    "WHERE NOT tgisinternal ORDER BY 1, 2",
        "comments": "SELECT c.relname, obj_description(c.oid, 'pg_class') FROM pg_class c "
                    "WHERE obj_description(c.oid, 'pg_class') IS NOT NULL ORDER BY 1",
        "acls": "SELECT c.relname, c.relacl FROM pg_class c WHERE c.relacl IS NOT NULL "
                "ORDER BY 1",
    }
    return {name: pg.psql(sql, db) for name, sql in queries.items()}


def database_exists(pg, db):
    return pg.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{db}'").strip() == "1"


def comment_on(pg, db):
    return pg.psql("SELECT coalesce(shobj_description(oid, 'pg_database'), '') "
                   f"FROM pg_database WHERE datname = '{db}'").strip()


def sessions_on(pg, db):
    return int(pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}'"))


def psql_processes_on(db):
    """Our psql processes restoring into `db` (psql ... -d db), from /proc."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"psql") and db.encode() in argv:
            found.append(int(proc.name))
    return found


# -- round trips ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seeded_backup(pg_cluster, seeded_db, tmp_path_factory):
    directory = tmp_path_factory.mktemp("pr-backups")
    storage = backup_to(directory, pg_cluster, seeded_db)
    return storage, directory


def test_the_backup_under_test_has_a_table_index(seeded_backup):
    storage, _ = seeded_backup
    doc = json.loads(b"".join(storage.open(names.manifest_key(KEY))))
    kinds = [s["kind"] for s in sections_of(doc)]
    assert kinds[0] == "pre-data" and kinds[-1] == "post-data"
    assert {"table-data", "sequence-values", "large-objects"} <= set(kinds)


def test_jobs_2_from_oss_brings_back_the_tricky_dataset_equal(
        oss_server, pg_cluster, seeded_db):
    env = {"DATABASE_URL": pg_cluster.url(seeded_db), "OSS_ENDPOINT": oss_server.endpoint,
           "OSS_BACKUP_BUCKET": "l2c-backups", "OSS_ACCESS_KEY_ID": oss_server.access_key_id,
           "OSS_ACCESS_KEY_SECRET": oss_server.access_key_secret}
    (done,) = run_backup(config.load(env), "daily", when=WHEN)["backups"]
    storage = open_storage(*config.storage_target(env))

    result = restore_parallel(storage, done["key"], settings_for(pg_cluster), "pr_oss_j2", 2)

    assert table_digests(pg_cluster, "pr_oss_j2") == table_digests(pg_cluster, seeded_db)
    assert fingerprint(pg_cluster, "pr_oss_j2") == fingerprint(pg_cluster, seeded_db)
    assert comment_on(pg_cluster, "pr_oss_j2") == ""  # the mark went with the last phase
    assert result["jobs"] == 2 and result["database"] == "pr_oss_j2"
    assert result["bytes"] == storage.head(done["key"]).size  # every section read once
    doc = json.loads(b"".join(storage.open(names.manifest_key(done["key"]))))
    assert result["tables"] == sum(s["kind"] == "table-data" for s in sections_of(doc)) >= 7
    for phase in ("pre_data_seconds", "data_seconds", "post_data_seconds"):
        assert 0 <= result[phase] <= result["restore_seconds"]
    assert psql_processes_on("pr_oss_j2") == []


@pytest.mark.parametrize("jobs", [1, 4])
def test_jobs_1_and_4_from_a_directory_bring_back_the_dataset_equal(
        pg_cluster, seeded_db, seeded_backup, jobs):
    storage, _ = seeded_backup
    db = f"pr_dir_j{jobs}"
    result = restore_parallel(storage, KEY, settings_for(pg_cluster), db, jobs)
    assert result["jobs"] == jobs
    assert table_digests(pg_cluster, db) == table_digests(pg_cluster, seeded_db)
    assert fingerprint(pg_cluster, db) == fingerprint(pg_cluster, seeded_db)
    assert comment_on(pg_cluster, db) == ""


# -- failures ----------------------------------------------------------------------------
FAILING_SCHEMA = """
CREATE TABLE public.filler AS SELECT g AS id, md5(g::text) AS payload FROM generate_series(1, 50000) g;
ALTER TABLE public.filler ADD PRIMARY KEY (id);
CREATE FUNCTION public.normalize_code(code text) RETURNS text LANGUAGE sql AS 'SELECT upper(code)';
-- Unqualified, as many apps write it: fine under the app's search_path, and an error under
-- pg_dump's empty one when the restore's COPY checks each row.
CREATE FUNCTION public.code_ok(code text) RETURNS boolean LANGUAGE plpgsql
    AS 'BEGIN RETURN length(normalize_code(code)) = 3; END';
CREATE TABLE public.codes (code text CHECK (public.code_ok(code)));
INSERT INTO public.codes SELECT 'c' || g FROM generate_series(10, 99) g;
"""


@pytest.fixture(scope="module")
def failing_backup(pg_cluster, tmp_path_factory):
    pg_cluster.create_database("pr_failing_src")
    pg_cluster.psql(FAILING_SCHEMA, "pr_failing_src")
    return backup_to(tmp_path_factory.mktemp("pr-failing"), pg_cluster, "pr_failing_src")


def test_a_statement_failing_in_one_data_section_drops_the_new_database(
        pg_cluster, failing_backup):
    with pytest.raises(RestoreFailed, match=r"data of public\.codes.*normalize_code") as err:
        restore_parallel(failing_backup, KEY, settings_for(pg_cluster), "pr_fails", 2)
    assert "dropped" in err.value.hint
    assert not database_exists(pg_cluster, "pr_fails")
    assert psql_processes_on("pr_fails") == []


def test_a_flipped_byte_in_one_table_section_is_backup_corrupt_and_drops_the_database(
        pg_cluster, seeded_db, tmp_path):
    storage = backup_to(tmp_path, pg_cluster, seeded_db)
    doc = json.loads((tmp_path / names.manifest_key(KEY)).read_bytes())
    orders = next(s for s in sections_of(doc) if s.get("table") == "orders")
    path = tmp_path / KEY
    data = bytearray(path.read_bytes())
    data[orders["offset"] + orders["length"] // 2] ^= 0x40
    path.write_bytes(bytes(data))

    with pytest.raises(BackupCorrupt, match=r"sales\.orders"):
        restore_parallel(storage, KEY, settings_for(pg_cluster), "pr_corrupt", 2)
    assert not database_exists(pg_cluster, "pr_corrupt")
    assert psql_processes_on("pr_corrupt") == []


def test_a_backup_without_index_is_refused_before_any_database_is_made(
        pg_cluster, seeded_backup, tmp_path):
    storage = without_index(seeded_backup[1], tmp_path)
    with pytest.raises(RestoreRefused, match="has no table index"):
        restore_parallel(storage, KEY, settings_for(pg_cluster), "pr_old", 2)
    assert not database_exists(pg_cluster, "pr_old")


def without_index(directory, into):
    """A copy of the backup in `directory` whose manifest lacks the index (as before issue 14)."""
    for key in (KEY, names.manifest_key(KEY)):
        (into / key).parent.mkdir(parents=True, exist_ok=True)
        (into / key).write_bytes((directory / key).read_bytes())
    doc = json.loads((into / names.manifest_key(KEY)).read_bytes())
    del doc["index"]
    (into / names.manifest_key(KEY)).write_text(json.dumps(doc))
    return open_storage(str(into))


# -- the CLI: refusals and signals ---------------------------------------------------------
def cli(*args, **popen):
    env = resolve.child_env(dict(os.environ))
    return subprocess.Popen([sys.executable, "-m", "l2c_backup.cli", "restore", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            **popen)


@pytest.mark.parametrize("args, message", [
    (["--jobs", "2"], "--jobs needs --create-db NAME"),
    (["--jobs", "0", "--create-db", "pr_x"], "--jobs 0 is out of range"),
    (["--jobs", "33", "--create-db", "pr_x"], "--jobs 33 is out of range"),
])
def test_the_cli_refuses_jobs_without_a_new_database_or_out_of_range(
        pg_cluster, seeded_backup, args, message):
    proc = cli(KEY, "--from", str(seeded_backup[1]), "--target-url", pg_cluster.url(), *args)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr
    assert message in stderr and "Traceback" not in stderr
    assert not database_exists(pg_cluster, "pr_x")


def test_the_cli_refuses_jobs_for_a_backup_without_index(pg_cluster, seeded_backup, tmp_path):
    without_index(seeded_backup[1], tmp_path)
    proc = cli(KEY, "--from", str(tmp_path), "--target-url", pg_cluster.url(),
               "--jobs", "2", "--create-db", "pr_old_cli")
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 16, stderr
    assert f"{KEY} has no table index (it was made before l2c-backup could cut one): restore " \
           "it whole, without --table / --jobs" in stderr
    assert "Traceback" not in stderr and not database_exists(pg_cluster, "pr_old_cli")


GATED_SCHEMA = """
CREATE TABLE public.filler AS SELECT g AS id, md5(g::text) AS payload FROM generate_series(1, 20000) g;
ALTER TABLE public.filler ADD PRIMARY KEY (id);
-- Waits, in pg_sleep steps, until the gate file exists: a COPY into public.gated stays in
-- flight until the test opens the gate.
CREATE FUNCTION public.gate_open() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    WHILE (pg_catalog.pg_stat_file('{gate}', true)).size IS NULL LOOP
        PERFORM pg_catalog.pg_sleep(0.05);
    END LOOP;
    RETURN true;
END $$;
CREATE TABLE public.gated (id int CHECK (public.gate_open()));
INSERT INTO public.gated SELECT generate_series(1, 10);
CREATE INDEX gated_idx ON public.gated (id);
"""


@pytest.fixture(scope="module")
def gated(pg_cluster, tmp_path_factory):
    """(backup directory, gate file): a backup whose restore waits in public.gated's COPY
    while the gate file is missing. The gate is open (the file exists) between tests."""
    # pytest's own temporary directories are private to this user; the server (maybe
    # another user) must see the gate.
    gate = Path(tempfile.mkdtemp(prefix="l2c-pr-gate-")) / "open"
    gate.parent.chmod(0o755)
    gate.touch()
    pg_cluster.create_database("pr_gated_src")
    pg_cluster.psql(GATED_SCHEMA.replace("{gate}", str(gate)), "pr_gated_src")
    directory = tmp_path_factory.mktemp("pr-gated")
    backup_to(directory, pg_cluster, "pr_gated_src")
    yield directory, gate
    shutil.rmtree(gate.parent)


def waiting_at_the_gate(pg, db):
    return pg.psql("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                   f"'{db}' AND query LIKE 'COPY public.gated%' AND wait_event = 'PgSleep'"
                   ).strip() == "1"


def start_gated(pg, gated, db):
    directory, gate = gated
    gate.unlink()
    proc = cli(KEY, "--from", str(directory), "--target-url", pg.url(), "--jobs", "2",
               "--create-db", db)
    wait_for(lambda: waiting_at_the_gate(pg, db), "the COPY into public.gated to wait",
             proc=proc)
    return proc


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_jobs_restore_stopped_while_loading_leaves_no_database_and_no_psql(
        pg_cluster, gated, signum):
    db = f"pr_sig_{signum.name.lower()}"
    try:
        proc = start_gated(pg_cluster, gated, db)
        assert psql_processes_on(db)  # the sessions are there, one of them waiting
        os.kill(proc.pid, signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        gated[1].touch()
    assert proc.returncode == 128 + signum, stderr
    lines = stderr.strip().splitlines()
    assert lines == [f"l2c-backup restore: stopped by {signum.name}; what was in progress "
                     "was undone"], stderr
    assert not database_exists(pg_cluster, db)  # dropped before l2c exited
    assert psql_processes_on(db) == []
    assert pg_cluster.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                           "'l2c-backup'").strip() == "0"


def test_a_jobs_restore_killed_leaves_a_marked_database_that_the_next_run_replaces(
        pg_cluster, gated):
    db = "pr_sig_sigkill"
    try:
        proc = start_gated(pg_cluster, gated, db)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        gated[1].touch()  # the orphaned psql sessions read the end of their input and end
    assert proc.returncode == -signal.SIGKILL
    wait_for(lambda: sessions_on(pg_cluster, db) == 0 and not psql_processes_on(db),
             "the orphaned sessions to end")
    assert database_exists(pg_cluster, db)
    mark = comment_on(pg_cluster, db)
    assert mark.startswith(MARK) and KEY in mark, mark

    rerun = cli(KEY, "--from", str(gated[0]), "--target-url", pg_cluster.url(), "--jobs", "2",
                "--create-db", db)
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    assert f"dropped database {db}" in stderr and "left by a restore that was killed" in stderr
    assert comment_on(pg_cluster, db) == ""
    assert table_digests(pg_cluster, db) == table_digests(pg_cluster, "pr_gated_src")


def test_a_table_restore_killed_mid_copy_leaves_the_target_as_it_was(pg_cluster, gated):
    """restore --table runs in one transaction of ours: killed while its COPY is held,
    whatever psql then makes of the end of its input, the server never commits."""
    db = "pr_table_sigkill"
    pg_cluster.create_database(db)
    directory, gate = gated
    gate.unlink()
    try:
        proc = cli(KEY, "--from", str(directory), "--target-url", pg_cluster.url(db),
                   "--table", "public.gated")
        wait_for(lambda: waiting_at_the_gate(pg_cluster, db), "the COPY into public.gated "
                 "to wait", proc=proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        gate.touch()  # the orphaned psql's COPY goes on, reads the end of its input, ends
    assert proc.returncode == -signal.SIGKILL
    wait_for(lambda: sessions_on(pg_cluster, db) == 0 and not psql_processes_on(db),
             "the orphaned psql to end")
    assert pg_cluster.psql("SELECT to_regclass('public.gated') IS NULL, "
                           "to_regproc('public.gate_open') IS NULL", db).strip() == "t\tt"


def test_index_builds_wait_for_their_own_tables_data_only():
    """Builds overlap the data: each waits for its table's COPY, not for all of them;
    one on a table without data of its own (a partitioned table) waits for all."""
    from l2c_backup.parallel_restore import _plan

    def entry(name, type_, body, data=False):
        return (f"--\n-- {'Data for ' if data else ''}Name: {name}; Type: {type_}; "
                f"Schema: public; Owner: app\n--\n\n{body}\n\n").encode()

    pre = b"SET client_encoding = 'UTF8';\n\n" + entry("a", "TABLE", "CREATE TABLE public.a (i int);")
    post = (entry("a a_pkey", "CONSTRAINT", "ALTER TABLE ONLY public.a ADD CONSTRAINT a_pkey PRIMARY KEY (i);")
            + entry("b_i", "INDEX", "CREATE INDEX b_i ON public.b USING btree (i);")
            + entry("p_i", "INDEX", "CREATE INDEX p_i ON ONLY public.p USING btree (i);"))
    sections = [{"kind": "pre-data", "sql_length": len(pre)},
                {"kind": "table-data", "schema": "public", "table": "a", "sql_length": 10},
                {"kind": "table-data", "schema": "public", "table": "b", "sql_length": 20},
                {"kind": "post-data", "sql_length": len(post)}]

    class Run:
        cleanse = staticmethod(lambda sql: sql)

    plan = _plan(pre, post, sections, Run())
    load = {item.section["table"]: item for item in plan.data}
    needs = {item.what: item.needs for item in plan.builds}
    assert needs == {"CONSTRAINT a a_pkey (public)": [load["a"]],
                     "INDEX b_i (public)": [load["b"]], "INDEX p_i (public)": plan.data}
    assert [item.what for item in plan.data] == ["the data of public.b", "the data of public.a"]
    assert load["a"].before == b"BEGIN;\nTRUNCATE TABLE ONLY public.a;\n" and load["a"].after == b"COMMIT;\n"
