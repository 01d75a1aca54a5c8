import json
import math
import os
import shutil

import pytest
import torch

from hf_coop.artefacts import write_manifest
from hf_coop.config_utils import ArtifactError
from hf_coop.slt import FrozenSLTConfig, FrozenSLTModel, apply_frozen_slt, inspect_checkpoint
from hf_coop.slt.model import EXTRAS_FILE, MANIFEST_FILE, TICKET_FILE
from hf_coop.testing import tiny_causal_lm

GPT2_TARGETS = r".*\.(c_attn|c_proj|c_fc)"
IDS = torch.tensor([[5, 3, 9, 12, 7, 1]])


def trained_ticket(gpt2, **overrides):
    """A GPT-2 ticket whose scores moved a little, so the mask is not the initial one."""
    config = FrozenSLTConfig(
        sparsity=0.6,
        pruned_ratio=0.3,
        locked_ratio=0.2,
        target_modules=GPT2_TARGETS,
        modules_to_save=["wte", "wpe"],
        seed=7,
        **overrides,
    )
    slt = apply_frozen_slt(gpt2, config)
    optimizer = torch.optim.SGD(slt.optimizer_param_groups(), lr=1.0)
    loss = slt(input_ids=IDS, labels=IDS).loss
    loss.backward()
    optimizer.step()
    slt.update_thresholds()
    return slt.eval()


@pytest.fixture
def saved(tmp_path, gpt2):
    slt = trained_ticket(gpt2)
    slt.save_pretrained(tmp_path / "ticket")
    return slt, tmp_path / "ticket"


@pytest.mark.parametrize("threshold", ["per_layer", "global"])
def test_save_load_gives_identical_logits_and_masks(tmp_path, gpt2, slt_tokenizer, threshold):
    slt = trained_ticket(gpt2, threshold=threshold)
    slt.save_pretrained(tmp_path)
    fresh = tiny_causal_lm(slt_tokenizer, arch="gpt2", seed=123)  # other random weights: must not matter
    loaded = FrozenSLTModel.from_pretrained(fresh, tmp_path).eval()
    assert torch.equal(loaded(input_ids=IDS).logits, slt(input_ids=IDS).logits)
    for name, layer in slt.slt_layers().items():
        other = loaded.slt_layers()[name]
        assert torch.equal(other.mask(), layer.mask())
        assert torch.equal(other.weight, layer.weight)
    assert torch.equal(loaded.merge_and_unload()(input_ids=IDS).logits, slt(input_ids=IDS).logits)


def test_ticket_file_is_packed_bits_plus_header(saved):
    slt, path = saved
    packed = {name: math.ceil(layer.n_free / 8) for name, layer in slt.slt_layers().items()}
    data = (path / TICKET_FILE).read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    header.pop("__metadata__", None)
    assert {name: (entry["dtype"], entry["shape"]) for name, entry in header.items()} == {
        name: ("U8", [n]) for name, n in packed.items()
    }
    assert len(data) == 8 + header_len + sum(packed.values())
    assert header_len <= 100 * len(packed)  # "a small header": about 80 bytes of JSON per layer


def test_size_report(saved):
    slt, path = saved
    report = inspect_checkpoint(path)
    extras, _ = slt.dense_extras()
    dense = 4 * (
        sum(t.numel() for t in extras.values())
        + sum(lay.weight_shape.numel() for lay in slt.slt_layers().values())
    )
    assert report["dense_fp32_bytes"] == dense
    assert report["compact_bytes"] == sum(os.path.getsize(path / f) for f in report["file_bytes"])
    assert report["compression"] == pytest.approx(dense / report["compact_bytes"])
    assert report["sparsity"] == pytest.approx(0.6, abs=1e-3)
    card = (path / "README.md").read_text()
    assert "Strong lottery ticket" in card and "transformer.h.0.mlp.c_fc" in card and "$" not in card


def test_push_to_hub_uploads_the_ticket_and_reloads_from_a_repo_id(
    saved, slt_tokenizer, mock_hub, monkeypatch
):
    slt, path = saved
    slt.push_to_hub("me/tiny-ticket")
    assert mock_hub["repo_id"] == "me/tiny-ticket"
    assert {p.name for p in path.iterdir()} <= set(mock_hub)
    assert mock_hub["README.md"] == (path / "README.md").read_bytes()
    assert mock_hub[TICKET_FILE] == (path / TICKET_FILE).read_bytes()

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, revision=None: str(path))
    fresh = tiny_causal_lm(slt_tokenizer, arch="gpt2", seed=123)
    loaded = FrozenSLTModel.from_pretrained(fresh, "me/tiny-ticket").eval()
    assert torch.equal(loaded(input_ids=IDS).logits, slt(input_ids=IDS).logits)


def test_tied_weights_stored_once(saved):
    _, path = saved
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    assert manifest["tied"] == {"lm_head.weight": "transformer.wte.weight"}


def _flip_last_byte(file):
    data = bytearray(file.read_bytes())
    data[-1] ^= 0x01
    file.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip_ticket", "truncate_ticket", "truncate_extras", "delete_extras"])
def test_corrupt_or_truncated_checkpoint_refused(saved, slt_tokenizer, damage):
    _, path = saved
    if damage == "flip_ticket":
        _flip_last_byte(path / TICKET_FILE)
    elif damage == "truncate_ticket":
        (path / TICKET_FILE).write_bytes((path / TICKET_FILE).read_bytes()[:-3])
    elif damage == "truncate_extras":
        (path / EXTRAS_FILE).write_bytes((path / EXTRAS_FILE).read_bytes()[:100])
    else:
        os.remove(path / EXTRAS_FILE)
    with pytest.raises(ArtifactError, match="checksum|missing"):
        FrozenSLTModel.from_pretrained(tiny_causal_lm(slt_tokenizer, arch="gpt2"), path)


def test_truncated_manifest_refused(saved, slt_tokenizer):
    _, path = saved
    (path / MANIFEST_FILE).write_text((path / MANIFEST_FILE).read_text()[:50])
    with pytest.raises(ArtifactError, match="corrupt or truncated"):
        FrozenSLTModel.from_pretrained(tiny_causal_lm(slt_tokenizer, arch="gpt2"), path)


def _resign(path, manifest):
    """Write an edited ticket manifest and re-sign the folder, as a consistent but foreign ticket would be."""
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    write_manifest(path, "FrozenSLTModel")


def test_newer_format_version_refused(saved, slt_tokenizer):
    _, path = saved
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    manifest["format_version"] = 2
    _resign(path, manifest)
    with pytest.raises(ArtifactError, match="format version"):
        FrozenSLTModel.from_pretrained(tiny_causal_lm(slt_tokenizer, arch="gpt2"), path)


def test_other_architecture_refused(saved, slt_tokenizer):
    _, path = saved
    wider = tiny_causal_lm(slt_tokenizer, arch="gpt2", hidden_size=64)
    with pytest.raises(ArtifactError, match="another architecture"):
        FrozenSLTModel.from_pretrained(wider, path)


def _model_state(model):
    return {name: type(m).__name__ for name, m in model.named_modules()}, {
        name: (p.detach().clone(), p.requires_grad) for name, p in model.named_parameters()
    }


def _assert_untouched(model, before):
    modules, params = _model_state(model)
    assert modules == before[0]
    assert params.keys() == before[1].keys()
    for name, (value, grad) in params.items():
        assert torch.equal(value, before[1][name][0]) and grad == before[1][name][1], name


def test_weight_checksum_mismatch_refused_and_the_model_left_as_given(saved, slt_tokenizer):
    """A manifest whose weight checksums disagree with the regenerated weights (another generator): refused
    after the conversion started, and the conversion undone."""
    _, path = saved
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    manifest["layers"][-1]["weight_sha256"] = "0" * 64
    _resign(path, manifest)
    model = tiny_causal_lm(slt_tokenizer, arch="gpt2")
    before = _model_state(model)
    with pytest.raises(ArtifactError, match="regenerated weights differ"):
        FrozenSLTModel.from_pretrained(model, path)
    _assert_untouched(model, before)


def test_manifest_missing_a_layer_refused(saved, slt_tokenizer):
    """A layer left out of the manifest would keep its random initial mask: refused, naming it."""
    _, path = saved
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    dropped = manifest["layers"].pop(1)["name"]
    _resign(path, manifest)
    model = tiny_causal_lm(slt_tokenizer, arch="gpt2")
    before = _model_state(model)
    with pytest.raises(ArtifactError, match=f"model layers not in the manifest: \\['{dropped}'\\]"):
        FrozenSLTModel.from_pretrained(model, path)
    _assert_untouched(model, before)


def test_edited_config_refused(saved, slt_tokenizer, tmp_path):
    _, path = saved
    edited = tmp_path / "edited"
    shutil.copytree(path, edited)
    config = json.loads((edited / "slt_config.json").read_text())
    config["seed"] = 8
    (edited / "slt_config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="checksum"):
        FrozenSLTModel.from_pretrained(tiny_causal_lm(slt_tokenizer, arch="gpt2"), edited)


def test_not_a_ticket_refused(tmp_path, slt_tokenizer):
    with pytest.raises(ArtifactError, match="not an hf_coop.slt ticket"):
        FrozenSLTModel.from_pretrained(tiny_causal_lm(slt_tokenizer, arch="gpt2"), tmp_path)
