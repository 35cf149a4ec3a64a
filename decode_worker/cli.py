"""`pdserve decode` (or `python -m decode_worker`): a decode worker (tensor parallel with
--tp; also prefills locally)."""

from __future__ import annotations

import argparse

COMMAND = "decode"
HELP = "run a decode worker (gRPC, tensor parallel with --tp)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from worker.cli_args import add_worker_arguments

    add_worker_arguments(parser, role="decode")
    parser.add_argument("--role", dest="worker_role", choices=["decode", "both"],
                        default="decode",
                        help="'both' advertises the worker for prefill too (colocated serving)")


def run(args: argparse.Namespace) -> int:
    from decode_worker.servicer import DecodeServicer
    from worker.cli_args import worker_config_from_args
    from worker.server import main_for_role

    return main_for_role(worker_config_from_args(args, args.worker_role), DecodeServicer)


def main(argv: list[str] | None = None) -> int:
    from common.cli_main import main_for_command

    return main_for_command(COMMAND, HELP, add_arguments, run, argv)
