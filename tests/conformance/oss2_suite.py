"""Runs oss2's own test modules against the local OSS server and reports conformance.

The official oss2 tests (shipped in its sdist, written by the oss2 authors against real
OSS) are a description of OSS we did not write. They run unmodified: the sdist is fetched
with pip at a pinned version and checked against a pinned SHA-256, its `tests/` package is
unpacked under `.cache/`, and pytest runs the in-scope modules with the local server as
the endpoint (see oss2_suite_plugin.py). Tests of features the server does not implement
are listed one by one, with the reason, in out_of_scope.txt and deselected by name.

    .venv/bin/python tests/conformance/oss2_suite.py [-v] [pytest options...]

prints the in-scope figures and the out-of-scope list, and exits non-zero when an
in-scope test fails. tests/conformance/test_oss2_conformance.py runs it in CI.
"""
import hashlib
import os
import subprocess
import sys
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

OSS2_VERSION = "2.19.1"
OSS2_SDIST = f"oss2-{OSS2_VERSION}.tar.gz"
OSS2_SDIST_SHA256 = "a8ab9ee7eb99e88a7e1382edc6ea641d219d585a7e074e3776e9dec9473e59c1"

# The oss2 test modules for what the local server implements and L2C backup relies on.
MODULES = [
    "test_object.py",            # put/get/head/copy/delete, meta, range, CRC, tagging
    "test_multipart.py",         # initiate/upload/complete/abort, parts, tagging
    "test_list_objects_v2.py",   # ListObjectsV2
    "test_iterator.py",          # ListObjects (v1), uploads and parts listings
    "test_bucket_versioning.py",
    "test_object_versioning.py",
    "test_bucket_worm.py",       # retention policy
    "test_crc64_combine.py",     # CRC64 of multipart objects
    "test_put_object_chunked.py",
    "test_chinese.py",           # non-ASCII keys and bodies
]

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = REPO / ".cache" / "oss-conformance"
OUT_OF_SCOPE = HERE / "out_of_scope.txt"


class SuiteUnavailable(Exception):
    """The pinned oss2 sdist could not be fetched or did not match its pinned hash."""


@dataclass
class Report:
    passed: list = field(default_factory=list)
    failed: dict = field(default_factory=dict)      # test id -> first line of the failure
    skipped: dict = field(default_factory=dict)     # test id -> skip reason (the suite's own)
    out_of_scope: dict = field(default_factory=dict)  # test id -> reason
    stale: list = field(default_factory=list)       # out-of-scope names matching no test
    returncode: int = 0

    @property
    def run(self):
        return len(self.passed) + len(self.failed)

    @property
    def ok(self):
        """Every in-scope test ran and passed, and the out-of-scope list names real tests."""
        return bool(self.run) and not self.failed and not self.stale and self.returncode == 0

    def summary(self):
        lines = [f"oss2 {OSS2_VERSION} conformance of the local OSS server: "
                 f"in-scope {len(self.passed)} passed / {self.run} run"
                 + (f", {len(self.skipped)} skipped by the suite itself" if self.skipped else "")
                 + f"; {len(self.out_of_scope)} out of scope."]
        for test in self.stale:
            lines.append(f"  STALE {test}: listed in out_of_scope.txt but no such test; remove it")
        for test, line in sorted(self.failed.items()):
            lines.append(f"  FAILED {test}: {line}")
        for test, reason in sorted(self.skipped.items()):
            lines.append(f"  skipped {test}: {reason}")
        return "\n".join(lines)

    def out_of_scope_listing(self):
        by_reason = Counter(self.out_of_scope.values())
        lines = [f"Out of scope ({len(self.out_of_scope)}), by reason:"]
        for reason, count in by_reason.most_common():
            lines.append(f"  {count:3d}  {reason}")
        lines.append("Out of scope, by name:")
        lines += [f"  {test}  {reason}" for test, reason in sorted(self.out_of_scope.items())]
        return "\n".join(lines)


def read_out_of_scope(path=OUT_OF_SCOPE):
    """{`module.py::Class::test`: reason} from the data file (`#` starts a comment)."""
    entries = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        test, _, reason = line.partition("  ")
        if not reason.strip():
            raise ValueError(f"{path.name}:{number}: {test} has no reason (two spaces, then why)")
        entries[test.strip()] = reason.strip()
    return entries


def fetch_suite(cache=CACHE):
    """The unpacked `tests/` package of the pinned oss2 sdist (downloaded once, then cached)."""
    suite = cache / f"oss2-{OSS2_VERSION}"
    sdist = cache / OSS2_SDIST
    if not sdist.exists():
        cache.mkdir(parents=True, exist_ok=True)
        pip = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
             ":all:", "--dest", str(cache), f"oss2=={OSS2_VERSION}"],
            capture_output=True, text=True)
        if pip.returncode != 0 or not sdist.exists():
            raise SuiteUnavailable(f"could not download {OSS2_SDIST} with pip "
                                   f"({pip.stderr.strip().splitlines()[-1:] or 'no output'}); "
                                   "check access to the package index")
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != OSS2_SDIST_SHA256:
        sdist.unlink()
        raise SuiteUnavailable(f"{OSS2_SDIST} has sha256 {digest}, pinned "
                               f"{OSS2_SDIST_SHA256}; deleted it, run again or re-pin")
    if not (suite / "tests" / "common.py").exists():
        with tarfile.open(sdist) as tar:
            prefix = f"oss2-{OSS2_VERSION}/tests/"
            members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile()]
            for member in members:
                member.name = member.name[len(f"oss2-{OSS2_VERSION}/"):]
            tar.extractall(suite, members=members, filter="data")
        # Only the tests/ package is unpacked: `import oss2` keeps meaning the installed one.
        (suite / "pytest.ini").write_text("[pytest]\n")
    return suite


def run_suite(extra_args=(), auth_version=None):
    """Runs the in-scope modules in a pytest subprocess and returns its Report."""
    suite = fetch_suite()
    out_of_scope = read_out_of_scope()
    known = {f"{m}::" for m in MODULES}
    for test in out_of_scope:
        if not any(test.startswith(m) for m in known):
            raise ValueError(f"out_of_scope.txt names {test}, which is in no module run here")
    junit, deselected = suite / "junit.xml", suite / "deselected.txt"
    junit.unlink(missing_ok=True)
    deselected.unlink(missing_ok=True)
    env = dict(os.environ, OSS2_SUITE_DESELECTED=str(deselected), PYTHONPATH=os.pathsep.join(
        [str(HERE), str(REPO / "scripts"), os.environ.get("PYTHONPATH", "")]))
    if auth_version:
        env["OSS_TEST_AUTH_VERSION"] = auth_version
    args = [sys.executable, "-m", "pytest", "-c", "pytest.ini", "--rootdir", ".",
            "-p", "oss2_suite_plugin", "-p", "no:cacheprovider", "-q", "--tb=short",
            f"--junitxml={junit}", *[f"tests/{m}" for m in MODULES],
            *[arg for test in out_of_scope for arg in ("--deselect", f"tests/{test}")],
            *extra_args]
    proc = subprocess.run(args, cwd=suite, env=env)
    report = _read_junit(junit)
    report.out_of_scope = out_of_scope
    if deselected.exists():
        seen = {line.strip().removeprefix("tests/") for line in deselected.read_text().splitlines()}
        report.stale = sorted(set(out_of_scope) - seen)
    report.returncode = proc.returncode
    return report


def _read_junit(path):
    report = Report()
    if not path.exists():
        return report
    for case in ElementTree.parse(path).iter("testcase"):
        module = case.get("classname", "").split(".")
        test = f"{module[-2]}.py::{module[-1]}::{case.get('name')}"
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        skipped = case.find("skipped")
        if problem is not None:
            report.failed[test] = (problem.get("message") or "").splitlines()[0][:200] \
                if problem.get("message") else "(no message)"
        elif skipped is not None:
            report.skipped[test] = skipped.get("message", "")
        else:
            report.passed.append(test)
    return report


def main(argv):
    try:
        report = run_suite(argv)
    except SuiteUnavailable as err:
        print(f"oss2 conformance: {err}", file=sys.stderr)
        return 2
    print(report.out_of_scope_listing())
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
