"""Shared-prefix keys and values for every boundary history of every row, in one buffer per layer.

Each row of the batch owns a token tree: its prompt, then every original token that some boundary history
appended, each stored once in a *slot* of that row, however many histories share it. A history is a
*handle*: its row, the slot of its last token, that token's position, and its ancestor set (the slots on its
path). A forward appends the new tokens of several histories to their rows at once; each query attends to
its own ancestors only, through a 4D additive float mask (0 / finfo.min, used by transformers exactly as
given), with explicit position ids (each token's depth). Sliding-window layers (Gemma-3) get their own mask
with the window written into it, so every layer keeps every slot and no branch is trimmed.

Slots that no live history needs (pruned branches, padding queries) are reclaimed by `compact`, which
gathers each row's live slots to the front; memory grows with the unique tokens of the live hypothesis
trees, not with hypotheses x length.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache

FULL, SLIDING = "full_attention", "sliding_attention"


class UncompiledCache(Cache):
    """A cache `generate` must neither compile nor crop: the engine's state is not a fixed-shape tensor cache."""

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_croppable(self) -> bool:
        return False


class _StoreView(UncompiledCache):
    """What a model sees during one forward: rows [r0, r1) of the store; its new keys and values are written
    in place at slots [start, start + q) and attention reads slots [0, start + q).

    `subset(rows, layer_offset)` is the view of some of those rows (indices relative to r0) whose layers are
    stored `layer_offset` layers further on: how a model made of several networks (`engine/paired.py`) keeps
    each network's keys and values in the same store."""

    def __init__(self, store: TreeKV, r0: int, r1: int, start: int, rows=None, layer_offset: int = 0):
        super().__init__(layers=[])
        self.store, self.r0, self.r1, self.start = store, r0, r1, start
        self.rows = slice(r0, r1) if rows is None else rows
        self.layer_offset = layer_offset

    def subset(self, rows: torch.Tensor, layer_offset: int = 0) -> _StoreView:
        index = slice(self.r0, self.r1) if len(rows) == self.r1 - self.r0 else rows + self.r0
        return _StoreView(self.store, self.r0, self.r1, self.start, index, layer_offset)

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return self.store.write(
            layer_idx + self.layer_offset, self.rows, self.start, key_states, value_states
        )

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.start


class TreeKV:
    """Token trees of `n_rows` rows for one model (see the module docstring)."""

    def __init__(self, n_rows: int, device: torch.device, sliding_window: int | None = None):
        self.n_rows = n_rows
        self.device = device
        self.sliding_window = sliding_window
        self.length = 0  # slots in use in every row (shorter rows pad)
        self.capacity = 0
        self.peak_bytes = 0  # most bytes the key/value buffers held at once
        self.keys: dict[int, torch.Tensor] = {}  # layer -> [rows, heads, capacity, head_dim]
        self.values: dict[int, torch.Tensor] = {}
        self.slot_pos = torch.full((n_rows, 0), -1, dtype=torch.long, device=device)  # -1: unused slot
        self.slot_token = torch.full((n_rows, 0), -1, dtype=torch.long, device=device)
        self.h_row = torch.empty(0, dtype=torch.long, device=device)
        self.h_slot = torch.empty(0, dtype=torch.long, device=device)
        self.h_pos = torch.empty(0, dtype=torch.long, device=device)
        self.anc = torch.zeros((0, 0), dtype=torch.bool, device=device)  # [handles, capacity]

    @property
    def num_handles(self) -> int:
        return len(self.h_row)

    def cached_positions(self) -> int:
        """Slots holding a token (per row, summed over rows): what the KV memory is proportional to."""
        return int((self.slot_pos[:, : self.length] >= 0).sum())

    def path(self, handle: int) -> list[int]:
        """The token ids on a handle's path, prompt first (for tests and debugging)."""
        row = int(self.h_row[handle])
        slots = torch.nonzero(self.anc[handle, : self.length], as_tuple=True)[0]
        order = torch.argsort(self.slot_pos[row, slots])
        return self.slot_token[row, slots[order]].tolist()

    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys.values(), *self.values.values()))

    # -- buffers ---------------------------------------------------------------------------------------
    def reserve(self, extra: int) -> None:
        """Make room for `extra` more slots in every row (capacity grows by a tenth, and 64 slots)."""
        need = self.length + extra
        if need <= self.capacity:
            return
        capacity = max(need, self.capacity + self.capacity // 10 + 64)
        grow = capacity - self.capacity
        for store in (self.keys, self.values):
            for layer, buffer in store.items():
                pad = buffer.new_zeros(*buffer.shape[:2], grow, buffer.shape[3])
                store[layer] = torch.cat([buffer, pad], dim=2)
        self.slot_pos = torch.cat([self.slot_pos, self.slot_pos.new_full((self.n_rows, grow), -1)], dim=1)
        self.slot_token = torch.cat(
            [self.slot_token, self.slot_token.new_full((self.n_rows, grow), -1)], dim=1
        )
        self.anc = torch.cat([self.anc, self.anc.new_zeros(len(self.anc), grow)], dim=1)
        self.capacity = capacity
        self.peak_bytes = max(self.peak_bytes, self.memory_bytes())

    def write(self, layer: int, rows, start: int, keys: torch.Tensor, values: torch.Tensor):
        """Store a forward's new keys/values for `rows` (a slice, or row indices) at slots [start, start + q);
        return every slot up to them, for attention."""
        if layer not in self.keys:
            shape = (self.n_rows, keys.shape[1], self.capacity, keys.shape[3])
            self.keys[layer] = keys.new_zeros(shape)
            self.values[layer] = values.new_zeros(shape)
            self.peak_bytes = max(self.peak_bytes, self.memory_bytes())
        end = start + keys.shape[2]
        self.keys[layer][rows, :, start:end] = keys
        self.values[layer][rows, :, start:end] = values
        return self.keys[layer][rows, :, :end], self.values[layer][rows, :, :end]

    def view(self, r0: int, r1: int, start: int) -> _StoreView:
        return _StoreView(self, r0, r1, start)

    # -- masks -------------------------------------------------------------------------------------------
    def attention_masks(
        self, allowed: torch.Tensor, query_pos: torch.Tensor, key_pos: torch.Tensor, dtype: torch.dtype
    ) -> dict[str, torch.Tensor]:
        """Additive float masks [b, 1, q, k] for each attention type: `allowed` [b, q, k] (ancestors and the
        token itself) and, for sliding layers, the window on positions."""
        low = torch.finfo(dtype).min
        masks = {
            FULL: torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, low)
        }
        if self.sliding_window is not None:
            near = (query_pos[:, :, None] - key_pos[:, None, :]) < self.sliding_window
            masks[SLIDING] = torch.zeros_like(masks[FULL]).masked_fill_(~(allowed & near), low)
        return {kind: mask[:, None] for kind, mask in masks.items()}

    # -- handles -----------------------------------------------------------------------------------------
    def _add_handles(self, rows: torch.Tensor, slots: torch.Tensor, pos: torch.Tensor, anc: torch.Tensor):
        first = self.num_handles
        self.h_row = torch.cat([self.h_row, rows])
        self.h_slot = torch.cat([self.h_slot, slots])
        self.h_pos = torch.cat([self.h_pos, pos])
        self.anc = torch.cat([self.anc, anc])
        return torch.arange(first, self.num_handles, device=self.device)

    def prompt_layout(self, lengths: torch.Tensor, width: int):
        """Slots [0, width) of every row hold its left-padded prompt: (allowed [b, q, k], positions [b, q])."""
        slots = torch.arange(width, device=self.device)
        valid = slots[None, :] >= (width - lengths)[:, None]
        positions = (slots[None, :] - (width - lengths)[:, None]).clamp(min=0)
        causal = slots[None, :, None] >= slots[None, None, :]
        allowed = causal & valid[:, None, :]
        allowed |= torch.eye(width, dtype=torch.bool, device=self.device)[
            None
        ]  # padding queries see themselves
        return allowed, positions, valid

    def add_prompts(
        self, prompt_ids: torch.Tensor, lengths: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor
    ):
        """Record prompts written at slots [0, width); one handle per row (its last prompt token)."""
        width = prompt_ids.shape[1]
        self.slot_pos[:, :width] = torch.where(valid, positions, -1)
        self.slot_token[:, :width] = torch.where(valid, prompt_ids, -1)
        self.length = width
        anc = torch.zeros((self.n_rows, self.capacity), dtype=torch.bool, device=self.device)
        anc[:, :width] = valid
        rows = torch.arange(self.n_rows, device=self.device)
        return self._add_handles(rows, torch.full_like(rows, width - 1), lengths - 1, anc)

    def query_layout(self, parents: torch.Tensor, start: int, offset: int):
        """Masks' inputs for queries laid out as a [rows, q] grid of parent handles (-1: padding), written at
        slots [start + offset, start + offset + q) (slots [start, start + offset) hold other queries of the
        same extension): (allowed [b, q, start + offset + q], positions [b, q])."""
        real = parents >= 0
        safe = parents.clamp(min=0)
        rows, width = parents.shape
        positions = torch.where(real, self.h_pos[safe] + 1, 0)
        ancestors = self.anc[safe][..., :start] & real[..., None]
        others = torch.zeros((rows, width, offset), dtype=torch.bool, device=self.device)
        own = torch.eye(width, dtype=torch.bool, device=self.device).expand(rows, width, width)
        return torch.cat([ancestors, others, own], dim=-1), positions

    def add_children(
        self, parents: torch.Tensor, rows: torch.Tensor, slots: torch.Tensor, tokens: torch.Tensor
    ):
        """Handles for new `tokens` at `slots`, children of `parents` (after the forward wrote them)."""
        self.slot_pos[rows, slots] = self.h_pos[parents] + 1
        self.slot_token[rows, slots] = tokens
        anc = self.anc[parents].clone()
        anc[torch.arange(len(parents), device=self.device), slots] = True
        return self._add_handles(rows, slots, self.h_pos[parents] + 1, anc)

    # -- housekeeping ------------------------------------------------------------------------------------
    def compact(self, live: torch.Tensor) -> torch.Tensor:
        """Keep the handles `live` (and the slots their paths use); returns old handle -> new handle (-1: gone)."""
        live = torch.unique(live)
        rows = self.h_row[live]
        anc = self.anc[live, : self.length]
        need = torch.zeros((self.n_rows, self.length), dtype=torch.int32, device=self.device)
        need.index_put_((rows,), anc.int(), accumulate=True)
        need = need > 0
        kept = need.sum(1)
        width = int(kept.max()) if self.n_rows else 0
        slots = torch.arange(self.length, device=self.device)
        idx = torch.argsort(torch.where(need, slots, slots + self.length), dim=1, stable=True)[:, :width]
        valid = torch.arange(width, device=self.device)[None, :] < kept[:, None]
        new_slot = torch.full((self.n_rows, self.length), -1, dtype=torch.long, device=self.device)
        new_slot.scatter_(1, idx, torch.where(valid, torch.arange(width, device=self.device), -1))
        capacity = width + width // 10 + 64
        for store in (self.keys, self.values):
            for layer, buffer in store.items():
                gathered = buffer.gather(
                    2, idx[:, None, :, None].expand(*buffer.shape[:2], width, buffer.shape[3])
                )
                fresh = buffer.new_zeros(*buffer.shape[:2], capacity, buffer.shape[3])
                fresh[:, :, :width] = gathered
                store[layer] = fresh
        slot_pos = torch.full((self.n_rows, capacity), -1, dtype=torch.long, device=self.device)
        slot_pos[:, :width] = torch.where(valid, self.slot_pos.gather(1, idx), -1)
        slot_token = torch.full_like(slot_pos, -1)
        slot_token[:, :width] = torch.where(valid, self.slot_token.gather(1, idx), -1)
        new_anc = torch.zeros((len(live), capacity), dtype=torch.bool, device=self.device)
        new_anc[:, :width] = anc.gather(1, idx[rows]) & valid[rows]
        remap = torch.full((self.num_handles,), -1, dtype=torch.long, device=self.device)
        remap[live] = torch.arange(len(live), device=self.device)
        self.h_slot = new_slot[rows, self.h_slot[live]]
        self.h_row, self.h_pos = rows, self.h_pos[live]
        self.anc, self.slot_pos, self.slot_token = new_anc, slot_pos, slot_token
        self.length, self.capacity = width, capacity
        self.peak_bytes = max(self.peak_bytes, self.memory_bytes())
        return remap

    def select_rows(self, source: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        """Rows become copies of rows `source` (beam reordering, repeats); the `live` handles are copied into
        every row that takes their row. Returns the sorted keys `old_handle * new_rows + new_row` of the new
        handles (new handle = index), for `handle_in_row`."""
        live = torch.unique(live)
        old, new_row = torch.nonzero(self.h_row[live][:, None] == source[None, :], as_tuple=True)
        old = live[old]
        for store in (self.keys, self.values):
            for layer, buffer in store.items():
                store[layer] = buffer.index_select(0, source)
        self.slot_pos = self.slot_pos.index_select(0, source)
        self.slot_token = self.slot_token.index_select(0, source)
        self.n_rows = len(source)
        self.h_row, self.h_slot, self.h_pos = new_row, self.h_slot[old], self.h_pos[old]
        self.anc = self.anc[old]
        return old * self.n_rows + new_row


def handle_in_row(keys: torch.Tensor, old: torch.Tensor, new_row: torch.Tensor, n_rows: int) -> torch.Tensor:
    """The copy of handle `old` in `new_row` after `TreeKV.select_rows` returned `keys`."""
    return torch.searchsorted(keys, old * n_rows + new_row)
