"""Two CPU processes under torchrun (gloo): Trainer drives accelerate from torchrun's environment
(DESIGN.md §5: `accelerate launch --cpu` would start one process here).
One step on 2×4 rows must equal one process on 8."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from .ddp_train_script import one_step_update

SCRIPT = Path(__file__).with_name("ddp_train_script.py")


def test_two_process_training_equals_one_process_on_the_whole_batch(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPT.parents[2])}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(SCRIPT),
        str(tmp_path),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["world_size"] == 2 and "MULTI_CPU" in report["distributed_type"]
    assert report["base_unchanged"]
    distributed = load_file(str(tmp_path / "update.safetensors"))
    single, _, _ = one_step_update(str(tmp_path / "single"), per_device_batch=8)
    for name, update in single.items():
        torch.testing.assert_close(distributed[name], update, atol=1e-6, rtol=1e-5, msg=name)
