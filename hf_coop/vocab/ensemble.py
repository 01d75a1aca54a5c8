"""Ensembles of causal LMs with different tokenizers, through their maximal common vocabulary (MCV).

    ensemble = CommonVocabEnsemble.from_models([smol, gemma], [smol_tok, gemma_tok], max_hypotheses=8)
    inputs = ensemble.tokenizer("The capital of France is", return_tensors="pt")
    out = ensemble.generate(**inputs, max_new_tokens=20, do_sample=False)
    print(ensemble.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:]))

Every member is reduced losslessly to the MCV (`ReducedVocabLM`); the ensemble's vocabulary is the MCV's
text sub-tokens plus one end-of-sequence id. At each step each member gives p_m(next MCV token | text so
far) (its own special tokens, BOS, chat template and KV caches stay inside its relative-cover state);
the mass of a member's EOS tokens becomes the ensemble's EOS, and the mass of its other control tokens
(chat markers a text cannot contain) is dropped and the rest renormalised. The members' distributions are
combined as the weighted mean of probabilities (`mode="mean"`, the paper's) or the normalised weighted
product (`mode="product"`); the chosen token advances every member.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Sequence

import torch
from transformers import (
    BatchEncoding,
    GenerationConfig,
    GenerationMixin,
    LogitsProcessor,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.modeling_outputs import CausalLMOutput

from hf_coop.config_utils import ArtifactError, fingerprint, push_folder_to_hub, render_model_card
from hf_coop.scoring import TextScore, check_text, start_token_id
from hf_coop.vocab.mcv import SPLITS, maximal_common_vocabulary, resolve_split
from hf_coop.vocab.reduced_lm import PromptError, ReducedVocabLM, ReducedVocabTokenizer, unpadded_rows
from hf_coop.vocab.relative_cover import CoverSettings, CoverState
from hf_coop.vocab.sub_vocabulary import SubVocabulary

MODES = ("mean", "product")
NEG_INF = float("-inf")


def check_weights(weights: Sequence[float] | None, n_members: int) -> list[float]:
    """Weights normalised to sum 1 (default: equal); negative weights or a non-positive sum are refused."""
    weights = [1.0] * n_members if weights is None else [float(w) for w in weights]
    if len(weights) != n_members:
        raise ValueError(f"got {len(weights)} weights for {n_members} members; give one weight per member")
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(
            f"weights must be finite, non-negative and sum to a positive number, got {weights}; "
            "e.g. --weights 0.5 0.5"
        )
    return [w / sum(weights) for w in weights]


def combine(member_logprobs: torch.Tensor, weights: torch.Tensor, mode: str) -> torch.Tensor:
    """Combine members' log-probabilities `(members, vocab)` into one normalised log-distribution.

    mean: log Σ_m w_m p_m; product: Σ_m w_m log p_m, renormalised. Where the product has no support (K-LVR
    members that keep disjoint tokens), the mean is used for that step instead of an undefined distribution.
    """
    mean = torch.logsumexp(member_logprobs + weights.log()[:, None], dim=0)
    if mode == "mean":
        return mean
    product = (weights[:, None] * member_logprobs).sum(0)
    total = torch.logsumexp(product, 0)
    return mean if total == NEG_INF else product - total


class CommonVocabEnsembleConfig(PretrainedConfig):
    """Members by path or hub id, weights, combination mode, pruning (K = `max_hypotheses`) and the MCV's
    fingerprint."""

    model_type = "hf_coop_common_vocab_ensemble"

    def __init__(
        self,
        members: list[str] | None = None,
        weights: list[float] | None = None,
        mode: str = "mean",
        max_hypotheses: int | None = None,
        prune_ratio: float = 0.0,
        split: str = "common",
        sub_vocab: str = "mcv",
        mcv_fingerprint: str | None = None,
        mcv_size: int | None = None,
        vocab_size: int = 257,
        **kwargs,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.members = list(members or [])
        self.weights = weights
        self.mode = mode
        self.max_hypotheses = max_hypotheses
        self.prune_ratio = prune_ratio
        self.split = split
        self.sub_vocab = sub_vocab
        self.mcv_fingerprint = mcv_fingerprint
        self.mcv_size = mcv_size
        self.vocab_size = vocab_size
        super().__init__(**kwargs)


class CommonVocabTokenizer:
    """Encodes a prompt once per member (its own tokenizer, special tokens and chat template).

    A prompt's ensemble ids are the first member's MCV split of it without control tokens; every encoded
    prompt is remembered (ensemble ids -> each member's sub-token ids) so the members see their own tokens.
    """

    padding_side = "left"

    def __init__(self, members: list[ReducedVocabTokenizer]):
        self.members = members
        self.num_text = len(members[0].nested.sub_strings)
        self.eos_token_id = self.pad_token_id = self.num_text
        self.bos_token_id = None
        self.prompts: dict[tuple[int, ...], list[tuple[int, ...]]] = {}

    def __len__(self) -> int:
        return self.num_text + 1

    def _register(self, member_rows: list[list[int]]) -> list[int]:
        key = tuple(s for s in member_rows[0] if s < self.num_text)
        if not key:
            raise PromptError("the prompt has no text; give at least one character")
        self.prompts[key] = [tuple(r) for r in member_rows]
        return list(key)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._register([m.encode(text, add_special_tokens) for m in self.members])

    def __call__(
        self, text: str | list[str], return_tensors: str | None = None, add_special_tokens: bool = True, **_
    ) -> BatchEncoding:
        texts = [text] if isinstance(text, str) else list(text)
        return self._batch([self.encode(t, add_special_tokens) for t in texts], return_tensors)

    def apply_chat_template(
        self, conversation, add_generation_prompt: bool = True, return_tensors=None, **kwargs
    ) -> BatchEncoding:
        """Each member's own chat template; a member without one is named in the error."""
        conversations = [conversation] if conversation and isinstance(conversation[0], dict) else conversation
        for index, member in enumerate(self.members):
            if not member.original.chat_template:
                raise PromptError(
                    f"member {index} ({member.original.name_or_path or type(member.original).__name__}) has no "
                    "chat template, so a chat prompt means nothing to it; drop --chat / use plain prompts, or "
                    "set that tokenizer's chat_template"
                )
        rows = []
        for conv in conversations:
            member_rows = [
                m.apply_chat_template(conv, add_generation_prompt=add_generation_prompt, **kwargs)[
                    "input_ids"
                ]
                for m in self.members
            ]
            rows.append(self._register(member_rows))
        return self._batch(rows, return_tensors)

    def _batch(self, rows: list[list[int]], return_tensors: str | None) -> BatchEncoding:
        return ReducedVocabTokenizer._batch(self, rows, return_tensors)

    def decode(self, ids, skip_special_tokens: bool = False, **_) -> str:
        """Text of ensemble ids; the EOS id prints as the first member's EOS token unless skipped."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        strings = self.members[0].nested.sub_strings
        eos = b"" if skip_special_tokens else str(self.members[0].original.eos_token or "").encode()
        return b"".join(strings[i] if i < self.num_text else eos for i in ids).decode(
            "utf-8", errors="replace"
        )

    def batch_decode(self, sequences, **kwargs) -> list[str]:
        return [self.decode(s, **kwargs) for s in sequences]


def _check_device(index: int, model: PreTrainedModel) -> None:
    devices = {p.device for p in model.parameters()}
    if any(d.type == "meta" for d in devices):
        raise ValueError(
            f"member {index} has weights on the meta device (not loaded, or offloaded without an execution "
            "device); load it onto a real device, e.g. from_pretrained(..., device_map='cuda:1') or .to('cpu')"
        )


class CommonVocabEnsemble(PreTrainedModel, GenerationMixin):
    """A `GenerationMixin` model over the MCV of its members (see the module docstring)."""

    config_class = CommonVocabEnsembleConfig
    main_input_name = "input_ids"
    _supports_cache_class = False

    def __init__(self, config: CommonVocabEnsembleConfig, members: list[ReducedVocabLM]):
        super().__init__(config)
        if not members:
            raise ValueError("an ensemble needs at least one member")
        for index, member in enumerate(members):
            _check_device(index, member.original)
            if member.nested.sub_strings != members[0].nested.sub_strings:
                raise ValueError(
                    f"member {index} is reduced to another sub-vocabulary than member 0; build the ensemble "
                    "with CommonVocabEnsemble.from_models so every member uses the same MCV"
                )
        self.members = torch.nn.ModuleList(members)
        self.tokenizer = CommonVocabTokenizer([m.tokenizer for m in members])
        self.num_text = self.tokenizer.num_text
        self.set_weights(config.weights)
        self.eos_sub_ids = [self._member_eos(m) for m in members]
        self._prompt_lengths: dict[tuple[int, ...], int] = {}
        self.generation_config = GenerationConfig(
            eos_token_id=[self.num_text], pad_token_id=self.num_text, use_cache=False
        )

    @staticmethod
    def _member_eos(member: ReducedVocabLM) -> list[int]:
        """A member's EOS sub-tokens: its tokenizer's EOS and its generation config's EOS ids."""
        ids = member.original.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        control = member.nested.control_sub_id
        subs = {control[i] for i in [member.tokenizer.original.eos_token_id, *ids] if i in control}
        return sorted(subs)

    def set_weights(self, weights: Sequence[float] | None) -> None:
        """Change the member weights (validated, normalised to sum 1)."""
        self.weights = check_weights(weights, len(self.members))
        self.config.weights = self.weights

    @classmethod
    def from_models(
        cls,
        models: Sequence[PreTrainedModel],
        tokenizers: Sequence[PreTrainedTokenizerBase],
        weights: Sequence[float] | None = None,
        mode: str = "mean",
        max_hypotheses: int | None = None,
        prune_ratio: float = 0.0,
        split: str = "common",
        names: Sequence[str] | None = None,
        sub_vocab: str = "mcv",
    ) -> CommonVocabEnsemble:
        """Reduce every model to the MCV of all tokenizers and ensemble them; `names` (paths or hub ids,
        default each model's `name_or_path`) are what `save_pretrained` records.

        Members keep every next token of each boundary history (no top-K of tokens: a member must be able to
        follow a token that another member chose, and the token spelling one MCV string always can be).
        Their cost is bounded by `max_hypotheses` (the K of the CLI) and `prune_ratio`; what pruning drops
        is reported by each member's state. `sub_vocab="bytes"` ensembles over single bytes instead of the
        MCV (the byte-level baseline)."""
        if len(models) != len(tokenizers) or not models:
            raise ValueError(f"give one tokenizer per model (got {len(models)} models, {len(tokenizers)})")
        if sub_vocab not in ("mcv", "bytes"):
            raise ValueError(f"sub_vocab must be 'mcv' or 'bytes', got {sub_vocab!r}")
        mcv = (
            SubVocabulary.bytes_only() if sub_vocab == "bytes" else maximal_common_vocabulary(*tokenizers)[0]
        )
        splitter = resolve_split(split, mcv, tokenizers)
        members = [
            ReducedVocabLM.from_model(m, t, mcv, None, max_hypotheses, prune_ratio, split=splitter)
            for m, t in zip(models, tokenizers)
        ]
        config = CommonVocabEnsembleConfig(
            members=list(names or [m.name_or_path for m in models]),
            weights=check_weights(weights, len(models)),
            mode=mode,
            max_hypotheses=max_hypotheses,
            prune_ratio=prune_ratio,
            split=split,
            sub_vocab=sub_vocab,
            mcv_fingerprint=fingerprint({"mcv": [s.hex() for s in mcv.ordered()], "split": split}),
            mcv_size=len(mcv.strings),
            vocab_size=len(mcv.strings) + 1,
        )
        return cls(config, members)

    # -- the distribution --------------------------------------------------------------------------------
    def member_logprobs(self, index: int, state: CoverState) -> torch.Tensor:
        """One member's log p over the ensemble vocabulary (text sub-tokens, then EOS): its EOS tokens'
        mass becomes EOS, its other control tokens are dropped and the rest renormalised."""
        logprobs = state.next_logprobs()
        eos = torch.logsumexp(logprobs[self.eos_sub_ids[index]], 0, keepdim=True)
        out = torch.cat([logprobs[: self.num_text], eos])
        return out - torch.logsumexp(out, 0)

    def _prompt_length(self, row: tuple[int, ...]) -> int:
        if row[:-1] in self._prompt_lengths:
            return self._prompt_lengths[row[:-1]]
        for n in range(len(row), 0, -1):
            if row[:n] in self.tokenizer.prompts:
                return n
        raise PromptError(
            "this prompt was not encoded by the ensemble's tokenizer; encode prompts with "
            "ensemble.tokenizer(...) or ensemble.tokenizer.apply_chat_template(...) so every member sees its own tokens"
        )

    def next_logprobs(self, rows: list[tuple[int, ...]]) -> torch.Tensor:
        """log p(next ensemble token | row) for every row (ensemble ids without padding), float64 on CPU."""
        out = torch.full((len(rows), self.num_text + 1), NEG_INF, dtype=torch.float64)
        lengths = {row: self._prompt_length(row) for row in rows}
        self._prompt_lengths = lengths
        live = [b for b, row in enumerate(rows) if self.num_text not in row[lengths[row] :]]
        for b in set(range(len(rows))) - set(live):
            out[b, self.num_text] = 0.0  # finished rows: padding (the EOS id) only
        active = [m for m, w in enumerate(self.weights) if w > 0]
        per_member = []
        for m in active:
            member_rows = []
            for b in live:
                row = rows[b]
                member_rows.append(self.tokenizer.prompts[row[: lengths[row]]][m] + row[lengths[row] :])
            states = self.members[m].row_states(member_rows)
            per_member.append([self.member_logprobs(m, s) for s in states])
        weights = torch.tensor([self.weights[m] for m in active], dtype=torch.float64)
        for i, b in enumerate(live):
            out[b] = combine(torch.stack([p[i] for p in per_member]), weights, self.config.mode)
        return out

    # -- generation plumbing -----------------------------------------------------------------------------
    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def reset(self) -> None:
        """Forget every row's state (they are also dropped as soon as no row continues them)."""
        self._prompt_lengths = {}
        for member in self.members:
            member.reset()

    def forward(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> CausalLMOutput:
        """Next-token log-probabilities over the ensemble vocabulary, shape `(batch, 1, vocab)`."""
        logprobs = self.next_logprobs(unpadded_rows(input_ids, attention_mask))
        return CausalLMOutput(logits=logprobs.float()[:, None, :].to(input_ids.device))

    # -- saving ------------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Write the small config (members by path, weights, mode, K, MCV fingerprint) and a model card;
        never the members' weights, which stay where their paths point."""
        os.makedirs(save_directory, exist_ok=True)
        self.config.save_pretrained(save_directory)
        card = render_model_card(
            "ensemble.md",
            members="\n".join(
                f"| {i} | `{n}` | {w:.3f} |"
                for i, (n, w) in enumerate(zip(self.config.members, self.weights))
            ),
            mode=self.config.mode,
            max_hypotheses=self.config.max_hypotheses,
            split=self.config.split,
            mcv_size=self.config.mcv_size,
            fingerprint=self.config.mcv_fingerprint,
        )
        with open(os.path.join(save_directory, "README.md"), "w", encoding="utf-8") as f:
            f.write(card)

    def push_to_hub(self, repo_id: str, **kwargs):
        """Upload the config and the rendered card (`push_folder_to_hub` arguments: commit_message, private,
        token, revision, create_pr); the members stay where their recorded paths point."""
        return push_folder_to_hub(self.save_pretrained, repo_id, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        members: Sequence[tuple[PreTrainedModel, PreTrainedTokenizerBase]] | None = None,
        **overrides,
    ) -> CommonVocabEnsemble:
        """Reload a saved ensemble: members from their recorded paths (or given as (model, tokenizer)
        pairs); the rebuilt MCV must match the saved fingerprint. `overrides` change config values."""
        config = CommonVocabEnsembleConfig.from_pretrained(path)
        for key, value in overrides.items():
            setattr(config, key, value)
        if members is None:
            from hf_coop.models import load_model

            members = [load_model(name) for name in config.members]
        ensemble = cls.from_models(
            [m for m, _ in members],
            [t for _, t in members],
            config.weights,
            config.mode,
            config.max_hypotheses,
            config.prune_ratio,
            config.split,
            names=config.members,
            sub_vocab=config.sub_vocab,
        )
        if ensemble.config.mcv_fingerprint != config.mcv_fingerprint:
            raise ArtifactError(
                f"the members' common vocabulary ({ensemble.config.mcv_fingerprint}) is not the saved one "
                f"({config.mcv_fingerprint}): a member's tokenizer changed; load the tokenizers it was saved with"
            )
        return ensemble


@dataclasses.dataclass
class EnsembleScore(TextScore):
    """The ensemble's log-probability of a text's MCV token sequence (the first member's split)."""

    truncated_mass: float = 0.0  # largest mass any member's pruning dropped


@torch.no_grad()
def ensemble_logprob(
    ensemble: CommonVocabEnsemble,
    text: str,
    max_hypotheses: int | None = 8,
    prune_ratio: float = 1e-8,
    mixtures: Sequence[tuple[Sequence[float], str]] | None = None,
) -> EnsembleScore | list[EnsembleScore]:
    """Score `text` under the ensemble, conditioned on each member's start token: the sum of the combined
    conditionals along the text's MCV tokens. Members keep every next token (no K-LVR, which cannot score
    a given text); only the hypotheses carried forward are pruned, and the dropped mass is reported.

    `mixtures`: several (weights, mode) combinations of the same members scored in one pass (each member
    runs once whatever the mixtures); a list of scores is returned, in order."""
    data = check_text(text)
    member0 = ensemble.members[0]
    sub_ids = member0.nested.encode_tokens(
        member0.tokenizer.original(text, add_special_tokens=False)["input_ids"]
    )
    if mixtures is None:
        mixes = [(torch.tensor(ensemble.weights, dtype=torch.float64), ensemble.config.mode)]
    else:
        mixes = []
        for weights, mode in mixtures:
            if mode not in MODES:
                raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
            mixes.append(
                (torch.tensor(check_weights(weights, len(ensemble.members)), dtype=torch.float64), mode)
            )
    active = [m for m in range(len(ensemble.members)) if any(w[m] > 0 for w, _ in mixes)]
    settings = CoverSettings(None, max_hypotheses, prune_ratio)
    states = {
        m: CoverState(
            ensemble.members[m].runner, [start_token_id(ensemble.members[m].tokenizer.original)], settings
        )
        for m in active
    }
    members_of = [[m for m in active if weights[m] > 0] for weights, _ in mixes]
    totals = [0.0] * len(mixes)
    for step, sub_id in enumerate(sub_ids):
        member = {m: ensemble.member_logprobs(m, state) for m, state in states.items()}
        for i, ((weights, mode), used) in enumerate(zip(mixes, members_of)):
            logprobs = torch.stack([member[m] for m in used])
            totals[i] += combine(logprobs, weights[used], mode)[sub_id].item()
        if step + 1 < len(sub_ids):
            for state in states.values():
                state.advance(sub_id)
    scores = [
        EnsembleScore(
            nats=total,
            n_bytes=len(data),
            n_tokens=len(sub_ids),
            truncated_mass=max(math.exp(states[m].truncated_logmass) for m in used),
        )
        for total, used in zip(totals, members_of)
    ]
    return scores if mixtures is not None else scores[0]


class CommonVocabLogitsProcessor(LogitsProcessor):
    """The ensemble as a logits processor for one member's own `generate` (the *driver*).

        processor = CommonVocabLogitsProcessor(ensemble, driver=0)
        inputs = processor.encode("The capital of France is")
        out = driver_model.generate(**inputs, logits_processor=[processor], do_sample=False)

    It restricts the driver to tokens that are exactly one MCV token (or EOS) and replaces their scores by
    the ensemble's log-probabilities, so one generated driver token is one ensemble token and the greedy
    text equals `CommonVocabEnsemble.generate`'s. Cost: everything the ensemble computes, plus one forward
    of the driver per generated token whose logits are thrown away (and its KV cache over those tokens);
    the model form avoids that extra forward. Call `reset()` (or `encode` again) between generations.
    """

    def __init__(self, ensemble: CommonVocabEnsemble, driver: int = 0):
        self.ensemble = ensemble
        self.driver = driver
        member = ensemble.members[driver]
        original = member.tokenizer.original
        token_of_sub: dict[int, int] = {}
        index = {s: i for i, s in enumerate(member.nested.sub_strings)}
        for token_id, data in enumerate(member.nested.table.byte_strings):
            if data in index:
                token_of_sub.setdefault(index[data], token_id)  # lowest id stands for the string
        missing = [s for s in range(ensemble.num_text) if s not in token_of_sub]
        if missing:
            raise ValueError(
                f"the driver's vocabulary lacks {len(missing)} MCV strings (e.g. "
                f"{member.nested.sub_strings[missing[0]]!r}); pick a byte-level or byte-fallback member as driver"
            )
        self.token_of_sub = torch.tensor([token_of_sub[s] for s in range(ensemble.num_text)])
        self.sub_of_token = {t: s for s, t in token_of_sub.items()}
        self.eos_token_id = original.eos_token_id
        self.pad_token_id = (
            original.pad_token_id if original.pad_token_id is not None else original.eos_token_id
        )
        self.reset()

    def reset(self) -> None:
        self._prompts: dict[tuple[int, ...], tuple[int, ...]] = {}
        self._width = 0

    def _driver_inputs(self, keys: list[list[int]]) -> BatchEncoding:
        tok = self.ensemble.tokenizer
        member = self.ensemble.members[self.driver].tokenizer
        rows = [member.prompts[tok.prompts[tuple(k)][self.driver]] for k in keys]
        self.reset()
        self._width = max(len(r) for r in rows)
        ids = [[self.pad_token_id] * (self._width - len(r)) + list(r) for r in rows]
        mask = [[0] * (self._width - len(r)) + [1] * len(r) for r in rows]
        for key, row in zip(keys, ids):
            self._prompts[tuple(row)] = tuple(key)
        return BatchEncoding({"input_ids": ids, "attention_mask": mask}, tensor_type="pt")

    def encode(self, text: str | list[str], add_special_tokens: bool = True) -> BatchEncoding:
        """The driver's inputs for `text` (every member's prompt is registered with the ensemble)."""
        texts = [text] if isinstance(text, str) else list(text)
        return self._driver_inputs([self.ensemble.tokenizer.encode(t, add_special_tokens) for t in texts])

    def apply_chat_template(self, conversation, add_generation_prompt: bool = True) -> BatchEncoding:
        keys = self.ensemble.tokenizer.apply_chat_template(conversation, add_generation_prompt)["input_ids"]
        keys = [keys] if keys and isinstance(keys[0], int) else keys
        return self._driver_inputs([[i for i in k if i != self.ensemble.num_text] for k in keys])

    def decode(self, token_ids) -> str:
        """Text of the driver's generated token ids."""
        table = self.ensemble.members[self.driver].nested.table
        ids = token_ids.tolist() if isinstance(token_ids, torch.Tensor) else list(token_ids)
        return table.decode(ids).decode("utf-8", errors="replace")

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows, live = [], []
        for b in range(input_ids.shape[0]):
            prompt = tuple(input_ids[b, : self._width].tolist())
            if prompt not in self._prompts:
                raise PromptError(
                    "this prompt was not encoded by processor.encode(...) / apply_chat_template(...)"
                )
            generated = input_ids[b, self._width :].tolist()
            if self.eos_token_id in generated or any(t not in self.sub_of_token for t in generated):
                continue  # finished row: generate pads it
            rows.append(self._prompts[prompt] + tuple(self.sub_of_token[t] for t in generated))
            live.append(b)
        out = scores.clone()
        if not live:
            return out
        logprobs = self.ensemble.next_logprobs(rows).to(scores.device, scores.dtype)
        out[live] = NEG_INF
        live_t = torch.tensor(live, device=scores.device)
        out[live_t[:, None], self.token_of_sub.to(scores.device)[None, :]] = logprobs[
            :, : self.ensemble.num_text
        ]
        if self.eos_token_id is not None:
            out[live_t, self.eos_token_id] = logprobs[:, self.ensemble.num_text]
        return out


def load_ensemble(
    names: Sequence[str],
    weights: Sequence[float] | None = None,
    mode: str = "mean",
    max_hypotheses: int | None = 8,
    prune_ratio: float = 1e-4,
    split: str = "common",
) -> CommonVocabEnsemble:
    """An ensemble of demo model names, local folders or hub ids (the CLI's and demo's entry point)."""
    from hf_coop.models import load_model

    check_weights(weights, len(names))  # fail before loading anything
    loaded = [load_model(name) for name in names]
    return CommonVocabEnsemble.from_models(
        [m for m, _ in loaded],
        [t for _, t in loaded],
        weights,
        mode,
        max_hypotheses,
        prune_ratio,
        split,
        names,
    )


def add_ensemble_arguments(p: argparse.ArgumentParser, flag: str = "--model") -> None:
    """Members, weights, mode and pruning (shared by `hf-coop ensemble` and `hf-coop score --ensemble`)."""
    p.add_argument(flag, action="append", dest="members", help="member model (repeatable)")
    p.add_argument(
        "--weights", type=float, nargs="+", help="one non-negative weight per member (default equal)"
    )
    p.add_argument(
        "--mode", choices=MODES, default="mean", help="mean of probabilities or product of experts"
    )
    p.add_argument("--k", type=int, default=8, help="hypotheses kept per member and step (0: no cap, exact)")
    p.add_argument("--prune-ratio", type=float, default=1e-4, help="drop hypotheses lighter than this × best")
    p.add_argument("--split", choices=SPLITS, default="common", help="how members split tokens into the MCV")


def ensemble_from_args(args: argparse.Namespace, default: Sequence[str]) -> CommonVocabEnsemble:
    return load_ensemble(
        args.members or list(default), args.weights, args.mode, args.k or None, args.prune_ratio, args.split
    )


def _run_ensemble(args: argparse.Namespace) -> int:
    from transformers import TextStreamer

    from hf_coop.models import DEMO_MODELS

    ensemble = ensemble_from_args(args, DEMO_MODELS)
    if args.chat:
        inputs = ensemble.tokenizer.apply_chat_template(
            [{"role": "user", "content": args.prompt}], return_tensors="pt"
        )
    else:
        inputs = ensemble.tokenizer(args.prompt, return_tensors="pt")
    if args.seed is not None:
        torch.manual_seed(args.seed)
    print(args.prompt, end="", flush=True)
    ensemble.generate(
        **inputs,
        max_new_tokens=args.max_new_tokens,
        do_sample=args.sample,
        temperature=args.temperature if args.sample else None,
        top_p=args.top_p if args.sample else None,
        streamer=TextStreamer(ensemble.tokenizer, skip_prompt=True, skip_special_tokens=True),
    )
    return 0


def add_subcommands(subparsers) -> None:
    p = subparsers.add_parser(
        "ensemble", help="generate with models of different tokenizers through their common vocabulary"
    )
    p.add_argument("prompt")
    add_ensemble_arguments(p)
    p.add_argument("--max-new-tokens", type=int, default=40, help="in common-vocabulary tokens")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in every member's chat template")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int)
    p.set_defaults(func=_run_ensemble)


def score_command(args: argparse.Namespace, text: str) -> int:
    """`hf-coop score --ensemble A --ensemble B`: the ensemble's log-probability of the text's MCV tokens."""
    import json

    ensemble = load_ensemble(args.ensemble, args.weights, args.mode, args.top_k or None, args.prune_ratio)
    score = ensemble_logprob(ensemble, text, args.top_k or None, args.prune_ratio)
    result = {"ensemble": args.ensemble, "weights": ensemble.weights, "mode": args.mode, **score.to_dict()}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"ensemble of {', '.join(args.ensemble)} ({args.mode}): {score.n_bytes} bytes, {score.n_tokens} MCV "
            f"tokens, {score.nats:.3f} nats, {score.bits_per_byte:.4f} bits/byte (pruned mass ≤ {score.truncated_mass:.1e})"
        )
    return 0
