"""The throwaway cluster and the seeded dataset every backup test stands on."""

import socket
import subprocess
import zlib
from urllib.parse import urlsplit

import pg8000.native
import pytest

from l2c_local import pgcluster
from l2c_local.pgcluster import PgCluster, PgClusterError, table_counts, table_digests


def connect(cluster, password=None, database="postgres"):
    return pg8000.native.Connection(
        user=cluster.superuser, password=cluster.password if password is None else password,
        host=cluster.host, port=cluster.port, database=database,
    )


def refuses_connections(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


# -- the cluster -------------------------------------------------------------------------

def test_cluster_answers_on_its_own_port_with_its_password(pg_cluster):
    conn = connect(pg_cluster)
    try:
        [[port, data_dir]] = conn.run(
            "SELECT current_setting('port'), current_setting('data_directory')")
    finally:
        conn.close()
    # Ours, not a PostgreSQL the machine may already run.
    assert int(port) == pg_cluster.port
    assert data_dir == str(pg_cluster.data_dir)


def test_url_carries_user_password_host_port_and_database(pg_cluster):
    url = urlsplit(pg_cluster.url("postgres"))
    assert (url.scheme, url.hostname, url.port, url.path) == (
        "postgresql", "127.0.0.1", pg_cluster.port, "/postgres")
    assert (url.username, url.password) == (pg_cluster.superuser, pg_cluster.password)


def test_wrong_password_is_rejected(pg_cluster):
    with pytest.raises(pg8000.native.DatabaseError) as err:
        connect(pg_cluster, password="not-" + pg_cluster.password)
    assert err.value.args[0]["C"] == "28P01"  # invalid_password


def test_psql_returns_rows_and_reports_errors(pg_cluster):
    assert pg_cluster.psql("SELECT 1, 'two'") == "1\ttwo\n"
    with pytest.raises(PgClusterError, match="division by zero"):
        pg_cluster.psql("SELECT 1; SELECT 1/0; SELECT 2")


def test_stop_removes_the_files_and_frees_the_port():
    cluster = PgCluster().start()
    root, port = cluster.root_dir, cluster.port
    assert root.is_dir() and not refuses_connections(port)
    cluster.stop()
    assert not root.exists()
    assert refuses_connections(port)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
    cluster.stop()  # stopping twice is harmless


def test_start_moves_to_another_port_when_the_picked_one_is_taken(monkeypatch):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        real_free_port, picks = pgcluster.free_port, [taken]
        monkeypatch.setattr(pgcluster, "free_port",
                            lambda host: picks.pop() if picks else real_free_port(host))
        with PgCluster() as cluster:
            assert cluster.port != taken
            connect(cluster).close()


def test_failed_start_shows_the_server_log_and_leaves_no_files():
    class BadConfig(PgCluster):
        def _init(self):
            super()._init()
            self.created_root = self.root_dir
            with open(self.data_dir / "postgresql.conf", "a") as conf:
                conf.write("shared_buffers = 'plenty'\n")

    cluster = BadConfig()
    with pytest.raises(PgClusterError, match=r"(?s)did not start.*server log.*shared_buffers"):
        cluster.start()
    assert not cluster.created_root.exists()


def test_missing_binaries_say_how_to_install_them(tmp_path):
    with pytest.raises(PgClusterError, match="initdb not found.*apt-get install postgresql"):
        PgCluster(bin_dir=tmp_path)


# -- the seeded dataset ------------------------------------------------------------------

def test_seeded_db_has_the_schemas_and_objects_a_backup_must_carry(pg_cluster, seeded_db):
    def one(sql):
        return pg_cluster.psql(sql, seeded_db).strip()

    assert one("SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace"
               " WHERE nspname IN ('public', 'sales', 'audit')") == "audit,public,sales"
    assert one("SELECT string_agg(format('%s.%s', schemaname, viewname), ',') FROM pg_views"
               " WHERE schemaname = 'sales'") == "sales.order_summary"
    assert one("SELECT count(*) FROM pg_matviews WHERE matviewname = 'monthly_revenue'") == "1"
    assert one("SELECT string_agg(sequencename, ',' ORDER BY sequencename) FROM pg_sequences"
               " WHERE schemaname = 'sales'") == "invoice_no_seq,order_no_seq,products_id_seq"
    assert one("SELECT string_agg(p.proname, ',' ORDER BY p.proname) FROM pg_proc p"
               " JOIN pg_language l ON l.oid = p.prolang WHERE l.lanname = 'plpgsql'"
               " AND p.pronamespace::regnamespace::text IN ('sales', 'audit')"
               ) == "customer_lifetime_value,record_change"
    assert one("SELECT tgname FROM pg_trigger WHERE tgrelid = 'sales.orders'::regclass"
               " AND NOT tgisinternal") == "orders_audit"
    assert one("SELECT count(*) FROM audit.events") != "0"  # the trigger fired
    assert one("SELECT count(*) FROM pg_largeobject_metadata") == "2"
    assert one("SELECT length(lo_get(body_oid)) > 60000 FROM public.documents"
               " WHERE content_type = 'application/octet-stream'") == "t"


def test_seeded_db_uses_the_column_types_a_dump_must_round_trip(pg_cluster, seeded_db):
    types = set(pg_cluster.psql(
        "SELECT DISTINCT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
        " JOIN pg_class c ON c.oid = a.attrelid"
        " WHERE c.relnamespace::regnamespace::text IN ('public', 'sales', 'audit')"
        " AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped", seeded_db).split("\n"))
    assert {"jsonb", "bytea", "text[]", "integer[]", "numeric(12,2)", "sales.amount",
            "sales.order_status", "timestamp with time zone", "interval", "inet", "oid",
            "date", "boolean", "real", "character(2)"} <= types


def test_seeded_db_holds_unicode_text_including_chinese(pg_cluster, seeded_db):
    names = pg_cluster.psql(
        "SELECT full_name FROM public.customers WHERE country = 'CN' ORDER BY id LIMIT 20",
        seeded_db).split()
    assert all("\u4e00" <= name[0] <= "\u9fff" for name in names)
    assert pg_cluster.psql("SELECT count(*) FROM sales.orders WHERE note LIKE '%已退款'",
                           seeded_db).strip() != "0"


def test_orders_table_has_over_100k_rows_of_varied_text(pg_cluster, seeded_db):
    rows, notes, distinct_notes, tracking_codes = map(int, pg_cluster.psql(
        "SELECT count(*), count(note), count(DISTINCT note), count(DISTINCT tracking_code)"
        " FROM sales.orders", seeded_db).split())
    assert rows >= 100_000
    assert distinct_notes > 0.95 * notes > 0.8 * rows
    assert tracking_codes > 0.75 * rows


def test_counts_and_digests_cover_every_table_and_the_large_objects(pg_cluster, seeded_db):
    counts = table_counts(pg_cluster, seeded_db)
    assert counts["sales.orders"] >= 100_000
    assert counts["pg_largeobject"] == 2
    assert {"public.customers", "public.documents", "sales.products", "sales.invoices",
            "audit.events"} <= counts.keys()
    assert table_digests(pg_cluster, seeded_db).keys() == counts.keys()


def test_seeding_is_deterministic(pg_cluster, seeded_db):
    again = pg_cluster.create_database("l2c_seed_again")
    try:
        pgcluster.seed(pg_cluster, again)
        assert table_digests(pg_cluster, again) == table_digests(pg_cluster, seeded_db)
    finally:
        pg_cluster.psql(f'DROP DATABASE "{again}"')


def test_a_gzipped_pg_dump_of_the_seeded_db_compresses_like_real_data(pg_cluster, seeded_db):
    dump = subprocess.Popen([str(pg_cluster.bin("pg_dump")), "--dbname", seeded_db],
                            stdout=subprocess.PIPE, env=pg_cluster.env())
    gzip = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: gzip framing, as `gzip -6`
    raw = packed = 0
    for chunk in iter(lambda: dump.stdout.read(1 << 16), b""):
        raw += len(chunk)
        packed += len(gzip.compress(chunk))
    packed += len(gzip.flush())
    assert dump.wait() == 0
    assert raw > 10_000_000
    # Repetitive filler compresses 30:1 and would flatter every size and speed figure.
    assert 2 < raw / packed < 10
