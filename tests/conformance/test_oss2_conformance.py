"""oss2's own test modules, unmodified, against the local OSS server (see oss2_suite.py).

One test here stands for the whole suite: it fails when any in-scope oss2 test fails, when
none ran, or when out_of_scope.txt names a test that no longer exists. The figures and the
out-of-scope list are printed at the end of the pytest run (conftest.py beside this file).
"""
import oss2_suite

REPORTS = []


def test_every_in_scope_oss2_test_passes_against_the_local_server():
    try:
        report = oss2_suite.run_suite(["-p", "no:logging"])
    except oss2_suite.SuiteUnavailable as err:
        raise AssertionError(f"oss2 conformance suite unavailable: {err}") from None
    REPORTS.append(report)
    assert report.ok, report.summary()
