"""`FrozenSLTConfig`: what a strong lottery ticket in a partially frozen random network is made of."""

from __future__ import annotations

import dataclasses
import re
from typing import ClassVar

from ..config_utils import CoopConfig
from ..errors import ConfigError, check_int, check_real

FROZEN_DISTRIBUTIONS = ("uniform", "erk", "epl")
THRESHOLDS = ("per_layer", "global")
WEIGHT_INITS = ("signed_kaiming_constant", "kaiming_uniform")
SCORE_INITS = ("kaiming_uniform", "uniform")
BIAS_MODES = ("zero", "train")


def _check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"FrozenSLTConfig.{field} must be one of {choices}, got {value!r}")


def _check_target_modules(target_modules) -> None:
    if target_modules is None:
        return
    if isinstance(target_modules, str):
        try:
            re.compile(target_modules)
        except re.error as e:
            raise ConfigError(
                f"FrozenSLTConfig.target_modules {target_modules!r} is not a valid regular expression ({e}); "
                "give a regex matched in full against module names, or a list of names"
            ) from e
    elif not (isinstance(target_modules, list | tuple) and all(isinstance(n, str) for n in target_modules)):
        raise ConfigError(
            f"FrozenSLTConfig.target_modules must be None, a regex or a list of names, got {target_modules!r}"
        )


@dataclasses.dataclass
class FrozenSLTConfig(CoopConfig):
    """Configuration of a strong lottery ticket search in a partially frozen network (arXiv 2402.14029).

    Every weight of a target layer is pruned (never in the ticket), locked (always in the ticket) or free;
    free weights carry a learned score and edge-popup keeps those with the largest |score| so that the
    overall density of the target weights is `1 - sparsity`, frozen weights included. Hence
    `pruned_ratio <= sparsity <= 1 - locked_ratio`.

    Args:
        sparsity: fraction `s` of all target weights absent from the ticket.
        pruned_ratio: fraction `p` of target weights pruned at random before the search.
        locked_ratio: fraction `r` of target weights locked in at random before the search.
        frozen_distribution: how the pruned and locked counts spread over layers: "uniform" (the same
            ratios in every layer), "erk" (Erdős–Rényi-Kernel: small layers keep more) or "epl" (equal
            count per layer).
        threshold: "per_layer" (each layer has density `1 - s`) or "global" (one |score| ranking over all
            layers; the callback or `update_thresholds()` re-ranks during training).
        update_every: optimizer steps between global re-rankings in `FrozenSLTCallback`.
        weight_init: "signed_kaiming_constant" (±gain/√fan_in) or "kaiming_uniform" (U(±gain·√(3/fan_in))),
            gain √2; `scale_fan` divides fan_in by the density `1 - s` (edge-popup's scaled init).
        score_init: "kaiming_uniform" (U(±1/√fan_in)) or "uniform" (U(0, 1)).
        seed: the seed of the portable generator (see `hf_coop.slt.generator`).
        target_modules: None (every nn.Linear, nn.Conv2d and GPT-2 Conv1D not in `modules_to_save`), a
            regex matched in full against qualified module names, or a list of names (exact or suffix).
        modules_to_save: modules trained densely and stored densely (e.g. embeddings, a classifier head).
        bias: "zero" (target biases set to zero and frozen) or "train" (trained and stored densely).
        score_weight_decay: weight decay of the scores in `optimizer_param_groups`.
        base_model_name_or_path: the base model's name, written into the model card.
    """

    config_name: ClassVar[str] = "slt_config.json"
    format_version: ClassVar[int] = 1

    sparsity: float = 0.5
    pruned_ratio: float = 0.0
    locked_ratio: float = 0.0
    frozen_distribution: str = "uniform"
    threshold: str = "per_layer"
    update_every: int = 1
    weight_init: str = "signed_kaiming_constant"
    scale_fan: bool = False
    score_init: str = "kaiming_uniform"
    seed: int = 0
    target_modules: list[str] | str | None = None
    modules_to_save: list[str] | None = None
    bias: str = "zero"
    score_weight_decay: float = 0.0
    base_model_name_or_path: str | None = None

    def __post_init__(self) -> None:
        for name in ("sparsity", "pruned_ratio", "locked_ratio", "score_weight_decay"):
            check_real(f"FrozenSLTConfig.{name}", getattr(self, name), low=0.0)
        check_int("FrozenSLTConfig.seed", self.seed, minimum=0)
        check_int("FrozenSLTConfig.update_every", self.update_every, minimum=1)
        if not isinstance(self.scale_fan, bool):
            raise ConfigError(f"FrozenSLTConfig.scale_fan must be True or False, got {self.scale_fan!r}")
        _check_target_modules(self.target_modules)
        s, p, r = self.sparsity, self.pruned_ratio, self.locked_ratio
        if not (0.0 <= p and 0.0 <= r and p + r <= 1.0 and 0.0 <= s < 1.0):
            raise ConfigError(
                "FrozenSLTConfig needs 0 <= pruned_ratio, 0 <= locked_ratio, "
                f"pruned_ratio + locked_ratio <= 1 "
                f"and 0 <= sparsity < 1; got sparsity={s}, pruned_ratio={p}, locked_ratio={r}"
            )
        if not (p <= s <= 1.0 - r):
            raise ConfigError(
                "FrozenSLTConfig needs pruned_ratio <= sparsity <= 1 - locked_ratio (pruned weights are "
                "never in the ticket, locked ones always are); "
                f"got sparsity={s}, pruned_ratio={p}, locked_ratio={r}. "
                f"Raise sparsity to at least {p} or lower locked_ratio to at most {1.0 - s:.6g}."
            )
        _check_choice("frozen_distribution", self.frozen_distribution, FROZEN_DISTRIBUTIONS)
        _check_choice("threshold", self.threshold, THRESHOLDS)
        _check_choice("weight_init", self.weight_init, WEIGHT_INITS)
        _check_choice("score_init", self.score_init, SCORE_INITS)
        _check_choice("bias", self.bias, BIAS_MODES)
        if self.threshold == "per_layer" and self.frozen_distribution != "uniform":
            raise ConfigError(
                f"threshold='per_layer' keeps density 1 - sparsity in every layer, which only fits frozen "
                f"counts spread uniformly; use threshold='global' with frozen_distribution="
                f"{self.frozen_distribution!r}"
            )

        if isinstance(self.modules_to_save, str):
            self.modules_to_save = [self.modules_to_save]
