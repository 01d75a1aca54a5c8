"""The errors hf_coop raises, on one base class, and the one check of a model's logits.

Every error names the input at fault and the fix. `CoopError` catches them all; each subclass also derives
from the built-in error a Python user would try first (`ValueError`, `TypeError`, `RuntimeError`), so code
written against those keeps working.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class CoopError(Exception):
    """Base of every error hf_coop raises for input, settings or files it cannot use."""


class ConfigError(CoopError, ValueError, TypeError):
    """A setting of the wrong type, or a value that cannot hold (checked where it is set)."""


class InputError(CoopError, ValueError):
    """A text, prompt, id tensor or label batch that cannot be processed as given."""


class ArtifactError(CoopError, ValueError):
    """A saved artefact is missing, corrupt, of an unknown format, or belongs to another model."""


class NonFiniteLogitsError(CoopError, ValueError):
    """A model produced NaN or infinite logits, so no distribution can be formed."""


def log_normalizer(logits: torch.Tensor, who: str) -> torch.Tensor:
    """logsumexp over the last axis, refusing rows without a distribution: any NaN, any +inf (fp16
    overflow), or every entry -inf. A row that passes has a finite normaliser, so `logits - normaliser`
    is a proper log-distribution (single -inf entries are masked tokens and fine)."""
    import torch

    normalizer = torch.logsumexp(logits, dim=-1, keepdim=True)
    if not bool(torch.isfinite(normalizer).all()):
        raise NonFiniteLogitsError(
            f"{who} produced NaN or infinite logits (or a row of only -inf); check its dtype (fp16 overflow? "
            "load it in float32 or bfloat16) and its weights"
        )
    return normalizer


def check_finite(logits: torch.Tensor, who: str, allow_neg_inf: bool = False) -> None:
    """Refuse NaN and +inf logits (and -inf unless `allow_neg_inf`), naming the model that produced them;
    for raw model outputs, where even one -inf means an overflow."""
    import torch

    bad = torch.isnan(logits) | (logits == float("inf"))
    if not allow_neg_inf:
        bad |= logits == float("-inf")
    if bool(bad.any()):
        raise NonFiniteLogitsError(
            f"{who} produced {int(bad.sum())} non-finite logits (NaN or inf); check its weights and dtype "
            "(fp16 overflow is a common cause: load it in float32 or bfloat16)"
        )
    if allow_neg_inf:
        log_normalizer(logits, who)


def check_int(name: str, value, minimum: int | None = None, optional: bool = False) -> None:
    """Refuse anything but an int (bools and floats such as 1.5 included) at least `minimum`."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ConfigError(f"{name} must be an integer{bound}{' or None' if optional else ''}, got {value!r}")


def check_real(
    name: str, value, low: float | None = None, high: float | None = None, open_low: bool = False
) -> None:
    """Refuse anything but a finite real number (strings, NaN and inf included) in [low, high] (or
    (low, high] with `open_low`)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or value != value
        or abs(value) == float("inf")
    ):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if (low is not None and (value < low or (open_low and value == low))) or (
        high is not None and value > high
    ):
        interval = f"{'(' if open_low else '['}{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise ConfigError(f"{name} must be in {interval}, got {value!r}")
