"""What the artefact contract costs, side by side with what it replaces, on SmolLM2-135M-Instruct.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_artefacts

- `import hf_coop` (lazy) against importing every part eagerly, each in a fresh interpreter;
- a PRT reward (a full copy of SmolLM2-135M) saved atomically with its sha256 manifest and reloaded with every
  file verified, against transformers' plain `save_pretrained` / `from_pretrained` of the same weights;
- a `ReducedVocabLM` saved (a config and its sub-vocabulary, no weights) against saving the base's weights.

Writes the `artefacts` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.results import write_section


def _fresh_import_seconds(statement: str, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", statement], check=True)
        best = min(best, time.perf_counter() - start)
    return best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    empty = _fresh_import_seconds("pass", args.repeats)
    lazy = _fresh_import_seconds("import hf_coop", args.repeats) - empty
    eager = _fresh_import_seconds("import hf_coop.vocab, hf_coop.prt, hf_coop.slt", args.repeats) - empty

    from transformers import AutoModelForCausalLM

    from hf_coop.models import load_model
    from hf_coop.prt import PRTConfig, PRTRewardModel
    from hf_coop.vocab.reduced_lm import ReducedVocabLM

    model, tokenizer = load_model(args.model)
    reward = PRTRewardModel(model, PRTConfig(vocab_size=len(tokenizer)))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        plain_save = min(_timed(lambda: model.save_pretrained(tmp / "plain")) for _ in range(args.repeats))
        ours_save = min(_timed(lambda: reward.save_pretrained(tmp / "reward")) for _ in range(args.repeats))
        plain_load = min(
            _timed(lambda: AutoModelForCausalLM.from_pretrained(tmp / "plain")) for _ in range(args.repeats)
        )
        ours_load = min(
            _timed(lambda: PRTRewardModel.from_pretrained(tmp / "reward")) for _ in range(args.repeats)
        )
        reduced = ReducedVocabLM.from_model(model, tokenizer, "max-bytes:3")
        reduced_save = _timed(lambda: reduced.save_pretrained(tmp / "reduced"))
        reduced_bytes, weights_bytes = _folder_bytes(tmp / "reduced"), _folder_bytes(tmp / "plain")

    # verifying reads every byte once (sha256); transformers' load maps the file lazily
    lines = [
        f"Model: {args.model}. Command: `OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_artefacts` "
        f"(best of {args.repeats}; CPU).",
        "",
        "| what | hf_coop | baseline | ratio |",
        "|---|---|---|---|",
        f"| import, beyond a bare interpreter's {empty * 1000:.0f} ms | lazy `import hf_coop` {lazy * 1000:.0f} ms | "
        f"every part eagerly {eager * 1000:.0f} ms | **{lazy / eager:.4f}×** |",
        f"| save a 135M-parameter reward (s) | atomic + sha256 manifest {ours_save:.2f} | "
        f"`save_pretrained` {plain_save:.2f} | **{ours_save / plain_save:.2f}×** |",
        f"| load it (s) | every file verified {ours_load:.2f} | `from_pretrained` {plain_load:.2f} | "
        f"**{ours_load / plain_load:.2f}×** |",
        f"| saved ReducedVocabLM (max-bytes:3) | {reduced_bytes / 1e6:.2f} MB in {reduced_save:.2f} s | "
        f"the base's weights {weights_bytes / 1e6:.0f} MB | **{reduced_bytes / weights_bytes:.4f}×** |",
    ]
    write_section("artefacts", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
