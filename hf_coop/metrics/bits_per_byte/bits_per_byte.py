"""Bits per byte: tokenizer-independent perplexity, as an `evaluate` metric.

    import evaluate, hf_coop.metrics
    bpb = evaluate.load(hf_coop.metrics.BITS_PER_BYTE)  # a local path: works offline
    bpb.compute(predictions=["It is a truth universally acknowledged."], model_id="smollm2-135m-instruct")

Models with different tokenizers cannot be compared by per-token perplexity; bits per byte divide each text's
negative log-probability (in bits) by its UTF-8 length. `mode="canonical"` scores the canonical tokens (the
usual perplexity recipe); `mode="marginal"` sums every tokenization of the text exactly (hf_coop's vocabulary
engine), which is the model's true probability of the text and never lower than the canonical one. Both are
conditioned on the model's start token.
"""

import datasets
import evaluate

_DESCRIPTION = __doc__
_KWARGS_DESCRIPTION = """
Args:
    predictions: the texts to score (str).
    model_id: a demo model name, a local folder or a Hub id (or pass `model` and `tokenizer`).
    mode: "canonical" (default) or "marginal".
    max_hypotheses, prune_ratio: bound the marginal's cost (the exact value then lies in the reported bracket).
Returns:
    bits_per_byte: total bits over total UTF-8 bytes of all texts;
    per_text: bits per byte of each text; nats: log-probability of each text;
    upper_bits_per_byte (marginal only): the bound from the mass pruning dropped (equal when exact).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class BitsPerByte(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
            reference_urls=["https://arxiv.org/abs/2510.08102"],
        )

    def _compute(
        self,
        predictions,
        model_id=None,
        model=None,
        tokenizer=None,
        mode="canonical",
        max_hypotheses=None,
        prune_ratio=0.0,
    ):
        from hf_coop.metrics import bits_per_byte

        return bits_per_byte(
            predictions,
            model_id=model_id,
            model=model,
            tokenizer=tokenizer,
            mode=mode,
            max_hypotheses=max_hypotheses,
            prune_ratio=prune_ratio,
        )
