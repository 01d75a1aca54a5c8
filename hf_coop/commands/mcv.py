"""`hf-coop mcv`: the maximal common vocabulary of several tokenizers, with its report."""

from __future__ import annotations

import argparse
import json
import sys

from hf_coop.commands.score import read_text_argument
from hf_coop.errors import ConfigError
from hf_coop.models import load_tokenizer
from hf_coop.vocab.mcv import SPLITS, maximal_common_vocabulary


def _run_mcv(args: argparse.Namespace) -> int:
    if len(args.tokenizers) < 2:
        raise ConfigError("give at least two tokenizers (demo model names, folders or hub ids)")
    text = read_text_argument(None, args.text) if args.text else None
    tokenizers = [load_tokenizer(name) for name in args.tokenizers]
    _, report = maximal_common_vocabulary(*tokenizers, split=args.split, text=text, names=args.tokenizers)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    out = sys.stdout
    out.write(f"MCV of {', '.join(args.tokenizers)}: {report.size} strings ({report.common_strings} common, ")
    out.write(f"{report.dropped_by_closure} dropped by merge closure)\n")
    out.write(f"special tokens excluded per tokenizer: {report.special_tokens_excluded}\n")
    if report.boundary_agreement is not None:
        out.write(
            f"on {report.text_bytes} bytes: original boundary agreement {report.original_boundary_agreement:.3f}, "
            f"nested ({report.split}) {report.boundary_agreement:.3f}, conflict rate {report.conflict_rate:.3f}, "
            f"{report.mean_bytes_per_token:.2f} bytes per MCV token\n"
        )
    return 0


def add_subcommands(subparsers) -> None:
    p = subparsers.add_parser("mcv", help="maximal common vocabulary of several tokenizers, with its report")
    p.add_argument("tokenizers", nargs="+", help="demo model names, local folders or hub ids")
    p.add_argument("--text", help="UTF-8 file on which to measure the members' boundary agreement")
    p.add_argument("--split", choices=SPLITS, default="merges", help="how members split tokens into MCV")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=_run_mcv)
