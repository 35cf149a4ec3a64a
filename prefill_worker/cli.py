"""`pdserve prefill`: a prefill worker."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from worker.cli_args import add_worker_arguments

    add_worker_arguments(parser, role="prefill")


def run(args: argparse.Namespace) -> int:
    from prefill_worker.servicer import PrefillServicer
    from worker.cli_args import worker_config_from_args
    from worker.runtime import main_for_role

    return main_for_role(worker_config_from_args(args, "prefill"), PrefillServicer)
