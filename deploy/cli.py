"""The ``pdserve`` command: one entry point, each subcommand owned by its package.

Subcommands import their package lazily, so ``pdserve --help`` stays fast and the router's
commands never import torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module with add_arguments(parser) and run(args), one-line help)
SUBCOMMANDS = {
    "up": ("deploy.cli_up", "run the whole cluster on this machine (Redis, router, workers)"),
    "status": ("deploy.cli_status", "show pools, workers, load and KV usage of a cluster"),
    "scale": ("deploy.cli_scale", "resize the pools of a running cluster: prefill=N decode=M"),
    "bench": ("benchmarks.cli_bench", "benchmark an OpenAI-compatible endpoint (or --compare runs)"),
    "ray": ("deploy.cli_ray", "deploy on a Ray cluster: ray up|scale|status|down"),
    "generate": ("engine.cli_generate", "generate text offline with the engine (no cluster)"),
    "prepare-demo": ("engine.cli_prepare", "download and convert the demo model once"),
    "prefill": ("prefill_worker.cli", "run a prefill worker (gRPC)"),
    "decode": ("decode_worker.cli", "run a decode worker (gRPC, tensor parallel with --tp)"),
    "router": ("router.cli", "run the OpenAI-compatible router"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pdserve",
        description="pdserve: a disaggregated prefill/decode serving cluster for open-weight LLMs",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(args._module)
    try:
        return module.run(args) or 0
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"pdserve {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
