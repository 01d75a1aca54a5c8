"""A base model and a tuned version of it as one engine model over paired rows.

Cross-tokenizer steering (PRT, EFT) needs two distributions over the old model's vocabulary at every step,
the old base's and the tuned one's, each reduced to the common vocabulary with its own hypotheses. An
`EngineMember(..., copies=2)` holds every row twice (engine rows 2r and 2r + 1) and `TunedPairLM` computes
the base on even rows and the tuned model on odd rows, in the same forwards. When the tuning is a peft
adapter on the base (a LoRA reward or fine-tune), both run in **one** forward of the shared network with
peft's mixed-adapter batches (`adapter_names`); each network's keys and values live in the engine's store,
the second network's layers after the first's.

The tuned distribution is either a fine-tuned model's own (`reward_scale=None`, EFT's π_ft) or PRT's
training view `log_softmax(f_base) + r / λ` (`reward_scale=λ`), which needs the base's logits on the odd
rows too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from hf_coop.errors import ConfigError
from hf_coop.vocab.engine.kv import UncompiledCache

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed-adapter batch


def adapter_name(model: nn.Module) -> str | None:
    """The active adapter of a peft model (None for a plain model)."""
    if not hasattr(model, "peft_config") or not hasattr(model, "get_base_model"):
        return None
    active = model.active_adapter
    return active if isinstance(active, str) else active[0]


def _layer_types(model: nn.Module) -> tuple[set[str], int | None, int]:
    config = model.config.get_text_config(decoder=True)
    window = getattr(config, "sliding_window", None)
    types = set(getattr(config, "layer_types", None) or ["sliding_attention" if window else "full_attention"])
    return types, window if "sliding_attention" in types else None, config.num_hidden_layers


@dataclass
class _Pass:
    """Rows of one forward segment: which rows (relative to the chunk), with which adapter, stored where."""

    rows: torch.Tensor
    adapter: str | None
    layer_offset: int


class TunedPairLM(nn.Module):
    """Even engine rows: `base`; odd rows: `tuned` (see the module docstring).

    Args:
        base: the old base causal LM, or None when `tuned` is a peft model whose adapter-free path is the base.
        tuned: a fine-tuned causal LM or a PRT reward network (plain or peft).
        reward_scale: λ when `tuned` is a PRT reward (odd rows get `log_softmax(f_base) + r / λ`); None when it
            is a fine-tuned model (odd rows get its own logits).
        vocab_size: the tokenizer's length (extra head rows are dropped before combining).
    """

    def __init__(
        self,
        base: nn.Module | None,
        tuned: nn.Module,
        reward_scale: float | None = None,
        vocab_size: int | None = None,
    ):
        super().__init__()
        self.adapter = adapter_name(tuned)
        self.fused = base is None or base is tuned
        if self.fused and self.adapter is None:
            raise ConfigError(
                "without a separate base model the tuned model must be a peft adapter on it (its adapter-free "
                "path is the base); pass the base model"
            )
        self.base = tuned.get_base_model() if base is None else base
        self.tuned = tuned
        self.reward_scale = reward_scale
        self.vocab_size = vocab_size
        types, window, layers = _layer_types(self.base)
        if not self.fused and _layer_types(tuned)[:2] != (types, window):
            raise ConfigError(
                "the tuned model's attention layers (types and sliding window) differ from the base's; the engine "
                "gives both the same masks: use a tuned model of the base's architecture"
            )
        self.tuned_layer_offset = layers  # the tuned network's keys/values follow the base's layers
        self.config = self.base.config
        self.generation_config = self.base.generation_config
        self.name_or_path = getattr(self.base, "name_or_path", "")

    @property
    def device(self) -> torch.device:
        return self.base.device

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    def get_input_embeddings(self) -> nn.Module:
        return self.base.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.base.get_output_embeddings()

    def _passes(
        self, even: torch.Tensor, odd: torch.Tensor, every: torch.Tensor
    ) -> list[tuple[nn.Module, list]]:
        """(network, passes) for each forward call of one chunk."""
        prt = self.reward_scale is not None
        base_rows = every if prt else even
        if self.fused:
            tuned_offset = self.tuned_layer_offset if prt else 0  # EFT: each row runs one network
            return [
                (
                    self.tuned,
                    [_Pass(base_rows, BASE_ADAPTER, 0), _Pass(odd, self.adapter, tuned_offset)],
                )
            ]
        return [
            (self.base, [_Pass(base_rows, None, 0)]),
            (self.tuned, [_Pass(odd, self.adapter, self.tuned_layer_offset)]),
        ]

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask,
        position_ids: torch.LongTensor,
        cache,
        use_cache: bool = True,
        logits_to_keep: int | torch.Tensor = 1,
    ):
        """One engine forward over the rows of `cache` (a view of the engine's store); returns an object
        with `.logits`: `[rows, 1, vocab]` for `logits_to_keep=1`, else `[kept positions, vocab]` in
        row-major order of the bool grid."""
        if not hasattr(cache, "subset"):
            raise ConfigError("TunedPairLM runs inside the vocabulary engine only (EngineMember(copies=2))")
        n = input_ids.shape[0]
        parity = torch.arange(cache.r0, cache.r0 + n, device=input_ids.device) % 2
        every = torch.arange(n, device=input_ids.device)
        even, odd = every[parity == 0], every[parity == 1]
        keep = logits_to_keep if isinstance(logits_to_keep, torch.Tensor) else None
        outputs: dict[tuple[int, int], torch.Tensor] = {}  # (call, pass) -> logits of the kept queries
        for index, (network, passes) in enumerate(self._passes(even, odd, every)):
            passes = [p for p in passes if len(p.rows)]
            if not passes:
                continue
            logits = self._run(network, passes, input_ids, attention_mask, position_ids, cache, keep)
            for number, part in enumerate(logits):
                outputs[index, number] = part
        return CausalLMOutputWithPast(
            logits=self._assemble(outputs, n, keep, even, odd, every, input_ids.device)
        )

    def _run(self, network, passes: list[_Pass], input_ids, attention_mask, position_ids, cache, keep):
        """One call of `network` over the passes' rows stacked; logits split back per pass."""
        rows = torch.cat([p.rows for p in passes])

        def take(tensor):
            return tensor[rows]

        mask = (
            {kind: take(m) for kind, m in attention_mask.items()}
            if isinstance(attention_mask, dict)
            else take(attention_mask)
        )
        views = [cache.subset(p.rows, p.layer_offset) for p in passes]
        kwargs = {}
        if self.adapter is not None and network is self.tuned:
            kwargs["adapter_names"] = [p.adapter for p in passes for _ in range(len(p.rows))]
        logits = network(
            input_ids=take(input_ids),
            attention_mask=mask,
            position_ids=take(position_ids),
            cache=views[0] if len(views) == 1 else _StackedView(views, [len(p.rows) for p in passes]),
            use_cache=True,
            logits_to_keep=1 if keep is None else take(keep),
            **kwargs,
        ).logits
        if keep is None:
            return list(logits[:, -1].split([len(p.rows) for p in passes]))
        if logits.dim() == 3:  # a model that ignored the bool grid
            logits = logits[take(keep)]
        return list(logits.split([int(keep[p.rows].sum()) for p in passes]))

    def _assemble(self, outputs, n, keep, even, odd, every, device) -> torch.Tensor:
        """Per-row logits: base on even rows; on odd rows the fine-tuned logits, or PRT's
        `log_softmax(f_base) + r / λ` over the first `vocab_size` ids."""
        prt = self.reward_scale is not None
        base = outputs.get((0, 0))
        tuned = outputs.get((0, 1) if self.fused else (1, 0))  # the tuned pass: same call, or the second
        width = min(t.shape[-1] for t in (base, tuned) if t is not None)
        if self.vocab_size is not None:
            width = min(width, self.vocab_size)
        if keep is None:
            slots_of = {"even": even, "odd": odd, "every": every}
        else:
            rank = (torch.cumsum(keep.flatten(), 0) - 1).view(keep.shape)
            slots_of = {
                name: rank[rows][keep[rows]]
                for name, rows in (("even", even), ("odd", odd), ("every", every))
            }
        total = n if keep is None else int(keep.sum())
        dtype = (base if base is not None else tuned).dtype
        if prt:  # the rule runs in float32 at least (half-precision logits would round the sum)
            dtype = torch.promote_types(dtype, torch.float32)
        out = torch.zeros((total, width), dtype=dtype, device=device)
        if prt:
            base_lp = None if base is None else torch.log_softmax(base[:, :width].to(dtype), -1)
            if base_lp is not None:
                # base rows are every row: pick the even ones (their base), and the odd ones for the rule
                is_odd = torch.zeros(n, dtype=torch.bool, device=device)
                is_odd[odd] = True
                row_of = every if keep is None else every.repeat_interleave(keep.sum(1))
                odd_query = is_odd[row_of]
                out[slots_of["even"]] = base_lp[~odd_query]
                if tuned is not None:
                    out[slots_of["odd"]] = base_lp[odd_query] + tuned[:, :width].to(dtype) / self.reward_scale
        else:
            if base is not None:
                out[slots_of["even"]] = base[:, :width].to(out.dtype)
            if tuned is not None:
                out[slots_of["odd"]] = tuned[:, :width].to(out.dtype)
        return out if keep is not None else out[:, None]


class _StackedView(UncompiledCache):
    """The cache of a forward whose batch stacks several passes: each pass's rows go to its own view."""

    def __init__(self, views: list, counts: list[int]):
        super().__init__(layers=[])
        self.views, self.counts = views, counts

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        parts = [
            view.update(k, v, layer_idx)
            for view, k, v in zip(
                self.views, key_states.split(self.counts), value_states.split(self.counts), strict=True
            )
        ]
        return torch.cat([k for k, _ in parts]), torch.cat([v for _, v in parts])

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.views[0].get_seq_length(layer_idx)
