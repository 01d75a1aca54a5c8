"""Exact oracles shared by the tests: distributions computed by enumerating every token sequence."""

import math
from collections import defaultdict

import torch


def emitted_after(nested, token: int, inside: int) -> list[int]:
    """The sub-tokens a token emits after its first `inside` bytes closed the prompt: the rest of the straddled
    sub-token as single bytes (a single byte's sub-token id is its value), then the rest of its split."""
    split = nested.split(token)
    spelled = 0
    for index, sub in enumerate(split):
        if spelled == inside:
            return split[index:]
        piece = nested.sub_strings[sub]
        if spelled + len(piece) > inside:
            return list(piece[inside - spelled :]) + split[index + 1 :]
        spelled += len(piece)
    raise AssertionError("the token ends inside the prompt")


def first_sub(nested, token: int, inside: int) -> int:
    """The sub-token a token emits first when its first `inside` bytes close the prompt."""
    return emitted_after(nested, token, inside)[0]


@torch.no_grad()
def oracle_next_logprobs(
    model, tokenizer, nested, prefix_ids: list[int], data: bytes, generated: list[int] = ()
) -> torch.Tensor:
    """log P(next sub-token | prefix tokens, then `data` as bytes, then the sub-tokens `generated`): every token
    sequence whose bytes start with `data` and whose sub-tokens after it start with `generated`, grouped by the
    sub-token it emits next."""
    table, n = nested.table, len(tokenizer)
    first = torch.tensor([nested.split(u)[0] for u in range(n)])
    by_first_byte, by_first_sub = defaultdict(list), defaultdict(list)
    for u in range(n):
        if table[u]:
            by_first_byte[table[u][0]].append(u)
        by_first_sub[int(first[u])].append(u)
    generated = list(generated)
    buckets, values = [], []

    def next_logprobs(ids, logw):
        return logw + torch.log_softmax(model(torch.tensor([ids])).logits[0, -1, :n].double(), -1)

    def follow(ids, pending, done, logw):
        """`pending`: sub-tokens the last token still emits; `done`: generated sub-tokens matched so far."""
        while pending and done < len(generated):
            if pending[0] != generated[done]:
                return
            pending, done = pending[1:], done + 1
        if pending:  # every generated sub-token matched inside this token: it emits the next one
            buckets.append(torch.tensor([pending[0]]))
            values.append(torch.tensor([logw], dtype=torch.float64))
            return
        logprobs = next_logprobs(ids, logw)
        if done == len(generated):  # a boundary: every token emits its split's first sub-token
            buckets.append(first)
            values.append(logprobs)
            return
        for u in by_first_sub[generated[done]]:
            follow(ids + [u], nested.split(u), done, logprobs[u].item())

    def walk(ids, pos, logw):
        rest = data[pos:]
        if not rest:
            follow(ids, [], 0, logw)
            return
        logprobs = next_logprobs(ids, logw)
        for u in by_first_byte[rest[0]]:
            piece = table[u]
            if rest.startswith(piece):
                walk(ids + [u], pos + len(piece), logprobs[u].item())
            elif piece.startswith(rest):
                follow(ids + [u], emitted_after(nested, u, len(rest)), 0, logprobs[u].item())

    walk(list(prefix_ids), 0, 0.0)
    values, buckets = torch.cat(values), torch.cat(buckets)
    out = torch.full((nested.num_sub_tokens,), -math.inf, dtype=torch.float64)
    for sub in buckets.unique().tolist():
        out[sub] = torch.logsumexp(values[buckets == sub], 0)
    return out - torch.logsumexp(out, 0)
