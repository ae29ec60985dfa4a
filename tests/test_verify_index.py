"""The table index of a real backup (issue 14) held against its object: verify passes an
untampered one and names the section of every lie told about it (a wrong SHA-256, a
shifted boundary, sections out of order, a table-data section whose SQL is another's);
read_section reads each section alone, with ranged reads, and checks it against the
index; a backup without index verifies as before."""
import copy
import gzip
import hashlib
import json

import pytest

from l2c_backup import config, manifest
from l2c_backup.backup import run_backup
from l2c_backup.reading import Broken, read_section, section_name
from l2c_backup.storage import open_storage
from l2c_backup.verify import check_object
from test_verify import storage  # noqa: F401 (the fixture: OSS and a directory)

MANIFEST = ".manifest.json"


@pytest.fixture(scope="module")
def indexed_backup(pg_cluster, seeded_db, tmp_path_factory):
    """One real backup of the seed in a directory: its key, bytes, manifest and SQL."""
    root = tmp_path_factory.mktemp("index-src")
    env = {"DATABASE_URL": pg_cluster.url(seeded_db), "BACKUP_TARGET": str(root)}
    (done,) = run_backup(config.load(env), "daily")["backups"]
    data = (root / done["key"]).read_bytes()
    doc = json.loads((root / (done["key"] + MANIFEST)).read_bytes())
    assert manifest.sections_of(doc), "a backup of this issue carries a table index"
    return done["key"], data, doc, gzip.decompress(data)


@pytest.fixture
def directory(tmp_path):
    return open_storage(str(tmp_path / "dir"))


def store(storage, key, data, doc):
    """The object and its manifest, written as backup writes them (manifest.dumps
    validates it: a manifest it refuses could never be stored by us)."""
    storage.put_bytes(key, data)
    storage.put_bytes(key + MANIFEST, manifest.dumps(doc))


def sections(doc):
    return doc["index"]["sections"]


def tables(doc):
    return [(n, s) for n, s in enumerate(sections(doc)) if s["kind"] == "table-data"]


def tampered(doc, change):
    doc = copy.deepcopy(doc)
    change(sections(doc))
    return doc


def failure(storage, key, data, doc):
    store(storage, key, data, doc)
    verdict = check_object(storage, key, 1)
    assert verdict.reason == "index-mismatch", (verdict.reason, verdict.detail)
    return verdict.detail


# -- the index of a real backup ---------------------------------------------------------

def test_the_index_of_a_real_backup_tiles_object_and_sql_and_each_section_is_its_kind(
        indexed_backup):
    key, data, doc, sql = indexed_backup
    found = sections(doc)
    assert found[0]["kind"] == "pre-data" and found[-1]["kind"] == "post-data"
    assert {(s["schema"], s["table"]) for _, s in tables(doc)} >= {
        ("public", "customers"), ("sales", "orders"), ("audit", "events")}
    for section in found:
        piece = data[section["offset"]:section["offset"] + section["length"]]
        assert hashlib.sha256(piece).hexdigest() == section["sha256"]
        assert gzip.decompress(piece) == sql[section["sql_offset"]:
                                             section["sql_offset"] + section["sql_length"]]


def test_an_untampered_indexed_backup_passes(storage, indexed_backup):
    key, data, doc, _ = indexed_backup
    store(storage, key, data, doc)
    verdict = check_object(storage, key, 1)
    assert verdict.reason == "ok", verdict.detail
    assert verdict.extra["sections"] == len(sections(doc))


def test_a_backup_without_index_verifies_as_before(directory, indexed_backup):
    key, data, doc, _ = indexed_backup
    old = copy.deepcopy(doc)
    del old["index"]
    store(directory, key, data, old)
    verdict = check_object(directory, key, 1)
    assert verdict.reason == "ok", verdict.detail
    assert "sections" not in verdict.extra


def test_a_wrong_sha256_of_a_section_is_an_index_mismatch_naming_it(directory, indexed_backup):
    key, data, doc, _ = indexed_backup
    number, table = tables(doc)[1]

    def wrong_sha(found):
        found[number]["sha256"] = "0" * 64
    detail = failure(directory, key, data, tampered(doc, wrong_sha))
    assert f"section {number} ({section_name(table)})" in detail and "SHA-256" in detail


def test_a_table_data_section_whose_sql_is_another_tables_is_named(directory, indexed_backup):
    key, data, doc, _ = indexed_backup
    (first, a), (second, b) = tables(doc)[:2]

    def swap_names(found):
        # the byte ranges (and their hashes) stay right; only who they belong to lies
        for name in ("schema", "table", "rows"):
            found[first][name], found[second][name] = b[name], a[name]
    detail = failure(directory, key, data, tampered(doc, swap_names))
    assert f"section {first} (table-data {b['schema']}.{b['table']})" in detail
    assert f"names {a['schema']}.{a['table']}" in detail


def test_a_section_of_another_kind_called_table_data_is_named(directory, indexed_backup):
    key, data, doc, _ = indexed_backup
    number = next(n for n, s in enumerate(sections(doc)) if s["kind"] == "sequence-values")

    def relabel(found):
        found[number].update(kind="table-data", schema="public", table="customers", rows=1)
    detail = failure(directory, key, data, tampered(doc, relabel))
    assert f"section {number} (table-data public.customers)" in detail
    assert "'SEQUENCE SET', not 'TABLE DATA'" in detail


def test_post_data_that_starts_at_a_tables_data_is_named(directory, indexed_backup):
    """The last data section folded into the post-data: offsets, members, SHA-256 and SQL
    lengths all add up, but the post-data would then start with a table's data."""
    key, data, doc, _ = indexed_backup

    def fold(found):
        last, post = found[-2], found.pop()
        last.update(kind="post-data", length=last["length"] + post["length"],
                    sql_length=last["sql_length"] + post["sql_length"],
                    members=last["members"] + post["members"])
        for name in ("schema", "table", "rows"):
            last.pop(name, None)
        last["sha256"] = hashlib.sha256(
            data[last["offset"]:last["offset"] + last["length"]]).hexdigest()
    bad = tampered(doc, fold)
    number = len(sections(bad)) - 1
    detail = failure(directory, key, data, bad)
    assert f"section {number} (post-data)" in detail and "not a post-data entry" in detail


def shift(number):
    def change(found):
        found[number]["offset"] += 1
        found[number - 1]["length"] += 1
        found[number]["length"] -= 1
    return change


def swap(first, second):
    def change(found):
        found[first], found[second] = found[second], found[first]
    return change


@pytest.mark.parametrize("how", ["shifted offset", "sections out of order"])
def test_a_layout_that_does_not_tile_is_refused_by_the_manifest_and_verify_says_so(
        directory, indexed_backup, how):
    """The manifest's own validation holds the index's layout against the object's size,
    the SQL's and the member sizes: such a manifest is never written, and one found in
    storage fails verify as manifest-invalid, naming the section."""
    key, data, doc, _ = indexed_backup
    (first, _), (second, _), (third, _) = tables(doc)[:3]
    bad = tampered(doc, shift(third) if how == "shifted offset" else swap(first, second))
    # the first section found wrong: the one before the shifted boundary (longer now)
    named = f"index/sections/{third - 1 if how == 'shifted offset' else first}"
    with pytest.raises(ValueError, match=named):
        manifest.dumps(bad)
    directory.put_bytes(key, data)
    directory.put_bytes(key + MANIFEST, json.dumps(bad).encode())  # as someone could
    verdict = check_object(directory, key, 1)
    assert verdict.reason == "manifest-invalid" and named in verdict.detail


def test_a_damaged_object_is_reported_as_damage_before_the_index(directory, indexed_backup):
    key, data, doc, _ = indexed_backup
    middle = len(data) // 2
    bad = data[:middle] + bytes([data[middle] ^ 0x55]) + data[middle + 1:]
    store(directory, key, bad, doc)
    assert check_object(directory, key, 1).reason in ("gzip-corrupt", "sha256-mismatch")


# -- read_section -------------------------------------------------------------------------

def test_every_section_read_alone_is_its_sql_and_reads_only_its_bytes(storage, indexed_backup):
    key, data, doc, sql = indexed_backup
    store(storage, key, data, doc)
    for section in sections(doc):
        with read_section(storage, key, doc, section) as reader:
            got = b"".join(reader)
            reader.finish()
        assert got == sql[section["sql_offset"]:section["sql_offset"] + section["sql_length"]]
        assert reader.bytes == section["length"]


@pytest.mark.parametrize("field,value,reason", [
    ("sha256", "0" * 64, "sha256-mismatch"),
    ("sql_length", 1, "index-mismatch"),
    ("length", 5, "index-mismatch"),
])
def test_a_section_that_does_not_match_its_entry_is_broken(directory, indexed_backup, field,
                                                            value, reason):
    key, data, doc, _ = indexed_backup
    store(directory, key, data, doc)
    _, table = tables(doc)[0]
    lying = dict(table, **{field: value})
    with pytest.raises(Broken) as caught:
        with read_section(directory, key, doc, lying) as reader:
            for _ in reader:
                pass
            reader.finish()
    assert caught.value.reason == reason
    assert section_name(table) in caught.value.detail


def test_a_section_of_a_truncated_object_is_truncated(directory, indexed_backup):
    key, data, doc, _ = indexed_backup
    post = sections(doc)[-1]
    directory.put_bytes(key, data[:post["offset"] + post["length"] // 2])
    with pytest.raises(Broken) as caught:
        with read_section(directory, key, doc, post) as reader:
            for _ in reader:
                pass
            reader.finish()
    assert caught.value.reason == "truncated" and "post-data" in caught.value.detail


QUOTED = r'''
CREATE SCHEMA "Odd Schema";
CREATE TABLE "Odd Schema"."My Table" (id int, note text);
INSERT INTO "Odd Schema"."My Table" VALUES (1, '--'), (2, '-- Data for Name: trap; Type: TABLE DATA;');
CREATE TABLE public."select" (id int);
INSERT INTO public."select" VALUES (1);
CREATE TABLE public."we""ird" (id int);
INSERT INTO public."we""ird" VALUES (1);
CREATE TABLE public."Mixed" (id int PRIMARY KEY);
INSERT INTO public."Mixed" VALUES (1);
'''


def test_quoted_and_keyword_table_names_verify(pg_cluster, tmp_path):
    """pg_dump quotes such names in the COPY and not in the header: both read as the
    index's raw names, so a good backup of them is not called a mismatch."""
    pg_cluster.psql("DROP DATABASE IF EXISTS vi_quoted")
    pg_cluster.create_database("vi_quoted")
    pg_cluster.psql(QUOTED, "vi_quoted")
    root = tmp_path / "quoted"
    env = {"DATABASE_URL": pg_cluster.url("vi_quoted"), "BACKUP_TARGET": str(root)}
    (done,) = run_backup(config.load(env), "daily")["backups"]
    storage = open_storage(str(root))
    doc = manifest.loads(b"".join(storage.open(done["key"] + MANIFEST)))
    assert {(s["schema"], s["table"]) for _, s in tables(doc)} == {
        ("Odd Schema", "My Table"), ("public", "select"), ("public", 'we"ird'), ("public", "Mixed")}
    verdict = check_object(storage, done["key"], 1)
    assert verdict.reason == "ok", verdict.detail
