"""`evaluate` metrics shipped with hf_coop. `BITS_PER_BYTE` is the folder `evaluate.load` takes (offline)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from hf_coop.errors import ConfigError

BITS_PER_BYTE = str(Path(__file__).parent / "bits_per_byte")
MODES = ("canonical", "marginal")


def bits_per_byte(
    texts: Sequence[str],
    model_id: str | None = None,
    model=None,
    tokenizer=None,
    mode: str = "canonical",
    max_hypotheses: int | None = None,
    prune_ratio: float = 0.0,
) -> dict:
    """Bits per byte of `texts` under a model (see `hf_coop/metrics/bits_per_byte`); what the metric computes."""
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
    if model is None or tokenizer is None:
        if model_id is None:
            raise ConfigError(
                "give model_id (a demo model name, a folder or a Hub id), or model and tokenizer"
            )
        from hf_coop.models import load_model

        model, tokenizer = load_model(model_id)
    if mode == "canonical":
        from hf_coop.scoring import canonical_logprob

        scores = [canonical_logprob(model, tokenizer, text) for text in texts]
        upper = [s.nats for s in scores]
    else:
        from hf_coop.vocab.scoring import prefix_logprob

        scores = prefix_logprob(model, tokenizer, list(texts), max_hypotheses, prune_ratio)
        upper = [s.upper_nats for s in scores]
    n_bytes = sum(s.n_bytes for s in scores)
    result = {
        "bits_per_byte": -sum(s.nats for s in scores) / (math.log(2) * n_bytes),
        "per_text": [s.bits_per_byte for s in scores],
        "nats": [s.nats for s in scores],
    }
    if mode == "marginal":
        result["upper_bits_per_byte"] = -sum(upper) / (math.log(2) * n_bytes)
    return result
