import importlib.util
from pathlib import Path

EXAMPLE = Path(__file__).parents[1] / "examples" / "ensemble_generate.py"


def test_ensemble_example_runs_in_fast_mode():
    spec = importlib.util.spec_from_file_location("ensemble_generate_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = example.main(["--fast", "--max-new-tokens", "6"])
    assert results["processor"] == results["ensemble"] and results["mcv_size"] > 256
    assert results["bits_per_byte"] > 0
