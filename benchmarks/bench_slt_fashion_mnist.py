"""Strong lottery tickets in partially frozen Conv6-style networks on Fashion-MNIST (arXiv 2402.14029).

    OMP_NUM_THREADS=1 python benchmarks/bench_slt_fashion_mnist.py [--train-limit 10000 --epochs 2 --width 32]

Compares, at sparsity 0.5 and 0.7: the weight-trained dense network; the SLT found in the dense random
source; the SLT in a randomly pruned source; and the SLT in partially frozen sources at freeze ratios 0.3,
0.5 and 0.7, where the frozen fraction f splits into pruned p = f·s and locked r = f·(1 - s) so the free
part keeps the overall sparsity (the paper's setting; `--free-density q` instead locks r = (1 - s) - q·(1 - f)
so the ticket keeps a fraction q of the free weights). Reports test accuracy and the size of each saved
artefact (the SLT's compact folder; the weight-trained network's fp32 safetensors file). Writes the
`slt_fashion_mnist` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from results import write_section  # noqa: E402

from hf_coop.slt import FrozenSLTConfig, apply_frozen_slt  # noqa: E402
from hf_coop.slt.config import FROZEN_DISTRIBUTIONS, THRESHOLDS, WEIGHT_INITS  # noqa: E402
from hf_coop.slt.tasks import ConvNet, accuracy, fashion_mnist_data, train_classifier  # noqa: E402


def weight_trained(args, data) -> dict:
    train_x, train_y, test_x, test_y = data
    torch.manual_seed(args.seed)
    model = ConvNet(width=args.width)
    train_classifier(model, model.parameters(), train_x, train_y, args.epochs, args.dense_lr, seed=args.seed)
    with tempfile.TemporaryDirectory() as folder:
        file = os.path.join(folder, "model.safetensors")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, file)
        size = os.path.getsize(file)
    return {"accuracy": accuracy(model, test_x, test_y), "bytes": size, "dense_bytes": size}


def ticket(args, data, sparsity: float, pruned: float, locked: float) -> dict:
    train_x, train_y, test_x, test_y = data
    config = FrozenSLTConfig(
        sparsity=sparsity,
        pruned_ratio=pruned,
        locked_ratio=locked,
        seed=args.seed,
        threshold=args.threshold,
        frozen_distribution=args.frozen_distribution,
        weight_init=args.weight_init,
        score_weight_decay=args.score_weight_decay,
    )
    slt = apply_frozen_slt(ConvNet(width=args.width), config)
    train_classifier(
        slt,
        slt.optimizer_param_groups(),
        train_x,
        train_y,
        args.epochs,
        args.slt_lr,
        seed=args.seed,
        on_step=slt.update_thresholds if args.threshold == "global" else None,
    )
    with tempfile.TemporaryDirectory() as folder:
        report = slt.save_pretrained(folder)
    return {
        "accuracy": accuracy(slt, test_x, test_y),
        "bytes": report["compact_bytes"],
        "mask_bytes": report["file_bytes"]["slt_ticket.safetensors"],
        "dense_bytes": report["dense_fp32_bytes"],
    }


def run_job(args, data, name: str, sparsity, pruned, locked) -> dict:
    """One row of the table; a top-level function so worker processes can run it."""
    if name == "weight-trained dense":
        return weight_trained(args, data)
    return ticket(args, data, sparsity, pruned, locked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-limit", type=int, default=10_000)
    parser.add_argument("--test-limit", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--slt-lr", type=float, default=0.1)
    parser.add_argument("--dense-lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", choices=THRESHOLDS, default="per_layer")
    parser.add_argument("--frozen-distribution", choices=FROZEN_DISTRIBUTIONS, default="uniform")
    parser.add_argument("--weight-init", choices=WEIGHT_INITS, default="signed_kaiming_constant")
    parser.add_argument("--score-weight-decay", type=float, default=0.0)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7])
    parser.add_argument("--freeze-ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--section", default="slt_fashion_mnist", help="RESULTS.md section to (re)write")
    parser.add_argument(
        "--free-density", type=float, default=None, help="fraction of the free weights each ticket keeps"
    )
    parser.add_argument(
        "--baselines",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also train the weight-trained, dense-source and randomly pruned rows",
    )
    parser.add_argument("--workers", type=int, default=1, help="rows trained in parallel, one thread each")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = fashion_mnist_data(args.train_limit, args.test_limit)
    start = time.perf_counter()

    jobs: list[tuple[str, object, object, object]] = []
    if args.baselines:
        jobs.append(("weight-trained dense", "-", "-", "-"))
    for s in args.sparsities:
        if args.baselines:
            jobs.append(("SLT, dense source", s, 0.0, 0.0))
            jobs.append((f"SLT, randomly pruned source (p = {0.5 * s:.2f})", s, 0.5 * s, 0.0))
        for f in args.freeze_ratios:
            locked = f * (1 - s) if args.free_density is None else (1 - s) - args.free_density * (1 - f)
            jobs.append((f"SLT, partially frozen f = {f}", s, round(f - locked, 6), round(locked, 6)))
    with ProcessPoolExecutor(args.workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        futures = [pool.submit(run_job, args, data, *job) for job in jobs]
        rows = []
        for job, future in zip(jobs, futures):
            result = future.result()
            print(*job, result, flush=True)
            rows.append(
                (*job, result["accuracy"], result["bytes"], result.get("mask_bytes"), result["dense_bytes"])
            )
    elapsed = time.perf_counter() - start

    command = (
        f"OMP_NUM_THREADS=1 python benchmarks/bench_slt_fashion_mnist.py --train-limit {args.train_limit} "
        f"--epochs {args.epochs} --width {args.width} --slt-lr {args.slt_lr} --dense-lr {args.dense_lr} "
        f"--seed {args.seed}"
        + f" --threshold {args.threshold} --frozen-distribution {args.frozen_distribution}"
        + f" --weight-init {args.weight_init} --score-weight-decay {args.score_weight_decay}"
        + ("" if args.test_limit is None else f" --test-limit {args.test_limit}")
        + f" --sparsities {' '.join(map(str, args.sparsities))}"
        + f" --freeze-ratios {' '.join(map(str, args.freeze_ratios))} --section {args.section}"
        + ("" if args.free_density is None else f" --free-density {args.free_density}")
        + ("" if args.baselines else " --no-baselines")
        + f" --workers {args.workers}"
    )
    lines = [
        "## SLT in partially frozen networks: Fashion-MNIST (`hf_coop.slt`)",
        "",
        f"Command: `{command}` ({elapsed / 60:.1f} min, {args.workers} process(es) of 1 thread).",
        "",
        f"Reductions for a shared 2-core CPU: Conv6-style net at width {args.width} (channels {args.width}/"
        f"{2 * args.width}/{4 * args.width}, fc {4 * args.width}), first {args.train_limit} training images, "
        f"{'all 10000' if args.test_limit is None else args.test_limit} test images, {args.epochs} epochs "
        f"of SGD (momentum 0.9, cosine; lr {args.slt_lr} for scores, {args.dense_lr} for weights), one seed; "
        f"{args.threshold.replace('_', '-')} threshold, {args.frozen_distribution} spread of the frozen counts, "
        f"{args.weight_init.replace('_', ' ')} weights, score weight decay {args.score_weight_decay:g}. "
        "The paper trains full CIFAR-10 for 100+ epochs, so absolute accuracies here are lower; the "
        "comparison between rows is the point. "
        + (
            "Frozen ratio f splits into pruned p = f·s and locked r = f·(1 − s). "
            if args.free_density is None
            else f"Frozen ratio f splits so that the ticket keeps {args.free_density:g} of the free weights: "
            f"locked r = (1 − s) − {args.free_density:g}·(1 − f), pruned p = f − r. "
        )
        + "Compact size = the whole saved folder (config, manifest with checksums, mask bits, "
        "batch-norm statistics); mask = the packed-bit file alone.",
        "",
        "| model | sparsity s | pruned p | locked r | test accuracy | saved bytes | mask bytes "
        "| vs dense fp32 | vs dense-source SLT (folder / mask) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    dense_source = {
        s: (size, mask) for name, s, _, _, _, size, mask, _ in rows if name == "SLT, dense source"
    }
    for name, s, p, r, acc, size, mask, dense_bytes in rows:
        versus = (
            f"{dense_source[s][0] / size:.2f}× / {dense_source[s][1] / mask:.2f}×"
            if s in dense_source
            else "-"
        )
        lines.append(
            f"| {name} | {s} | {p} | {r} | {acc:.4f} | {size:,} | {'-' if mask is None else f'{mask:,}'} | "
            f"{dense_bytes / size:.1f}× | {versus} |"
        )
    write_section(args.section, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
