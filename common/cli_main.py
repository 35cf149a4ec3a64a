"""Running one command-line command (torch-free): the same parser, exit codes and error lines
whether it is started as ``pdserve <command>`` or as ``python -m <package>``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def command_parser(command: str, help_text: str,
                   add_arguments: Callable[[argparse.ArgumentParser], None],
                   ) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"pdserve {command}", description=help_text,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser)
    return parser


def run_command(command: str, run: Callable[[argparse.Namespace], int | None],
                args: argparse.Namespace) -> int:
    """``run(args)``'s exit code; a user's mistake (bad value, missing file) is one error line
    and exit 1, Ctrl-C is 130."""
    try:
        return run(args) or 0
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"pdserve {command}: error: {e}", file=sys.stderr)
        return 1


def main_for_command(command: str, help_text: str,
                     add_arguments: Callable[[argparse.ArgumentParser], None],
                     run: Callable[[argparse.Namespace], int | None],
                     argv: list[str] | None = None) -> int:
    args = command_parser(command, help_text, add_arguments).parse_args(argv)
    return run_command(command, run, args)
