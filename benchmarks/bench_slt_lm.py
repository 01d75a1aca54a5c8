"""A strong lottery ticket in a tiny GPT-2 language model vs the weight-trained model.

    OMP_NUM_THREADS=1 python benchmarks/bench_slt_lm.py [--steps 400]

Byte-level GPT-2 (vocabulary = the 256 bytes, so no tokenizer is trained) on the King James Bible from
Debian's `bible-kjv` package (`bible -f "Gen1:1-Rev22:21"`): a contiguous slice for training and the
following slice for validation. The SLT targets every attention and MLP `Conv1D`; the token and position
embeddings are declared `modules_to_save` (trained and stored dense); layer norms stay at their identity
initialisation. Reports validation perplexity per byte, bits per byte and saved bytes. Writes the
`slt_lm` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time

import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from results import write_section  # noqa: E402

from hf_coop.slt import FrozenSLTConfig, apply_frozen_slt  # noqa: E402

TARGETS = r".*\.(c_attn|c_proj|c_fc)"


def bible_bytes() -> torch.Tensor:
    try:
        text = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], capture_output=True, check=True).stdout
    except FileNotFoundError as e:
        raise SystemExit("the `bible` command is missing: apt-get install bible-kjv") from e
    return torch.tensor(list(text), dtype=torch.long)


def gpt2(args) -> GPT2LMHeadModel:
    config = GPT2Config(
        vocab_size=256,
        n_positions=args.context,
        n_embd=args.width,
        n_layer=args.layers,
        n_head=4,
        bos_token_id=10,
        eos_token_id=10,
    )
    torch.manual_seed(args.seed)
    return GPT2LMHeadModel(config)


def batches(data: torch.Tensor, args, generator: torch.Generator):
    starts = torch.randint(0, len(data) - args.context - 1, (args.batch_size,), generator=generator)
    return torch.stack([data[s : s + args.context] for s in starts])


def train(model, param_groups, data: torch.Tensor, args) -> None:
    optimizer = torch.optim.AdamW(param_groups, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=args.steps, pct_start=0.1
    )
    generator = torch.Generator().manual_seed(args.seed)
    model.train()
    for _ in range(args.steps):
        ids = batches(data, args, generator)
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()


@torch.no_grad()
def validation_loss(model, data: torch.Tensor, args) -> float:
    """Mean next-byte cross-entropy (nats) over non-overlapping windows of the validation slice."""
    model.eval()
    windows = data[: len(data) // args.context * args.context].view(-1, args.context)
    losses = [model(input_ids=w, labels=w).loss for w in windows.split(32)]
    return float(torch.stack(losses).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-bytes", type=int, default=1_000_000)
    parser.add_argument("--valid-bytes", type=int, default=50_000)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    corpus = bible_bytes()
    train_data = corpus[: args.train_bytes]
    valid_data = corpus[args.train_bytes : args.train_bytes + args.valid_bytes]

    rows = []
    dense = gpt2(args)
    train(dense, [{"params": list(dense.parameters()), "lr": 3e-3}], train_data, args)
    with tempfile.TemporaryDirectory() as folder:
        file = os.path.join(folder, "model.safetensors")
        state = {k: v.contiguous() for k, v in dense.state_dict().items() if k != "lm_head.weight"}  # tied
        save_file(state, file)
        dense_bytes = os.path.getsize(file)
    rows.append(
        ("weight-trained GPT-2", "-", "-", "-", validation_loss(dense, valid_data, args), dense_bytes)
    )
    print(rows[-1], flush=True)

    for s, f in ((0.5, 0.0), (0.5, 0.5)):
        p, r = round(f * s, 6), round(f * (1 - s), 6)
        config = FrozenSLTConfig(
            sparsity=s,
            pruned_ratio=p,
            locked_ratio=r,
            seed=args.seed,
            target_modules=TARGETS,
            modules_to_save=["wte", "wpe"],
        )
        slt = apply_frozen_slt(gpt2(args), config)
        scores, extras = slt.optimizer_param_groups()
        train(slt, [{**scores, "lr": 0.05}, {**extras, "lr": 3e-3}], train_data, args)
        with tempfile.TemporaryDirectory() as folder:
            size = slt.save_pretrained(folder)["compact_bytes"]
        name = "SLT, dense source" if f == 0 else f"SLT, partially frozen f = {f}"
        rows.append((name, s, p, r, validation_loss(slt, valid_data, args), size))
        print(rows[-1], flush=True)
    elapsed = time.perf_counter() - start

    command = (
        f"OMP_NUM_THREADS=1 python benchmarks/bench_slt_lm.py --train-bytes {args.train_bytes} "
        f"--valid-bytes {args.valid_bytes} --width {args.width} --layers {args.layers} "
        f"--context {args.context} "
        f"--batch-size {args.batch_size} --steps {args.steps} --seed {args.seed}"
    )
    lines = [
        "## SLT in a tiny GPT-2 language model: King James Bible, bytes (`hf_coop.slt`)",
        "",
        f"Command: `{command}` ({elapsed / 60:.1f} min, 1 thread).",
        "",
        f"Reductions for a shared 2-core CPU: byte-level GPT-2 with {args.layers} layers, "
        f"width {args.width}, "
        f"4 heads, context {args.context}; {args.steps} AdamW steps of {args.batch_size} random windows "
        f"from the first {args.train_bytes:,} bytes (one-cycle schedule; lr 3e-3 for weights and embeddings, "
        f"0.05 for scores); validation on the next {args.valid_bytes:,} bytes; one seed. The SLT trains "
        "scores of all attention/MLP weights plus dense embeddings (stored dense in the ticket).",
        "",
        "| model | sparsity s | pruned p | locked r | valid perplexity (per byte) | bits per byte "
        "| saved bytes "
        "| smaller than dense fp32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s, p, r, loss, size in rows:
        lines.append(
            f"| {name} | {s} | {p} | {r} | {math.exp(loss):.3f} | {loss / math.log(2):.3f} | {size:,} | "
            f"{dense_bytes / size:.1f}× |"
        )
    write_section("slt_lm", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
