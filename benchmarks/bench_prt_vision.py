"""Portable Reward Tuning on Fashion-MNIST: a reward trained through an old base steers a new base.

Two image classifiers of different architectures play the foundation models: the *old* base (a small ViT)
is pretrained on one half of the Fashion-MNIST training set, the *new* base (a small ResNet) on the other.
The downstream tasks are shifted versions of the data (inverted images, `1 - x`, and images rotated by
90°). We report accuracy on the
shifted test set for: new alone, new + PRT reward (trained through the old base with `PRTTrainer`), EFT
(`log π_new + log π_old-ft − log π_old`, needs the old base fine-tuned directly) and the new base fine-tuned
directly (oracle); and inference time and parameter memory per batch for PRT (2 forwards) vs EFT (3).

Needs `apt-get install dataset-fashion-mnist`. Run (about 10 minutes on one CPU thread):
    OMP_NUM_THREADS=1 python benchmarks/bench_prt_vision.py
`--fast` runs a tiny smoke version and writes nothing.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import (
    ResNetConfig,
    ResNetForImageClassification,
    Trainer,
    TrainingArguments,
    ViTConfig,
    ViTForImageClassification,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_section  # noqa: E402

from hf_coop.prt import PRTConfig, PRTModelForClassification, PRTTrainer, PRTTrainingArguments  # noqa: E402
from hf_coop.prt.core import eft_log_probs  # noqa: E402

DATA = Path("/usr/share/datasets/fashion-mnist")
LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
ID2LABEL = dict(enumerate(LABELS))
# downstream tasks: shifted versions of the data the bases never saw
TASKS = {
    "inverted (1 - x)": lambda x: 1.0 - x,
    "rotated 90°": lambda x: torch.rot90(x, 1, dims=(-2, -1)),
}


def read_idx(name: str) -> np.ndarray:
    with gzip.open(DATA / name) as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_split(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(read_idx(f"{kind}-images-idx3-ubyte.gz").copy()).float().div(255).unsqueeze(1)
    labels = torch.from_numpy(read_idx(f"{kind}-labels-idx1-ubyte.gz").astype(np.int64))
    return images, labels


class ImageDataset(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.images[i], "labels": self.labels[i]}


def old_base_model(seed: int) -> ViTForImageClassification:
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=28,
        patch_size=7,
        num_channels=1,
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=128,
        id2label=ID2LABEL,
        label2id={v: k for k, v in ID2LABEL.items()},
    )
    return ViTForImageClassification(config)


def new_base_model(seed: int) -> ResNetForImageClassification:
    torch.manual_seed(seed)
    config = ResNetConfig(
        num_channels=1,
        embedding_size=32,
        hidden_sizes=[32, 64, 128],
        depths=[1, 1, 1],
        layer_type="basic",
        downsample_in_first_stage=False,
        id2label=ID2LABEL,
        label2id={v: k for k, v in ID2LABEL.items()},
    )
    return ResNetForImageClassification(config)


def training_args(output_dir: str, epochs: float, lr: float, cls=TrainingArguments, **extra):
    return cls(
        output_dir=output_dir,
        num_train_epochs=epochs,
        per_device_train_batch_size=128,
        learning_rate=lr,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        weight_decay=0.01,
        report_to=[],
        save_strategy="no",
        logging_steps=50,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
        **extra,
    )


def fine_tune(model, dataset, epochs: float, lr: float, workdir: str):
    Trainer(model=model, args=training_args(workdir, epochs, lr), train_dataset=dataset).train()
    return model.eval()


@torch.no_grad()
def predict_log_probs(forward, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    return torch.cat([forward(images[i : i + batch]) for i in range(0, len(images), batch)])


def logits_of(model):
    return lambda x: model(pixel_values=x).logits


def accuracy(log_probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float((log_probs.argmax(-1) == labels).float().mean())


def parameter_mb(*models) -> float:
    return sum(p.numel() * p.element_size() for m in models for p in m.parameters()) / 2**20


def interleaved_ms_per_batch(forwards: dict, images: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median wall time per batch for each forward; rounds alternate between methods so that load from
    other processes on a shared machine hits every method alike."""
    times: dict[str, list[float]] = {name: [] for name in forwards}
    with torch.no_grad():
        for forward in forwards.values():
            forward(images)  # warm-up
        for _ in range(repeats):
            for name, forward in forwards.items():
                start = time.perf_counter()
                forward(images)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1000 for name, values in times.items()}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fast", action="store_true", help="tiny smoke run; writes nothing")
    parser.add_argument("--workdir", default="/tmp/bench_prt_vision")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.time()

    train_x, train_y = load_split("train")
    test_x, test_y = load_split("t10k")
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(train_y), generator=generator)
    half_a, half_b = order[: len(order) // 2], order[len(order) // 2 :]
    task_idx = torch.randperm(len(train_y), generator=generator)[:6000]
    pretrain_epochs, task_epochs = 3, 8
    if args.fast:
        half_a, half_b, task_idx = half_a[:512], half_b[:512], task_idx[:256]
        test_x, test_y = test_x[:500], test_y[:500]
        pretrain_epochs, task_epochs = 1, 1

    work = args.workdir
    old_base = fine_tune(
        old_base_model(0), ImageDataset(train_x[half_a], train_y[half_a]), pretrain_epochs, 2e-3, work
    )
    new_base = fine_tune(
        new_base_model(1), ImageDataset(train_x[half_b], train_y[half_b]), pretrain_epochs, 2e-3, work
    )
    clean_old = accuracy(predict_log_probs(logits_of(old_base), test_x), test_y)
    clean_new = accuracy(predict_log_probs(logits_of(new_base), test_x), test_y)

    accuracies: dict[str, dict[str, float]] = {}
    for task, shift in TASKS.items():
        task_data = ImageDataset(shift(train_x[task_idx]), train_y[task_idx])
        trainer = PRTTrainer(
            old_base,
            args=training_args(work, task_epochs, 2e-3, cls=PRTTrainingArguments),
            prt_config=PRTConfig(task_type="classification", base_model_name_or_path="vit-old"),
            train_dataset=task_data,
        )
        trainer.train()
        reward = trainer.model.eval()
        old_finetuned = fine_tune(
            copy.deepcopy(old_base).requires_grad_(True), task_data, task_epochs, 2e-3, work
        )
        oracle = fine_tune(copy.deepcopy(new_base).requires_grad_(True), task_data, task_epochs, 2e-3, work)
        prt_model = PRTModelForClassification(new_base, reward).eval()
        old_prt_model = PRTModelForClassification(old_base, reward).eval()

        def prt_forward(x, model=prt_model):
            return model(pixel_values=x).logits

        def eft_forward(x, finetuned=old_finetuned):
            return eft_log_probs(
                new_base(pixel_values=x).logits,
                finetuned(pixel_values=x).logits,
                old_base(pixel_values=x).logits,
            )

        rows = {
            "old base alone": logits_of(old_base),
            "new base alone": logits_of(new_base),
            "old base + PRT reward (training view)": lambda x, model=old_prt_model: (
                model(pixel_values=x).logits
            ),
            "**new base + PRT reward**": prt_forward,
            "new base + EFT (old, old fine-tuned)": eft_forward,
            "old base fine-tuned directly": logits_of(old_finetuned),
            "new base fine-tuned directly (oracle)": logits_of(oracle),
        }
        shifted_test = shift(test_x)
        for name, forward in rows.items():
            accuracies.setdefault(name, {})[task] = accuracy(predict_log_probs(forward, shifted_test), test_y)

    batch = shifted_test[:256]
    repeats = 3 if args.fast else 50
    held = {
        "new base alone": (logits_of(new_base), (new_base,)),
        "PRT (new + reward)": (prt_forward, (new_base, reward)),
        "EFT (new + old fine-tuned + old)": (eft_forward, (new_base, old_finetuned, old_base)),
    }
    ms = interleaved_ms_per_batch({name: f for name, (f, _) in held.items()}, batch, repeats)
    timing = [(name, ms[name], parameter_mb(*models)) for name, (_, models) in held.items()]
    prt_ms, eft_ms = timing[1][1], timing[2][1]
    minutes = (time.time() - started) / 60

    lines = [
        "## PRT on Fashion-MNIST (vision)",
        "",
        "Command: `OMP_NUM_THREADS=1 python benchmarks/bench_prt_vision.py` "
        f"({minutes:.1f} min on 1 CPU thread, shared machine).",
        "",
        f"Old base: ViT (3 layers, width 64, patch 7), pretrained {pretrain_epochs} epochs on a random half "
        f"({len(half_a)} images) of the Fashion-MNIST training set; clean test accuracy {clean_old:.3f}. "
        f"New base: ResNet (3 basic stages, 32-128 channels), pretrained the same way on the other half; "
        f"clean test accuracy {clean_new:.3f}. Tasks: {', '.join(TASKS)}; {len(task_idx)} shifted training "
        f"images, {task_epochs} epochs, lr 2e-3 (cosine) for every fine-tuning: the PRT reward (a copy of the "
        "old base trained through it with `PRTTrainer`, λ = 1, α = 0), the old base fine-tuned directly (used "
        f"by EFT) and the new base fine-tuned directly (oracle). Accuracy on the {len(test_y)} shifted test "
        "images:",
        "",
        "| model | " + " | ".join(TASKS) + " |",
        "|---|" + "---|" * len(TASKS),
        *[
            f"| {name} | " + " | ".join(f"{acc[t]:.3f}" for t in TASKS) + " |"
            for name, acc in accuracies.items()
        ],
        "",
        f"Inference on one batch of 256 images (median of {repeats} interleaved rounds, 1 thread) and parameter "
        "memory of the models held:",
        "",
        "| method | ms / batch | parameters (MiB) |",
        "|---|---|---|",
        *[f"| {name} | {ms:.1f} | {mb:.2f} |" for name, ms, mb in timing],
        "",
        f"PRT is {eft_ms / prt_ms:.2f}× faster than EFT per batch and holds "
        f"{timing[2][2] - timing[1][2]:.2f} MiB fewer parameters (one old-architecture model instead of two).",
    ]
    markdown = "\n".join(lines)
    print(markdown)
    if not args.fast:
        write_section("prt_vision", markdown)
    return markdown


if __name__ == "__main__":
    main()
