import importlib.util
from pathlib import Path

EXAMPLE = Path(__file__).parents[2] / "examples" / "reduced_vocab.py"


def test_reduced_vocab_example_runs_in_fast_mode():
    spec = importlib.util.spec_from_file_location("reduced_vocab_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = example.main(["--fast"])
    assert results["reduced"].startswith(results["plain"][:5])
    assert results["marginal"] >= results["canonical"] - 1e-4
    assert results["reloaded_equal"]
