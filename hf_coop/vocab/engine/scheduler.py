"""One step of the vocabulary engine for every row and every member model.

A step conditions each row on its next sub-token (`CoverBatch.narrow`), gathers every boundary history that
needs the model (all rows, all hypotheses) and evaluates them in one batched forward per member (chunked by
`max_batch`), then attaches the results. Histories born at a step that were already evaluated ahead (the
padding of an earlier forward, filled with each row's most likely next boundary) cost no forward at all.
Rows are positions in the batch, never found again by content: `select_rows` follows beam search.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

from hf_coop.errors import InputError
from hf_coop.vocab.engine.cover import Births, CoverBatch, rank_within
from hf_coop.vocab.engine.kv import handle_in_row
from hf_coop.vocab.engine.prompt import adopt_prompt, walk_settings
from hf_coop.vocab.engine.runner import TransformersRunner
from hf_coop.vocab.engine.settings import EngineSettings
from hf_coop.vocab.sub_vocabulary import NestedTable

# The exact recursion refuses to hold more live hypotheses per member than this, or than keeps their
# next-token distributions within EXACT_DISTRIBUTION_BYTES: a text's tokenizations grow exponentially with its
# length (byte-fallback twins double them at every byte), and so would memory.
EXACT_HYPOTHESES_LIMIT = 8192
EXACT_DISTRIBUTION_BYTES = 1 << 30
PREFETCH_PER_ROW = 2  # most histories a generating row evaluates ahead in one forward's padding


class ZeroProbabilityError(InputError):
    """A sub-token that nothing kept by the recursion can spell."""


class EngineMember:
    """One model in the engine: its nested table as a trie, its runner and (once started) its cover state.

    With `copies > 1` every row of the batch is held `copies` times, as consecutive engine rows (row r's copy
    c is engine row `r * copies + c`), each with its own hypotheses: a model that computes a different
    distribution on each copy (`engine/paired.py`) is reduced once per copy in the same forwards.
    `next_logprobs` then has `rows * copies` rows; everything else speaks in rows of the batch.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        nested: NestedTable,
        settings: EngineSettings,
        eos_sub_ids: Sequence[int] = (),
        runner: TransformersRunner | None = None,
        copies: int = 1,
    ):
        self.model = model
        self.copies = copies
        self.nested = nested
        self.settings = settings
        self.runner = runner or TransformersRunner(model, nested.vocab_size, settings)
        self.trie = nested.trie(self.runner.device)
        self.eos = torch.zeros(nested.num_sub_tokens, dtype=torch.bool, device=self.runner.device)
        self.eos[list(eos_sub_ids)] = True
        self.ends_rows = bool(eos_sub_ids)  # a member without end-of-sequence sub-tokens never ends a row
        self.exact_limit = (
            None
            if settings.prunes
            else min(EXACT_HYPOTHESES_LIMIT, EXACT_DISTRIBUTION_BYTES // (4 * nested.vocab_size))
        )
        self.cover: CoverBatch | None = None
        self.back_ups = 0  # times a row's text left every kept hypothesis and held-back ones were evaluated
        self._compacted_length = 0

    @property
    def forward_calls(self) -> int:
        return self.runner.forward_calls

    def start(
        self, prompt_ids: torch.Tensor, lengths: torch.Tensor, tail_bytes: torch.Tensor | None = None
    ) -> None:
        """Prefill each row's canonical tokens (left-padded `prompt_ids`, `lengths`), then condition it on its
        tail bytes (`[rows, width]`, right-padded with -1), if any, over every tokenization of them (see
        `engine/prompt.py`)."""
        if bool((lengths < 1).any()):
            raise InputError("a prompt is empty; give at least one token (e.g. the BOS token)")
        prompt_ids, lengths = self._copied(prompt_ids), self._copied(lengths)
        tail_bytes = None if tail_bytes is None else self._copied(tail_bytes)
        handles, logprobs = self.runner.start(prompt_ids, lengths)
        if tail_bytes is not None and bool((tail_bytes >= 0).any()):
            self.cover = self._walk_tails(handles, logprobs, tail_bytes.to(self.runner.device))
        else:
            self.cover = self._open(self.trie, self.settings, handles, logprobs)
        self._compacted_length = self.runner.store.length

    @staticmethod
    def _open(trie, settings: EngineSettings, handles: torch.Tensor, logprobs: torch.Tensor) -> CoverBatch:
        """A cover whose rows start at the histories `handles` (one per row) with these next-token log-probs."""
        cover = CoverBatch(trie, settings, len(handles))
        cand, kept = cover.store_candidates(logprobs)
        zeros = torch.zeros(len(handles), dtype=cover.dtype, device=cover.device)
        cover.attach(torch.arange(len(handles), device=cover.device), zeros, handles, cand, kept)
        return cover

    def _walk_tails(
        self, handles: torch.Tensor, logprobs: torch.Tensor, tail_bytes: torch.Tensor
    ) -> CoverBatch:
        byte_level = self.nested.byte_level
        walker = EngineMember(self.model, byte_level, walk_settings(self.settings), runner=self.runner)
        walker.cover = self._open(walker.trie, walker.settings, handles, logprobs)
        walker._compacted_length = self.runner.store.length
        lengths = (tail_bytes >= 0).sum(1)
        ids = tail_bytes.clamp(min=0)  # a byte's sub-token id in the byte-level table is its value
        walker.cover.set_future(ids, lengths)
        for step in range(int(lengths.max())):
            walker.step(ids[:, step], lengths > step, None)
        self.back_ups += walker.back_ups
        sub_lengths = self.nested.sub_token_lengths.to(self.runner.device)
        return adopt_prompt(walker.cover, self.trie, self.settings, sub_lengths)

    def step(self, sub: torch.Tensor, active: torch.Tensor, evaluate: torch.Tensor | None) -> None:
        """Condition the `active` rows on `sub`; rows whose `evaluate` is False count their new boundary
        histories without calling the model (the last sub-token of a scored text)."""
        cover = self.cover
        sub, active = self._copied(sub.to(cover.device)), self._copied(active.to(cover.device))
        evaluate = None if evaluate is None else self._copied(evaluate.to(cover.device))
        active = active & ~cover.finished
        if self.ends_rows:
            ended = active & self.eos[sub]
            if bool(ended.any()):
                cover.finish_rows(ended)
                active &= ~ended
        births, failed = cover.narrow(sub, active)
        if self.exact_limit is not None and len(cover.hyps) > self.exact_limit:
            raise InputError(
                f"the exact recursion holds {len(cover.hyps)} live hypotheses (every tokenization of the text so "
                "far; their number grows exponentially with its length); pass max_hypotheses (e.g. 64) and "
                "prune_ratio (e.g. 1e-6) for a bracketed value, or give shorter texts"
            )
        births = self._set_aside(births, evaluate)
        self._evaluate(births, prefetch=self.settings.prefetch)
        for row in torch.nonzero(failed, as_tuple=True)[0].tolist():
            self._back_up(row, evaluate)
        cover.forget_prefetched()
        self._housekeeping()

    def _set_aside(self, births: Births, evaluate: torch.Tensor | None) -> Births:
        if evaluate is None:
            return births
        later = ~evaluate.to(births.row.device)[births.row]
        self.cover.finish_pending(births.select(later))
        return births.select(~later)

    def _evaluate(self, births: Births, prefetch: bool) -> None:
        """Attach the births: prefetched ones as they are, the rest through one batched forward whose padding
        holds each row's likeliest future boundary histories (when `prefetch`)."""
        cover = self.cover
        if not len(births):
            return
        index = cover.lookup_prefetched(births)
        hit = index >= 0
        ready = cover.prefetched.select(index[hit])
        cover.attach(ready.row, ready.logw, ready.handle, ready.cand, ready.kept)
        cover.consume_prefetched(index)
        todo = births.select(~hit)
        if not len(todo):
            return
        queries = todo
        counts = torch.bincount(todo.row, minlength=cover.n_rows)
        counted = counts.tolist()
        if prefetch and cover.future is None:  # generating: fill the padding of the grids, which is free
            plan = self.runner.plan(counted)
            spare = [0] * cover.n_rows  # padding of each row's grid, read on the host from the plan
            for r0, r1, group_width in plan:
                for row in range(r0, r1):
                    spare[row] = min(group_width - counted[row], PREFETCH_PER_ROW)
            if any(spare):
                queries = todo.cat(cover.prefetch_candidates(torch.tensor(spare, device=counts.device)))
        elif prefetch:  # a known text: widen the forward to what most rows can fill with births to come
            ahead = cover.prefetch_candidates(torch.full_like(counts, self.settings.max_batch))
            available = counts + torch.bincount(ahead.row, minlength=cover.n_rows)
            most = max(counted)
            width = min(
                max(most, int(available.float().median())), max(most, self.settings.max_batch // cover.n_rows)
            )
            soonest = rank_within(ahead.row, -ahead.born_at.to(torch.float32))
            queries = todo.cat(ahead.select(soonest < (width - counts)[ahead.row]))
            plan = self.runner.plan(torch.bincount(queries.row, minlength=cover.n_rows).tolist())
        else:
            plan = self.runner.plan(counted)
        handles, logprobs = self.runner.extend(queries.parent, queries.token, plan)
        cand, kept = cover.store_candidates(logprobs)
        n = len(todo)
        cover.attach(todo.row, todo.logw, handles[:n], cand[:n], kept[:n])
        if len(queries) > n:
            cover.add_prefetched(queries.select(slice(n, None)), handles[n:], cand[n:], kept[n:])

    def _back_up(self, row: int, evaluate: torch.Tensor | None) -> None:
        """The row's sub-token left every kept hypothesis: evaluate its latest held-back boundary histories
        and replay the sub-tokens since, trying older ones until the text is spelled."""
        cover = self.cover
        current = int(cover.steps[row])
        tokens = cover.sub_history[row, :current].tolist()
        while True:
            taken = cover.take_held_back(row)
            if taken is None:
                raise ZeroProbabilityError(self._zero_probability_message(row, tokens))
            births, step = taken
            self.back_ups += 1
            cover.steps[row] = step
            self._evaluate(births, prefetch=False)
            only = torch.zeros(cover.n_rows, dtype=torch.bool, device=cover.device)
            only[row] = True
            for i in range(step, current):
                sub = torch.full((cover.n_rows,), tokens[i], dtype=torch.long, device=cover.device)
                new, failed = cover.narrow(sub, only)
                if bool(failed[row]):
                    break
                last = i == current - 1
                self._evaluate(self._set_aside(new, evaluate) if last else new, prefetch=False)
            else:
                return

    def _zero_probability_message(self, row: int, tokens: list[int]) -> str:
        sub = tokens[-1]
        where = (
            f"row {row}'s sub-token {sub} ({self.nested.sub_token_bytes(sub)!r}), after "
            f"{sum(len(self.nested.sub_token_bytes(t)) for t in tokens[:-1])} bytes,"
        )
        if self.settings.tokens_per_boundary is None and not self.settings.prunes:
            return (
                f"{where} has probability zero under the exact recursion: no sequence of the model's tokens "
                "spells these bytes (a character outside its tokenizer's alphabet, with no byte fallback)"
            )
        return (
            f"{where} has probability zero under the hypotheses kept at this step; raise "
            "tokens_per_boundary / max_hypotheses / backtrack, or use the exact settings (None); if those fail "
            "too, the model's tokens cannot spell these bytes"
        )

    def _housekeeping(self) -> None:
        """Reclaim KV slots and candidate entries that no live history needs."""
        cover, store = self.cover, self.runner.store
        live = cover.live_handles()
        if store.num_handles > max(256, 4 * len(live)) or store.length > 1.25 * self._compacted_length + 64:
            cover.remap_handles(self.runner.compact(live))
            self._compacted_length = store.length
        in_use = len(cover.hyps) + len(cover.prefetched)
        if cover.cands.used > max(64, 4 * in_use):
            cover.compact_candidates()

    def _copied(self, per_row: torch.Tensor) -> torch.Tensor:
        """A per-row tensor laid out over the engine rows (each row repeated `copies` times)."""
        return per_row if self.copies == 1 else per_row.repeat_interleave(self.copies, dim=0)

    def finish_rows(self, ended: torch.Tensor) -> None:
        """Rows that ended (their sequence produced EOS) take no more steps."""
        self.cover.finish_rows(self._copied(ended.to(self.cover.device)))

    def select_rows(self, source: torch.Tensor) -> None:
        source = source.to(self.cover.device)
        if self.copies > 1:
            copy = torch.arange(self.copies, device=source.device)
            source = (source[:, None] * self.copies + copy).flatten()
        keys = self.runner.select_rows(source, self.cover.live_handles())
        n = len(source)
        self.cover.select_rows(source, lambda old, rows: handle_in_row(keys, old, rows, n))


class Scheduler:
    """Steps every member over the same rows; `next_logprobs` gives each member's [rows, sub-tokens]."""

    def __init__(self, members: Sequence[EngineMember]):
        self.members = list(members)

    @property
    def started(self) -> bool:
        return self.members[0].cover is not None

    @property
    def n_rows(self) -> int:
        return self.members[0].cover.n_rows // self.members[0].copies

    def start(
        self,
        prompts: Sequence[tuple[torch.Tensor, torch.Tensor]],
        tail_bytes: Sequence[torch.Tensor | None] | None = None,
    ) -> None:
        """One (left-padded ids [B, L], lengths [B]) pair per member: each member's own canonical tokens;
        `tail_bytes[m]`: member m's tail bytes ([B, width], -1-padded), conditioned on over all their
        tokenizations."""
        tail_bytes = tail_bytes or [None] * len(self.members)
        for member, (ids, lengths), tails in zip(self.members, prompts, tail_bytes):
            member.start(ids, lengths, tails)

    def step(
        self,
        subs: Sequence[torch.Tensor],
        active: torch.Tensor | None = None,
        evaluate: torch.Tensor | None = None,
    ) -> None:
        """Advance every member by its sub-tokens `subs[m]` [rows] (one batched forward per member)."""
        for member, sub in zip(self.members, subs):
            rows = torch.ones(len(sub), dtype=torch.bool) if active is None else active
            member.step(sub, rows, evaluate)

    def next_logprobs(self) -> list[torch.Tensor]:
        return [member.cover.next_logprobs() for member in self.members]

    def select_rows(self, source: torch.Tensor) -> None:
        for member in self.members:
            member.select_rows(source)

    @property
    def forward_calls(self) -> list[int]:
        return [member.forward_calls for member in self.members]
