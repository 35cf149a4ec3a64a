"""`pdserve prefill`: a prefill worker."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cluster.worker_cli import add_worker_arguments

    add_worker_arguments(parser, role="prefill")


def run(args: argparse.Namespace) -> int:
    from cluster.worker_cli import worker_config_from_args
    from cluster.worker_runtime import main_for_role
    from prefill_worker.servicer import PrefillServicer

    return main_for_role(worker_config_from_args(args, "prefill"), PrefillServicer)
