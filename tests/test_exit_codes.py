"""The exit codes the README documents are the ones the code returns."""
import inspect
import re
import signal
from pathlib import Path

from l2c_backup import errors
from l2c_backup.signals import Stopped

README = Path(__file__).resolve().parents[1] / "README.md"


def documented():
    """{class name: exit code} from the README's exit-code table."""
    table = README.read_text().split("| exit | kind |", 1)[1].split("\n\n", 1)[0]
    found = {}
    for code, kind in re.findall(r"^\| ([\d /]+) \| (.*) \|$", table, re.M):
        for name in re.findall(r"`(\w+)`", kind):
            found[name] = int(code)
    return found


def test_every_error_class_has_its_exit_code_in_the_readme():
    classes = {name: cls.exit_code for name, cls in inspect.getmembers(errors, inspect.isclass)
               if issubclass(cls, errors.L2CError) and cls is not errors.L2CError}
    assert documented() == classes


def test_exit_codes_of_different_kinds_differ_where_the_readme_says_so():
    # one code per kind, except the invalid-input pair that the README lists together
    codes = [cls.exit_code for cls in errors.L2CError.__subclasses__()
             if cls not in (errors.EventInvalid,)]
    assert len(codes) == len(set(codes))


def test_a_stopped_run_exits_as_a_shell_reports_the_signal():
    assert Stopped(signal.SIGINT).exit_code == 130 and Stopped(signal.SIGTERM).exit_code == 143
