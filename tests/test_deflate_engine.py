"""The deflate engine: libdeflate (package `deflate`) makes and reads the backup's gzip
members; zlib takes over, with one warning, when the package cannot load."""
import gzip
import importlib
import json
import os
import shutil
import subprocess
import sys
import tracemalloc
import zlib

import pytest

from l2c_backup import deflate_engine, manifest
from l2c_backup.compress import gzip_members
from l2c_local.pgcluster import table_digests
from test_compress import chunked, dump_text

KB = 1024
MB = 1024 * KB
CLI = [sys.executable, "-m", "l2c_backup.cli"]


@pytest.fixture(params=["libdeflate", "zlib"])
def engine(request, monkeypatch):
    """deflate_engine as loaded with libdeflate, or forced to zlib (the fallback's code)."""
    if request.param == "zlib":
        monkeypatch.setenv("L2C_DEFLATE_ENGINE", "zlib")
    importlib.reload(deflate_engine)
    assert deflate_engine.FAST == (request.param == "libdeflate")
    yield deflate_engine
    monkeypatch.delenv("L2C_DEFLATE_ENGINE", raising=False)
    importlib.reload(deflate_engine)


@pytest.fixture
def zlib_engine(monkeypatch):
    monkeypatch.setenv("L2C_DEFLATE_ENGINE", "zlib")
    importlib.reload(deflate_engine)
    yield deflate_engine
    monkeypatch.delenv("L2C_DEFLATE_ENGINE")
    importlib.reload(deflate_engine)


def test_the_fast_engine_is_what_the_project_installs():
    # pyproject.toml depends on `deflate`: without it every backup would run on zlib
    assert deflate_engine.FAST, deflate_engine._why_zlib
    assert deflate_engine.ENGINE.startswith("libdeflate (deflate 0.9.")


# -- the members: standard gzip, deterministic ----------------------------------------------

def test_a_member_is_the_same_bytes_every_time_with_mtime_zero(engine):
    block = dump_text(MB)
    first, second = engine.gzip_member(block, 6), engine.gzip_member(bytes(block), 6)
    assert first == second and isinstance(first, bytes)
    assert first[:4] == b"\x1f\x8b\x08\x00" and first[4:8] == bytes(4)  # no name, mtime 0


def test_workers_never_change_the_bytes(engine):
    data = dump_text(3 * MB)
    one = b"".join(gzip_members(chunked(data, 64 * KB), workers=1, block_size=256 * KB))
    three = b"".join(gzip_members(chunked(data, 100 * KB), workers=3, block_size=256 * KB))
    assert one == three
    assert gzip.decompress(one) == data


def test_the_engines_write_different_bytes_that_read_the_same():
    """Why the manifest records the engine: the same level gives other bytes in each."""
    block = dump_text(MB)
    fast = deflate_engine.gzip_member(block, 6)
    slow = zlib.compressobj(6, zlib.DEFLATED, 31)
    slow = slow.compress(block) + slow.flush()
    assert fast != slow
    assert gzip.decompress(fast) == gzip.decompress(slow) == block


@pytest.mark.skipif(not (shutil.which("gunzip") and shutil.which("zcat")), reason="no gunzip")
def test_gunzip_zcat_and_python_read_the_members(engine, tmp_path):
    data = dump_text(2 * MB + 12345)
    path = tmp_path / "dump.sql.gz"
    path.write_bytes(b"".join(gzip_members(chunked(data, 64 * KB), level=6, block_size=MB)))
    subprocess.run(["gzip", "-t", str(path)], check=True)
    assert subprocess.run(["gunzip", "-c", str(path)], capture_output=True, check=True).stdout == data
    assert subprocess.run(["zcat", str(path)], capture_output=True, check=True).stdout == data
    with gzip.open(path) as f:
        assert f.read() == data


@pytest.mark.parametrize("level", [0, 1, 4, 9, 12])
def test_every_level_reads_back(engine, level):
    block = dump_text(300 * KB)
    assert engine.inflate_member(engine.gzip_member(block, level), MB) == block


# -- inflate_member: one whole, intact member or an InflateError ----------------------------

def member_and_block(engine):
    block = dump_text(MB, seed=3)
    return engine.gzip_member(block, 6), block


def with_trailer(member, crc=None, isize=None):
    old_crc, old_isize = int.from_bytes(member[-8:-4], "little"), int.from_bytes(member[-4:], "little")
    return (member[:-8] + (old_crc if crc is None else crc).to_bytes(4, "little")
            + (old_isize if isize is None else isize).to_bytes(4, "little"))


def test_inflate_member_returns_the_block(engine):
    member, block = member_and_block(engine)
    assert engine.inflate_member(member, MB) == block
    assert engine.inflate_member(bytearray(member), MB) == block
    assert engine.inflate_member(memoryview(member), MB) == block


def test_inflate_member_refuses_a_wrong_crc(engine):
    member, _ = member_and_block(engine)
    crc = int.from_bytes(member[-8:-4], "little")
    with pytest.raises(engine.InflateError, match="corrupt|CRC"):
        engine.inflate_member(with_trailer(member, crc=crc ^ 1), MB)


def test_inflate_member_refuses_a_wrong_isize(engine):
    member, block = member_and_block(engine)
    for isize in (len(block) - 1, len(block) + 1):
        with pytest.raises(engine.InflateError):
            engine.inflate_member(with_trailer(member, isize=isize), MB)


def test_inflate_member_refuses_damaged_data(engine):
    member, _ = member_and_block(engine)
    damaged = bytearray(member)
    damaged[len(member) // 2] ^= 0x55
    with pytest.raises(engine.InflateError):
        engine.inflate_member(bytes(damaged), MB)


@pytest.mark.parametrize("cut", [1, 4, 8, 9, 1000])
def test_inflate_member_refuses_a_truncated_member(engine, cut):
    member, _ = member_and_block(engine)
    with pytest.raises(engine.InflateError):
        engine.inflate_member(member[:-cut], MB)


@pytest.mark.parametrize("after", [b"\0", b"garbage!" * 3, "next member"])
def test_inflate_member_refuses_bytes_after_the_member(engine, after):
    """libdeflate stops at the member's own trailer and ignores the rest: a slice cut at
    the wrong place (the next member's header included) must not pass as whole."""
    member, _ = member_and_block(engine)
    if after == "next member":
        after = engine.gzip_member(b"SELECT 1;\n", 6)
    with pytest.raises(engine.InflateError):
        engine.inflate_member(member + after, MB)


def test_inflate_member_refuses_an_isize_over_the_limit_before_inflating(engine):
    member = engine.gzip_member(bytes(8 * MB), 6)  # a small bomb: 8 MiB of zeros
    assert len(member) < 64 * KB
    tracemalloc.start()
    try:
        with pytest.raises(engine.InflateError, match="over the limit"):
            engine.inflate_member(member, 4 * MB)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MB


def test_a_trailer_that_understates_the_size_does_not_inflate_past_the_limit(engine):
    member = engine.gzip_member(bytes(8 * MB), 6)
    lying = with_trailer(member, isize=1000)  # says 1000 bytes, holds 8 MiB
    tracemalloc.start()
    try:
        with pytest.raises(engine.InflateError):
            engine.inflate_member(lying, 4 * MB)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # libdeflate: an output of ISIZE bytes at most; zlib: max_size + 1, plus its copy into
    # one bytes object. Without the bound, zlib would hold all 8 MiB (twice).
    assert peak < (4 * MB if engine.FAST else 8 * MB) + 512 * KB


def test_an_empty_member_reads_and_a_member_claiming_to_be_empty_is_refused(engine):
    """The package returns b"" for ISIZE 0 without inflating anything."""
    assert engine.inflate_member(engine.gzip_member(b"", 6), MB) == b""
    member = engine.gzip_member(b"DROP TABLE accounts;\n", 6)
    with pytest.raises(engine.InflateError):
        engine.inflate_member(with_trailer(member, isize=0), MB)
    with pytest.raises(engine.InflateError):
        engine.inflate_member(with_trailer(member, crc=0, isize=0), MB)


@pytest.mark.parametrize("data", [b"", b"\x1f\x8b", b"SELECT 1;\n" * 5])
def test_inflate_member_refuses_what_is_not_gzip(engine, data):
    with pytest.raises(engine.InflateError, match="not a gzip member"):
        engine.inflate_member(data, MB)


def test_levels_outside_0_to_12_are_refused(engine):
    for level in (-1, 13):
        with pytest.raises(ValueError, match="level"):
            engine.gzip_member(b"x", level)


# -- whole backups: the fallback, and libdeflate's members read by zlib ---------------------

@pytest.fixture
def without_deflate(tmp_path):
    """A PYTHONPATH on which `import deflate` fails as a missing .so would."""
    shadow = tmp_path / "shadow" / "deflate"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        'raise ImportError("libdeflate: cannot open shared object file (test)")\n')
    return str(shadow.parent)


def cli_env(env):
    inherited = {k: v for k, v in os.environ.items() if k != "L2C_DEFLATE_ENGINE"}
    return dict(inherited, **(env or {}))


def backup(url, target, env=None):
    result = subprocess.run(CLI + ["backup", "--to", str(target), "--database-url", url],
                            capture_output=True, text=True, timeout=300, env=cli_env(env))
    assert result.returncode == 0, result.stderr
    (path,) = target.rglob("*.sql.gz")
    doc = manifest.loads((path.parent / (path.name + ".manifest.json")).read_bytes())
    return path, doc, result


def verify(target, path, env=None):
    key = str(path.relative_to(target))
    return subprocess.run(CLI + ["verify", key, "--from", str(target)], capture_output=True,
                          text=True, timeout=300, env=cli_env(env))


def restore_with_gunzip_and_psql(pg, path, db):
    pg.create_database(db)
    sql = subprocess.run(["gunzip", "-c", str(path)], capture_output=True, check=True).stdout
    result = subprocess.run([str(pg.bin("psql")), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db],
                            input=sql, env=pg.env(), capture_output=True)
    assert result.returncode == 0, result.stderr.decode()[-2000:]


def test_without_the_package_a_backup_runs_on_zlib_says_so_verifies_and_restores(
        pg_cluster, seeded_db, tmp_path, without_deflate):
    env = {"PYTHONPATH": without_deflate}
    target = tmp_path / "backups"
    path, doc, result = backup(pg_cluster.url(seeded_db), target, env)

    warnings = [line for line in result.stderr.splitlines() if "deflate engine" in line]
    assert len(warnings) == 1, result.stderr
    assert "'deflate' package" in warnings[0] and "slower" in warnings[0]
    assert "cannot open shared object file (test)" in warnings[0]
    compression = doc["compression"]
    assert compression["engine"] == f"zlib {zlib.ZLIB_RUNTIME_VERSION}"
    assert compression["members"] == len(compression["member_sizes"]) > 1
    assert sum(compression["member_sizes"]) == path.stat().st_size

    checked = verify(target, path, env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    restore_with_gunzip_and_psql(pg_cluster, path, "engine_zlib_restored")
    assert table_digests(pg_cluster, "engine_zlib_restored") == table_digests(pg_cluster, seeded_db)


def test_a_libdeflate_backup_is_read_member_by_member_by_the_zlib_fallback(
        pg_cluster, seeded_db, tmp_path, zlib_engine):
    target = tmp_path / "backups"
    path, doc, result = backup(pg_cluster.url(seeded_db), target)
    assert "deflate engine" not in result.stderr
    compression = doc["compression"]
    assert compression["engine"].startswith("libdeflate (deflate ")

    data, offset, sql = path.read_bytes(), 0, []
    for size in compression["member_sizes"]:
        sql.append(zlib_engine.inflate_member(data[offset:offset + size], compression["block_size"]))
        offset += size
    assert offset == len(data)
    assert b"".join(sql) == gzip.decompress(data)
    assert len(b"".join(sql)) == doc["sql_bytes"]

    checked = verify(target, path, {"L2C_DEFLATE_ENGINE": "zlib"})
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_manifest_member_sizes_must_tile_the_object():
    doc = json.loads(json.dumps(MANIFEST))
    manifest.validate(doc)
    doc["compression"]["member_sizes"] = [100, 20]
    with pytest.raises(ValueError, match="member_sizes: they add up to 120 bytes, the object has 123"):
        manifest.validate(doc)
    doc["compression"]["member_sizes"] = [100, 23, 0]
    with pytest.raises(ValueError, match="member_sizes"):
        manifest.validate(doc)
    del doc["compression"]["member_sizes"], doc["compression"]["engine"]
    manifest.validate(doc)  # manifests written before issue 13 stay valid


MANIFEST = {
    "format": manifest.FORMAT, "kind": "manual", "key": "db-backups/manual/backup_x.sql.gz",
    "storage": "/b", "database": "d", "sql_bytes": 400, "request_id": "r",
    "object": {"size": 123, "sha256": "0" * 64, "crc64ecma": "1"},
    "compression": {"format": "gzip", "level": 6, "members": 2, "block_size": 4 * MB,
                    "engine": "libdeflate (deflate 0.9.0)", "member_sizes": [100, 23]},
    "started_at": "2026-12-02T10:00:00+08:00", "finished_at": "2026-12-02T10:00:01+08:00",
    "duration_seconds": 1.0, "server": {"version": "16", "version_num": 160000},
    "pg_dump_version": "16", "table_rows": {}, "encryption": {}, "tool": {"name": "l2c-backup",
                                                                        "version": "0"},
}
