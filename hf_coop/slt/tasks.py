"""Small image-classification tasks shared by the `hf-coop slt train` command, the example and benchmarks.

A Conv6-style network (Ramanujan et al. 2020; three blocks of two 3×3 convolutions, then two hidden fully
connected layers), with non-affine batch norm so that a supermask network has nothing dense to train,
and offline data: scikit-learn's 8×8 digits and Fashion-MNIST from Debian's `dataset-fashion-mnist`
package, padded to 32×32.
"""

from __future__ import annotations

import gzip
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


def fashion_mnist_dir() -> str:
    """Where the Fashion-MNIST idx files are: `$HF_COOP_FASHION_MNIST`, else Debian's `dataset-fashion-mnist`."""
    return os.environ.get("HF_COOP_FASHION_MNIST", "/usr/share/datasets/fashion-mnist")


class ConvNet(nn.Module):
    """Conv6-style classifier: [w, w, pool, 2w, 2w, pool, 4w, 4w, pool] convolutions, then fc 4w, 4w, classes.

    Batch norms have no affine parameters (the SLT papers' choice) so every trainable weight is a target.
    """

    def __init__(
        self, in_channels: int = 1, image_size: int = 32, width: int = 16, num_classes: int = 10
    ) -> None:
        super().__init__()
        if image_size % 8:
            raise ConfigError(f"image_size must be a multiple of 8 (three 2×2 poolings), got {image_size}")
        layers: list[nn.Module] = []
        channels = in_channels
        for out_channels in (width, 2 * width, 4 * width):
            for _ in range(2):
                layers += [
                    nn.Conv2d(channels, out_channels, 3, padding=1, bias=False),
                    nn.BatchNorm2d(out_channels, affine=False),
                    nn.ReLU(),
                ]
                channels = out_channels
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        flat = channels * (image_size // 8) ** 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, 4 * width, bias=False),
            nn.BatchNorm1d(4 * width, affine=False),
            nn.ReLU(),
            nn.Linear(4 * width, 4 * width, bias=False),
            nn.BatchNorm1d(4 * width, affine=False),
            nn.ReLU(),
            nn.Linear(4 * width, num_classes, bias=False),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images))


def digits_data(test_fraction: float = 0.25, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """scikit-learn's 1,797 8×8 digits as (train_x, train_y, test_x, test_y), pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(labels) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return images[train], labels[train], images[test], labels[test]


def _read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist_data(
    train_limit: int | None = None, test_limit: int | None = None
) -> tuple[torch.Tensor, ...]:
    """Fashion-MNIST padded to 32×32, normalised, as (train_x, train_y, test_x, test_y).

    `*_limit` keeps the first N images of each split (class-balanced enough for quick runs)."""
    folder = fashion_mnist_dir()
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"{folder} not found: install Fashion-MNIST with `apt-get install dataset-fashion-mnist`, or set "
            "HF_COOP_FASHION_MNIST to a folder holding its four idx .gz files"
        )
    splits = []
    for prefix, limit in (("train", train_limit), ("t10k", test_limit)):
        images = _read_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"))[:limit]
        labels = _read_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"))[:limit]
        x = F.pad(torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 255.0, (2, 2, 2, 2))
        splits += [(x - 0.2860) / 0.3530, torch.tensor(labels, dtype=torch.long)]
    return tuple(splits)


def train_classifier(
    model: nn.Module,
    param_groups: list[dict] | list[nn.Parameter],
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    epochs: int,
    lr: float,
    batch_size: int = 128,
    seed: int = 0,
    on_step=None,
) -> None:
    """SGD with momentum 0.9 and a cosine learning rate (edge-popup's recipe), cross-entropy loss."""
    optimizer = torch.optim.SGD(param_groups, lr=lr, momentum=0.9)
    steps = epochs * math.ceil(len(train_y) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(train_y), generator=generator).split(batch_size):
            loss = F.cross_entropy(model(train_x[batch]), train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            if on_step is not None:
                on_step()
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    model.eval()
    correct = sum(
        int((model(x[i : i + batch_size]).argmax(-1) == y[i : i + batch_size]).sum())
        for i in range(0, len(y), batch_size)
    )
    return correct / len(y)
