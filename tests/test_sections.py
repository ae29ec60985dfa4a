"""The table index: a backup's sections (pre-data, each table's data, post-data) start
gzip members of their own, the manifest says where, and the object still restores whole
with gunzip | psql."""
import gzip
import hashlib
import json
import subprocess

import pytest

from l2c_backup import config, manifest
from l2c_backup.backup import run_backup
from l2c_backup.compress import gzip_members
from l2c_backup.sections import CUT, Sectioner
from l2c_backup.storage import open_storage

HEADER = "--\n-- {data}Name: {name}; Type: {type}; Schema: {schema}; Owner: app\n--\n\n"


def entry(name, type_, schema="public", body="", data=False):
    return HEADER.format(data="Data for " if data else "", name=name, type=type_,
                         schema=schema) + body


# A dump as pg_dump lays it out, with rows that read like headers and like the end of COPY.
TRICKY_ROWS = ("--\n-- Data for Name: fake; Type: TABLE DATA; Schema: public; Owner: app\n--\n"
               "\\\\.\nback\\\\.slash\n")
DUMP = ("--\n-- PostgreSQL database dump\n--\n\nSET client_encoding = 'UTF8';\n\n"
        + entry("t", "TABLE", body="CREATE TABLE public.t (a text);\n\n")
        + entry("t_id_seq", "SEQUENCE", body="CREATE SEQUENCE public.t_id_seq;\n\n")
        + entry("t", "TABLE DATA", data=True, body="COPY public.t (a) FROM stdin;\n"
                + TRICKY_ROWS + "\\.\n\n\n")
        + entry("empty", "TABLE DATA", data=True, body="COPY public.empty (a) FROM stdin;\n\\.\n\n\n")
        + entry("t_id_seq", "SEQUENCE SET", body="SELECT pg_catalog.setval('public.t_id_seq', 3, true);\n\n\n")
        + entry("BLOBS", "BLOBS", schema="-", data=True, body="BEGIN;\n\nSELECT 1;\n\nCOMMIT;\n\n")
        + entry("t t_pkey", "CONSTRAINT", body="ALTER TABLE ONLY public.t ADD PRIMARY KEY (a);\n\n\n")
        + entry("TABLE t", "ACL", body="GRANT SELECT ON TABLE public.t TO app;\n\n\n")
        + "--\n-- PostgreSQL database dump complete\n--\n\n").encode()


def cut(data, chunk_size):
    sectioner = Sectioner()
    chunks = [data[i:i + chunk_size] for i in range(0, len(data), chunk_size)]
    out, cuts = bytearray(), []
    for piece in sectioner.pieces(chunks):
        if piece is CUT:
            cuts.append(len(out))
        else:
            out += piece
    return bytes(out), cuts, sectioner.sections


def test_sections_of_a_dump_in_order_with_rows_that_read_like_headers_kept_as_data():
    out, cuts, sections = cut(DUMP, 1 << 20)
    assert out == DUMP  # the SQL passes unchanged
    assert [(s["kind"], s.get("table"), s.get("rows")) for s in sections] == [
        ("pre-data", None, None), ("table-data", "t", 5), ("table-data", "empty", 0),
        ("sequence-values", None, None), ("large-objects", None, None), ("post-data", None, None)]
    assert cuts == [s["sql_offset"] for s in sections[1:]]
    for section in sections[1:]:
        assert DUMP[section["sql_offset"]:].startswith(b"--\n-- ")
    assert sum(s["sql_length"] for s in sections) == len(DUMP)
    copy = DUMP[sections[1]["sql_offset"]:][:sections[1]["sql_length"]]
    assert copy.endswith(b"\\.\n\n\n") and TRICKY_ROWS.encode() in copy


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 17, 64, 1000])
def test_the_same_sections_whatever_the_chunks(chunk_size):
    assert cut(DUMP, chunk_size) == cut(DUMP, 1 << 20)


FAKE = "--\n-- Data for Name: t; Type: TABLE DATA; Schema: public; Owner: app\n--\n\n"


@pytest.mark.parametrize("quoted", [
    f"CREATE FUNCTION public.f() RETURNS text LANGUAGE sql AS $_$SELECT '\n{FAKE}'$_$;\n\n",
    f"CREATE FUNCTION public.g() RETURNS text LANGUAGE sql AS $$\n{FAKE}SELECT 1$$;\n\n",
    f"COMMENT ON TABLE public.t IS 'it''s\n{FAKE}';\n\n",
    f"CREATE TABLE public.\"odd\n{FAKE}\" (a int);\n\n",
    f"SELECT E'\\'\n{FAKE}';\n\n",
    f"/* a /* nested */\n{FAKE} */ SELECT 1;\n\n"])
@pytest.mark.parametrize("chunk_size", [1, 3, 1 << 20])
def test_text_that_reads_like_a_header_inside_a_quote_or_comment_starts_no_section(quoted, chunk_size):
    dump = DUMP.replace(b"CREATE TABLE public.t (a text);\n\n",
                        b"CREATE TABLE public.t (a text);\n\n" + quoted.encode())
    out, cuts, sections = cut(dump, chunk_size)
    assert out == dump
    assert [(s["kind"], s.get("table")) for s in sections] == [
        (s["kind"], s.get("table")) for s in cut(DUMP, 1 << 20)[2]]


def test_a_dump_without_data_is_pre_data_then_post_data():
    dump = (entry("t", "TABLE", body="CREATE VIEW public.v AS SELECT 1;\n\n")
            + entry("TABLE v", "ACL", body="GRANT SELECT ON public.v TO app;\n\n")).encode()
    _, _, sections = cut(dump, 7)
    assert [s["kind"] for s in sections] == ["pre-data", "post-data"]


def test_each_section_starts_a_member_and_members_stay_within_the_block_size():
    members = list(gzip_members(Sectioner().pieces([DUMP]), level=5, workers=2, block_size=64))
    assert gzip.decompress(b"".join(members)) == DUMP
    starts, position = set(), 0
    for member in members:
        starts.add(position)
        size = len(gzip.decompress(member))
        assert 0 < size <= 64
        position += size
    assert {s["sql_offset"] for s in cut(DUMP, 1 << 20)[2]} <= starts


@pytest.fixture(scope="module")
def indexed_backup(pg_cluster, seeded_db, tmp_path_factory):
    folder = tmp_path_factory.mktemp("indexed")
    env = {"DATABASE_URL": pg_cluster.url(seeded_db), "BACKUP_TARGET": str(folder)}
    (done,) = run_backup(config.load(env), "manual")["backups"]
    storage = open_storage(str(folder))
    doc = json.loads(b"".join(storage.open(done["key"] + ".manifest.json")))
    data = b"".join(storage.open(done["key"]))
    return storage, done["key"], doc, data


def test_every_table_of_the_seed_has_its_section_with_its_rows(pg_cluster, seeded_db, indexed_backup):
    _, _, doc, data = indexed_backup
    sections = manifest.sections_of(doc)
    tables = {f"{s['schema']}.{s['table']}": s["rows"] for s in sections if s["kind"] == "table-data"}
    assert tables == doc["table_rows"]  # the COPY lines counted match count(*) in the snapshot
    assert sections[0]["kind"] == "pre-data" and sections[-1]["kind"] == "post-data"
    assert {s["kind"] for s in sections} >= {"sequence-values", "large-objects"}
    sql = gzip.decompress(data)
    for section in sections:
        piece = data[section["offset"]:section["offset"] + section["length"]]
        assert hashlib.sha256(piece).hexdigest() == section["sha256"]
        alone = gzip.decompress(piece)  # a section inflates on its own
        assert alone == sql[section["sql_offset"]:section["sql_offset"] + section["sql_length"]]
        if section["kind"] == "table-data":
            name = section["table"]
            assert alone.startswith(f"--\n-- Data for Name: {name}; Type: TABLE DATA; ".encode())


def test_an_indexed_backup_still_restores_with_gunzip_and_psql(pg_cluster, seeded_db, indexed_backup):
    from l2c_local.pgcluster import table_digests
    _, _, _, data = indexed_backup
    pg_cluster.create_database("sections_gunzip")
    psql = [str(pg_cluster.bin_dir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-1",
            "-o", "/dev/null", "-d", pg_cluster.url("sections_gunzip")]
    subprocess.run(psql, input=gzip.decompress(data), check=True)
    assert table_digests(pg_cluster, "sections_gunzip") == table_digests(pg_cluster, seeded_db)


def test_the_manifest_refuses_an_index_that_does_not_tile_the_object(indexed_backup):
    _, _, doc, _ = indexed_backup
    manifest.validate(doc)
    for change, says in [(lambda s: s[1].update(offset=s[1]["offset"] + 1), "starts at byte"),
                         (lambda s: s.pop(), "they take"),
                         (lambda s: s[0].update(members=s[0]["members"] + 1), "members do not take"),
                         (lambda s: s.insert(1, s.pop(2)), "starts at byte")]:
        bad = json.loads(json.dumps(doc))
        change(bad["index"]["sections"])
        with pytest.raises(ValueError, match=says):
            manifest.validate(bad)


def test_with_BACKUP_TABLE_INDEX_false_a_backup_has_no_index(pg_cluster, seeded_db, tmp_path):
    env = {"DATABASE_URL": pg_cluster.url(seeded_db), "BACKUP_TARGET": str(tmp_path),
           "BACKUP_TABLE_INDEX": "false"}
    (done,) = run_backup(config.load(env), "manual")["backups"]
    storage = open_storage(str(tmp_path))
    doc = manifest.loads(b"".join(storage.open(done["key"] + ".manifest.json")))
    assert manifest.sections_of(doc) is None and "index" not in doc
