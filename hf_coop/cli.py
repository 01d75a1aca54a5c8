"""The `hf-coop` command. Each part of the package adds its subcommands through `add_subcommands`."""

from __future__ import annotations

import argparse
import importlib
import sys

from hf_coop.errors import CoopError

# Modules exposing `add_subcommands(subparsers)`; each subcommand sets `func(args) -> int | None`.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "hf_coop.commands.score",
    "hf_coop.demo",
    "hf_coop.commands.mcv",
    "hf_coop.commands.ensemble",
    "hf_coop.slt.cli",
    "hf_coop.prt.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-coop", description="Make Hugging Face models cooperate.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_subcommands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CoopError, ValueError, FileNotFoundError, ImportError, OSError) as e:
        print(f"hf-coop {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
