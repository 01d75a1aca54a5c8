"""The relative-cover recursion of lossless vocabulary reduction (arXiv 2510.08102), for a batch of rows.

State of a row after sub-tokens `y_1..k`: a set of *hypotheses* `(h, node)`. `h` is a boundary history
(original tokens whose nested tokenization ends exactly at some `y_j`, with log-probability `logw` and its
model's next-token distribution, kept whole or as its top-K), and `node` is the trie node of the sub-tokens
`y_{j+1..k}` spelled since (see `trie.py`): the tokens `u` of h's distribution in the node's range are those
whose split starts with them and goes on. Then

    Π(y_1..k) = Σ_hyp exp(logw) · Σ_{u in range} p(u | h),
    p(y_{k+1} | y_1..k) = Σ_hyp exp(logw) · Σ_{u in range, τ(u)[depth] = y_{k+1}} p(u | h) / Π(y_1..k).

Advancing by `y_{k+1}` moves each hypothesis to its child node; the tokens that end there become new
boundary histories `h + u`, the only ones the model must be called for. A sub-token inside a long token
costs bookkeeping only.

Everything is a flat tensor on the model's device (one entry per hypothesis, with its row), so a step over a
whole batch is a handful of vectorised ops and a few host reads of sizes, never a loop over hypotheses.
Model calls are not made here: the scheduler evaluates the births this module asks for and attaches them.

Approximations, each accounted for per row in `truncated` (the log of the probability mass dropped, so the
exact prefix probability lies in [kept, kept + truncated]):
  - `tokens_per_boundary`: each boundary history keeps its K most likely next tokens (K-LVR; K=1 is greedy);
  - `max_hypotheses` / `prune_ratio`: hypotheses far lighter than the row's heaviest are dropped.
Boundary histories pruned in the last `backtrack` steps are held back unevaluated; when a row's next
sub-token leaves every kept hypothesis, the scheduler backs up to them (`take_held_back`).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from hf_coop.vocab.engine.settings import EngineSettings
from hf_coop.vocab.engine.trie import SplitTrie

NEG_INF = float("-inf")


# -- segmented helpers ------------------------------------------------------------------------------------
def segment_logsumexp(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """log Σ exp(values) per segment `index` (length `size`); an empty segment is -inf, never NaN."""
    peak = torch.full((size,), NEG_INF, dtype=values.dtype, device=values.device)
    peak.scatter_reduce_(0, index, values, "amax")
    safe = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    total = torch.zeros_like(peak).scatter_add_(0, index, torch.exp(values - safe[index]))
    return torch.log(total) + safe


def rank_within(group: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Rank of each entry among the entries of its group, by descending score (ties: first come first)."""
    order = torch.argsort(score, descending=True, stable=True)
    order = order[torch.argsort(group[order], stable=True)]
    sorted_group = group[order]
    first = torch.searchsorted(sorted_group, sorted_group)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device) - first
    return rank


def expand_ranges(lo: torch.Tensor, hi: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every integer of every range [lo_i, hi_i): (owner i, integer); `total` = Σ (hi - lo), read beforehand."""
    lengths = hi - lo
    owner = torch.repeat_interleave(torch.arange(len(lo), device=lo.device), lengths, output_size=total)
    starts = torch.cumsum(lengths, 0) - lengths
    return owner, lo[owner] + torch.arange(total, device=lo.device) - starts[owner]


def logaddexp_(target: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> None:
    """target[index] = log(exp(target[index]) + Σ exp(values)) for a [rows] vector, in place."""
    if len(values):
        target.copy_(torch.logaddexp(target, segment_logsumexp(values, index, len(target))))


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0 (-inf where x == 0)."""
    return torch.log(-torch.expm1(x))


def as_index(index: torch.Tensor | slice) -> torch.Tensor | slice:
    """A boolean mask as positions, so that indexing several columns with it finds them (and, on an
    accelerator, waits for the device) once rather than once per column."""
    if isinstance(index, torch.Tensor) and index.dtype == torch.bool:
        return index.nonzero().squeeze(1)
    return index


# -- candidate storage -------------------------------------------------------------------------------------
class CandidateStore:
    """The kept next tokens of every evaluated boundary history, immutable once written (rows that copy a
    history share its entry). Whole distributions (`k=None`) are stored in trie order; top-K ones as
    ascending trie positions (padding: `num_tokens`) with their log-probs (padding: -inf)."""

    def __init__(self, trie: SplitTrie, k: int | None, dtype: torch.dtype):
        self.trie, self.k, self.dtype = trie, k, dtype
        self.width = trie.num_tokens if k is None else min(k, trie.num_tokens)
        device = trie.device
        self.logp = torch.empty((0, self.width), dtype=dtype, device=device)
        self.pos = None if k is None else torch.empty((0, self.width), dtype=torch.long, device=device)
        self.best_logp = torch.empty(0, dtype=dtype, device=device)  # each entry's likeliest token
        self.best_pos = torch.empty(0, dtype=torch.long, device=device)
        self.used = 0

    def add(self, logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the kept tokens of new histories (`logprobs` [N, V] by token id); returns (entry index [N],
        log of the kept mass [N], 0 when every token is kept)."""
        n = len(logprobs)
        if self.used + n > len(self.logp):
            grow = max(n, len(self.logp))
            self.logp = torch.cat([self.logp, self.logp.new_empty(grow, self.width)])
            self.best_logp = torch.cat([self.best_logp, self.best_logp.new_empty(grow)])
            self.best_pos = torch.cat([self.best_pos, self.best_pos.new_empty(grow)])
            if self.pos is not None:
                self.pos = torch.cat([self.pos, self.pos.new_empty(grow, self.width)])
        index = torch.arange(self.used, self.used + n, device=logprobs.device)
        self.used += n
        best = logprobs.max(dim=1)
        self.best_logp[index], self.best_pos[index] = best.values, self.trie.position[best.indices]
        if self.k is None:
            self.logp[index] = logprobs[:, self.trie.order]
            return index, torch.zeros(n, dtype=self.dtype, device=logprobs.device)
        top = torch.topk(logprobs, self.width, dim=1)
        pos = self.trie.position[top.indices]
        pos = torch.where(torch.isfinite(top.values), pos, self.trie.num_tokens)
        pos, perm = torch.sort(pos, dim=1)
        self.pos[index] = pos
        self.logp[index] = top.values.gather(1, perm)
        return index, torch.logsumexp(top.values, dim=1)

    def range_of(self, entry: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
        """Indices [ilo, ihi) of the kept tokens whose trie position lies in [lo, hi)."""
        if self.k is None:
            return lo, hi
        pos = self.pos[entry]
        return (
            torch.searchsorted(pos, lo[:, None].contiguous())[:, 0],
            torch.searchsorted(pos, hi[:, None].contiguous())[:, 0],
        )

    def at(self, entry: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(trie position, log-prob) of kept token `index` of each entry."""
        if self.k is None:
            return index, self.logp[entry, index]
        return self.pos[entry, index], self.logp[entry, index]

    def compact(self, live: torch.Tensor) -> torch.Tensor:
        """Keep the entries `live`; returns old -> new index (-1: gone)."""
        live = torch.unique(live)
        remap = torch.full((max(self.used, 1),), -1, dtype=torch.long, device=live.device)
        remap[live] = torch.arange(len(live), device=live.device)
        self.logp = self.logp[live]
        self.best_logp, self.best_pos = self.best_logp[live], self.best_pos[live]
        if self.pos is not None:
            self.pos = self.pos[live]
        self.used = len(live)
        return remap


# -- flat record sets --------------------------------------------------------------------------------------
@dataclasses.dataclass
class Records:
    """Columns of equal length, one entry per record (hypotheses, held-back histories, prefetched ones)."""

    columns: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return len(self.columns["row"])

    def __getattr__(self, name: str) -> torch.Tensor:
        try:
            return self.__dict__["columns"][name]
        except KeyError as e:
            raise AttributeError(name) from e

    @classmethod
    def empty(cls, device: torch.device, float_dtype: torch.dtype, **kinds: str) -> Records:
        return cls(
            {
                name: torch.empty(0, dtype=float_dtype if kind == "float" else torch.long, device=device)
                for name, kind in kinds.items()
            }
        )

    def select(self, index: torch.Tensor) -> Records:
        index = as_index(index)
        return Records({k: v[index] for k, v in self.columns.items()})

    def extend(self, other: Records) -> Records:
        return Records({k: torch.cat([v, other.columns[k]]) for k, v in self.columns.items()})

    def replace(self, **columns: torch.Tensor) -> Records:
        return Records({**self.columns, **columns})


HYPOTHESIS = {
    "row": "long",
    "node": "long",
    "logw": "float",
    "mass": "float",
    "handle": "long",
    "cand": "long",
}
TAIL = {  # an original token that straddles the prompt's end: the sub-tokens it has left to spell
    "row": "long",
    "handle": "long",  # the history it extends
    "token": "long",
    "logw": "float",  # the history's log-weight plus the token's log-prob
    "byte_index": "long",  # where its remaining bytes start in `tail_bytes_flat`
    "n_bytes": "long",  # remaining bytes of the straddled sub-token, spelled one byte each
    "sub_index": "long",  # where its remaining sub-tokens start in the trie's `tau_flat`
    "length": "long",  # sub-tokens left in all
    "done": "long",  # of which spelled so far
}
HELD_BACK = {"row": "long", "parent": "long", "token": "long", "logw": "float", "step": "long"}
PREFETCHED = {"row": "long", "parent": "long", "token": "long", "handle": "long", "cand": "long",
              "logw": "float", "kept": "float", "depth": "long", "born_at": "long"}  # fmt: skip
PREFETCH_DEPTH = 3  # most boundary histories a generating row may be evaluated ahead of its births
LOOKAHEAD = 12  # sub-tokens of a known text searched for future births
PRUNE_SLACK_PER_STEP = 0.35  # nats per sub-token ahead: how much lighter the row's best hypothesis may get


@dataclasses.dataclass
class Births:
    """Boundary histories `h + token` (parents `parent` are handles), not yet evaluated; `born_at` is the
    step at which a history evaluated ahead will be born (-1: unknown, the default)."""

    row: torch.Tensor
    parent: torch.Tensor
    token: torch.Tensor
    logw: torch.Tensor
    born_at: torch.Tensor | None = None

    def __post_init__(self):
        if self.born_at is None:
            self.born_at = torch.full_like(self.row, -1)

    def fields(self) -> tuple[torch.Tensor, ...]:
        return self.row, self.parent, self.token, self.logw, self.born_at

    def select(self, index: torch.Tensor) -> Births:
        index = as_index(index)
        return Births(*(field[index] for field in self.fields()))

    def cat(self, *others: Births) -> Births:
        return Births(*(torch.cat(columns) for columns in zip(*(b.fields() for b in (self, *others)))))

    def __len__(self) -> int:
        return len(self.row)


class CoverBatch:
    """The relative-cover state of `n_rows` rows (see the module docstring)."""

    def __init__(self, trie: SplitTrie, settings: EngineSettings, n_rows: int):
        self.trie = trie
        self.settings = settings
        self.dtype = settings.torch_dtype
        self.device = device = trie.device
        self.n_rows = n_rows
        self.cands = CandidateStore(trie, settings.tokens_per_boundary, self.dtype)
        self.hyps = Records.empty(device, self.dtype, **HYPOTHESIS)
        self.held = Records.empty(device, self.dtype, **HELD_BACK)
        self.prefetched = Records.empty(device, self.dtype, **PREFETCHED)
        self.tails = Records.empty(device, self.dtype, **TAIL)
        self.tail_bytes_flat: torch.Tensor | None = None  # each token's bytes, for the tails (`adopt_prompt`)
        self.steps = torch.zeros(n_rows, dtype=torch.long, device=device)  # sub-tokens consumed per row
        self.truncated = torch.full((n_rows,), NEG_INF, dtype=self.dtype, device=device)
        self.pending = torch.full((n_rows,), NEG_INF, dtype=self.dtype, device=device)  # unevaluated births
        self.finished = torch.zeros(n_rows, dtype=torch.bool, device=device)
        self.sub_history = torch.zeros((n_rows, 16), dtype=torch.long, device=device)  # per row, by step
        self.future: torch.Tensor | None = None  # each row's whole sub-token sequence, when scoring
        self.future_len: torch.Tensor | None = None
        # the next distribution's ingredients since each row's last step: (bucket, value) of the ranges that
        # go on, and (row, logw, candidate entry) of the histories attached since
        self._continuing: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._roots: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._next: torch.Tensor | None = None

    # -- roots -------------------------------------------------------------------------------------------
    def store_candidates(self, logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep the next tokens of newly evaluated histories; (candidate entry, log kept mass)."""
        return self.cands.add(logprobs)

    def attach(self, rows, logw, handles, cand, kept) -> None:
        """Add evaluated boundary histories as depth-0 hypotheses (their top-K cut counted as dropped)."""
        if not len(rows):
            return
        cut = kept < 0
        logaddexp_(self.truncated, rows[cut], (logw + log1mexp(kept))[cut])
        self.hyps = self.hyps.extend(
            Records(
                {
                    "row": rows,
                    "node": torch.zeros_like(rows),
                    "logw": logw,
                    "mass": logw + kept,
                    "handle": handles,
                    "cand": cand,
                }
            )
        )
        self._roots.append((rows, logw, cand))
        self._next = None

    # -- tokens straddling the prompt's end -------------------------------------------------------------
    def tail_next(self, tails: Records | None = None) -> torch.Tensor:
        """The sub-token each tail spells next: a remaining byte of its straddled sub-token, then the rest
        of its split."""
        tails = self.tails if tails is None else tails
        if not len(tails):
            return tails.row
        in_bytes = tails.done < tails.n_bytes
        byte = self.tail_bytes_flat[torch.where(in_bytes, tails.byte_index + tails.done, 0)]
        later = self.trie.tau_flat[torch.where(in_bytes, 0, tails.sub_index + tails.done - tails.n_bytes)]
        return torch.where(in_bytes, byte, later)

    def add_tails(self, tails: Records, bytes_flat: torch.Tensor) -> None:
        """Start a row's state with tokens that straddle its prompt's end (see `engine/prompt.py`)."""
        self.tail_bytes_flat = bytes_flat
        self.tails = self.tails.extend(tails)
        self._continuing.append((tails.row * self.trie.num_sub_tokens + self.tail_next(tails), tails.logw))
        self._next = None

    def _narrow_tails(self, sub: torch.Tensor, active: torch.Tensor):
        """Advance the active rows' tails by `sub`: those that spell it go on, or are born when their token
        is complete. Returns (the tails advanced, which are the active rows', their births, which go on)."""
        tails = self.tails
        mine = active[tails.row]
        spelled = mine & (self.tail_next() == sub[tails.row])
        tails = tails.replace(done=tails.done + spelled.long())
        born = spelled & (tails.done == tails.length)
        births = Births(tails.row[born], tails.handle[born], tails.token[born], tails.logw[born])
        return tails, mine, births, torch.where(mine, spelled & ~born, True)

    # -- the distribution --------------------------------------------------------------------------------
    def next_logprobs(self) -> torch.Tensor:
        """log p(next sub-token | row's prefix) [rows, sub-tokens], normalised over the kept mass. Rows with
        no hypothesis (finished) get an all -inf row."""
        if self._next is not None:
            return self._next
        size = self.trie.num_sub_tokens
        buckets = [bucket for bucket, _ in self._continuing]
        values = [value for _, value in self._continuing]
        for rows, logw, cand in self._roots:
            if self.cands.k is None:
                first = self.trie.first_sub[None, :]
                values.append((self.cands.logp[cand] + logw[:, None]).reshape(-1))
                buckets.append((rows[:, None] * size + first).reshape(-1))
            else:
                pos = self.cands.pos[cand]
                real = pos < self.trie.num_tokens
                first = self.trie.first_sub[pos.clamp(max=self.trie.num_tokens - 1)]
                values.append((self.cands.logp[cand] + logw[:, None])[real])
                buckets.append((rows[:, None] * size + first)[real])
        flat = segment_logsumexp(
            torch.cat(values) if values else torch.empty(0, dtype=self.dtype, device=self.device),
            torch.cat(buckets) if buckets else torch.empty(0, dtype=torch.long, device=self.device),
            self.n_rows * size,
        ).view(self.n_rows, size)
        norm = torch.logsumexp(flat, dim=1, keepdim=True)
        self._next = torch.where(torch.isfinite(norm), flat - norm, torch.full_like(flat, NEG_INF))
        return self._next

    def kept_logmass(self) -> torch.Tensor:
        """log Π per row: the prefix probability the kept hypotheses (and unevaluated births) account for."""
        out = self.pending.clone()
        logaddexp_(out, self.hyps.row, self.hyps.mass)
        logaddexp_(out, self.tails.row, self.tails.logw)
        return out

    # -- one step ----------------------------------------------------------------------------------------
    def narrow(self, sub: torch.Tensor, active: torch.Tensor) -> tuple[Births, torch.Tensor]:
        """Condition the `active` rows on their next sub-token `sub` [rows]. Hypotheses move to their child
        nodes (pruned as the settings say); returns the births that survive pruning (to be evaluated, or
        looked up among prefetched histories) and the rows left with neither hypotheses nor births (their
        sub-token has probability zero under what was kept: the scheduler backs up or refuses)."""
        trie, cands, hyps = self.trie, self.cands, self.hyps
        self._record(sub, active)
        mine = active[hyps.row]
        node = trie.child(hyps.node, sub[hyps.row])
        moved = mine & (node >= 0)
        node = node.clamp(min=0)
        # tokens whose split ends at the new node become boundary histories
        b_lo, b_hi = cands.range_of(hyps.cand, trie.node_end_lo[node], trie.node_lo[node])
        b_hi = torch.where(moved, b_hi, b_lo)
        c_lo, c_hi = cands.range_of(hyps.cand, trie.node_lo[node], trie.node_hi[node])
        c_hi = torch.where(moved, c_hi, c_lo)
        n_births, n_entries = torch.stack([(b_hi - b_lo).sum(), (c_hi - c_lo).sum()]).tolist()
        owner, index = expand_ranges(b_lo, b_hi, n_births)
        pos, logp = cands.at(hyps.cand[owner], index)
        births = Births(hyps.row[owner], hyps.handle[owner], trie.order[pos], hyps.logw[owner] + logp)
        births = births.select(torch.isfinite(births.logw))
        tails = self.tails
        if len(tails):  # only in the first steps after a prompt conditioned on as bytes
            tails, tail_mine, tail_births, tail_going = self._narrow_tails(sub, active)
            births = births.cat(tail_births)
        else:
            tail_mine = tail_going = torch.zeros(0, dtype=torch.bool, device=self.device)
        # the tokens that go on past it: their masses and their share of the next distribution
        owner, index = expand_ranges(c_lo, c_hi, n_entries)
        pos, logp = cands.at(hyps.cand[owner], index)
        value = hyps.logw[owner] + logp
        mass = segment_logsumexp(value, owner, len(hyps))
        going = moved & torch.isfinite(mass)
        survivors = torch.where(mine, going, True)
        key = trie.sub_at(pos, trie.node_depth[node[owner]])
        bucket = hyps.row[owner] * trie.num_sub_tokens + key
        # rows whose sub-token is spelled by nothing kept
        alive = torch.zeros(self.n_rows, dtype=torch.long, device=self.device)
        for alive_rows in (hyps.row[going], births.row, tails.row[tail_mine & tail_going]):
            alive.index_add_(0, alive_rows, torch.ones_like(alive_rows))
        failed = active & (alive == 0)
        hyps = hyps.replace(node=torch.where(mine, node, hyps.node), mass=torch.where(mine, mass, hyps.mass))
        if self.settings.prunes:
            moved_hyps, moved_tails = survivors & mine, tail_going & tail_mine
            keep_hyp, keep_tail, keep_birth = self._prune(
                [
                    (hyps.row[moved_hyps], hyps.mass[moved_hyps]),
                    (tails.row[moved_tails], tails.logw[moved_tails]),
                    (births.row, births.logw),
                ]
            )
            for records, moved_now, keep, mass_of in (
                (hyps, moved_hyps, keep_hyp, hyps.mass),
                (tails, moved_tails, keep_tail, tails.logw),
            ):
                dropped = moved_now.clone()
                dropped[moved_now] = ~keep
                logaddexp_(self.truncated, records.row[dropped], mass_of[dropped])
            survivors[moved_hyps] = keep_hyp
            tail_going[moved_tails] = keep_tail
            dropped = births.select(~keep_birth)
            logaddexp_(self.truncated, dropped.row, dropped.logw)
            self._hold_back(dropped)
            births = births.select(keep_birth)
        entry_kept = survivors[owner]
        size = trie.num_sub_tokens
        # the next distribution's ingredients: rows not stepped keep theirs, stepped rows get the new ones
        self._continuing = [
            (b[keep], v[keep]) for b, v in self._continuing for keep in [as_index(~active[b // size])]
        ]
        self._continuing = [pair for pair in self._continuing if len(pair[0])]
        self._continuing.append((bucket[entry_kept], value[entry_kept]))
        if len(tails):
            self.tails = tails.select(tail_going)
            going_tails = self.tails.select(tail_mine[tail_going])
            self._continuing.append((going_tails.row * size + self.tail_next(going_tails), going_tails.logw))
        self._roots = [
            (r[keep], w[keep], c[keep]) for r, w, c in self._roots for keep in [as_index(~active[r])]
        ]
        self._roots = [root for root in self._roots if len(root[0])]
        self.hyps = hyps.select(survivors)
        self._next = None
        return births, failed

    def _record(self, sub: torch.Tensor, active: torch.Tensor) -> None:
        """Write each active row's sub-token at its step (for back-ups) and count the step."""
        need = int(self.steps.max()) + 1 if self.n_rows else 0
        if need > self.sub_history.shape[1]:
            self.sub_history = torch.cat([self.sub_history, torch.zeros_like(self.sub_history)], dim=1)
        rows = torch.nonzero(active, as_tuple=True)[0]
        self.sub_history[rows, self.steps[rows]] = sub[rows]
        self.steps += active.long()

    def _prune(self, groups: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """Keep, per row, the heaviest entries of all `groups` ((rows, log-mass) each: moved hypotheses,
        tails, births) together: at most `max_hypotheses`, none lighter than `prune_ratio` x the heaviest.
        Returns a keep mask per group."""
        settings = self.settings
        rows = torch.cat([r for r, _ in groups])
        mass = torch.cat([m for _, m in groups])
        keep = torch.ones_like(mass, dtype=torch.bool)
        if settings.max_hypotheses is not None:
            keep &= rank_within(rows, mass) < settings.max_hypotheses
        if settings.prune_ratio > 0:
            best = torch.full((self.n_rows,), NEG_INF, dtype=mass.dtype, device=self.device)
            best.scatter_reduce_(0, rows, mass, "amax")
            keep &= mass >= best[rows] + math.log(settings.prune_ratio)
        return list(torch.split(keep, [len(r) for r, _ in groups]))

    def _hold_back(self, dropped: Births) -> None:
        backtrack = self.settings.backtrack
        held = self.held
        if backtrack and len(dropped):
            held = held.extend(
                Records(
                    {
                        "row": dropped.row,
                        "parent": dropped.parent,
                        "token": dropped.token,
                        "logw": dropped.logw,
                        "step": self.steps[dropped.row],
                    }
                )
            )
        self.held = held.select(held.step > self.steps[held.row] - backtrack)

    def finish_pending(self, births: Births) -> None:
        """Count births without evaluating them (the last sub-token of a scored text)."""
        logaddexp_(self.pending, births.row, births.logw)

    def finish_rows(self, rows: torch.Tensor) -> None:
        """Rows that produced end-of-sequence: no hypothesis goes on."""
        self.finished |= rows
        self._drop_rows(rows)

    def _drop_rows(self, rows: torch.Tensor) -> None:
        self.hyps = self.hyps.select(~rows[self.hyps.row])
        self.held = self.held.select(~rows[self.held.row])
        self.prefetched = self.prefetched.select(~rows[self.prefetched.row])
        self.tails = self.tails.select(~rows[self.tails.row])
        self._next = None

    # -- back-up -----------------------------------------------------------------------------------------
    def take_held_back(self, row: int) -> tuple[Births, int] | None:
        """The latest held-back births of `row` (removed from the store) and the step they were born at."""
        mine = self.held.row == row
        if not bool(mine.any()):
            return None
        step = int(self.held.step[mine].max())
        chosen = mine & (self.held.step == step)
        taken = self.held.select(chosen)
        self.held = self.held.select(~chosen)
        self.hyps = self.hyps.select(self.hyps.row != row)
        self.tails = self.tails.select(self.tails.row != row)
        return Births(taken.row, taken.parent, taken.token, taken.logw), step

    # -- prefetched histories ----------------------------------------------------------------------------
    def lookup_prefetched(self, births: Births) -> torch.Tensor:
        """For each birth, the index of the prefetched history it is (or -1), matched on (parent, token)."""
        return self._find_histories(births, self.prefetched)

    def _find_histories(self, births: Births, records: Records) -> torch.Tensor:
        """For each birth, the index of the first record with the same (parent, token), or -1: one sort and
        one binary search on the key parent x tokens + token."""
        if not len(records) or not len(births):
            return torch.full_like(births.row, -1)
        n = self.trie.num_tokens
        keys = records.parent * n + records.token
        order = torch.argsort(keys, stable=True)
        sorted_keys = keys[order]
        query = births.parent * n + births.token
        at = torch.searchsorted(sorted_keys, query).clamp_(max=len(keys) - 1)
        return torch.where(sorted_keys[at] == query, order[at], -1)

    def consume_prefetched(self, index: torch.Tensor) -> None:
        used = torch.zeros(len(self.prefetched), dtype=torch.bool, device=self.device)
        used[index[index >= 0]] = True
        self.prefetched = self.prefetched.select(~used)

    def _best_next(self, cand: torch.Tensor, node: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-prob, token) of the likeliest kept token of each history that goes on past `node` (-inf where
        none does). At the root that is the history's best token (kept when it was stored); deeper, the
        node's range is searched."""
        cands, trie = self.cands, self.trie
        best, pos = cands.best_logp[cand], cands.best_pos[cand]
        deep = torch.nonzero(node > 0, as_tuple=True)[0]
        if len(deep):
            lo, hi = cands.range_of(cand[deep], trie.node_lo[node[deep]], trie.node_hi[node[deep]])
            owner, index = expand_ranges(lo, hi, int((hi - lo).sum()))
            at, logp = cands.at(cand[deep][owner], index)
            peak = torch.full((len(deep),), NEG_INF, dtype=logp.dtype, device=self.device)
            peak.scatter_reduce_(0, owner, logp, "amax")
            first = torch.full((len(deep),), trie.num_tokens, dtype=torch.long, device=self.device)
            first.scatter_reduce_(0, owner, torch.where(logp == peak[owner], at, trie.num_tokens), "amin")
            best[deep], pos[deep] = peak, first
        return best, trie.order[pos.clamp(max=trie.num_tokens - 1)]

    def prefetch_candidates(self, spare: torch.Tensor) -> Births:
        """Up to `spare[row]` boundary histories per row worth evaluating ahead, from each live hypothesis and
        each history already prefetched (chains up to `PREFETCH_DEPTH` deep, so rows run ahead of their
        births). Generating, that is each source's likeliest token going on; scoring a known text
        (`set_future`), the histories the text will give birth to in the next `LOOKAHEAD` sub-tokens,
        soonest first, that pruning by ratio would keep."""
        hyps, pf = self.hyps, self.prefetched
        chain = (
            pf.depth < PREFETCH_DEPTH if self.future is None else torch.ones_like(pf.row, dtype=torch.bool)
        )
        rows = torch.cat([hyps.row, pf.row[chain]])
        parents = torch.cat([hyps.handle, pf.handle[chain]])
        cand = torch.cat([hyps.cand, pf.cand[chain]])
        node = torch.cat([hyps.node, torch.zeros_like(pf.row[chain])])
        logw = torch.cat([hyps.logw, pf.logw[chain]])
        if self.future is None:
            best, token = self._best_next(cand, node)
            found = Births(rows, parents, token, logw + best)
            score = found.logw
        else:
            consumed = torch.cat([self.steps[hyps.row], pf.born_at[chain]])
            found = self._future_births(rows, parents, cand, node, consumed, logw)
            floor = torch.full((self.n_rows,), NEG_INF, dtype=self.dtype, device=self.device)
            floor.scatter_reduce_(0, hyps.row, hyps.mass, "amax")
            if self.settings.prune_ratio > 0:  # the best mass falls as the text goes on
                ahead = (found.born_at - self.steps[found.row]).to(self.dtype)
                slack = math.log(self.settings.prune_ratio) - ahead * PRUNE_SLACK_PER_STEP
                found = found.select(found.logw >= floor[found.row] + slack)
            score = (found.logw - floor[found.row]).clamp(-1e3, 0) - 1e4 * found.born_at
        wanted = torch.isfinite(found.logw) & (self._find_histories(found, pf) < 0)
        wanted &= rank_within(found.row, torch.where(wanted, score, NEG_INF)) < spare[found.row]
        return found.select(wanted)

    def set_future(self, sub_ids: torch.Tensor, lengths: torch.Tensor) -> None:
        """The whole sub-token sequence each row will read (scoring), so evaluation can run ahead of it."""
        self.future, self.future_len = sub_ids.to(self.device), lengths.to(self.device)

    def _future_births(self, rows, parents, cand, node, consumed, logw) -> Births:
        """Births the known text gives each source (a history at `node` after `consumed` sub-tokens) within
        the next `LOOKAHEAD` sub-tokens."""
        trie, cands = self.trie, self.cands
        width = self.future.shape[1]
        found = []
        for ahead in range(LOOKAHEAD):
            at = consumed + ahead
            going = at < self.future_len[rows]
            node = trie.child(node, self.future[rows, at.clamp(max=width - 1)])
            going &= node >= 0
            node = node.clamp(min=0)
            lo, hi = cands.range_of(cand, trie.node_end_lo[node], trie.node_lo[node])
            hi = torch.where(going, hi, lo)
            owner, index = expand_ranges(lo, hi, int((hi - lo).sum()))
            pos, logp = cands.at(cand[owner], index)
            found.append(
                Births(rows[owner], parents[owner], trie.order[pos], logw[owner] + logp, at[owner] + 1)
            )
            rows, parents, cand, node, consumed, logw = (
                x[going] for x in (rows, parents, cand, node, consumed, logw)
            )
            if not len(rows):
                break
        return found[0].cat(*found[1:])

    def add_prefetched(self, births: Births, handles, cand, kept) -> None:
        pf = self.prefetched
        under = pf.handle[:, None] == births.parent[None, :]  # children of prefetched histories chain on
        depth = (
            torch.where(under.any(0), pf.depth[under.float().argmax(0)] + 1, 1)
            if len(pf)
            else births.row * 0 + 1
        )
        fields = {"row": births.row, "parent": births.parent, "token": births.token, "handle": handles}
        fields.update(cand=cand, logw=births.logw, kept=kept, depth=depth, born_at=births.born_at)
        self.prefetched = pf.extend(Records(fields))

    def forget_prefetched(self) -> None:
        """Drop prefetched histories that can never be born: those whose parent is neither a live hypothesis
        nor a kept prefetched history (call after the step's births were looked up)."""
        pf = self.prefetched
        if not len(pf):
            return
        pf = pf.select((pf.born_at < 0) | (pf.born_at > self.steps[pf.row]))  # a known birth step has passed
        while True:
            kept = torch.isin(pf.parent, torch.cat([self.hyps.handle, pf.handle]))
            if bool(kept.all()):
                break
            pf = pf.select(kept)
        self.prefetched = pf

    # -- handles and rows --------------------------------------------------------------------------------
    def live_handles(self) -> torch.Tensor:
        return torch.cat([self.hyps.handle, self.held.parent, self.prefetched.handle, self.tails.handle])

    def remap_handles(self, remap: torch.Tensor) -> None:
        self.hyps = self.hyps.replace(handle=remap[self.hyps.handle])
        self.held = self.held.replace(parent=remap[self.held.parent])
        self.tails = self.tails.replace(handle=remap[self.tails.handle])
        self.prefetched = self.prefetched.replace(
            parent=remap[self.prefetched.parent], handle=remap[self.prefetched.handle]
        )

    def compact_candidates(self) -> None:
        roots = [cand for _, _, cand in self._roots]
        remap = self.cands.compact(torch.cat([self.hyps.cand, self.prefetched.cand, *roots]))
        self.hyps = self.hyps.replace(cand=remap[self.hyps.cand])
        self.prefetched = self.prefetched.replace(cand=remap[self.prefetched.cand])
        self._roots = [(rows, logw, remap[cand]) for rows, logw, cand in self._roots]

    def select_rows(self, source: torch.Tensor, handle_map) -> None:
        """Rows become copies of rows `source`; `handle_map(old_handles, new_rows)` gives the handles'
        copies in the runner."""
        n = len(source)

        def copy(records: Records, *handle_columns: str) -> Records:
            old, new_row = torch.nonzero(records.row[:, None] == source[None, :], as_tuple=True)
            out = records.select(old).replace(row=new_row)
            return out.replace(**{c: handle_map(out.columns[c], new_row) for c in handle_columns})

        self.hyps = copy(self.hyps, "handle")
        self.held = copy(self.held, "parent")
        self.prefetched = copy(self.prefetched, "parent", "handle")
        self.tails = copy(self.tails, "handle")
        for name in ("steps", "truncated", "pending", "finished", "sub_history"):
            setattr(self, name, getattr(self, name).index_select(0, source))
        if self._next is not None:
            self._next = self._next.index_select(0, source)
        self._continuing, self._roots = [], []
        self.n_rows = n
