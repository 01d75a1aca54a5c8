"""A frozen-SLT graph network vs its weight-trained counterpart (arXiv 2402.14029, GNN experiment).

    OMP_NUM_THREADS=1 python benchmarks/bench_slt_gnn.py [--nodes 4000 --epochs 200]

No Cora-style citation graph installs offline here, so the node-classification task is built from
Fashion-MNIST: each node is an image (its 784 pixels are the node features), edges join each node to its
k nearest neighbours by cosine similarity of the pixels (symmetrised), and a few labelled nodes train a
deep GCN (Kipf & Welling 2017, written in plain torch: Â·X·W per layer with the symmetric normalised
adjacency, non-affine batch norm, ReLU). Writes the `slt_gnn` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from results import write_section  # noqa: E402

from hf_coop.slt import FrozenSLTConfig, apply_frozen_slt  # noqa: E402
from hf_coop.slt.tasks import fashion_mnist_data  # noqa: E402


class GCN(nn.Module):
    """A deep GCN over a fixed normalised adjacency (kept as a non-persistent buffer)."""

    def __init__(
        self, adjacency: torch.Tensor, in_features: int, hidden: int, layers: int, classes: int
    ) -> None:
        super().__init__()
        self.register_buffer("adjacency", adjacency, persistent=False)
        sizes = [in_features] + [hidden] * (layers - 1)
        self.hidden = nn.ModuleList(
            nn.Linear(a, b, bias=False) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.norms = nn.ModuleList(nn.BatchNorm1d(hidden, affine=False) for _ in self.hidden)
        self.output = nn.Linear(hidden, classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for linear, norm in zip(self.hidden, self.norms, strict=True):
            x = F.relu(norm(torch.sparse.mm(self.adjacency, linear(x))))
        return torch.sparse.mm(self.adjacency, self.output(x))


def knn_graph(features: torch.Tensor, k: int) -> torch.Tensor:
    """Symmetric normalised adjacency D^-1/2 (A + I) D^-1/2 of the symmetrised cosine kNN graph."""
    unit = F.normalize(features, dim=1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(-1.0)
    neighbours = similarity.topk(k, dim=1).indices
    n = len(features)
    rows = torch.arange(n).repeat_interleave(k)
    dense = torch.zeros(n, n)
    dense[rows, neighbours.flatten()] = 1.0
    dense = ((dense + dense.T) > 0).float() + torch.eye(n)
    inv_sqrt_degree = dense.sum(1).rsqrt()
    return (inv_sqrt_degree[:, None] * dense * inv_sqrt_degree[None, :]).to_sparse()


def train(
    model: nn.Module, params, x, y, train_idx, val_idx, epochs: int, lr: float, on_step=None
) -> nn.Module:
    """Full-batch Adam; keeps the state with the best validation accuracy."""
    optimizer = torch.optim.Adam(params, lr=lr)
    best, best_state = -1.0, None
    for _ in range(epochs):
        model.train()
        loss = F.cross_entropy(model(x)[train_idx], y[train_idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step()
        val = evaluate(model, x, y, val_idx)
        if val > best:
            best, best_state = val, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model


@torch.no_grad()
def evaluate(model: nn.Module, x, y, idx) -> float:
    model.eval()
    return float((model(x)[idx].argmax(-1) == y[idx]).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=4000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--train-per-class", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()

    images, labels, _, _ = fashion_mnist_data(args.nodes, 0)
    x = images[:, :, 2:30, 2:30].flatten(1)  # drop the 32×32 padding: 784 features per node
    adjacency = knn_graph(x, args.k)
    order = torch.randperm(args.nodes, generator=torch.Generator().manual_seed(args.seed))
    train_idx = torch.cat([order[labels[order] == c][: args.train_per_class] for c in range(10)])
    rest = order[~torch.isin(order, train_idx)]
    val_idx, test_idx = rest[:500], rest[500:]

    def build() -> GCN:
        return GCN(adjacency, x.shape[1], args.hidden, args.layers, 10)

    rows = []
    torch.manual_seed(args.seed)
    dense = build()
    train(dense, dense.parameters(), x, labels, train_idx, val_idx, args.epochs, 0.01)
    with tempfile.TemporaryDirectory() as folder:
        file = os.path.join(folder, "model.safetensors")
        save_file({k: v.contiguous() for k, v in dense.state_dict().items()}, file)
        dense_bytes = os.path.getsize(file)
    rows.append(("weight-trained GCN", "-", "-", "-", evaluate(dense, x, labels, test_idx), dense_bytes))
    print(rows[-1], flush=True)

    for s, f in ((0.5, 0.0), (0.5, 0.5), (0.7, 0.0), (0.7, 0.7)):
        p, r = round(f * s, 6), round(f * (1 - s), 6)
        config = FrozenSLTConfig(sparsity=s, pruned_ratio=p, locked_ratio=r, seed=args.seed)
        slt = apply_frozen_slt(build(), config)
        train(slt, slt.optimizer_param_groups(), x, labels, train_idx, val_idx, args.epochs, 0.01)
        with tempfile.TemporaryDirectory() as folder:
            size = slt.save_pretrained(folder)["compact_bytes"]
        name = "SLT, dense source" if f == 0 else f"SLT, partially frozen f = {f}"
        rows.append((name, s, p, r, evaluate(slt, x, labels, test_idx), size))
        print(rows[-1], flush=True)
    elapsed = time.perf_counter() - start

    command = (
        f"OMP_NUM_THREADS=1 python benchmarks/bench_slt_gnn.py --nodes {args.nodes} --k {args.k} "
        f"--train-per-class {args.train_per_class} --hidden {args.hidden} --layers {args.layers} "
        f"--epochs {args.epochs} --seed {args.seed}"
    )
    lines = [
        "## SLT in a partially frozen GCN: kNN graph over Fashion-MNIST (`hf_coop.slt`)",
        "",
        f"Command: `{command}` ({elapsed / 60:.1f} min, 1 thread).",
        "",
        f"Substitute for Cora/OGB (none installs offline): {args.nodes} Fashion-MNIST training images as "
        f"nodes, 784 pixel features, symmetrised {args.k}-NN cosine graph, {args.train_per_class} labelled "
        "nodes per class for training, 500 for validation (model selection), the remaining "
        f"{args.nodes - 10 * args.train_per_class - 500} for test. {args.layers}-layer GCN, hidden "
        f"{args.hidden}, non-affine batch norm, full-batch Adam (lr 0.01) for {args.epochs} epochs, "
        "one seed. "
        "Saved bytes: the fp32 safetensors file for the weight-trained GCN, the whole compact folder for "
        "tickets.",
        "",
        "| model | sparsity s | pruned p | locked r | test accuracy | saved bytes | smaller than dense fp32 "
        "|",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s, p, r, acc, size in rows:
        lines.append(f"| {name} | {s} | {p} | {r} | {acc:.4f} | {size:,} | {dense_bytes / size:.1f}× |")
    write_section("slt_gnn", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
