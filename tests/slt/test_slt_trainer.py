"""Trainer integration, run as two CPU processes.

`torchrun --nproc_per_node 2` starts two ranks over gloo; `Trainer` drives accelerate with that
environment (the launcher shared/DESIGN.md §5 found to give a real world size of 2 on CPU)."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from hf_coop.slt import FrozenSLTModel
from hf_coop.testing import tiny_byte_level_tokenizer, tiny_causal_lm

SCRIPT = Path(__file__).with_name("slt_trainer_script.py")


def test_two_process_trainer_moves_scores_only_logs_sparsity_and_saves_ticket(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [*torchrun, str(SCRIPT), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert all(r["weights_unchanged"] for r in ranks)
    assert ranks[0]["scores"] == ranks[1]["scores"] and ranks[0]["masks"] == ranks[1]["masks"]

    logged = [entry for entry in ranks[0]["log_history"] if "loss" in entry]
    assert len(logged) == 2
    for entry in logged:
        assert abs(entry["slt_sparsity"] - 0.5) < 1e-3
        assert "slt_sparsity/transformer.h.0.mlp.c_fc" in entry

    ticket = tmp_path / "checkpoint-4" / "slt_ticket"
    loaded = FrozenSLTModel.from_pretrained(tiny_causal_lm(tiny_byte_level_tokenizer(), arch="gpt2"), ticket)
    digest = hashlib.sha256()
    for layer in loaded.slt_layers().values():
        digest.update(layer.mask().detach().float().numpy().tobytes())
    assert digest.hexdigest() == ranks[0]["masks"]
