"""The seam between the engine and a model: "next-token log-probs for these boundary histories".

The scheduler speaks to a runner in handles (opaque integers naming a history's last token in the runner's
KV store) and never touches keys, values or masks. A backend provides:

- `start(prompt_ids, lengths) -> (handles [B], logprobs [B, V])`: prefill one prompt per row (left-padded
  `[B, L]` ids), one handle per row;
- `extend(parents, tokens) -> (handles [N], logprobs [N, V])`: append one token to each parent history
  (several per row, any rows) and score the next token; histories sharing a prefix share its keys/values;
- `compact(live) -> remap`: forget every handle not in `live` (old -> new handle, -1 for gone);
- `select_rows(source, live) -> keys` and `handle_in_row`: rows become copies of `source` rows (beam search);
- `forward_calls`: model calls made so far.

Log-probs are over the tokenizer's ids (`vocab_size`; a larger output head is masked), on the model's device,
in the bookkeeping dtype. A serving engine with prefix caching (vLLM, SGLang) can stand behind the same five
calls: its request ids are the handles, prefix caching gives the sharing, and `extend` is one decode step
whose requests fork from `parents`. `TransformersRunner` is the in-process backend.
"""

from __future__ import annotations

import contextlib
import inspect
import os

import torch
from transformers import PreTrainedModel

from hf_coop.errors import ConfigError, CoopError, InputError, log_normalizer
from hf_coop.scoring import max_positions
from hf_coop.vocab.engine.kv import FULL, SLIDING, TreeKV
from hf_coop.vocab.engine.settings import EngineSettings

# What one forward call costs beyond its tokens, counted in tokens: on a CPU little (the model's arithmetic
# dominates), on an accelerator much (launch latency dominates until the batch is large).
FORWARD_COST = {"cpu": 48, "default": 64}


_FORCE_GQA = "TRANSFORMERS_SDPA_FORCE_GQA"


@contextlib.contextmanager
def _grouped_query_sdpa(device: torch.device):
    """On a CPU, let sdpa attend with grouped key/value heads under a mask (`enable_gqa`) instead of first
    copying every cached key and value once per query head (transformers' `repeat_kv`): 7x less attention
    time on SmolLM2's tree forwards, identical results. Accelerators keep transformers' own choice."""
    if device.type != "cpu":
        yield
        return
    before = os.environ.get(_FORCE_GQA)
    os.environ[_FORCE_GQA] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_FORCE_GQA, None)
        else:
            os.environ[_FORCE_GQA] = before


class EngineOutOfMemoryError(CoopError, RuntimeError):
    """A forward ran out of memory; the message names the settings that bound a forward's size."""


def finite_log_softmax(logits: torch.Tensor, vocab_size: int, dtype: torch.dtype, who: str) -> torch.Tensor:
    """log-softmax over the first `vocab_size` ids in `dtype`; refuses NaN/inf logits (fp16 overflow, broken
    weights) instead of letting them become a silent NaN distribution."""
    logits = logits[..., :vocab_size].to(dtype)
    return logits - log_normalizer(logits, who)


class TransformersRunner:
    """Runs a transformers causal LM over the token trees of a `TreeKV` (see the module docstring)."""

    def __init__(self, model: PreTrainedModel, vocab_size: int, settings: EngineSettings):
        self.model = model
        self.vocab_size = vocab_size
        self.settings = settings
        self.dtype = settings.torch_dtype
        self.forward_calls = 0
        self.histories = 0  # boundary histories forwarded (prefetched ones included)
        config = model.config.get_text_config(decoder=True)
        attn = getattr(config, "_attn_implementation", None) or "eager"
        if attn not in ("eager", "sdpa"):
            raise ConfigError(
                f"the vocabulary engine passes tree-shaped 4D attention masks, which need attn_implementation "
                f"'sdpa' or 'eager'; this model uses {attn!r}: load it with attn_implementation='sdpa'"
            )
        window = getattr(config, "sliding_window", None)
        types = set(getattr(config, "layer_types", None) or [SLIDING if window else FULL])
        unknown = types - {FULL, SLIDING}
        if unknown:
            raise ConfigError(
                f"attention layer types {sorted(unknown)} are not supported by the vocabulary engine"
            )
        self.layer_types = types
        self.sliding_window = window if SLIDING in types else None
        params = inspect.signature(model.forward).parameters
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self.keeps_logits = "logits_to_keep" in params
        self.store: TreeKV | None = None
        self.device = model.device  # read once: a model's `device` walks its parameters
        self.model_dtype = model.dtype if model.dtype.is_floating_point else torch.float32
        self.max_positions = max_positions(config)

    def _mask_argument(self, masks: dict[str, torch.Tensor]):
        if len(self.layer_types) == 1:
            return masks[next(iter(self.layer_types))]
        return masks

    def _call(self, view, input_ids, masks, positions, keep: torch.Tensor | None):
        """Logits of the last position of each row (`keep` None), or `[n, vocab]` for the positions where the
        bool grid `keep` is True (row-major): the output head never runs on padding."""
        kwargs = {self.cache_kwarg: view, "use_cache": True}
        if self.keeps_logits:
            kwargs["logits_to_keep"] = 1 if keep is None else keep
        self.forward_calls += 1
        mask = self._mask_argument(masks)
        try:
            with _grouped_query_sdpa(self.device):
                logits = self.model(
                    input_ids=input_ids, attention_mask=mask, position_ids=positions, **kwargs
                ).logits
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in str(e):
                raise EngineOutOfMemoryError(
                    f"out of memory in a forward of {input_ids.numel()} histories over {view.start} cached "
                    f"tokens per row; lower max_batch (now {self.settings.max_batch}), max_hypotheses "
                    f"(now {self.settings.max_hypotheses}) or the batch of prompts"
                ) from e
            raise
        if keep is None:
            return logits[:, -1]
        return logits if logits.dim() == 2 else logits[keep]  # a model that ignored the bool grid

    def _check_positions(self, highest: torch.Tensor) -> None:
        """Refuse histories past the model's positions (one host read per prefill or step, not per forward)."""
        if self.max_positions is not None and int(highest) >= self.max_positions:
            raise InputError(
                f"a history reaches position {int(highest)}, past the model's {self.max_positions} positions "
                "(its config's max_position_embeddings): give shorter prompts or fewer new tokens"
            )

    @torch.no_grad()
    def start(self, prompt_ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_positions(lengths.max() - 1)
        rows, width = prompt_ids.shape
        prompt_ids, lengths = prompt_ids.to(self.device), lengths.to(self.device)
        self.store = store = TreeKV(rows, self.device, self.sliding_window)
        store.reserve(width)
        allowed, positions, valid = store.prompt_layout(lengths, width)
        logprobs = []
        for r0 in range(0, rows, self.settings.max_batch):
            r1 = min(rows, r0 + self.settings.max_batch)
            masks = store.attention_masks(
                allowed[r0:r1], positions[r0:r1], positions[r0:r1], self.model_dtype
            )
            logits = self._call(store.view(r0, r1, 0), prompt_ids[r0:r1], masks, positions[r0:r1], keep=None)
            logprobs.append(finite_log_softmax(logits, self.vocab_size, self.dtype, "the model"))
        handles = store.add_prompts(prompt_ids, lengths, positions, valid)
        return handles, torch.cat(logprobs)

    def plan(self, counts: list[int]) -> list[tuple[int, int, int]]:
        """Groups of consecutive rows `(r0, r1, width)` that cover every row with a query, each run as one
        `[r1 - r0, width]` grid: rows are grouped where one forward's fixed cost outweighs the padding that
        a shared width adds (dynamic programming over the rows; a forward costs about `FORWARD_COST`
        tokens of the device)."""
        cost = FORWARD_COST.get(self.device.type, FORWARD_COST["default"])
        n, most = len(counts), self.settings.max_batch
        best = [0.0] + [float("inf")] * n
        choice: list[tuple[int, int] | None] = [None] * (n + 1)
        for j in range(1, n + 1):
            if counts[j - 1] == 0 and best[j - 1] < best[j]:
                best[j], choice[j] = best[j - 1], None
            width = 0
            for i in range(j - 1, max(-1, j - 1 - most), -1):
                width = max(width, counts[i])
                total = best[i] + cost + (j - i) * width
                if width and total < best[j]:
                    best[j], choice[j] = total, (i, width)
        groups, j = [], n
        while j > 0:
            if choice[j] is None:
                j -= 1
                continue
            i, width = choice[j]
            groups.append((i, j, width))
            j = i
        return groups[::-1]

    @torch.no_grad()
    def extend(
        self, parents: torch.Tensor, tokens: torch.Tensor, plan: list[tuple[int, int, int]] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """See the module docstring; rows are read from the parents' handles. `plan` (from `plan`) may be
        given when it was used to choose the queries; every row's queries must fit its group's width."""
        store = self.store
        if len(parents):
            self._check_positions(store.h_pos[parents].max() + 1)
        n = len(parents)
        rows = store.h_row[parents]
        counts = torch.bincount(rows, minlength=store.n_rows)
        order = torch.argsort(rows, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        column = torch.empty_like(rows)
        column[order] = torch.arange(n, device=self.device) - starts[rows[order]]
        plan = plan or self.plan(counts.tolist())
        width = max(w for _, _, w in plan)
        grid = torch.full((store.n_rows, width), -1, dtype=torch.long, device=self.device)
        grid[rows, column] = parents
        token_grid = torch.zeros_like(grid)
        token_grid[rows, column] = tokens.to(self.device)
        logprobs = torch.empty((n, self.vocab_size), dtype=self.dtype, device=self.device)
        store.reserve(width)
        start = store.length
        for r0, r1, group_width in plan:
            col_step = max(1, self.settings.max_batch // (r1 - r0))
            for c0 in range(0, group_width, col_step):
                c1 = min(group_width, c0 + col_step)
                chunk = grid[r0:r1, c0:c1]
                allowed, positions = store.query_layout(chunk, start, c0)
                key_pos = torch.cat([store.slot_pos[r0:r1, : start + c0], positions], dim=1)
                masks = store.attention_masks(allowed, positions, key_pos, self.model_dtype)
                real = chunk >= 0
                view = store.view(r0, r1, start + c0)
                logits = self._call(view, token_grid[r0:r1, c0:c1], masks, positions, keep=real)
                picked = (rows >= r0) & (rows < r1) & (column >= c0) & (column < c1)
                index = torch.nonzero(picked, as_tuple=True)[0]
                flat = torch.cumsum(real.flatten(), 0) - 1  # row-major rank of each real query
                at = flat[(rows[index] - r0) * (c1 - c0) + column[index] - c0]
                logprobs[index] = finite_log_softmax(logits[at], self.vocab_size, self.dtype, "the model")
        store.length = start + width
        handles = store.add_children(parents, rows, start + column, tokens.to(self.device))
        self.histories += n
        return handles, logprobs

    def compact(self, live: torch.Tensor) -> torch.Tensor:
        return self.store.compact(live)

    def select_rows(self, source: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        return self.store.select_rows(source, live)
