"""Recipe for the Python dependency layer: build/layers/python-layer.zip.

    python/   pg8000, tenacity, jsonschema, oss2, aliyun-fc2, deflate (libdeflate, a
              cp310 manylinux2014 wheel) and everything they need,
              for CPython 3.10 on x86_64 with glibc <= 2.28 (FC's python3.10 runtime)

On FC the layer unpacks into /opt and /opt/python is on sys.path.

requirements.txt pins every package with its sha256. Wheels come from PyPI for
cp310 / manylinux (glibc <= 2.28), never for this machine's own glibc. oss2, aliyun-fc2 and
crcmod publish only sdists: they are built here with a local CPython 3.10 (pyenv's 3.10.x,
python3.10 on PATH, or $L2C_PYTHON310). Only crcmod has C code (its CRC64 extension, which
oss2 uses to check every transfer; without it CRC64 runs in pure Python, far slower);
it uses no versioned glibc symbol at all, so building it against this machine's
newer glibc is safe, and the build checks that with objdump like every other .so.

The .py files are compiled to .pyc with unchecked hashes (no timestamps: reproducible, and
FC's read-only /opt/python never has to compile them again at each cold start).

    python3 layers/python/build.py [--force]   build (or reuse) the layer
    python3 layers/python/build.py --lock      re-resolve requirements.in into requirements.txt
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import buildlib as b  # noqa: E402

NAME = "python"
HERE = Path(__file__).resolve().parent
REQUIREMENTS_IN = HERE / "requirements.in"
REQUIREMENTS = HERE / "requirements.txt"
BUILD_REQUIREMENTS = HERE / "build-requirements.txt"
# No wheels on PyPI: built from their sdists (checked against requirements.txt's sha256).
SOURCE_BUILT = ("aliyun-fc2", "crcmod", "oss2")
TARGET_PYTHON = (3, 10)

RECIPE = [HERE, Path(b.__file__).resolve()]

# Run by the layer's own Python 3.10 with only the layer on sys.path (plus the build
# venv's pip, for its requirement parser): every import FC makes works, the C extensions
# load, and every installed distribution's requirements are installed too.
_CHECK = r"""
import importlib.metadata as md, json, sys
layer = sys.argv[1]
sys.path.insert(0, layer)
import pg8000, tenacity, jsonschema, oss2, fc2, crcmod.crcmod, Crypto.Cipher.AES
import aliyunsdkcore.client, cryptography.hazmat.primitives.hashes
assert sys.modules["crcmod.crcmod"]._usingExtension, "crcmod runs without its C extension"
from crcmod import _crcfunext
crc = oss2.utils.Crc64(0)
crc.update(b"123456789")
assert crc.crc == 0x995DC9BBDF1939FA, hex(crc.crc)  # CRC-64/XZ check value
jsonschema.validate({"a": 1}, {"type": "object", "properties": {"a": {"type": "integer"}}})
import deflate, gzip  # libdeflate: the backup's deflate engine (zlib is only the fallback)
block = b"INSERT INTO t VALUES (42, 'l2c');\n" * 4096
assert gzip.decompress(deflate.gzip_compress(block, 6)) == block
from pip._vendor.packaging.requirements import Requirement
dists = {d.metadata["Name"].lower().replace("_", "-"): d for d in md.distributions(path=[layer])}
problems = []
for name, dist in dists.items():
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        have = dists.get(req.name.lower().replace("_", "-"))
        if have is None:
            problems.append(f"{name} needs {text}: not in the layer")
        elif not req.specifier.contains(have.version, prereleases=True):
            problems.append(f"{name} needs {text}: the layer has {have.version}")
assert not problems, problems
print(json.dumps({"python": sys.version.split()[0], "crcmod_extension": _crcfunext.__file__,
                  "distributions": {n: d.version for n, d in sorted(dists.items())}}))
"""


def build(force: bool = False) -> dict:
    wanted = b.recipe_hash(*RECIPE)
    if not force and (manifest := b.up_to_date(NAME, wanted)):
        b.log(f"{NAME} layer up to date ({manifest['zip']})")
        return manifest
    b.log(f"building the {NAME} layer ...")
    python = build_venv()
    files = download(python)
    wheels = [f for f in files if f.suffix == ".whl"]
    wheels += [build_wheel(python, f) for f in files if f.suffix != ".whl"]

    staging = b.fresh_dir(b.BUILD_DIR / f"{NAME}.tmp")
    target = staging / "python"
    b.run([python, "-m", "pip", "install", "--disable-pip-version-check", "--no-deps",
           "--no-index", "--no-compile", "--target", target, *sorted(wheels)])
    # Console scripts carry this machine's interpreter path: of no use on FC.
    shutil.rmtree(target / "bin", ignore_errors=True)
    for path in target.glob("*.dist-info/direct_url.json"):  # names our build dir
        path.unlink()
    compiled = subprocess.run(
        [python, "-m", "compileall", "-q", "-d", "/opt/python",
         "--invalidation-mode", "unchecked-hash", target], capture_output=True, text=True,
        env=dict(os.environ, PYTHONHASHSEED="0"))  # set order in .pyc: reproducible
    if compiled.returncode != 0:
        b.log(f"WARNING: some files did not compile (kept as source):\n{compiled.stdout}")

    checked = json.loads(b.run([python, "-c", _CHECK, target]).stdout)
    glibc = b.glibc_report(staging)
    max_glibc = b.check_glibc(glibc)
    manifest = dict(layer=NAME, recipe_hash=wanted, python=checked["python"],
                    distributions=checked["distributions"],
                    crcmod_extension=str(Path(checked["crcmod_extension"]).relative_to(staging)),
                    max_glibc=max_glibc, glibc=glibc)
    manifest = b.finish(NAME, staging, manifest)
    b.log(f"{NAME} layer: {len(checked['distributions'])} distributions for Python "
          f"{checked['python']}, {manifest['zip_bytes']:,} bytes zipped, "
          f"{manifest['unpacked_bytes']:,} unpacked, needs glibc {max_glibc}")
    return manifest


# -- Python 3.10 ---------------------------------------------------------------------------

def find_python310() -> str:
    """A CPython 3.10 to build and check with: $L2C_PYTHON310, else pyenv's newest
    3.10.x, else python3.10 on PATH."""
    candidates = []
    if os.environ.get("L2C_PYTHON310"):
        candidates.append(os.environ["L2C_PYTHON310"])
    pyenv_root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    found = pyenv_root.glob("versions/3.10.*/bin/python3.10")
    candidates += [str(p) for p in sorted(found, key=lambda p: b.version_tuple(
        re.sub(r"[^0-9.]", "", p.parent.parent.name)), reverse=True)]
    if shutil.which("python3.10"):
        candidates.append(shutil.which("python3.10"))
    for candidate in candidates:
        try:
            out = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=60).stdout.strip()
        except OSError:
            continue
        if out == str(TARGET_PYTHON):
            return candidate
    raise b.MissingTool(
        "no CPython 3.10 to build the cp310 wheels with (tried $L2C_PYTHON310, "
        f"{pyenv_root}/versions/3.10.*, python3.10 on PATH): `pyenv install 3.10.13`, or "
        "point L2C_PYTHON310 at one")


def build_venv() -> Path:
    """A Python 3.10 venv with the pinned build tools, made once per interpreter and pin."""
    python = find_python310()
    version = b.run([python, "-c", "import sys; print(sys.version)"]).stdout.strip()
    key = hashlib.sha256(f"{os.path.realpath(python)}\n{version}\n".encode()
                           + BUILD_REQUIREMENTS.read_bytes()).hexdigest()[:12]
    venv = b.CACHE_DIR / f"py310-build-{key}"
    venv_python = venv / "bin" / "python"
    if not (venv / ".complete").is_file():
        shutil.rmtree(venv, ignore_errors=True)
        b.log(f"making the build venv with {python} ({version.split()[0]}) ...")
        b.run([python, "-m", "venv", venv])
        b.run([venv_python, "-m", "pip", "install", "--disable-pip-version-check", "-q",
               "--require-hashes", "-r", BUILD_REQUIREMENTS])
        (venv / ".complete").touch()
    return venv_python


# -- downloads -----------------------------------------------------------------------------

def _target_args() -> list[str]:
    platforms = [arg for p in b.MANYLINUX_PLATFORMS for arg in ("--platform", p)]
    return ["--only-binary=:all:", f"--no-binary={','.join(SOURCE_BUILT)}",
            "--python-version", "3.10", "--implementation", "cp",
            "--abi", "cp310", "--abi", "abi3", "--abi", "none", *platforms]


def _pinned_hashes() -> list[tuple[str, set[str]]]:
    """[(requirement, {sha256, ...})] from requirements.txt."""
    text = REQUIREMENTS.read_text().replace("\\\n", " ")
    pins = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = line.split()[0]
            pins.append((requirement, set(re.findall(r"--hash=sha256:([0-9a-f]{64})", line))))
    return pins


def download(python: Path) -> list[Path]:
    """Every file requirements.txt pins (wheels for the target, the sdists of
    SOURCE_BUILT), from the cache or PyPI, checked against its sha256."""
    cache = b.CACHE_DIR / "python-downloads"
    cache.mkdir(parents=True, exist_ok=True)

    def by_hash() -> dict[str, Path]:
        return {b.sha256_file(p): p for p in cache.iterdir() if p.is_file()}

    pins = _pinned_hashes()
    have = by_hash()
    if not all(hashes & have.keys() for _, hashes in pins):
        b.log("downloading the Python packages ...")
        b.pip_download(str(python), ["--require-hashes", *_target_args(), "-r", REQUIREMENTS],
                       cache)
        have = by_hash()
    files = []
    for requirement, hashes in pins:
        match = hashes & have.keys()
        if not match:
            raise b.BuildError(f"{requirement}: no downloaded file has a pinned sha256")
        files.append(have[sorted(match)[0]])
    return files


def build_wheel(python: Path, sdist: Path) -> Path:
    """The cp310 wheel built from `sdist`, cached per sdist and build venv."""
    out = b.CACHE_DIR / "python-wheels" / f"{b.sha256_file(sdist)[:16]}-{python.parent.parent.name}"
    wheels = list(out.glob("*.whl")) if out.is_dir() else []
    if len(wheels) != 1:
        b.log(f"building a wheel from {sdist.name} ...")
        shutil.rmtree(out, ignore_errors=True)
        # -g0: no debug info, which would hold pip's random build dir: same source, same .so
        b.run([python, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-deps",
               "--no-index", "--no-build-isolation", "--use-pep517", "-w", out, sdist],
              env=dict(os.environ, CFLAGS="-g0", SOURCE_DATE_EPOCH="1577836800"))
        wheels = list(out.glob("*.whl"))
    [wheel] = wheels
    return wheel


# -- the lock ------------------------------------------------------------------------------

def lock() -> None:
    """Resolves requirements.in for CPython 3.10 and writes requirements.txt with the
    sha256 of each file the build will take (the target-platform wheel, or the sdist)."""
    python = build_venv()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        b.run([python, "-m", "pip", "install", "--disable-pip-version-check", "--dry-run",
               "--ignore-installed", "-q", "--report", report, "-r", REQUIREMENTS_IN])
        resolved = sorted((item["metadata"]["name"], item["metadata"]["version"])
                          for item in json.loads(report.read_text())["install"])
        dest = Path(tmp) / "files"
        b.pip_download(str(python), [*_target_args(), *(f"{n}=={v}" for n, v in resolved)], dest)
        files = {_dist_name(p.name): p for p in dest.iterdir()}
        lines = [f"# Generated by `python3 layers/python/build.py --lock` from requirements.in "
                 f"for CPython 3.10,\n# linux x86_64, glibc <= 2.28. Sdists (built here): "
                 f"{', '.join(SOURCE_BUILT)}. Do not edit by hand.\n"]
        for name, version in resolved:
            path = files[_normalize(name)]
            lines.append(f"{name}=={version} \\\n    --hash=sha256:{b.sha256_file(path)}"
                         f"\n    # {path.name}\n")
        REQUIREMENTS.write_text("".join(lines))
    b.log(f"wrote {REQUIREMENTS.relative_to(b.ROOT)}: {len(resolved)} packages")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _dist_name(filename: str) -> str:
    if filename.endswith(".whl"):
        return _normalize(filename.split("-")[0])
    stem = re.sub(r"\.(tar\.gz|zip|tar\.bz2)$", "", filename)
    return _normalize(stem.rsplit("-", 1)[0])


if __name__ == "__main__":
    if "--lock" in sys.argv[1:]:
        try:
            with b.build_lock():
                lock()
        except b.BuildError as e:
            b.log(f"FAILED: {e}")
            sys.exit(e.exit_status)
        sys.exit(0)
    sys.exit(b.main_for(build))
