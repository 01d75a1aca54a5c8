"""GSM-symbolic problems from reasoning-gym (`pip install -e .[bench]`), shared by the benchmarks."""

from __future__ import annotations

import re
from functools import lru_cache


def problems(count: int, seed: int) -> list[dict]:
    """`count` problems of reasoning-gym's `gsm_symbolic` generator, reproducible from `seed`."""
    import reasoning_gym

    return list(reasoning_gym.create_dataset("gsm_symbolic", size=count, seed=seed))


def extract_answer(text: str) -> str:
    """The number after '####', else the last number in the text."""
    marked = re.search(r"####\s*(-?[\d,]*\.?\d+)", text)
    if marked:
        return marked.group(1).replace(",", "")
    numbers = re.findall(r"-?\d[\d,]*\.?\d*", text)
    return numbers[-1].replace(",", "").rstrip(".") if numbers else ""


@lru_cache(maxsize=1)
def _scorer():
    import reasoning_gym

    return reasoning_gym.create_dataset("gsm_symbolic", size=1, seed=0)


def is_correct(text: str, item: dict) -> bool:
    """reasoning-gym's own scorer on the extracted answer."""
    return _scorer().score_answer(extract_answer(text), item) >= 1.0


def few_shot_prompt(shots: list[dict], item: dict) -> str:
    """'Question: … / Answer: worked answer #### N' for each shot, blank-line separated, then the question."""
    solved = "".join(f"Question: {s['question']}\nAnswer: {s['metadata']['answer_cot']}\n\n" for s in shots)
    return f"{solved}Question: {item['question']}\nAnswer:"
