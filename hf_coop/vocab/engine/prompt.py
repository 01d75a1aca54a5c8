"""Conditioning on a prompt's bytes rather than on one tokenization of them (the prompt-boundary problem).

A row's prompt is canonical tokens (prefilled as usual) followed by *tail bytes*. The tail is walked byte by
byte with the same relative-cover recursion over the tokenizer's byte-level nested table, marginalising
over every tokenization of those bytes: boundary histories born inside the tail are evaluated by the same
runner, in the same shared KV store, as generated text's are. Each boundary history keeps its whole
next-token distribution here (a top-K cut would lose every prompt the model would not itself have written);
`max_hypotheses` / `prune_ratio` apply as for generated text.

At the tail's end the state moves to the model's own sub-vocabulary (`adopt_prompt`):

- a boundary history born at the last byte becomes an ordinary root hypothesis (its distribution stored
  again in the sub-vocabulary trie's order, with the top-K cut of the settings);
- an original token `u` that *straddles* the end (its first `d` bytes close the prompt) becomes a *tail
  record*: it spells, one sub-token per step, the bytes of its split's straddled sub-token that lie past the
  end (each as a single-byte sub-token), then the rest of its split, and its boundary history is born when
  the split is complete. Every token sequence consistent with the prompt thus continues with the bytes it
  spells, so the distribution over continuation texts is exactly `P(text | prompt bytes)`.
"""

from __future__ import annotations

import dataclasses

import torch

from hf_coop.vocab.engine.cover import CoverBatch, Records, expand_ranges
from hf_coop.vocab.engine.settings import EngineSettings
from hf_coop.vocab.engine.trie import SplitTrie


def walk_settings(settings: EngineSettings) -> EngineSettings:
    """The settings of the byte walk over a prompt's tail: whole distributions, the same pruning."""
    return dataclasses.replace(settings, tokens_per_boundary=None)


def adopt_prompt(walk: CoverBatch, trie: SplitTrie, settings: EngineSettings, sub_lengths: torch.Tensor):
    """The state of `walk` (a byte-level cover at the end of every row's prompt) over `trie`'s sub-tokens
    (see the module docstring). `sub_lengths[s]` is the byte length of sub-token s (0 for control ones)."""
    cover = CoverBatch(trie, settings, walk.n_rows)
    cover.truncated = walk.truncated.clone()
    byte_trie, hyps = walk.trie, walk.hyps
    roots = hyps.select(hyps.node == 0)
    if len(roots):
        by_token_id = walk.cands.logp[roots.cand][:, byte_trie.position]
        cand, kept = cover.store_candidates(by_token_id)
        cover.attach(roots.row, roots.logw, roots.handle, cand, kept)
    deep = hyps.select(hyps.node > 0)
    if not len(deep):
        return cover
    lo, hi = byte_trie.node_lo[deep.node], byte_trie.node_hi[deep.node]
    owner, byte_pos = expand_ranges(lo, hi, int((hi - lo).sum()))
    logp = walk.cands.logp[deep.cand[owner], byte_pos]
    finite = torch.isfinite(logp)
    owner, byte_pos, logp = owner[finite], byte_pos[finite], logp[finite]
    token = byte_trie.order[byte_pos]
    depth = byte_trie.node_depth[deep.node[owner]]  # bytes of the token inside the prompt
    pos = trie.position[token]
    # which sub-token of the token's split holds byte `depth`: `consumed` bytes lie in whole sub-tokens
    consumed = torch.zeros_like(depth)
    index = torch.zeros_like(depth)
    next_end = torch.full_like(depth, -1)
    spelled = torch.zeros_like(depth)
    for k in range(int(trie.tau_len[pos].max()) if len(pos) else 0):
        has = k < trie.tau_len[pos]
        sub = trie.tau_flat[torch.where(has, trie.tau_offset[pos] + k, 0)]
        spelled = spelled + torch.where(has, sub_lengths[sub], 0)
        inside = has & (spelled <= depth)
        consumed = torch.where(inside, spelled, consumed)
        index = index + inside.long()
        next_end = torch.where(has & (spelled > depth) & (next_end < 0), spelled, next_end)
    straddles = consumed < depth
    n_bytes = torch.where(straddles, next_end - depth, 0)
    first_sub = index + straddles.long()
    tails = Records(
        {
            "row": deep.row[owner],
            "handle": deep.handle[owner],
            "token": token,
            "logw": deep.logw[owner] + logp,
            "byte_index": byte_trie.tau_offset[byte_pos] + depth,
            "n_bytes": n_bytes,
            "sub_index": trie.tau_offset[pos] + first_sub,
            "length": n_bytes + trie.tau_len[pos] - first_sub,
            "done": torch.zeros_like(depth),
        }
    )
    cover.add_tails(tails, byte_trie.tau_flat)
    return cover
