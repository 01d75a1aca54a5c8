"""The nested table as a trie of device tensors: the static half of the relative-cover recursion.

Original tokens sit at trie *positions*, sorted by their split `τ(u)` (shorter splits first), so the tokens
whose split starts with a given sub-token prefix form one contiguous range. A trie *node* is such a prefix:

    tokens at positions [end_lo, lo) have exactly this split (they end at the node),
    tokens at positions [lo, hi)     have longer splits (they go on past it).

A hypothesis of the recursion is (boundary history, node); advancing it by a sub-token moves it to a child
node, found by one vectorised binary search over the sorted keys `parent * num_sub_tokens + sub`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from hf_coop.vocab.sub_vocabulary import NestedTable


@dataclasses.dataclass
class SplitTrie:
    """Device tensors of one nested table (see the module docstring); node 0 is the root."""

    num_tokens: int  # original tokens (= trie positions)
    num_sub_tokens: int
    order: torch.Tensor  # [P] token at each position
    position: torch.Tensor  # [P] position of each token
    tau_len: torch.Tensor  # [P] split length
    tau_offset: torch.Tensor  # [P] start of the split in tau_flat
    tau_flat: torch.Tensor  # splits, concatenated in position order
    first_sub: torch.Tensor  # [P] first sub-token of each position's split
    node_depth: torch.Tensor  # [N]
    node_end_lo: torch.Tensor  # [N]
    node_lo: torch.Tensor  # [N]
    node_hi: torch.Tensor  # [N]
    child_key: torch.Tensor  # [M] sorted parent * num_sub_tokens + sub
    child_node: torch.Tensor  # [M]

    @classmethod
    def from_nested(cls, nested: NestedTable, device: torch.device | str = "cpu") -> SplitTrie:
        arrays = {
            "order": nested.order,
            "position": nested.position,
            "tau_len": nested.tau_len,
            "tau_offset": nested.tau_offset,
            "tau_flat": nested.tau_flat,
            **build_trie_arrays(nested),
        }
        return cls(
            num_tokens=len(nested.order),
            num_sub_tokens=nested.num_sub_tokens,
            **{k: torch.as_tensor(v, dtype=torch.long).to(device) for k, v in arrays.items()},
        )

    def to(self, device: torch.device | str) -> SplitTrie:
        return dataclasses.replace(
            self,
            **{
                f.name: getattr(self, f.name).to(device)
                for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), torch.Tensor)
            },
        )

    @property
    def device(self) -> torch.device:
        return self.order.device

    def child(self, node: torch.Tensor, sub: torch.Tensor) -> torch.Tensor:
        """The child of each `node` along `sub` (same shapes), -1 where there is none."""
        key = node * self.num_sub_tokens + sub
        index = torch.searchsorted(self.child_key, key).clamp_(max=len(self.child_key) - 1)
        return torch.where(self.child_key[index] == key, self.child_node[index], -1)

    def sub_at(self, positions: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """Sub-token at `depth` of the split of the token at each position (the caller ensures it exists)."""
        return self.tau_flat[self.tau_offset[positions] + depth]


def build_trie_arrays(nested: NestedTable) -> dict[str, np.ndarray]:
    """The trie's own arrays (`TRIE_ARRAYS`) for a nested table (one pass per depth, no loop over tokens)."""
    tau_len = nested.tau_len.numpy().astype(np.int64)
    tau_offset = nested.tau_offset.numpy().astype(np.int64)
    tau_flat = nested.tau_flat.numpy().astype(np.int64)
    n, s = len(tau_len), nested.num_sub_tokens
    depth_max = int(tau_len.max())
    # splits as a padded matrix (-1 beyond each split), to compare neighbours depth by depth
    padded = np.full((n, depth_max), -1, dtype=np.int64)
    for d in range(depth_max):
        has = tau_len > d
        padded[has, d] = tau_flat[tau_offset[has] + d]
    same = padded[1:] == padded[:-1]
    lcp = np.zeros(n, dtype=np.int64)  # common split prefix with the previous position
    lcp[1:] = np.cumprod(same, axis=1).sum(axis=1)

    depth_of, end_lo_of, lo_of, hi_of = [0], [0], [0], [n]
    keys, children = [], []
    previous_starts = np.array([0], dtype=np.int64)  # node starts at depth d - 1 (the root at depth 0)
    previous_ids = np.array([0], dtype=np.int64)
    next_id = 1
    for d in range(1, depth_max + 1):
        starts = np.flatnonzero((lcp < d) & (tau_len >= d))
        boundaries = np.append(np.flatnonzero(lcp < d), n)
        his = boundaries[np.searchsorted(boundaries, starts, side="right")]
        ends_here = np.flatnonzero(tau_len == d)
        node_of_end = np.searchsorted(starts, ends_here, side="right") - 1
        n_end = np.bincount(node_of_end, minlength=len(starts))
        ids = np.arange(next_id, next_id + len(starts))
        next_id += len(starts)
        parents = previous_ids[np.searchsorted(previous_starts, starts, side="right") - 1]
        keys.append(parents * s + padded[starts, d - 1])
        children.append(ids)
        depth_of.append(np.full(len(starts), d))
        end_lo_of.append(starts)
        lo_of.append(starts + n_end)
        hi_of.append(his)
        previous_starts, previous_ids = starts, ids
    keys, children = np.concatenate(keys), np.concatenate(children)
    sort = np.argsort(keys, kind="stable")
    return {
        "first_sub": tau_flat[tau_offset],
        "node_depth": np.concatenate([np.atleast_1d(x) for x in depth_of]).astype(np.int64),
        "node_end_lo": np.concatenate([np.atleast_1d(x) for x in end_lo_of]).astype(np.int64),
        "node_lo": np.concatenate([np.atleast_1d(x) for x in lo_of]).astype(np.int64),
        "node_hi": np.concatenate([np.atleast_1d(x) for x in hi_of]).astype(np.int64),
        "child_key": keys[sort],
        "child_node": children[sort],
    }
