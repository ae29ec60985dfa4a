"""The FC layers (layers/, scripts/build-layers), built from their recipes (or taken from
build/layers/ when the recipe has not changed since), unpacked from their zips, and used
the way FC uses them: PostgreSQL's tools with nothing but the layer on PATH and
LD_LIBRARY_PATH dump a TLS-only server and restore it; the Python layer imports under
CPython 3.10 with nothing but the layer on sys.path. Nothing in either may need a glibc
newer than FC python3.10's (Debian 10, glibc 2.28).

The build downloads from PyPI and Debian's archive: without them these tests skip."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from l2c_backup.dump import find_pg_tool, pg_tool_version
from l2c_local.pgcluster import PgCluster, PgClusterError, find_bin_dir, seed, table_digests

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "layers"
MAX_GLIBC = (2, 28)
PG_TOOLS = ("pg_dump", "pg_dumpall", "pg_restore", "psql")
PG_MAJOR = 18
# Parts of glibc itself: every Linux system has them, so the layer must not ship them.
SYSTEM_LIBS = {"libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1",
               "libresolv.so.2", "ld-linux-x86-64.so.2", "linux-vdso.so.1"}
EXIT_DOWNLOAD_FAILED, EXIT_MISSING_TOOL = 75, 76  # layers/buildlib.py


# -- building and unpacking ----------------------------------------------------------------

def build_layer(name: str) -> dict:
    """Runs scripts/build-layers for one layer (a no-op when its recipe is unchanged) and
    returns its manifest."""
    result = subprocess.run([str(ROOT / "scripts" / "build-layers"), name],
                            capture_output=True, text=True, timeout=1800,
                            stdin=subprocess.DEVNULL)
    output = (result.stderr + result.stdout).strip()
    if result.returncode in (EXIT_DOWNLOAD_FAILED, EXIT_MISSING_TOOL):
        lines = output.splitlines()
        why = [line[:300] for line in lines if "FAILED" in line][:1]
        why += [line[:300] for line in lines if line.startswith(("ERROR", "E:"))][-1:]
        if result.returncode == EXIT_DOWNLOAD_FAILED:
            pytest.skip(f"the {name} layer's packages could not be downloaded (no network?): "
                        + " / ".join(why))
        pytest.skip(f"cannot build the {name} layer here: " + " / ".join(why))
    assert result.returncode == 0, f"scripts/build-layers {name} failed:\n{output[-5000:]}"
    return json.loads((BUILD / f"{name}-layer.json").read_text())


def unpack(zip_path: Path, dest: Path) -> Path:
    """Unpacks like FC does: plain files with their mode bits. A symlink in the zip fails
    the test (FC's layer upload does not keep them)."""
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            mode = info.external_attr >> 16
            assert not stat.S_ISLNK(mode), f"{info.filename} is a symlink in {zip_path.name}"
            zf.extract(info, dest)
            if not info.is_dir():
                os.chmod(dest / info.filename, stat.S_IMODE(mode) or 0o644)
    return dest


@pytest.fixture(scope="module")
def pg_layer(tmp_path_factory) -> Path:
    manifest = build_layer("postgresql")
    return unpack(ROOT / manifest["zip"], tmp_path_factory.mktemp("pg-layer"))


@pytest.fixture(scope="module")
def python_layer(tmp_path_factory) -> Path:
    manifest = build_layer("python")
    return unpack(ROOT / manifest["zip"], tmp_path_factory.mktemp("python-layer"))


def layer_env(layer: Path, home: Path) -> dict[str, str]:
    """Only the layer: no PG* variables, no system PostgreSQL on PATH, an empty HOME (no
    ~/.pgpass, ~/.psqlrc or ~/.postgresql/)."""
    return {"PATH": str(layer / "bin"), "LD_LIBRARY_PATH": str(layer / "lib"),
            "HOME": str(home), "LC_ALL": "C"}


def run_layer_tool(layer: Path, home: Path, *args, check=True, **kwargs):
    if "input" not in kwargs:
        kwargs["stdin"] = subprocess.DEVNULL
    result = subprocess.run(list(map(str, args)), env=layer_env(layer, home),
                            capture_output=True, text=True, timeout=300, **kwargs)
    if check:
        assert result.returncode == 0, f"{args[0]} failed: {result.stderr.strip()}"
    return result


# -- ELF checks ----------------------------------------------------------------------------

def elf_files(root: Path) -> list[Path]:
    def is_elf(p: Path) -> bool:
        with open(p, "rb") as f:
            return f.read(4) == b"\x7fELF"
    return sorted(p for p in root.rglob("*") if p.is_file() and is_elf(p))


def newest_glibc(path: Path) -> tuple[int, ...] | None:
    """The newest GLIBC_x.y symbol version that `objdump -T path` lists, or None."""
    out = subprocess.run(["objdump", "-T", str(path)], capture_output=True, text=True,
                         check=True).stdout
    found = [tuple(int(g) for g in m.groups() if g)
             for m in re.finditer(r"\bGLIBC_(\d+)\.(\d+)(?:\.(\d+))?\b", out)]
    return max(found) if found else None


def glibc_report(root: Path) -> dict[str, tuple[int, ...] | None]:
    if shutil.which("objdump") is None:
        pytest.fail("objdump is missing (binutils): scripts/build-layers installs it")
    return {str(p.relative_to(root)): newest_glibc(p) for p in elf_files(root)}


def show(version: tuple[int, ...] | None) -> str:
    return ".".join(map(str, version)) if version else "none"


def assert_glibc_at_most_2_28(root: Path) -> None:
    report = glibc_report(root)
    assert report, f"no ELF files under {root}"
    print(f"\nGLIBC needed under {root.name} (newest symbol version per file):")
    for name, version in report.items():
        print(f"  {show(version):>6}  {name}")
    too_new = {n: show(v) for n, v in report.items() if v and v > MAX_GLIBC}
    assert not too_new, f"need a glibc newer than 2.28 (FC python3.10): {too_new}"
    newest = max((v for v in report.values() if v), default=None)
    print(f"  newest: {show(newest)}")


# -- the PostgreSQL layer ------------------------------------------------------------------

def test_postgresql_layer_holds_the_four_tools_and_their_libraries(pg_layer):
    assert sorted(p.name for p in pg_layer.iterdir()) == ["bin", "lib", "share"]
    assert sorted(p.name for p in (pg_layer / "bin").iterdir()) == sorted(PG_TOOLS)
    for tool in PG_TOOLS:
        assert os.access(pg_layer / "bin" / tool, os.X_OK), f"{tool} lost its x bit"
    assert list((pg_layer / "lib").glob("libpq-*.so.*")), "libpq missing"
    assert list((pg_layer / "lib").glob("libssl-*.so.3")), "libssl missing: no TLS"


@pytest.mark.parametrize("tool", PG_TOOLS)
def test_each_tool_runs_with_only_the_layer(pg_layer, tool, tmp_path):
    result = run_layer_tool(pg_layer, tmp_path, tool, "--version")
    assert re.fullmatch(rf"{tool} \(PostgreSQL\) {PG_MAJOR}\.\d+\n", result.stdout), \
        result.stdout


def test_the_layer_needs_no_ld_library_path(pg_layer):
    """The binaries find lib/ through their own RPATH ($ORIGIN/../lib), and the project's
    tool lookup takes them from a PG_BIN_DIR (on FC: /opt/bin)."""
    pg_dump = find_pg_tool("pg_dump", environ={"PG_BIN_DIR": str(pg_layer / "bin")})
    assert pg_dump == pg_layer / "bin" / "pg_dump"
    version, number = pg_tool_version(pg_dump)
    assert number // 10000 == PG_MAJOR, version


def test_no_binary_or_library_needs_a_glibc_newer_than_2_28(pg_layer):
    assert_glibc_at_most_2_28(pg_layer)


def test_ldd_finds_every_library_in_the_layer_or_glibc(pg_layer):
    layer_libs = {p.name for p in (pg_layer / "lib").iterdir()}
    env = {"PATH": os.environ.get("PATH", os.defpath), "LD_LIBRARY_PATH": str(pg_layer / "lib")}
    for path in elf_files(pg_layer):
        out = subprocess.run(["ldd", str(path)], capture_output=True, text=True, env=env,
                             check=True).stdout
        assert "not found" not in out, f"ldd {path.relative_to(pg_layer)}:\n{out}"
        for line in out.splitlines():
            line = line.strip()
            name, _, target = line.partition(" => ")
            name = name.split(" (")[0]
            target = target.split(" (")[0]
            if Path(name).name in SYSTEM_LIBS:
                assert not target or not target.startswith(str(pg_layer)), line
                continue
            assert name in layer_libs, \
                f"{path.relative_to(pg_layer)} loads {name} from the system: {line}"
            assert Path(target).resolve().parent == (pg_layer / "lib").resolve(), \
                f"{path.relative_to(pg_layer)}: {name} resolves outside the layer: {line}"


class TlsPgCluster(PgCluster):
    """A PgCluster whose own client (the server's psql, used for seeding and digests)
    connects with PGSSLMODE=require once the server takes TLS only."""

    sslmode = "disable"

    def env(self):
        return {**super().env(), "PGSSLMODE": self.sslmode}


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    """A cluster of its own with a self-signed certificate that takes TCP connections
    over TLS only (hostssl), holding the seed data in "layer_src"."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a test certificate")
    try:
        find_bin_dir()
    except PgClusterError as e:
        pytest.skip(str(e))
    certs = tmp_path_factory.mktemp("layer-certs")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-keyout", str(certs / "server.key"),
                    "-out", str(certs / "server.crt")], check=True, capture_output=True)
    with TlsPgCluster() as cluster:
        owner = os.stat(cluster.data_dir)
        for name in ("server.crt", "server.key"):
            target = cluster.data_dir / name
            shutil.copy(certs / name, target)
            target.chmod(0o600)
            os.chown(target, owner.st_uid, owner.st_gid)
        (cluster.data_dir / "pg_hba.conf").write_text(
            "local all all trust\n"
            "hostssl all all 127.0.0.1/32 scram-sha-256\n")
        cluster.psql("ALTER SYSTEM SET ssl = on")
        cluster.psql("SELECT pg_reload_conf()")
        cluster.sslmode = "require"
        deadline = time.monotonic() + 15
        while True:
            try:
                cluster.psql("SELECT 1")
                break
            except PgClusterError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        cluster.create_database("layer_src")
        seed(cluster, "layer_src")
        yield cluster


def conninfo(cluster: PgCluster, dbname: str, sslmode: str = "require") -> str:
    return (f"host={cluster.host} port={cluster.port} user={cluster.superuser} "
            f"password={cluster.password} dbname={dbname} sslmode={sslmode}")


def server_major(cluster: PgCluster) -> int:
    return int(cluster.psql("SHOW server_version_num")) // 10000


def test_layer_psql_connects_over_tls_and_the_server_takes_nothing_else(
        pg_layer, tls_cluster, tmp_path):
    result = run_layer_tool(
        pg_layer, tmp_path, "psql", "-X", "-A", "-t", "-d", conninfo(tls_cluster, "layer_src"),
        "-c", "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    ssl, version = result.stdout.strip().split("|")
    assert ssl == "t" and version.startswith("TLSv1."), result.stdout
    plain = run_layer_tool(pg_layer, tmp_path, "psql", "-X", "-d",
                           conninfo(tls_cluster, "layer_src", "disable"), "-c", "SELECT 1",
                           check=False)
    assert plain.returncode != 0
    assert "no encryption" in plain.stderr, plain.stderr


def test_verify_full_against_system_roots_takes_ssl_cert_file(pg_layer, tls_cluster, tmp_path):
    """The bundled OpenSSL looks for system CAs in its build's directory, which FC does
    not have: sslrootcert=system fails unless SSL_CERT_FILE names the CA bundle (here the
    test's self-signed certificate; on FC /etc/ssl/certs/ca-certificates.crt)."""
    target = (f"host=localhost hostaddr=127.0.0.1 port={tls_cluster.port} "
              f"user={tls_cluster.superuser} password={tls_cluster.password} dbname=postgres "
              "sslmode=verify-full sslrootcert=system")
    query = ["psql", "-X", "-A", "-t", "-d", target, "-c", "SELECT ssl FROM pg_stat_ssl "
             "WHERE pid = pg_backend_pid()"]
    without = run_layer_tool(pg_layer, tmp_path, *query, check=False)
    assert without.returncode != 0 and "certificate verify failed" in without.stderr, \
        without.stderr
    env = {**layer_env(pg_layer, tmp_path),
           "SSL_CERT_FILE": str(tls_cluster.data_dir / "server.crt")}
    with_file = subprocess.run(query, env=env, capture_output=True, text=True, timeout=60,
                               stdin=subprocess.DEVNULL)
    assert with_file.returncode == 0, with_file.stderr
    assert with_file.stdout.strip() == "t"


def test_dump_over_tls_and_restore_with_the_layer_psql(pg_layer, tls_cluster, tmp_path):
    dump = tmp_path / "layer_src.sql"
    run_layer_tool(pg_layer, tmp_path, "pg_dump", "-d", conninfo(tls_cluster, "layer_src"),
                   "-f", dump)
    sql = dump.read_bytes()
    assert b"-- PostgreSQL database dump complete" in sql[-4096:]
    if server_major(tls_cluster) < 17:
        # pg_dump 17+ writes this setting, unknown before 17; l2c_backup.restore drops it
        # the same way for an older target server.
        dump.write_bytes(re.sub(rb"(?m)^SET transaction_timeout = 0;\n", b"", sql))
    tls_cluster.create_database("layer_restored_sql")
    run_layer_tool(pg_layer, tmp_path, "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
                   "-d", conninfo(tls_cluster, "layer_restored_sql"), "-f", dump)
    source = table_digests(tls_cluster, "layer_src")
    assert len(source) > 1  # the seed's tables and its large objects
    assert table_digests(tls_cluster, "layer_restored_sql") == source


def test_custom_format_restores_with_pg_restore_and_pg_dumpall_dumps_globals(
        pg_layer, tls_cluster, tmp_path):
    archive = tmp_path / "layer_src.dump"
    run_layer_tool(pg_layer, tmp_path, "pg_dump", "-Fc", "-d",
                   conninfo(tls_cluster, "layer_src"), "-f", archive)
    tls_cluster.create_database("layer_restored_custom")
    target = conninfo(tls_cluster, "layer_restored_custom")
    if server_major(tls_cluster) >= 17:
        run_layer_tool(pg_layer, tmp_path, "pg_restore", "--exit-on-error", "-d", target,
                       archive)
    else:
        # pg_restore 18 sends `SET transaction_timeout = 0` to any server, and a server
        # before 17 rejects it: turn the archive into SQL and replay that without the line.
        script = run_layer_tool(pg_layer, tmp_path, "pg_restore", "-f", "-", archive).stdout
        assert "-- PostgreSQL database dump complete" in script
        run_layer_tool(pg_layer, tmp_path, "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
                       "-d", target, "-f", "-",
                       input=re.sub(r"(?m)^SET transaction_timeout = 0;\n", "", script))
    assert (table_digests(tls_cluster, "layer_restored_custom")
            == table_digests(tls_cluster, "layer_src"))
    globals_sql = run_layer_tool(pg_layer, tmp_path, "pg_dumpall", "--globals-only",
                                 "-d", conninfo(tls_cluster, "postgres")).stdout
    assert f"ALTER ROLE {tls_cluster.superuser} WITH SUPERUSER" in globals_sql
    assert "-- PostgreSQL database cluster dump complete" in globals_sql


# -- the Python layer ----------------------------------------------------------------------

def _python310() -> str:
    """The CPython 3.10 the recipe builds with (same search: $L2C_PYTHON310, pyenv, PATH)."""
    spec = importlib.util.spec_from_file_location(
        "l2c_python_layer_recipe", ROOT / "layers" / "python" / "build.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    try:
        return recipe.find_python310()
    except recipe.b.MissingTool as e:
        pytest.skip(str(e))


def test_python_layer_has_crcmods_c_extension(python_layer):
    assert sorted(p.name for p in python_layer.iterdir()) == ["python"]
    assert list((python_layer / "python" / "crcmod").glob("_crcfunext*.so")), \
        "crcmod without its C extension: oss2's CRC64 checks would run in pure Python"
    assert list((python_layer / "python" / "crcmod").glob("_crcfunext.cpython-310-*.so"))


_IMPORT_CHECK = r"""
import sys
layer, port, password = sys.argv[1:]
sys.path.insert(0, layer)
import crcmod.crcmod, fc2, jsonschema, oss2, pg8000.native, tenacity
import aliyunsdkcore.client, cryptography.hazmat.primitives.hashes as hashes
assert all(m.__file__.startswith(layer) for m in (oss2, fc2, pg8000, jsonschema, tenacity))
assert sys.modules["crcmod.crcmod"]._usingExtension, "crcmod's C extension did not load"
crc = oss2.utils.Crc64(0)
crc.update(b"123456789")
assert crc.crc == 0x995DC9BBDF1939FA, hex(crc.crc)  # CRC-64/XZ check value
jsonschema.validate({"n": 1}, {"properties": {"n": {"type": "integer"}}})
digest = hashes.Hash(hashes.SHA256())
digest.update(b"abc")
assert digest.finalize().hex().startswith("ba7816bf")
conn = pg8000.native.Connection("postgres", host="127.0.0.1", port=int(port),
                                password=password)
[[answer]] = conn.run("SELECT 6 * 7")
conn.close()
assert answer == 42
print(sys.version.split()[0])
"""


def test_python_layer_imports_and_connects_under_python_3_10(python_layer, pg_cluster):
    """Only the layer on sys.path (-I -S: no site-packages), as on FC's python3.10."""
    python = _python310()
    result = subprocess.run(
        [python, "-I", "-S", "-c", _IMPORT_CHECK, str(python_layer / "python"),
         str(pg_cluster.port), pg_cluster.password],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("3.10."), result.stdout


_ENGINE_CHECK = r"""
import gzip, sys
layer, code = sys.argv[1:]
sys.path[:0] = [layer, code]
from l2c_backup import deflate_engine
import deflate
assert deflate.__file__.startswith(layer), deflate.__file__
assert deflate_engine.FAST, deflate_engine._why_zlib
block = b"COPY app.orders (id, note) FROM stdin;\n" + b"42\tshipped twice\n" * 50000
member = deflate_engine.gzip_member(block, 6)
assert gzip.decompress(member) == block == deflate_engine.inflate_member(member, len(block))
print(deflate_engine.ENGINE)
"""


def test_the_deflate_engine_runs_on_libdeflate_from_the_layer_under_python_3_10(python_layer):
    """FC's code package (functions/) with only the layer: backups get libdeflate there,
    not the zlib fallback."""
    result = subprocess.run(
        [_python310(), "-I", "-S", "-c", _ENGINE_CHECK, str(python_layer / "python"),
         str(ROOT / "functions")],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("libdeflate (deflate 0.9."), result.stdout
    assert "deflate engine" not in result.stderr  # no fallback warning


def test_every_python_extension_needs_at_most_glibc_2_28(python_layer):
    assert_glibc_at_most_2_28(python_layer)
    # libdeflate's extension is among the files checked
    assert list((python_layer / "python" / "deflate").glob("_deflate.cpython-310-*.so"))


def test_the_lock_satisfies_pyproject_dependencies():
    """layers/python/requirements.txt pins a version of each of pyproject.toml's
    dependencies that pyproject allows."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pinned = {}
    for line in (ROOT / "layers" / "python" / "requirements.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line)
        if match:
            pinned[canonicalize_name(match[1])] = match[2]
    pyproject = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", pyproject, re.S | re.M)[1]
    dependencies = re.findall(r'"([^"]+)"', block)
    assert dependencies
    for text in dependencies:
        requirement = Requirement(text)
        version = pinned.get(canonicalize_name(requirement.name))
        assert version, f"{requirement.name} is not in layers/python/requirements.txt"
        assert requirement.specifier.contains(version), \
            f"layers/python/requirements.txt pins {requirement.name}=={version}; " \
            f"pyproject.toml wants {text}"
