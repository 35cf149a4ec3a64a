"""The ``pdserve`` command: one entry point, each subcommand owned by its package.

Subcommands import their package lazily, so ``pdserve --help`` stays fast and the router's
commands never import torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from common.cli_main import run_command

# name -> (module with add_arguments(parser) and run(args), one-line help)
SUBCOMMANDS = {
    "up": ("deploy.cli_up", "run the whole cluster on this machine (Redis, router, workers)"),
    "status": ("deploy.cli_status", "show pools, workers, load and KV usage of a cluster"),
    "scale": ("deploy.cli_scale", "resize the pools of a running cluster: prefill=N decode=M"),
    "secret": ("deploy.cli_secret", "make a cluster secret, or the Redis ACL file for one"),
    "bench": ("benchmarks.cli_bench", "benchmark an OpenAI-compatible endpoint (or --compare runs)"),
    "ray": ("deploy.cli_ray", "deploy on a Ray cluster: ray up|scale|status|down"),
    "generate": ("engine.cli_generate", "generate text offline with the engine (no cluster)"),
    "prepare-demo": ("engine.cli_prepare", "download and convert the demo model once"),
}
# The cluster's processes: each package's cli.py names its subcommand (COMMAND, HELP) and also
# runs on its own (``python -m prefill_worker``); here they are only listed.
ROLE_CLIS = ("prefill_worker.cli", "decode_worker.cli", "router.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pdserve",
        description="pdserve: a disaggregated prefill/decode serving cluster for open-weight LLMs",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = [(name, importlib.import_module(module), help_text)
                for name, (module, help_text) in SUBCOMMANDS.items()]
    commands += [(m.COMMAND, m, m.HELP) for m in map(importlib.import_module, ROLE_CLIS)]
    for name, module, help_text in commands:
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.set_defaults(_module=module.__name__)
        module.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return run_command(args.command, importlib.import_module(args._module).run, args)


if __name__ == "__main__":
    sys.exit(main())
