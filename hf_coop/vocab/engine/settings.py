"""The one settings dataclass of the vocabulary engine: how far the relative-cover recursion may be truncated,
how large one batched forward may be, and the bookkeeping precision. Every artefact built on the engine saves
it, so a reloaded model decodes exactly as the saved one did."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from hf_coop.errors import ConfigError, check_int, check_real

DTYPES = {"float32": torch.float32, "float64": torch.float64}
# The library's defaults are exact (no bound). Ensembles, their scoring, the metric's marginal mode aside, and
# every `hf-coop` command use this one bound instead: at most 8 live hypotheses per model and row, and none
# lighter than 1e-8 times the heaviest; what the bound drops is reported by the scorers.
BOUNDED_MAX_HYPOTHESES = 8
BOUNDED_PRUNE_RATIO = 1e-8


@dataclasses.dataclass(frozen=True)
class EngineSettings:
    """Truncation, batching and precision of the relative-cover recursion; the defaults are exact.

    Args:
        tokens_per_boundary: next original tokens kept per boundary history (the paper's K-LVR: 1 reproduces
            the original model's greedy text, about 300 approximates sampling); None keeps them all (exact).
        max_hypotheses: live hypotheses kept per row and step (None: all).
        prune_ratio: drop hypotheses lighter than `prune_ratio` times the row's heaviest (0: none).
        backtrack: steps for which pruned boundary histories are held back, unevaluated, so that a text which
            leaves every kept hypothesis can back up to them instead of failing.
        max_batch: most histories in one forward of the model (rows x new tokens); more are chunked. A
            prefill runs at most `max_batch` prompts at once.
        dtype: bookkeeping precision on the model's device ("float32", or "float64" for exact oracles).
        prefetch: fill the padding of a forward that runs anyway with the most likely boundary histories
            rows will need at later steps, so rows out of phase share forwards.
    """

    tokens_per_boundary: int | None = None
    max_hypotheses: int | None = None
    prune_ratio: float = 0.0
    backtrack: int = 16
    max_batch: int = 256
    dtype: str = "float32"
    prefetch: bool = True

    def __post_init__(self):
        check_int("tokens_per_boundary", self.tokens_per_boundary, minimum=1, optional=True)
        check_int("max_hypotheses", self.max_hypotheses, minimum=1, optional=True)
        check_real("prune_ratio", self.prune_ratio, low=0.0)
        if self.prune_ratio >= 1.0:
            raise ConfigError(f"prune_ratio must be in [0, 1), got {self.prune_ratio!r}")
        check_int("backtrack", self.backtrack, minimum=0)
        check_int("max_batch", self.max_batch, minimum=1)
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def prunes(self) -> bool:
        return self.max_hypotheses is not None or self.prune_ratio > 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> EngineSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in names})
