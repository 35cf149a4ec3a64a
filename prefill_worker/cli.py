"""`pdserve prefill` (or `python -m prefill_worker`): a prefill worker."""

from __future__ import annotations

import argparse

COMMAND = "prefill"
HELP = "run a prefill worker (gRPC)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from worker.cli_args import add_worker_arguments

    add_worker_arguments(parser, role="prefill")


def run(args: argparse.Namespace) -> int:
    from prefill_worker.servicer import PrefillServicer
    from worker.cli_args import worker_config_from_args
    from worker.server import main_for_role

    return main_for_role(worker_config_from_args(args, "prefill"), PrefillServicer)


def main(argv: list[str] | None = None) -> int:
    from common.cli_main import main_for_command

    return main_for_command(COMMAND, HELP, add_arguments, run, argv)
