"""Held-out text for the benchmarks, cut into passages that are scored independently."""

from __future__ import annotations

from benchmarks.assets import wikipedia_prose

HELD_OUT_SKIP = 100_000  # bytes of the prose kept away from everything that trains or tunes


def held_out_passages(n_bytes: int, passage_bytes: int = 1000, skip_bytes: int = HELD_OUT_SKIP) -> list[str]:
    """About `n_bytes` of held-out Wikipedia prose as passages of at most `passage_bytes` bytes, each a
    paragraph or a piece of one cut at a space, so each is scored from the start token with a short
    context (as per-document perplexity is)."""
    passages, total = [], 0
    for paragraph in wikipedia_prose(2 * n_bytes + 10_000, skip_bytes).split("\n")[1:]:  # [0] may be cut
        while paragraph and total < n_bytes:
            piece = paragraph.encode()[:passage_bytes].decode("utf-8", "ignore")
            if len(piece) < len(paragraph) and " " in piece:
                piece = piece[: piece.rindex(" ")]
            passages.append(piece)
            total += len(piece.encode())
            paragraph = paragraph[len(piece) :].lstrip(" ")
    return passages
