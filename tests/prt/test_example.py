import importlib.util
from pathlib import Path

EXAMPLE = Path(__file__).parents[2] / "examples" / "prt_reward_tuning.py"


def test_example_runs_in_fast_mode_and_the_reward_helps_the_new_base(tmp_path):
    spec = importlib.util.spec_from_file_location("prt_reward_tuning", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = example.main(["--fast", "--output", str(tmp_path / "reward")])
    assert results["new base + PRT reward"] < results["new base alone"]
    assert (tmp_path / "reward" / "prt_config.json").is_file()
