"""The `hf-coop` command: one module per subcommand, each a thin shell over the public API and adding itself
through `add_subcommands(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import sys

from hf_coop.errors import CoopError

# Modules exposing `add_subcommands(subparsers)`; each subcommand sets `func(args) -> int | None`.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "hf_coop.commands.score",
    "hf_coop.commands.demo",
    "hf_coop.commands.mcv",
    "hf_coop.commands.ensemble",
    "hf_coop.commands.slt",
    "hf_coop.commands.prt",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-coop", description="Make Hugging Face models cooperate.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_subcommands(subparsers)
    return parser


# The extra that provides each optional package a subcommand may need.
EXTRAS = {
    "accelerate": "prt",
    "peft": "prt",
    "datasets": "prt",
    "sklearn": "slt",
    "gguf": "demo",
    "sentencepiece": "demo",
    "google.protobuf": "demo",
    "evaluate": "metrics",
    "reasoning_gym": "bench",
}


def missing_extra(error: ImportError) -> str | None:
    """`pip install 'hf-coop[<extra>]'` for an import error of a package one of the extras provides."""
    name = error.name or ""
    text = str(error)
    for module, extra in EXTRAS.items():
        if name == module or name.startswith(module + ".") or f"`{module}`" in text or f"'{module}'" in text:
            return f"pip install 'hf-coop[{extra}]'"
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ImportError as e:
        fix = missing_extra(e)
        print(
            f"hf-coop {args.command}: error: {e}" + (f"; install it with: {fix}" if fix else ""),
            file=sys.stderr,
        )
        return 2
    except (CoopError, ValueError, FileNotFoundError, OSError) as e:
        print(f"hf-coop {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
