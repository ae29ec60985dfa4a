"""Runs `l2c-backup` commands and FC handlers, each in a process of its own, forked from
this one after it imported the code once: imports are most of the CPU a short command
costs (about 1 s each), and the failure matrix runs dozens of them in parallel.

A child is what `python -m l2c_backup.cli ARGS` is (`sys.exit(cli.main(ARGS))`, an
uncaught exception printed as a traceback, exit 1), or what FC does with a handler
(`handler(event bytes, context)`), with its own environment and its stdout/stderr in
files. Its exit status goes to `<stdout file>.rc` once both files are complete.

Protocol: one JSON request per line on stdin, {"kind": "cli" | "fc", "argv" | "spec",
"env", "stdout", "stderr"}; the server answers each with the child's pid on stdout.
"""
import json
import os
import signal
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from l2c_local import resolve  # noqa: E402

resolve.install()  # the local OSS server's virtual-hosted names, as child_env gives a subprocess

from fc_handlers import fc_context, load_handler  # noqa: E402
from l2c_backup import cli  # noqa: E402
from l2c_backup.errors import L2CError  # noqa: E402

HANDLERS = {name: load_handler(name) for name in ("backup", "verify", "drill", "watchdog")}


def run_cli(argv):
    try:
        return cli.main(argv) or 0
    except SystemExit as done:  # argparse's errors and --help
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException:  # what the interpreter does with an uncaught exception
        traceback.print_exc()
        return 1


def run_handler(spec):
    context = fc_context(request_id=spec["cell"], access_key_id=spec["role"][0],
                         access_key_secret=spec["role"][1], security_token=spec["role"][2],
                         name=spec["handler"])
    try:
        result = HANDLERS[spec["handler"]].handler(spec["event"].encode(), context)
        outcome = {"returned": json.loads(result)}
    except BaseException as err:
        outcome = {"raised": type(err).__name__, "l2c": isinstance(err, L2CError),
                   "exit_code": getattr(err, "exit_code", None), "message": str(err)}
    print("MATRIX-OUTCOME " + json.dumps(outcome))
    return 0


def child(request):
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the command waits for its own pg_dump
    code = 1
    try:
        code = run_cli(request["argv"]) if request["kind"] == "cli" else run_handler(request["spec"])
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        with open(request["stdout"] + ".rc.tmp", "w") as rc:
            rc.write(str(code))
        os.rename(request["stdout"] + ".rc.tmp", request["stdout"] + ".rc")
        os._exit(code)


def main():
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            child(request)
        print(pid, flush=True)


if __name__ == "__main__":
    main()
