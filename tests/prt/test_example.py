import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).parents[2] / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


def test_example_runs_in_fast_mode_and_the_reward_helps_the_new_base(tmp_path):
    results = load_example("prt_reward_tuning").main(["--fast", "--output", str(tmp_path / "reward")])
    assert results["new base + PRT reward"] < results["new base alone"]
    assert (tmp_path / "reward" / "prt_config.json").is_file()


def test_the_cross_tokenizer_example_runs_in_fast_mode(tmp_path):
    results = load_example("prt_across_tokenizers").main(["--fast", "--output", str(tmp_path / "reward")])
    assert set(results) == {"new base alone", "new base + PRT reward (across tokenizers)"}
    assert all(0.0 <= value <= 1.0 for value in results.values())
    assert (tmp_path / "reward" / "adapter_config.json").is_file()
