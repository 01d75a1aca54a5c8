"""`hf-coop slt train` (a ticket on a small image task) and `hf-coop slt inspect PATH` (sizes, sparsity)."""

from __future__ import annotations

import argparse
import json
import time

from hf_coop.slt.config import FROZEN_DISTRIBUTIONS, THRESHOLDS, WEIGHT_INITS, FrozenSLTConfig
from hf_coop.slt.model import apply_frozen_slt, inspect_checkpoint


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    slt = subparsers.add_parser("slt", help="strong lottery tickets in partially frozen networks")
    commands = slt.add_subparsers(dest="slt_command", required=True)

    train = commands.add_parser(
        "train", help="train a ticket of a Conv6-style net on digits or Fashion-MNIST"
    )
    train.add_argument("--task", choices=("digits", "fashion-mnist"), default="digits")
    train.add_argument("--output", required=True, help="folder for the compact ticket")
    train.add_argument("--sparsity", type=float, default=0.5)
    train.add_argument("--pruned-ratio", type=float, default=0.0)
    train.add_argument("--locked-ratio", type=float, default=0.0)
    train.add_argument("--frozen-distribution", choices=FROZEN_DISTRIBUTIONS, default="uniform")
    train.add_argument("--threshold", choices=THRESHOLDS, default="per_layer")
    train.add_argument("--weight-init", choices=WEIGHT_INITS, default="signed_kaiming_constant")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--epochs", type=int, default=5)
    train.add_argument("--lr", type=float, default=0.1)
    train.add_argument("--width", type=int, default=16, help="channels of the first conv block")
    train.add_argument(
        "--train-limit", type=int, default=None, help="first N training images (Fashion-MNIST)"
    )
    train.add_argument("--test-limit", type=int, default=None, help="first N test images (Fashion-MNIST)")
    train.set_defaults(func=run_train)

    inspect = commands.add_parser("inspect", help="sizes and per-layer sparsity of a saved ticket")
    inspect.add_argument("path")
    inspect.add_argument("--json", action="store_true", help="print the full report as JSON")
    inspect.set_defaults(func=run_inspect)


def run_train(args: argparse.Namespace) -> int:
    import torch

    from hf_coop.slt.tasks import ConvNet, accuracy, digits_data, fashion_mnist_data, train_classifier

    if args.task == "digits":
        train_x, train_y, test_x, test_y = digits_data(seed=args.seed)
    else:
        train_x, train_y, test_x, test_y = fashion_mnist_data(args.train_limit, args.test_limit)
    image_size = train_x.shape[-1]
    torch.manual_seed(args.seed)
    config = FrozenSLTConfig(
        sparsity=args.sparsity,
        pruned_ratio=args.pruned_ratio,
        locked_ratio=args.locked_ratio,
        frozen_distribution=args.frozen_distribution,
        threshold=args.threshold,
        weight_init=args.weight_init,
        seed=args.seed,
        base_model_name_or_path=f"hf_coop.slt.tasks.ConvNet(image_size={image_size}, width={args.width})",
    )
    slt = apply_frozen_slt(ConvNet(image_size=image_size, width=args.width), config)
    start = time.perf_counter()
    on_step = slt.update_thresholds if config.threshold == "global" else None
    train_classifier(
        slt,
        slt.optimizer_param_groups(),
        train_x,
        train_y,
        args.epochs,
        args.lr,
        seed=args.seed,
        on_step=on_step,
    )
    report = slt.save_pretrained(args.output)
    print(
        f"{args.task}: test accuracy {accuracy(slt, test_x, test_y):.4f} after {args.epochs} epochs "
        f"({time.perf_counter() - start:.1f} s)"
    )
    _print_sizes(args.output, report)
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    report = inspect_checkpoint(args.path)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    _print_sizes(args.path, report)
    print(
        f"{'layer':40s} {'weights':>9s} {'pruned':>8s} {'locked':>8s} {'free':>8s} {'kept':>8s} "
        f"{'sparsity':>8s}"
    )
    for layer in report["layers"]:
        print(
            f"{layer['name']:40s} {layer['numel']:9d} {layer['pruned']:8d} {layer['locked']:8d} "
            f"{layer['free']:8d} {layer['kept']:8d} {layer['sparsity']:8.4f}"
        )
    return 0


def _print_sizes(path: str, report: dict) -> None:
    print(
        f"ticket {path}: {report['compact_bytes']} bytes compact vs {report['dense_fp32_bytes']} bytes dense "
        f"fp32 ({report['compression']:.1f}x smaller), sparsity {report['sparsity']:.4f}"
    )
