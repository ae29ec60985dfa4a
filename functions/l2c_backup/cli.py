"""`l2c-backup`: the operator command. One subcommand per operation, each in its own
module with `add_parser(subparsers)` and `run(args)`; the FC handlers call the same
library functions the subcommands call.

A failure ends in one line on stderr, `l2c-backup COMMAND: what failed; what to do: ...`,
and the exit code of its error class (errors.py). Commands that cron runs unattended
(backup, verify, prune, mirror, status) also alert the channels set in the environment,
unless the operation already sent its own alert for this failure (`err.alerted`): a cron
user with a broken env file hears of it once, not never and not twice.
"""
import argparse
import logging
import socket
import sys

from . import __version__, logs
from .commands import (backup, check_egress, demo, fc_server, invoke, mirror, oss_server,
                       policies, prune, restore, setup_oss, status, verify)
from .errors import L2CError
from .signals import Stopped, stop_on_signals

COMMANDS = (backup, verify, prune, restore, mirror, status, setup_oss, policies, check_egress,
            invoke, demo, oss_server, fc_server)
# What cron runs on its own; restore, set-up and the local tools have a person watching.
UNATTENDED = ("backup", "verify", "prune", "mirror", "status")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="l2c-backup",
        description="PostgreSQL backups to Aliyun OSS: backup, verify, prune, restore, drills.")
    parser.add_argument("--version", action="version", version=f"l2c-backup {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    parser.add_argument("--log-json", action="store_true", help="log JSON lines (as in FC)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def one_line(err):
    """The error and what to do about it as one line (L2CError's str has two)."""
    message = " ".join(str(err.args[0] if err.args else err).split())
    hint = " ".join(getattr(err, "hint", "").split())
    return logs.redact(f"{message}; what to do: {hint}" if hint else message)


def alert_failure(command, err):
    """One alert for a failure of an unattended command that its operation did not alert."""
    if command not in UNATTENDED or getattr(err, "alerted", False):
        return
    from . import alerts, channels
    try:
        if not channels.current().senders:  # nobody to tell: the line below says it all
            return
    except Exception:  # a broken channel setting: alerts.send logs what it can
        pass
    severity = getattr(err, "severity", "urgent")
    reason = (one_line(err) if isinstance(err, L2CError) else str(err) if isinstance(err, Stopped)
              else f"{type(err).__name__}: {logs.redact(str(err))}")
    alerts.send(alerts.Alert(severity, f"{command} failed", reason,
                             {"command": f"l2c-backup {command}", "host": socket.gethostname()}))
    err.alerted = True


def main(argv=None):
    args = build_parser().parse_args(argv)
    logs.setup(json_lines=args.log_json, level=logging.DEBUG if args.verbose else logging.INFO)
    try:
        with stop_on_signals():
            return args.run(args) or 0
    except L2CError as err:
        alert_failure(args.command, err)
        print(f"l2c-backup {args.command}: {one_line(err)}", file=sys.stderr)
        return err.exit_code
    except Stopped as stop:
        if stop.name == "SIGTERM":  # a shutdown or a supervisor, not a person at the terminal
            alert_failure(args.command, stop)
        print(f"l2c-backup {args.command}: {stop}; what was in progress was undone",
              file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # a bug, not an expected failure: keep its traceback, but alert
        alert_failure(args.command, err)
        raise


if __name__ == "__main__":
    sys.exit(main())
