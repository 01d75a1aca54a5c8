import pytest

from hf_coop.errors import ArtifactError, ConfigError
from hf_coop.slt import FrozenSLTConfig


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sparsity=0.3, pruned_ratio=0.4), "pruned_ratio <= sparsity"),  # p > s
        (dict(sparsity=0.8, locked_ratio=0.3), "sparsity <= 1 - locked_ratio"),  # s > 1 - r
        (dict(sparsity=1.0), "0 <= sparsity < 1"),
        (dict(pruned_ratio=-0.1), r"pruned_ratio must be in \[0.0, inf\], got -0.1"),
    ],
)
def test_ratios_must_satisfy_p_le_s_le_1_minus_r(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FrozenSLTConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sparsity="0.5"), "sparsity must be a finite number, got '0.5'"),
        (dict(sparsity=float("nan")), "sparsity must be a finite number, got nan"),
        (dict(seed=1.5), "seed must be an integer >= 0, got 1.5"),
        (dict(update_every=True), "update_every must be an integer >= 1, got True"),
        (dict(target_modules="("), r"target_modules '\(' is not a valid regular expression"),
        (dict(target_modules=3), "target_modules must be None, a regex or a list of names"),
    ],
)
def test_types_and_values_are_checked_where_they_are_set(kwargs, message):
    with pytest.raises(ConfigError, match=message):
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
