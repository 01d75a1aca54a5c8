"""Exact scoring over all tokenizations, and ensemble scoring, on the vocabulary engine (batched over texts).

`prefix_logprob` is `P(the model's byte stream starts with text | start token)`: every token sequence whose
bytes begin with the text counts, non-canonical splits and byte-fallback twins included, and the last token
may run past the text's end. By the lossless-reduction theorem this is the same number for the original
model and for every reduced model; it is computed with the relative-cover recursion over bytes. Each
boundary history's full next-token distribution is kept; only the hypotheses carried forward are pruned,
and the mass they drop is reported, so the exact value is bracketed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from hf_coop.errors import ConfigError
from hf_coop.scoring import TextScore, check_text, check_tokenizer_fits, start_token_id, text_token_ids
from hf_coop.vocab.engine.scheduler import EngineMember, Scheduler
from hf_coop.vocab.engine.settings import BOUNDED_MAX_HYPOTHESES, BOUNDED_PRUNE_RATIO, EngineSettings
from hf_coop.vocab.ensemble import CommonVocabEnsemble, check_mode, check_weights, combine
from hf_coop.vocab.prompt_boundary import PromptSplitter, check_prompt_boundary, split_utf8
from hf_coop.vocab.sub_vocabulary import NestedTable, SubVocabulary
from hf_coop.vocab.token_bytes import TokenBytes
from hf_coop.vocab.tokenizers import pad_tails


@dataclasses.dataclass
class PrefixScore(TextScore):
    """`nats` is the kept (lower-bound) log-probability; the exact one lies below `upper_nats`."""

    truncated_mass: float = 0.0  # probability mass dropped by pruning (0 in exact mode)
    upper_nats: float = 0.0
    forward_calls: int = 0  # batched model calls (shared by the texts scored together)
    histories_evaluated: int = 0  # boundary histories forwarded (shared likewise)
    back_ups: int = 0  # times pruning had dropped every hypothesis that spells the text


@dataclasses.dataclass
class EnsembleScore(TextScore):
    """The ensemble's log-probability of a text's MCV token sequence (the first member's split)."""

    truncated_mass: float = 0.0  # largest mass any member's pruning dropped


def _padded(rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    padded = torch.tensor([list(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long)
    return padded, torch.tensor([len(r) for r in rows])


def _columns(rows: Sequence[Sequence[int]]):
    """Per step: (sub-token column, rows still reading, rows whose last sub-token this is)."""
    padded, lengths = _padded(rows)
    for step in range(padded.shape[1]):
        yield step, padded[:, step], lengths > step, lengths > step + 1


def _logaddexp(a: float, b: float) -> float:
    return float(torch.logaddexp(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)))


def _start_prompts(
    tokenizer: PreTrainedTokenizerBase,
    table: TokenBytes,
    n_rows: int,
    context: str | bytes | None,
    prompt_boundary: str,
) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
    """Every row's prompt: the start token alone, or the start token and `context`, split at
    `prompt_boundary` (its canonical part prefilled, its tail bytes conditioned on over all their
    tokenizations)."""
    if context is None:
        ids = torch.full((n_rows, 1), start_token_id(tokenizer))
        return (ids, torch.ones(n_rows, dtype=torch.long)), None
    text, extra = split_utf8(context) if isinstance(context, bytes) else (context, b"")
    canonical = [start_token_id(tokenizer)] + text_token_ids(tokenizer, text)
    prefix, tail = PromptSplitter(table, tokenizer.bos_token_id, prompt_boundary).split(canonical, extra)
    ids = torch.tensor([prefix] * n_rows)
    return (ids, torch.full((n_rows,), len(prefix))), torch.tensor(pad_tails([tail] * n_rows))


def sub_sequence_logprobs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    nested: NestedTable,
    rows: Sequence[Sequence[int]],
    n_bytes: Sequence[int],
    settings: EngineSettings,
    progress: bool = False,
    context: str | bytes | None = None,
    prompt_boundary: str = "tail",
) -> list[PrefixScore]:
    """log Π(sub_ids) for each row: the probability that the reduced model's sub-token stream starts with
    it, given the start token (or `context`); all rows advance together (one batched forward per step)."""
    if settings.tokens_per_boundary is not None:
        raise ConfigError(
            "scoring keeps every next token (tokens_per_boundary=None): K-LVR is a decoding algorithm and "
            "cannot score a given text; bound the cost with max_hypotheses / prune_ratio"
        )
    check_tokenizer_fits(model, tokenizer)
    member = EngineMember(model, nested, settings)
    prompt, tails = _start_prompts(tokenizer, nested.table, len(rows), context, prompt_boundary)
    member.start(*prompt, tails)
    # the context's kept and dropped mass (both exact zeros: log 1 and log 0 after the start token alone)
    context_mass = member.cover.kept_logmass().double().tolist()
    context_dropped = member.cover.truncated.double().tolist()
    member.cover.set_future(*_padded(rows))
    steps = tqdm(
        _columns(rows),
        total=max(map(len, rows)),
        desc=f"scoring over {nested.sub_name}",
        unit="step",
        disable=not progress,
    )
    for _, column, active, evaluate in steps:
        member.step(column, active, evaluate)
    cover = member.cover
    kept, truncated = cover.kept_logmass().double().tolist(), cover.truncated.double().tolist()
    # with a context, P(text | context) = P(context, text) / P(context), where P(context) lies in
    # [base, base + dropped]: the lower bound divides by the largest context mass, the upper by the smallest
    return [
        PrefixScore(
            nats=k - _logaddexp(base, dropped),
            n_bytes=b,
            n_tokens=len(r),
            truncated_mass=math.exp(t - base),
            upper_nats=_logaddexp(k, t) - base,
            forward_calls=member.forward_calls,
            histories_evaluated=member.runner.histories,
            back_ups=member.back_ups,
        )
        for k, t, b, r, base, dropped in zip(kept, truncated, n_bytes, rows, context_mass, context_dropped)
    ]


def _settings(
    model_dtype: torch.dtype, max_hypotheses, prune_ratio, settings: EngineSettings | None
) -> EngineSettings:
    if settings is not None:
        return settings
    dtype = "float64" if model_dtype == torch.float64 else "float32"
    return EngineSettings(max_hypotheses=max_hypotheses, prune_ratio=prune_ratio, dtype=dtype)


def prefix_logprob(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    text: str | Sequence[str],
    max_hypotheses: int | None = None,
    prune_ratio: float = 0.0,
    nested: NestedTable | None = None,
    progress: bool = False,
    settings: EngineSettings | None = None,
    context: str | bytes | None = None,
    prompt_boundary: str = "tail",
) -> PrefixScore | list[PrefixScore]:
    """log P(byte stream starts with `text`): the marginal over all tokenizations, the same for the original
    and every reduced model. Exact unless `max_hypotheses` / `prune_ratio` prune; then the exact value lies
    in [nats, upper_nats]. A list of texts is scored in one batch (one score each).

    With `context`, log P(text | context): the context is conditioned on as `prompt_boundary` says ("exact":
    its bytes over all tokenizations, including tokens that run from the context into the text; "tail":
    canonical tokens up to a cut, then bytes; "canonical": its canonical tokens)."""
    check_prompt_boundary(prompt_boundary)
    texts = [text] if isinstance(text, str) else list(text)
    data = [check_text(t) for t in texts]
    nested = nested or SubVocabulary.bytes_only().nested_table(tokenizer)
    if nested.sub_name != "bytes":
        raise ConfigError(
            "prefix_logprob steps byte by byte: pass a nested table of SubVocabulary.bytes_only()"
        )
    settings = _settings(model.dtype, max_hypotheses, prune_ratio, settings)
    scores = sub_sequence_logprobs(
        model,
        tokenizer,
        nested,
        [list(d) for d in data],
        [len(d) for d in data],
        settings,
        progress,
        context,
        prompt_boundary,
    )
    return scores[0] if isinstance(text, str) else scores


def canonical_sub_sequence_logprob(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    text: str | Sequence[str],
    nested: NestedTable,
    max_hypotheses: int | None = None,
    prune_ratio: float = 0.0,
    progress: bool = False,
    settings: EngineSettings | None = None,
) -> PrefixScore | list[PrefixScore]:
    """The reduced model's log-probability of the text's canonical sub-token sequence `T(tokenizer(text))`:
    the sub-vocabulary analogue of canonical scoring (it sums every original tokenization whose nested
    split is that sequence, so canonical <= this <= marginal)."""
    texts = [text] if isinstance(text, str) else list(text)
    data = [check_text(t) for t in texts]
    rows = [nested.encode_tokens(text_token_ids(tokenizer, t)) for t in texts]
    settings = _settings(model.dtype, max_hypotheses, prune_ratio, settings)
    scores = sub_sequence_logprobs(model, tokenizer, nested, rows, [len(d) for d in data], settings, progress)
    return scores[0] if isinstance(text, str) else scores


def member_name(ensemble: CommonVocabEnsemble, index: int, what: str) -> str:
    name = ensemble.config.members[index]
    return f"member {index}'s {what}" + (f" ({name})" if name else "")


@torch.no_grad()
def ensemble_logprob(
    ensemble: CommonVocabEnsemble,
    text: str | Sequence[str],
    max_hypotheses: int | None = BOUNDED_MAX_HYPOTHESES,
    prune_ratio: float = BOUNDED_PRUNE_RATIO,
    mixtures: Sequence[tuple[Sequence[float], str]] | None = None,
    progress: bool = False,
    context: str | bytes | None = None,
) -> EnsembleScore | list[EnsembleScore] | list[list[EnsembleScore]]:
    """Score `text` under the ensemble, conditioned on each member's start token: the sum of the combined
    conditionals along the text's MCV tokens (the first member's split). Members keep every next token; only
    the hypotheses carried forward are pruned, and the dropped mass is reported.

    `mixtures`: several (weights, mode) combinations of the same members scored in one pass (each member
    runs once whatever the mixtures); a list of scores is returned, in order. A list of texts is scored in
    one batch; then each result is a list over texts. With `context`, every member conditions on it first,
    at the ensemble's `prompt_boundary`."""
    texts = [text] if isinstance(text, str) else list(text)
    data = [check_text(t) for t in texts]
    if mixtures is None:
        mixes = [(torch.tensor(ensemble.weights, dtype=torch.float64), ensemble.config.mode)]
    else:
        mixes = [
            (torch.tensor(check_weights(w, len(ensemble.members)), dtype=torch.float64), check_mode(mode))
            for w, mode in mixtures
        ]
    active = [m for m in range(len(ensemble.members)) if any(w[m] > 0 for w, _ in mixes)]
    # the text as the first member's MCV tokens; every member that runs must be able to spell it (refused by name)
    for m in active:
        for t in texts:
            text_token_ids(ensemble.members[m].tokenizer.original, t, member_name(ensemble, m, "tokenizer"))
    first = ensemble.members[0]
    rows = [
        first.nested.encode_tokens(
            text_token_ids(first.tokenizer.original, t, member_name(ensemble, 0, "tokenizer"))
        )
        for t in texts
    ]
    settings = EngineSettings.from_dict(
        {**ensemble.settings.to_dict(), "max_hypotheses": max_hypotheses, "prune_ratio": prune_ratio}
    )
    scheduler = Scheduler(
        [EngineMember(ensemble.members[m].original, ensemble.members[m].nested, settings) for m in active]
    )
    starts = [
        _start_prompts(
            ensemble.members[m].tokenizer.original,
            ensemble.members[m].nested.table,
            len(texts),
            context,
            ensemble.config.prompt_boundary,
        )
        for m in active
    ]
    scheduler.start([prompt for prompt, _ in starts], [tails for _, tails in starts])
    used = [[active.index(m) for m in active if weights[m] > 0] for weights, _ in mixes]
    totals = torch.zeros((len(mixes), len(texts)), dtype=torch.float64)
    width = max(map(len, rows))
    for _, column, reading, going_on in tqdm(
        _columns(rows), total=width, desc="ensemble scoring", unit="step", disable=not progress
    ):
        logprobs = ensemble.member_logprobs(scheduler, active)
        for i, ((weights, mode), members) in enumerate(zip(mixes, used)):
            combined = combine(
                torch.stack([logprobs[j] for j in members]), weights[[active[j] for j in members]], mode
            )
            picked = combined.gather(1, column.to(combined.device)[:, None])[:, 0].double().cpu()
            totals[i] += torch.where(reading, picked, 0.0)
        if bool(going_on.any()):
            scheduler.step([column] * len(active), active=going_on)
    truncated = [member.cover.truncated.double().exp().cpu() for member in scheduler.members]
    results = [
        [
            EnsembleScore(
                nats=float(totals[i, r]),
                n_bytes=len(data[r]),
                n_tokens=len(rows[r]),
                truncated_mass=max(float(truncated[j][r]) for j in members),
            )
            for r in range(len(texts))
        ]
        for i, members in enumerate(used)
    ]
    per_mixture = [scores[0] if isinstance(text, str) else scores for scores in results]
    return per_mixture if mixtures is not None else per_mixture[0]
