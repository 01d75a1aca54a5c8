import pytest

from hf_coop.config_utils import ArtifactError
from hf_coop.slt import FrozenSLTConfig


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(sparsity=0.3, pruned_ratio=0.4),  # p > s
        dict(sparsity=0.8, locked_ratio=0.3),  # s > 1 - r
        dict(sparsity=1.0),
        dict(pruned_ratio=-0.1),
    ],
)
def test_ratios_must_satisfy_p_le_s_le_1_minus_r(kwargs):
    with pytest.raises(ValueError, match="sparsity"):
        FrozenSLTConfig(**kwargs)


def test_boundary_ratios_are_allowed():
    FrozenSLTConfig(sparsity=0.5, pruned_ratio=0.5, locked_ratio=0.5)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(frozen_distribution="random"),
        dict(threshold="local"),
        dict(weight_init="normal"),
        dict(bias="keep"),
    ],
)
def test_unknown_choices_are_refused(kwargs):
    with pytest.raises(ValueError, match="must be one of"):
        FrozenSLTConfig(**kwargs)


def test_per_layer_threshold_needs_uniform_distribution():
    with pytest.raises(ValueError, match="threshold='global'"):
        FrozenSLTConfig(frozen_distribution="erk")
    FrozenSLTConfig(frozen_distribution="erk", threshold="global")


def test_save_load_round_trip(tmp_path):
    config = FrozenSLTConfig(
        sparsity=0.7,
        pruned_ratio=0.2,
        locked_ratio=0.1,
        seed=9,
        target_modules=["fc"],
        modules_to_save=["head"],
    )
    config.save_pretrained(tmp_path)
    assert FrozenSLTConfig.from_pretrained(tmp_path) == config


def test_newer_format_refused(tmp_path):
    FrozenSLTConfig().save_pretrained(tmp_path)
    file = tmp_path / FrozenSLTConfig.config_name
    file.write_text(file.read_text().replace('"format_version": 1', '"format_version": 99'))
    with pytest.raises(ArtifactError, match="newer"):
        FrozenSLTConfig.from_pretrained(tmp_path)
