"""Prints the oss2 conformance figures at the end of any pytest run that ran the suite."""


def pytest_terminal_summary(terminalreporter):
    import test_oss2_conformance  # imported by then when the suite ran; cheap otherwise

    for report in test_oss2_conformance.REPORTS:
        terminalreporter.section("oss2 conformance of the local OSS server")
        terminalreporter.write_line(report.out_of_scope_listing())
        terminalreporter.write_line(report.summary())
