"""`restore --table`: each table of the seed comes back alone from a real backup (a
directory and the local OSS server), equal to the source, reading only its part of the
object; what it cannot restore safely is refused before anything is written."""
import json
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from l2c_backup import config, manifest
from l2c_backup.backup import run_backup
from l2c_backup.database import DatabaseSettings
from l2c_backup.errors import BackupCorrupt, RestoreRefused
from l2c_backup.storage import open_storage
from l2c_backup.table_restore import restore_tables
from l2c_local import resolve
from l2c_local.pgcluster import table_digests

WHEN = datetime(2026, 11, 26, 18, 30, tzinfo=timezone.utc)
# The seed's tables, and the ones each must find (its foreign keys' targets, transitively).
NEEDS = {"public.app_settings": [], "public.customers": [], "public.documents": [],
         "sales.products": [], "audit.events": [], "sales.orders": ["public.customers"],
         "sales.invoices": ["public.customers", "sales.orders"]}


def settings_for(pg, db):
    return DatabaseSettings.from_url(pg.url(db), {})


def fresh_database(pg, name):
    pg.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    return pg.create_database(name)


@pytest.fixture(scope="module")
def dir_backup(pg_cluster, seeded_db, tmp_path_factory):
    directory = tmp_path_factory.mktemp("table-backups")
    env = {"DATABASE_URL": pg_cluster.url(seeded_db), "BACKUP_TARGET": str(directory),
           "PRUNE_AFTER_BACKUP": "false"}
    (done,) = run_backup(config.load(env), "daily", when=WHEN)["backups"]
    return directory, done["key"]


@pytest.fixture
def backup(dir_backup, tmp_path):
    """A copy of the module's backup, for a test that damages or edits it."""
    directory, key = dir_backup
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(directory), str(copy)], check=True)
    return open_storage(str(copy)), key, copy


def index_of(storage, key):
    return manifest.sections_of(json.loads(b"".join(storage.open(key + ".manifest.json"))))


def shape(pg, db, table, schema_as=None):
    """A table's indexes, constraints, triggers, defaults, comment and its sequences'
    values, with its schema written as `schema_as` (for --into-schema)."""
    schema, name = table.split(".")
    where = f"{schema_as or schema}.{name}"
    text = pg.psql(f"""
        SELECT string_agg(x, E'\\n' ORDER BY x) FROM (
          SELECT 'index ' || replace(indexdef, schemaname || '.', 'S.') AS x FROM pg_indexes
           WHERE schemaname = '{schema_as or schema}' AND tablename = '{name}'
          UNION ALL SELECT 'constraint ' || conname || ' ' || pg_get_constraintdef(oid)
           FROM pg_constraint WHERE conrelid = '{where}'::regclass
          UNION ALL SELECT 'trigger ' || pg_get_triggerdef(oid) FROM pg_trigger
           WHERE tgrelid = '{where}'::regclass AND NOT tgisinternal
          UNION ALL SELECT 'default ' || a.attname || ' ' || pg_get_expr(d.adbin, d.adrelid)
           FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
           WHERE d.adrelid = '{where}'::regclass
          UNION ALL SELECT 'identity ' || attname || ' ' || attidentity::text FROM pg_attribute
           WHERE attrelid = '{where}'::regclass AND attidentity <> ''
          UNION ALL SELECT 'comment ' || obj_description('{where}'::regclass, 'pg_class')
          UNION ALL SELECT 'sequence ' || s.relname || ' ' || coalesce(q.last_value::text, '-')
           FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
           JOIN pg_sequences q ON q.schemaname = s.relnamespace::regnamespace::text
                              AND q.sequencename = s.relname
           WHERE d.refobjid = '{where}'::regclass AND d.deptype IN ('a', 'i')
        ) parts""", db)
    return text.replace(f"{schema_as}.", f"{schema}.") if schema_as else text


def rows_md5(pg, db, table):
    """As table_digests, for one table (whose name may hold blanks), "-" when missing."""
    if pg.psql(f"SELECT to_regclass('{table}') IS NULL", db).strip() == "t":
        return "-"
    return pg.psql(f"SELECT md5(coalesce(string_agg(r::text, E'\\n' ORDER BY r::text), '')) "
                   f"FROM {table} r", db).strip()


def user_tables(pg, db):
    return pg.psql("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                   "WHERE c.relkind IN ('r', 'p', 'S', 'v', 'm') AND n.nspname NOT IN "
                   "('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'", db).strip()


def large_objects(pg, db):
    return pg.psql("SELECT oid, md5(lo_get(oid)) FROM pg_largeobject_metadata ORDER BY 1", db)


def test_the_index_lists_every_table_of_the_seed(dir_backup):
    directory, key = dir_backup
    index = index_of(open_storage(str(directory)), key)
    assert {f"{s['schema']}.{s['table']}" for s in index if s["kind"] == "table-data"} == set(NEEDS)


@pytest.mark.parametrize("table", sorted(NEEDS))
def test_each_table_comes_back_alone_equal_to_the_source(pg_cluster, seeded_db, dir_backup, table):
    directory, key = dir_backup
    storage = open_storage(str(directory))
    db = fresh_database(pg_cluster, "tr_" + table.replace(".", "_"))
    for needed in NEEDS[table]:  # what its foreign keys point at, each restored alone too
        restore_tables(storage, key, settings_for(pg_cluster, db), [needed], force=True)
    before = user_tables(pg_cluster, db)

    summary = restore_tables(storage, key, settings_for(pg_cluster, db), [table],
                             force=bool(NEEDS[table]))

    assert summary["tables"] == [table] and summary["database"] == db
    restored = table_digests(pg_cluster, db)
    assert restored[table] == table_digests(pg_cluster, seeded_db)[table]
    assert shape(pg_cluster, db, table) == shape(pg_cluster, seeded_db, table)
    assert summary["rows"] == int(pg_cluster.psql(f"SELECT count(*) FROM {table}", db))
    assert summary["bytes_read"] < summary["object_bytes"]
    if table == "public.documents":  # an oid column: its large objects come with it
        assert summary["large_objects"] == 2
        assert large_objects(pg_cluster, db) == large_objects(pg_cluster, seeded_db)
    else:
        assert large_objects(pg_cluster, db) == "" and summary["large_objects"] == 0
    # Nothing else of the backup came along: the table, its sequences, what it needs.
    assert int(user_tables(pg_cluster, db)) - int(before) == 1 + len(summary["sequences"])


def test_a_table_of_one_percent_reads_a_small_share_of_the_object_from_oss(
        pg_cluster, seeded_db, oss_server):
    env = {"DATABASE_URL": pg_cluster.url(seeded_db), "OSS_ENDPOINT": oss_server.endpoint,
           "OSS_BACKUP_BUCKET": "l2c-backups", "OSS_ACCESS_KEY_ID": oss_server.access_key_id,
           "OSS_ACCESS_KEY_SECRET": oss_server.access_key_secret}
    (done,) = run_backup(config.load(env), "daily", when=WHEN)["backups"]
    storage = open_storage(*config.storage_target(env))
    db = fresh_database(pg_cluster, "tr_from_oss")

    summary = restore_tables(storage, done["key"], settings_for(pg_cluster, db), ["sales.products"])

    assert table_digests(pg_cluster, db)["sales.products"] == \
        table_digests(pg_cluster, seeded_db)["sales.products"]
    share = summary["bytes_read"] / summary["object_bytes"]
    assert share < 0.02, f"read {summary['bytes_read']} of {summary['object_bytes']} bytes"
    section = next(s for s in index_of(storage, done["key"])
                   if s["kind"] == "table-data" and s["table"] == "products")
    assert summary["bytes_read"] < section["length"] * 4  # the data, and the small sections


def test_into_schema_restores_beside_the_live_table_and_leaves_it_alone(pg_cluster, seeded_db,
                                                                      dir_backup):
    directory, key = dir_backup
    db = fresh_database(pg_cluster, "tr_beside")
    pg_cluster.psql(f"DROP DATABASE {db}")
    pg_cluster.psql(f"CREATE DATABASE {db} TEMPLATE {seeded_db}")
    pg_cluster.psql("DELETE FROM sales.invoices WHERE invoice_no % 2 = 0; "
                    "SELECT nextval('sales.order_no_seq')", db)  # the live data moved on
    live = table_digests(pg_cluster, db), shape(pg_cluster, db, "sales.orders")

    summary = restore_tables(open_storage(str(directory)), key, settings_for(pg_cluster, db),
                             ["sales.orders", "sales.invoices"], into_schema="restored")

    assert summary["tables"] == ["restored.orders", "restored.invoices"]
    after = table_digests(pg_cluster, db)
    source = table_digests(pg_cluster, seeded_db)
    assert after["restored.orders"] == source["sales.orders"]
    assert after["restored.invoices"] == source["sales.invoices"]
    assert {k: v for k, v in after.items() if not k.startswith("restored.")} == live[0]
    assert shape(pg_cluster, db, "sales.orders") == live[1]
    assert shape(pg_cluster, db, "sales.orders", schema_as="restored") == \
        shape(pg_cluster, seeded_db, "sales.orders")
    # invoices' FK now points at the restored orders, and its default at the live sequence
    assert "REFERENCES restored.orders(id)" in pg_cluster.psql(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'invoices_order_id_fkey' "
        "AND conrelid = 'restored.invoices'::regclass", db)


def test_quoted_names_partitions_policies_and_acls_come_back_into_another_schema(pg_cluster,
                                                                                tmp_path):
    from test_dump_entries import TRICKY
    source = fresh_database(pg_cluster, "tr_tricky_source")
    pg_cluster.psql("DROP ROLE IF EXISTS tricky_reader", "postgres")
    pg_cluster.psql(TRICKY, source)
    env = {"DATABASE_URL": pg_cluster.url(source), "BACKUP_TARGET": str(tmp_path)}
    (done,) = run_backup(config.load(env), "daily", when=WHEN)["backups"]
    db = fresh_database(pg_cluster, "tr_tricky")
    tables = ['"Odd Schema"."My Table"', "public.ruled", "public.parent", "public.child"]
    try:
        restored_like_the_source(pg_cluster, source, db, done["key"], tmp_path, tables)
    finally:  # the role is the cluster's: leave no grant to it behind
        pg_cluster.psql(f"DROP DATABASE {source}")
        pg_cluster.psql(f"DROP DATABASE {db}")
        pg_cluster.psql("DROP ROLE tricky_reader")


def restored_like_the_source(pg_cluster, source, db, key, tmp_path, tables):
    summary = restore_tables(open_storage(str(tmp_path)), key,
                             settings_for(pg_cluster, db), tables, into_schema="New One")

    assert summary["tables"] == ["New One.My Table", "New One.ruled", "New One.parent",
                                 "New One.child"]
    assert summary["sequences"] == ["New One.My Table_Id_seq"]
    assert summary["brought"] == ["function public.noop()", "schema New One"]
    assert rows_md5(pg_cluster, db, '"New One"."My Table"') == \
        rows_md5(pg_cluster, source, '"Odd Schema"."My Table"') != rows_md5(pg_cluster, db, "\"New One\".two")
    assert rows_md5(pg_cluster, db, '"New One".ruled') == rows_md5(pg_cluster, source, "public.ruled")
    catalog = """SELECT string_agg(x, E'\\n' ORDER BY x) FROM (
        SELECT conname || ' ' || pg_get_constraintdef(oid) AS x FROM pg_constraint
         WHERE connamespace = '"{0}"'::regnamespace
        UNION ALL SELECT 'policy ' || policyname || ' ' || qual FROM pg_policies WHERE schemaname = '{0}'
        UNION ALL SELECT 'rule ' || rulename FROM pg_rules WHERE schemaname = '{0}'
        UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger WHERE NOT tgisinternal
        UNION ALL SELECT 'acl ' || relname || ' ' || relacl::text FROM pg_class
         WHERE relnamespace = '"{0}"'::regnamespace AND relacl IS NOT NULL
        UNION ALL SELECT 'partition ' || inhrelid::regclass::text FROM pg_inherits
        UNION ALL SELECT 'index ' || indexname FROM pg_indexes WHERE schemaname = '{0}') parts"""
    got = pg_cluster.psql(catalog.format("New One"), db)
    assert 'ruled_fk FOREIGN KEY (id) REFERENCES "New One"."My Table"("Id")' in got
    for needed in ("policy mine (id > 0)", "rule no_delete", "trigger On Insert",
                   "acl My Table {postgres=arwdDxt/postgres,tricky_reader=r/postgres}",
                   'partition "New One".child', "index My Index"):
        assert needed in got, needed
    assert "Odd Schema" not in pg_cluster.psql("SELECT string_agg(nspname, ',') FROM pg_namespace", db)


def test_a_foreign_key_to_a_table_not_brought_is_refused_naming_it(pg_cluster, dir_backup):
    directory, key = dir_backup
    db = fresh_database(pg_cluster, "tr_fk_missing")
    with pytest.raises(RestoreRefused, match=r"(?s)sales\.orders has a foreign key \(orders_customer_fk\) "
                       r"to public\.customers.*add --table public\.customers"):
        restore_tables(open_storage(str(directory)), key, settings_for(pg_cluster, db),
                       ["sales.orders"])
    assert user_tables(pg_cluster, db) == "0"
    assert pg_cluster.psql("SELECT count(*) FROM pg_namespace WHERE nspname IN ('sales', 'audit')",
                           db).strip() == "0"


def test_a_table_that_exists_is_never_overwritten(pg_cluster, seeded_db, dir_backup):
    directory, key = dir_backup
    db = fresh_database(pg_cluster, "tr_exists")
    pg_cluster.psql("CREATE TABLE public.customers (id int); INSERT INTO public.customers VALUES (7)", db)
    with pytest.raises(RestoreRefused, match=r"public\.customers already exists"):
        restore_tables(open_storage(str(directory)), key, settings_for(pg_cluster, db),
                       ["public.app_settings", "public.customers"], force=True)
    assert pg_cluster.psql("SELECT * FROM public.customers", db).strip() == "7"
    assert pg_cluster.psql("SELECT to_regclass('public.app_settings') IS NULL", db).strip() == "t"


def test_a_database_that_holds_tables_needs_into_schema_or_force(pg_cluster, dir_backup):
    directory, key = dir_backup
    db = fresh_database(pg_cluster, "tr_busy")
    pg_cluster.psql("CREATE TABLE keep_me (x int)", db)
    with pytest.raises(RestoreRefused, match="(?s)already holds tables.*--into-schema"):
        restore_tables(open_storage(str(directory)), key, settings_for(pg_cluster, db),
                       ["public.app_settings"])
    assert user_tables(pg_cluster, db) == "1"


def test_an_unknown_table_is_refused_listing_some_that_are_there(pg_cluster, dir_backup):
    directory, key = dir_backup
    db = fresh_database(pg_cluster, "tr_unknown")
    with pytest.raises(RestoreRefused, match=r"(?s)sales\.nope: no such table.*7 tables.*sales\.orders"):
        restore_tables(open_storage(str(directory)), key, settings_for(pg_cluster, db),
                       ["public.customers", "sales.nope"])
    assert user_tables(pg_cluster, db) == "0"


def test_a_backup_made_before_the_index_is_refused(pg_cluster, backup):
    storage, key, directory = backup
    path = directory / (key + ".manifest.json")
    doc = json.loads(path.read_bytes())
    del doc["index"]
    path.write_text(json.dumps(doc))
    db = fresh_database(pg_cluster, "tr_old")
    with pytest.raises(RestoreRefused, match="has no table index .*without --table / --jobs"):
        restore_tables(storage, key, settings_for(pg_cluster, db), ["public.customers"])
    assert user_tables(pg_cluster, db) == "0"


def test_a_flipped_byte_in_the_tables_data_is_corrupt_and_restores_nothing(pg_cluster, backup):
    storage, key, directory = backup
    section = next(s for s in index_of(storage, key)
                   if s["kind"] == "table-data" and s["table"] == "customers")
    path = directory / key
    data = bytearray(path.read_bytes())
    data[section["offset"] + section["length"] // 2] ^= 0x01
    path.write_bytes(bytes(data))
    db = fresh_database(pg_cluster, "tr_flipped")
    with pytest.raises(BackupCorrupt, match="table-data public.customers.*nothing was restored"):
        restore_tables(storage, key, settings_for(pg_cluster, db), ["public.customers"])
    assert user_tables(pg_cluster, db) == "0"
    # The rest of the object is sound: another table still comes back.
    restore_tables(storage, key, settings_for(pg_cluster, db), ["public.app_settings"])
    assert user_tables(pg_cluster, db) == "1"


def test_large_objects_whose_oids_the_target_uses_are_refused(pg_cluster, dir_backup):
    directory, key = dir_backup
    db = fresh_database(pg_cluster, "tr_lo_taken")
    pg_cluster.psql("SELECT lo_from_bytea(900002, 'mine')", db)
    with pytest.raises(RestoreRefused, match="large objects .* already holds \\(900002\\)"):
        restore_tables(open_storage(str(directory)), key, settings_for(pg_cluster, db),
                       ["public.documents"], force=True)
    assert user_tables(pg_cluster, db) == "0"
    assert large_objects(pg_cluster, db).count("\n") == 1


def test_a_dependency_only_psql_finds_missing_is_a_refusal_and_rolls_back(pg_cluster, tmp_path):
    """The owner of a table is a role: the backup does not carry it, the name search does
    not look for it, and the target lacks it. psql stops at ALTER TABLE ... OWNER TO."""
    source = fresh_database(pg_cluster, "tr_owned_source")
    pg_cluster.psql("DROP ROLE IF EXISTS tr_gone; CREATE ROLE tr_gone; "
                    "CREATE TABLE public.owned (id int PRIMARY KEY); INSERT INTO public.owned VALUES (1); "
                    "ALTER TABLE public.owned OWNER TO tr_gone", source)
    env = {"DATABASE_URL": pg_cluster.url(source), "BACKUP_TARGET": str(tmp_path)}
    (done,) = run_backup(config.load(env), "daily", when=WHEN)["backups"]
    pg_cluster.psql(f"DROP DATABASE {source}")
    pg_cluster.psql("DROP ROLE tr_gone")
    db = fresh_database(pg_cluster, "tr_owned")
    with pytest.raises(RestoreRefused, match='role "tr_gone" does not exist; nothing was restored'):
        restore_tables(open_storage(str(tmp_path)), done["key"], settings_for(pg_cluster, db),
                       ["public.owned"])
    assert user_tables(pg_cluster, db) == "0"


def test_the_cli_refuses_in_one_line_with_exit_16(pg_cluster, dir_backup):
    directory, key = dir_backup
    db = fresh_database(pg_cluster, "tr_cli")
    env = resolve.child_env({"PATH": "/usr/bin:/bin"})
    result = subprocess.run(
        [sys.executable, "-m", "l2c_backup.cli", "restore", key, "--from", str(directory),
         "--target-url", pg_cluster.url(db), "--table", "sales.invoices"],
        capture_output=True, text=True, env=env)
    assert result.returncode == 16, result.stderr
    lines = result.stderr.strip().split("\n")
    assert len(lines) == 1 and lines[0].startswith("l2c-backup restore: sales.invoices has a foreign key")
    assert "Traceback" not in result.stderr and user_tables(pg_cluster, db) == "0"


def test_the_cli_restores_a_table_into_another_schema(pg_cluster, seeded_db, dir_backup):
    directory, key = dir_backup
    db = fresh_database(pg_cluster, "tr_cli_ok")
    env = resolve.child_env({"PATH": "/usr/bin:/bin"})
    result = subprocess.run(
        [sys.executable, "-m", "l2c_backup.cli", "restore", key, "--from", str(directory),
         "--target-url", pg_cluster.url(db), "--table", "public.customers",
         "--into-schema", "back"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("restored back.customers (3,000 rows) of ")
    assert table_digests(pg_cluster, db)["back.customers"] == \
        table_digests(pg_cluster, seeded_db)["public.customers"]
