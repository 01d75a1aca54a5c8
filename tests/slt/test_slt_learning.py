import pytest
import torch

from hf_coop.slt import FrozenSLTConfig, apply_frozen_slt
from hf_coop.slt.tasks import ConvNet, accuracy, digits_data, train_classifier

pytest.importorskip("sklearn")


def test_partially_frozen_ticket_learns_digits_well_above_chance():
    train_x, train_y, test_x, test_y = digits_data()
    torch.manual_seed(0)
    config = FrozenSLTConfig(sparsity=0.5, pruned_ratio=0.2, locked_ratio=0.2)
    slt = apply_frozen_slt(ConvNet(image_size=8, width=8), config)
    untrained = accuracy(slt, test_x, test_y)
    train_classifier(slt, slt.optimizer_param_groups(), train_x, train_y, epochs=5, lr=0.1)
    trained = accuracy(slt, test_x, test_y)
    assert trained > 0.7 > untrained + 0.3  # chance is 0.1
    assert slt.sparsity_report()["overall"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
