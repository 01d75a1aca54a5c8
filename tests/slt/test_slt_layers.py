import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from hf_coop.slt import FrozenSLTConfig, SupermaskConv1D, SupermaskConv2d, SupermaskLinear, apply_frozen_slt
from hf_coop.slt.model import distribute, frozen_counts

GPT2_TARGETS = r".*\.(c_attn|c_proj|c_fc)"

CONFIGS = [
    dict(sparsity=0.5),
    dict(sparsity=0.6, pruned_ratio=0.3, locked_ratio=0.2),
    dict(sparsity=0.7, pruned_ratio=0.7),
    dict(sparsity=0.5, pruned_ratio=0.2, locked_ratio=0.3, threshold="global"),
    dict(sparsity=0.6, pruned_ratio=0.3, locked_ratio=0.2, threshold="global", frozen_distribution="erk"),
    dict(sparsity=0.6, pruned_ratio=0.3, locked_ratio=0.2, threshold="global", frozen_distribution="epl"),
]


def realised_counts(layer):
    mask = layer.mask().detach().flatten()
    codes_pruned = ~(layer.free | layer.locked)
    return int(mask.sum()), int(mask[codes_pruned].sum()), int(mask[layer.locked].sum())


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_realised_sparsity_and_exact_frozen_counts(gpt2, kwargs):
    config = FrozenSLTConfig(target_modules=GPT2_TARGETS, **kwargs)
    slt = apply_frozen_slt(gpt2, config)
    layers = slt.slt_layers()
    total = sum(layer.weight_shape.numel() for layer in layers.values())
    kept_total = 0
    for layer, (n_pruned, n_locked) in zip(
        layers.values(), frozen_counts([lay.weight_shape for lay in layers.values()], config), strict=True
    ):
        kept, kept_pruned, kept_locked = realised_counts(layer)
        assert (int((~(layer.free | layer.locked)).sum()), int(layer.locked.sum())) == (n_pruned, n_locked)
        assert kept_pruned == 0 and kept_locked == n_locked
        numel = layer.weight_shape.numel()
        if config.threshold == "per_layer":
            assert kept == numel - math.floor(config.sparsity * numel + 0.5)
        if config.frozen_distribution == "uniform":
            assert n_pruned == math.floor(config.pruned_ratio * numel + 0.5)
            assert n_locked == numel - math.floor((1 - config.locked_ratio) * numel + 0.5)
        kept_total += kept
    if config.threshold == "global":
        assert kept_total == total - math.floor(config.sparsity * total + 0.5)
    if config.frozen_distribution != "uniform":
        n_pruned = sum(n for n, _ in frozen_counts([lay.weight_shape for lay in layers.values()], config))
        assert n_pruned == math.floor(config.pruned_ratio * total + 0.5)
    rounding = 0.5 * len(layers) / total
    assert slt.sparsity_report()["overall"]["sparsity"] == pytest.approx(config.sparsity, abs=rounding)


def test_erk_prunes_small_layers_less():
    shapes = [torch.Size([8, 8]), torch.Size([256, 256])]
    (small_pruned, _), (large_pruned, _) = frozen_counts(
        shapes, FrozenSLTConfig(sparsity=0.6, pruned_ratio=0.5, threshold="global", frozen_distribution="erk")
    )
    assert small_pruned / 64 < 0.5 < large_pruned / 65536
    epl = frozen_counts(
        shapes,
        FrozenSLTConfig(sparsity=0.6, pruned_ratio=0.001, threshold="global", frozen_distribution="epl"),
    )
    assert epl[0][0] == epl[1][0]


def test_distribute_respects_caps_and_total():
    assert distribute(10, [1.0, 1.0, 1.0], [2, 100, 100]) == [2, 4, 4]
    assert sum(distribute(7, [3.0, 1.0], [5, 5])) == 7
    with pytest.raises(ValueError, match="cannot place"):
        distribute(11, [1.0], [10])


def test_layer_types_and_targets(gpt2):
    slt = apply_frozen_slt(gpt2, FrozenSLTConfig(target_modules=["c_fc"], modules_to_save=["wte"]))
    assert set(slt.slt_layers()) == {"transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc"}
    assert all(isinstance(layer, SupermaskConv1D) for layer in slt.slt_layers().values())
    trainable = {n for n, p in slt.base_model.named_parameters() if p.requires_grad}
    assert trainable == {
        "transformer.wte.weight",
        "transformer.h.0.mlp.c_fc.scores",
        "transformer.h.1.mlp.c_fc.scores",
    }


def test_unsupported_target_is_refused(gpt2):
    with pytest.raises(ValueError, match="modules_to_save"):
        apply_frozen_slt(gpt2, FrozenSLTConfig(target_modules=["wte"]))
    with pytest.raises(ValueError, match="no module"):
        apply_frozen_slt(gpt2, FrozenSLTConfig(target_modules=["nothing"]))


def test_scores_only_for_free_positions(conv_net):
    slt = apply_frozen_slt(conv_net, FrozenSLTConfig(sparsity=0.6, pruned_ratio=0.3, locked_ratio=0.2))
    layers = slt.slt_layers()
    assert isinstance(layers["conv"], SupermaskConv2d) and isinstance(layers["hidden"], SupermaskLinear)
    for layer in layers.values():
        assert (
            layer.scores.numel()
            == int(layer.free.sum())
            == layer.weight_shape.numel() - layer.n_pruned - layer.n_locked
        )
        assert not layer.weight.requires_grad and "weight" not in dict(layer.named_parameters())


@pytest.mark.parametrize("bias", ["zero", "train"])
def test_forward_equals_dense_layer_with_masked_weight(conv_net, images, bias):
    slt = apply_frozen_slt(conv_net, FrozenSLTConfig(sparsity=0.5, pruned_ratio=0.1, bias=bias))
    conv = slt.slt_layers()["conv"]
    expected = F.conv2d(images, conv.weight * conv.mask().detach(), conv.bias, padding=1)
    assert torch.equal(conv(images), expected)
    assert (conv.bias is not None and conv.bias.requires_grad) == (bias == "train")
    if bias == "zero":
        assert torch.count_nonzero(conv.bias) == 0


def test_conv1d_uses_transposed_fan_in(gpt2):
    slt = apply_frozen_slt(gpt2, FrozenSLTConfig(target_modules=GPT2_TARGETS))
    layer = slt.slt_layers()["transformer.h.0.mlp.c_fc"]
    in_features, out_features = layer.weight_shape
    assert (in_features, out_features) == (32, 128)
    assert layer.weight.abs().unique().tolist() == pytest.approx([math.sqrt(2 / in_features)])
    x = torch.randn(2, 3, in_features)
    dense = Conv1D(out_features, in_features)
    with torch.no_grad():
        dense.weight.copy_(layer.effective_weight())
        dense.bias.copy_(layer.bias)
    torch.testing.assert_close(layer(x), dense(x))


def test_merge_gives_plain_layers_and_same_outputs(conv_net, images, gpt2):
    slt = apply_frozen_slt(
        conv_net, FrozenSLTConfig(sparsity=0.6, pruned_ratio=0.2, locked_ratio=0.1, bias="train")
    )
    slt.eval()
    expected = slt(images)
    merged = slt.merge_and_unload()
    assert type(merged.conv) is nn.Conv2d and type(merged.hidden) is nn.Linear
    assert torch.equal(merged(images), expected)
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    slt_lm = apply_frozen_slt(gpt2, FrozenSLTConfig(target_modules=GPT2_TARGETS))
    expected = slt_lm(input_ids=ids).logits
    merged_lm = slt_lm.merge_and_unload()
    assert type(merged_lm.transformer.h[0].mlp.c_fc) is Conv1D
    torch.testing.assert_close(merged_lm(input_ids=ids).logits, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("threshold", ["per_layer", "global"])
def test_training_moves_scores_only(conv_net, images, threshold):
    config = FrozenSLTConfig(sparsity=0.5, pruned_ratio=0.2, locked_ratio=0.2, threshold=threshold)
    slt = apply_frozen_slt(conv_net, config)
    layers = slt.slt_layers()
    before = {
        n: (lay.weight.clone(), lay.locked.clone(), lay.free.clone(), lay.scores.detach().clone())
        for n, lay in layers.items()
    }
    frozen_params = {
        n: p.detach().clone() for n, p in slt.base_model.named_parameters() if not p.requires_grad
    }
    optimizer = torch.optim.SGD(slt.optimizer_param_groups(), lr=0.5)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {
        id(lay.scores) for lay in layers.values()
    }
    labels = torch.arange(5)
    for _ in range(3):
        loss = F.cross_entropy(slt(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        slt.update_thresholds()
    for name, layer in layers.items():
        weight, locked, free, scores = before[name]
        assert (
            torch.equal(layer.weight, weight)
            and torch.equal(layer.locked, locked)
            and torch.equal(layer.free, free)
        )
        assert not torch.equal(layer.scores, scores)
    for name, param in slt.base_model.named_parameters():
        if name in frozen_params:
            assert torch.equal(param, frozen_params[name])
    assert slt.sparsity_report()["overall"]["sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_score_weight_decay_group(conv_net):
    slt = apply_frozen_slt(conv_net, FrozenSLTConfig(score_weight_decay=1e-4, bias="train"))
    scores_group, extras_group = slt.optimizer_param_groups(extras_weight_decay=0.0)
    assert scores_group["weight_decay"] == 1e-4 and extras_group["weight_decay"] == 0.0
    assert {id(p) for p in extras_group["params"]} == {
        id(slt.base_model.conv.bias),
        id(slt.base_model.hidden.bias),
    }
