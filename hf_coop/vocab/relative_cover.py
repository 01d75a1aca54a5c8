"""The relative-cover recursion of lossless vocabulary reduction (arXiv 2510.08102, shared/DESIGN.md §1).

State after a sub-token prefix `y_1..k`: a set of *hypotheses* `(h, range, depth)`. `h` is a boundary
history (original tokens whose nested tokenization ends exactly at some `y_j`, with its log-probability
`logw` and the model's next-token distribution), and `range` is the contiguous trie range of next tokens
`u` whose split `τ(u)` starts with `y_{j+1..k}` (the `depth = k - j` sub-tokens spelled so far) and goes
on. Then

    Π(y_1..k) = Σ_hyp exp(logw) · Σ_{u in range} p(u | h),
    p(y_{k+1} | y_1..k) = Σ_hyp exp(logw) · Σ_{u in range, τ(u)[depth] = y_{k+1}} p(u | h) / Π(y_1..k).

Advancing by `y_{k+1}` narrows each range to its child (a binary search, since tokens are sorted by split);
tokens whose split ends there become new boundary histories `h + u`, and only those call the model.
A sub-token inside a long token costs bookkeeping only.

Approximations, all of them accounted for in `truncated_logmass` (the log of the probability mass dropped,
so the exact prefix probability lies in [kept, kept + truncated]):
  - `top_k`: each boundary keeps its K most likely next tokens (the paper's K-LVR; K=1 is greedy);
  - `max_hypotheses` / `prune_ratio`: hypotheses whose mass is far below the best are dropped.

Pruning may drop every hypothesis that can go on spelling a given text (a light boundary inside a word is
the only one that can continue past a byte no kept token spells). The boundary histories pruned in the last
`backtrack` steps are held back unevaluated; when a sub-token finds no kept hypothesis, the state backs up
to the latest held-back step, evaluates those histories and replays the sub-tokens since. Their masses stay
counted as dropped, so the bound only loosens.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
from collections import defaultdict

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from hf_coop.vocab.sub_vocabulary import NestedTable

NEG_INF = float("-inf")


@dataclasses.dataclass(frozen=True)
class CoverSettings:
    """How far the recursion may be truncated; the defaults are exact."""

    top_k: int | None = None  # next tokens kept per boundary history (None: all)
    max_hypotheses: int | None = None  # live hypotheses kept per step (None: all)
    prune_ratio: float = 0.0  # drop hypotheses lighter than prune_ratio × the heaviest
    backtrack: int = 16  # steps for which pruned boundary histories are held back, unevaluated, for rescue

    def __post_init__(self):
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {self.top_k}")
        if self.max_hypotheses is not None and self.max_hypotheses < 1:
            raise ValueError(f"max_hypotheses must be >= 1 or None, got {self.max_hypotheses}")
        if not 0.0 <= self.prune_ratio < 1.0:
            raise ValueError(f"prune_ratio must be in [0, 1), got {self.prune_ratio}")
        if self.backtrack < 0:
            raise ValueError(f"backtrack must be >= 0, got {self.backtrack}")


class History:
    """A boundary history: the original token ids, log p(ids after the prompt), and once evaluated its KV
    cache and kept next tokens (`cand_pos`: sorted trie positions; `cand_logp`: their log-probs)."""

    __slots__ = ("token_ids", "logw", "parent", "cache", "logprobs", "cand_pos", "cand_logp", "shared")

    def __init__(self, token_ids: list[int], logw: float, parent: History | None = None):
        self.token_ids = token_ids
        self.logw = logw
        self.parent = parent
        self.cache = None
        self.logprobs: torch.Tensor | None = None  # next-token log-probs, set by the runner, then consumed
        self.cand_pos: torch.Tensor | None = None
        self.cand_logp: torch.Tensor | None = None
        self.shared = False  # reachable from several states (forked rows): its cache is copied, never taken


@dataclasses.dataclass
class Hypothesis:
    history: History
    lo: int  # range [lo, hi) into history.cand_pos / cand_logp
    hi: int
    depth: int
    logmass: float  # logw + log Σ_{u in range} p(u | h)


class ModelRunner:
    """Calls the original causal LM for boundary histories, reusing the parent's KV cache."""

    def __init__(self, model: torch.nn.Module, nested: NestedTable):
        self.model = model
        self.nested = nested
        params = inspect.signature(model.forward).parameters
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self.forward_calls = 0  # batched model calls
        self.evaluated = 0  # histories evaluated
        self.max_batch = 32  # histories per batched call

    def _logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits[..., : self.nested.vocab_size]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        if torch.isnan(logits).any():
            raise ValueError("the model produced NaN logits; check its dtype (fp16 overflow?) and weights")
        return torch.log_softmax(logits, dim=-1)

    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor,
        cache,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, object]:
        self.forward_calls += 1
        device = self.model.device
        kwargs = {self.cache_kwarg: cache} if cache is not None else {}
        if position_ids is not None:
            kwargs["position_ids"] = position_ids.to(device)
        if attention_mask is None:
            past = cache.get_seq_length() if cache is not None else 0
            attention_mask = torch.ones(input_ids.shape[0], past + input_ids.shape[1], dtype=torch.long)
        out = self.model(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=True, **kwargs
        )
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        return self._logprobs(out.logits[:, -1]).cpu(), cache

    def evaluate_prompt(self, history: History) -> torch.Tensor:
        logprobs, history.cache = self.forward(torch.tensor([history.token_ids]), None)
        self.evaluated += 1
        return logprobs[0]

    def evaluate_children(self, groups: list[tuple[History, list[History], bool]]) -> None:
        """Forward each child's last token on its parent's cache and set the child's cache; returns nothing,
        the caller reads `child.logprobs`. `groups` holds (parent, children, parent_still_needed)."""
        width = max(parent.cache.get_seq_length() for parent, _, _ in groups)
        if len(groups) > 1 and all(_paddable(parent.cache, width) for parent, _, _ in groups):
            children = [child for _, kids, _ in groups for child in kids]
            for start in range(0, len(children), self.max_batch):
                self._forward_padded(children[start : start + self.max_batch])
        else:
            for parent, kids, needed in groups:
                self._forward_on_parent(parent, kids, steal=not needed)

    def _forward_on_parent(self, parent: History, children: list[History], steal: bool) -> None:
        """Children of one parent in one call; `steal` lets a single child take the parent's cache."""
        steal = steal and not parent.shared and len(children) == 1
        cache = parent.cache if steal else _clone(parent.cache)
        if steal:
            parent.cache = None
        if len(children) > 1:
            cache.batch_repeat_interleave(len(children))
        logprobs, cache = self.forward(torch.tensor([[c.token_ids[-1]] for c in children]), cache)
        for row, child in enumerate(children):
            if len(children) == 1:
                child.cache = cache
            else:
                child.cache = _clone(cache)
                child.cache.batch_select_indices(torch.tensor([row]))
            child.logprobs = logprobs[row]
        self.evaluated += len(children)

    def _forward_padded(self, children: list[History]) -> None:
        """Children of different parents in one call: parents' caches left-padded to one length (full-
        attention, or sliding windows not yet full), attention mask and position ids per row, as batched
        generation does."""
        lengths = [c.parent.cache.get_seq_length() for c in children]
        width = max(lengths)
        padded = []
        for layer in range(len(children[0].parent.cache.layers)):
            keys, values = [], []
            for child, length in zip(children, lengths):
                parent_layer = child.parent.cache.layers[layer]
                keys.append(F.pad(parent_layer.keys, (0, 0, width - length, 0)))
                values.append(F.pad(parent_layer.values, (0, 0, width - length, 0)))
            padded.append((torch.cat(keys), torch.cat(values)))
        cache = _cache_like(children[0].parent.cache, padded, width)
        mask = torch.zeros(len(children), width + 1, dtype=torch.long)
        for row, length in enumerate(lengths):
            mask[row, width - length :] = 1
        positions = torch.tensor([[length] for length in lengths])
        tokens = torch.tensor([[c.token_ids[-1]] for c in children])
        logprobs, cache = self.forward(tokens, cache, mask, positions)
        for row, (child, length) in enumerate(zip(children, lengths)):
            keep = slice(width - length, None)
            rows = [
                (lay.keys[row : row + 1, :, keep].clone(), lay.values[row : row + 1, :, keep].clone())
                for lay in cache.layers
            ]
            child.cache = _cache_like(cache, rows, length + 1)
            child.logprobs = logprobs[row]
        self.evaluated += len(children)


def _paddable(cache, width: int) -> bool:
    """Dynamic caches can be left-padded to `width` and batched while no sliding window is full (then a
    sliding layer still holds every position and attends like a full one)."""
    return all(
        type(layer) is DynamicLayer
        or (type(layer) is DynamicSlidingWindowLayer and width + 1 < layer.sliding_window)
        for layer in cache.layers
    )


def _cache_like(template, tensors: list[tuple[torch.Tensor, torch.Tensor]], length: int):
    """A cache with `template`'s layer types holding `tensors` ((keys, values) per layer) for `length`
    positions. Dynamic layers never write into their tensors (updates concatenate), so sharing is safe."""
    cache = copy.copy(template)
    cache.layers = []
    for layer, (keys, values) in zip(template.layers, tensors):
        layer = copy.copy(layer)
        layer.keys, layer.values = keys, values
        if isinstance(layer, DynamicSlidingWindowLayer):
            layer.cumulative_length = length
        cache.layers.append(layer)
    return cache


def _clone(cache):
    """An independent copy of a KV cache: dynamic layers share their tensors, others are deep-copied."""
    if all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in cache.layers):
        return _cache_like(
            cache, [(layer.keys, layer.values) for layer in cache.layers], cache.get_seq_length()
        )
    return copy.deepcopy(cache)


def logaddexp(a: float, b: float) -> float:
    if a == NEG_INF or b == NEG_INF:
        return max(a, b)
    top = max(a, b)
    return top + math.log1p(math.exp(-abs(a - b)))


def _logsumexp(values: torch.Tensor) -> float:
    return torch.logsumexp(values, 0).item() if values.numel() else NEG_INF


class CoverState:
    """The recursion for one sequence: `next_logprobs()` over sub-tokens, `advance(sub_id)`."""

    def __init__(
        self,
        runner: ModelRunner,
        prompt_ids: list[int],
        settings: CoverSettings,
        eos_sub_ids: list[int] | None = None,
    ):
        self.runner = runner
        self.eos_sub_ids = set(eos_sub_ids or ())
        self.nested = runner.nested
        self.settings = settings
        self.truncated_logmass = NEG_INF
        self.finished = False
        self.pending: list[History] = []  # boundary histories not yet forwarded (advance(evaluate=False))
        self.sub_ids: list[int] = []  # the sub-tokens advanced so far
        self.held_back: dict[int, list[History]] = {}  # step -> pruned, unevaluated boundary histories
        self.back_ups = 0  # times the text left every kept hypothesis and held-back ones were evaluated
        root = History(list(prompt_ids), 0.0)
        self.hypotheses: list[Hypothesis] = []
        self._attach(root, runner.evaluate_prompt(root))

    def fork(self) -> CoverState:
        """An independent copy for a second row continuing the same prefix (histories are shared)."""
        twin = copy.copy(self)
        twin.hypotheses = [dataclasses.replace(h) for h in self.hypotheses]
        twin.sub_ids = list(self.sub_ids)
        twin.held_back = {step: [copy.copy(h) for h in held] for step, held in self.held_back.items()}
        for hyp in self.hypotheses:
            hyp.history.shared = True
        for held in self.held_back.values():
            for history in held:
                history.parent.shared = True
        return twin

    def advance_or_finish(self, sub_id: int) -> None:
        """`advance`, except that an end-of-sequence sub-token finishes the sequence (no forward)."""
        if sub_id in self.eos_sub_ids:
            self.finished = True
        else:
            self.advance(sub_id)

    # -- bookkeeping -------------------------------------------------------------------------------------
    def _drop(self, logmass: float) -> None:
        self.truncated_logmass = logaddexp(self.truncated_logmass, logmass)

    def _attach(self, history: History, logprobs: torch.Tensor) -> None:
        """Keep the history's next tokens (all, or its top-K) and add its depth-0 hypothesis."""
        nested = self.nested
        k = self.settings.top_k
        if k is None or k >= logprobs.numel():
            history.cand_pos = nested.all_positions
            history.cand_logp = logprobs[nested.order]
            kept = 0.0
        else:
            top = torch.topk(logprobs, k)
            pos, perm = torch.sort(nested.position[top.indices])
            history.cand_pos, history.cand_logp = pos, top.values[perm]
            kept = _logsumexp(top.values)
            if kept < 0.0:
                self._drop(history.logw + math.log(-math.expm1(kept)))
        self.hypotheses.append(Hypothesis(history, 0, len(history.cand_pos), 0, history.logw + kept))

    @property
    def kept_logmass(self) -> float:
        """log Π of the kept hypotheses: the prefix probability they account for."""
        masses = [h.logmass for h in self.hypotheses] + [b.logw for b in self.pending]
        return _logsumexp(torch.tensor(masses, dtype=torch.float64))

    # -- the recursion -----------------------------------------------------------------------------------
    def _keys(self, hyp: Hypothesis) -> torch.Tensor:
        """The next sub-token of each kept token in the hypothesis' range (sorted ascending)."""
        positions = hyp.history.cand_pos[hyp.lo : hyp.hi]
        return self.nested.keys_at(positions, hyp.depth)

    def next_logprobs(self) -> torch.Tensor:
        """log p(next sub-token | prefix) over all sub-token ids, normalised over the kept mass."""
        if self.pending:
            raise RuntimeError(
                "the last advance skipped the model calls (evaluate=False); nothing to predict"
            )
        values, keys = [], []
        for hyp in self.hypotheses:
            h = hyp.history
            keys.append(self._keys(hyp))
            values.append(h.cand_logp[hyp.lo : hyp.hi].double() + h.logw)
        values, keys = torch.cat(values), torch.cat(keys)
        size = self.nested.num_sub_tokens
        peak = torch.full((size,), NEG_INF, dtype=torch.float64).scatter_reduce(0, keys, values, "amax")
        safe_peak = torch.where(torch.isinf(peak), 0.0, peak)
        sums = torch.zeros(size, dtype=torch.float64).scatter_add(
            0, keys, torch.exp(values - safe_peak[keys])
        )
        logp = torch.log(sums) + safe_peak
        return logp - torch.logsumexp(logp, 0)

    def advance(self, sub_id: int, evaluate: bool = True) -> None:
        """Condition on the next sub-token. New boundary histories are forwarded, unless `evaluate=False`
        (the last step of scoring: their probability is all that is needed)."""
        step = len(self.sub_ids)
        while not self._narrow(step, sub_id, evaluate):
            if not self._back_up():
                raise ValueError(
                    f"sub-token {sub_id} ({self.nested.sub_token_bytes(sub_id)!r}) has probability zero under "
                    "the kept hypotheses; with top_k or pruning, raise top_k / max_hypotheses / backtrack "
                    "(or use exact mode)"
                )
        self.sub_ids.append(sub_id)

    def _back_up(self) -> bool:
        """Evaluate the latest held-back boundary histories and replay the sub-tokens since; False when
        nothing is held back (or no held-back history can spell the text)."""
        while self.held_back:
            self.back_ups += 1
            step = max(self.held_back)
            self.hypotheses, self.pending = [], []
            self._evaluate(self.held_back.pop(step))
            if all(self._narrow(i, self.sub_ids[i], True) for i in range(step + 1, len(self.sub_ids))):
                return True
        return False

    def _narrow(self, step: int, sub_id: int, evaluate: bool) -> bool:
        """Advance the hypotheses by `sub_id` (the `step`-th sub-token); False, changing nothing, when no
        kept hypothesis spells it."""
        nested = self.nested
        survivors: list[Hypothesis] = []
        born: list[History] = []
        for hyp in self.hypotheses:
            h = hyp.history
            keys = self._keys(hyp)
            lo = hyp.lo + int(torch.searchsorted(keys, sub_id, right=False))
            hi = hyp.lo + int(torch.searchsorted(keys, sub_id, right=True))
            if lo == hi:
                continue
            # Tokens whose split ends at this sub-token sort first: they become boundary histories.
            ends = int((nested.tau_len[h.cand_pos[lo:hi]] == hyp.depth + 1).sum())
            for p in range(lo, lo + ends):
                token = int(nested.order[h.cand_pos[p]])
                born.append(History(h.token_ids + [token], h.logw + float(h.cand_logp[p]), parent=h))
            if lo + ends < hi:
                mass = h.logw + _logsumexp(h.cand_logp[lo + ends : hi])
                survivors.append(Hypothesis(h, lo + ends, hi, hyp.depth + 1, mass))
        if not survivors and not born:
            return False
        self.hypotheses = survivors
        born = self._prune(born, step)
        if evaluate:
            self._evaluate(born)
        else:
            self.pending = born
        return True

    def _prune(self, born: list[History], step: int) -> list[History]:
        """Keep the heaviest hypotheses: at most `max_hypotheses`, none lighter than `prune_ratio` × the
        heaviest. Dropped masses are counted; dropped boundary histories are held back for `_back_up`."""
        settings = self.settings
        if settings.max_hypotheses is None and settings.prune_ratio == 0.0:
            return born
        entries = [(hyp.logmass, hyp) for hyp in self.hypotheses] + [(b.logw, b) for b in born]
        entries.sort(key=lambda e: e[0], reverse=True)
        limit = len(entries) if settings.max_hypotheses is None else settings.max_hypotheses
        floor = entries[0][0] + math.log(settings.prune_ratio) if settings.prune_ratio > 0 else NEG_INF
        kept_ids = set()
        for rank, (logmass, entry) in enumerate(entries):
            if rank < limit and logmass >= floor:
                kept_ids.add(id(entry))
            else:
                self._drop(logmass)
        self.hypotheses = [h for h in self.hypotheses if id(h) in kept_ids]
        held = [b for b in born if id(b) not in kept_ids]
        if held and settings.backtrack:
            self.held_back[step] = held
        for old in [s for s in self.held_back if s <= step - settings.backtrack]:
            del self.held_back[old]
        return [b for b in born if id(b) in kept_ids]

    def _evaluate(self, born: list[History]) -> None:
        if not born:
            return
        live_parents = {id(hyp.history) for hyp in self.hypotheses}
        live_parents.update(id(h.parent) for held in self.held_back.values() for h in held)
        by_parent: dict[int, list[History]] = defaultdict(list)
        for b in born:
            by_parent[id(b.parent)].append(b)
        groups = [(kids[0].parent, kids, id(kids[0].parent) in live_parents) for kids in by_parent.values()]
        self.runner.evaluate_children(groups)
        for child in born:
            child.parent = None  # free the parent (and its cache) once nothing else needs it
            logprobs, child.logprobs = child.logprobs, None
            self._attach(child, logprobs)
