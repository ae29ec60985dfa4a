"""`l2c-backup`: the operator command. One subcommand per operation, each in its own
module with `add_parser(subparsers)` and `run(args)`; the FC handlers call the same
library functions the subcommands call."""
import argparse
import logging
import sys

from . import __version__, logs
from .commands import (backup, check_egress, demo, fc_server, invoke, mirror, oss_server,
                       policies, prune, restore, setup_oss, status, verify)
from .errors import L2CError
from .signals import Stopped, stop_on_signals

COMMANDS = (backup, verify, prune, restore, mirror, status, setup_oss, policies, check_egress,
            invoke, demo, oss_server, fc_server)


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


def main(argv=None):
    args = build_parser().parse_args(argv)
    logs.setup(json_lines=args.log_json, level=logging.DEBUG if args.verbose else logging.INFO)
    try:
        with stop_on_signals():
            return args.run(args) or 0
    except L2CError as err:
        print(f"l2c-backup {args.command}: {logs.redact(str(err))}", file=sys.stderr)
        return err.exit_code
    except Stopped as stop:
        print(f"l2c-backup {args.command}: {stop}; what was in progress was undone",
              file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
