import json

import pytest
import torch
from datasets import Dataset

from hf_coop.artefacts import MANIFEST_FILE, write_manifest
from hf_coop.config_utils import ArtifactError, vocab_fingerprint
from hf_coop.prt import PRTConfig, PRTModel, PRTRewardModel, PRTTrainer, PRTTrainingArguments
from hf_coop.testing import tiny_causal_lm, tiny_sentencepiece_tokenizer, tiny_sequence_classifier


def train_and_save(tmp_path, tokenizer, base, peft_config=None):
    enc = tokenizer(["Question: Tom has 3 apples. Answer: 7", "def add(a, b):"], padding=True)
    labels = [
        [t if m else -100 for t, m in zip(ids, mask, strict=True)]
        for ids, mask in zip(enc["input_ids"], enc["attention_mask"], strict=True)
    ]
    args = PRTTrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        learning_rate=1e-2,
        disable_tqdm=True,
    )
    trainer = PRTTrainer(
        base,
        args=args,
        train_dataset=Dataset.from_dict({**enc, "labels": labels}),
        processing_class=tokenizer,
        peft_config=peft_config,
        prt_config=PRTConfig(reward_scale=0.5, base_model_name_or_path="tiny/source"),
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "reward"))
    return trainer, tmp_path / "reward"


def test_save_then_load_reproduces_logits_exactly(tmp_path, tokenizer, source_base, new_base, prompts):
    trainer, path = train_and_save(tmp_path, tokenizer, source_base)
    assert {"prt_config.json", "README.md", "model.safetensors", "config.json"} <= {
        p.name for p in path.iterdir()
    }
    card = (path / "README.md").read_text()
    assert "tiny/source" in card and "λ (reward_scale) | 0.5" in card and "$" not in card
    loaded = PRTRewardModel.from_pretrained(path, tokenizer=tokenizer)
    assert loaded.prt_config == trainer.prt_config
    with torch.no_grad():
        expected = trainer.model.eval()(**prompts).logits
        assert torch.equal(loaded(**prompts).logits, expected)
    original = PRTModel(new_base, PRTRewardModel(trainer.model, trainer.prt_config))
    reloaded = PRTModel(new_base, loaded, tokenizer=tokenizer)
    with torch.no_grad():
        assert torch.equal(original(**prompts).logits, reloaded(**prompts).logits)


def test_lora_reward_saves_an_adapter_and_reloads_onto_the_base(tmp_path, tokenizer, prompts):
    from peft import LoraConfig

    base = tiny_causal_lm(tokenizer, seed=0)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    trainer, path = train_and_save(tmp_path, tokenizer, base, peft_config=lora)
    assert (path / "adapter_config.json").is_file() and not (path / "model.safetensors").exists()
    loaded = PRTRewardModel.from_pretrained(path, base_model=tiny_causal_lm(tokenizer, seed=0))
    with torch.no_grad():
        assert torch.equal(loaded(**prompts).logits, trainer.model.eval()(**prompts).logits)


def test_other_tokenizer_is_refused_with_the_reason(tmp_path, tokenizer, source_base):
    _, path = train_and_save(tmp_path, tokenizer, source_base)
    with pytest.raises(ArtifactError, match="not the vocabulary this reward was trained over"):
        PRTRewardModel.from_pretrained(path, tokenizer=tiny_sentencepiece_tokenizer())


def test_folder_with_foreign_config_is_refused(tmp_path, tokenizer, source_base):
    _, path = train_and_save(tmp_path, tokenizer, source_base)
    config = json.loads((path / "prt_config.json").read_text())
    config["vocab_fingerprint"] = vocab_fingerprint(tiny_sentencepiece_tokenizer())
    (path / "prt_config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="prt_config.json does not match its checksum"):
        PRTRewardModel.from_pretrained(path)
    write_manifest(path, "PRTRewardModel", top_level_only=True)  # files mixed by hand, then re-signed
    with pytest.raises(ArtifactError, match="tokenizer saved in"):
        PRTRewardModel.from_pretrained(path)


def test_classifier_reward_checks_labels_by_name(tmp_path, tokenizer):
    model = tiny_sequence_classifier(tokenizer, labels=("neg", "pos"))
    config = PRTConfig(task_type="classification", id2label={0: "neg", 1: "pos"})
    PRTRewardModel(model, config).save_pretrained(tmp_path)
    PRTRewardModel.from_pretrained(tmp_path, id2label={0: "pos", 1: "neg"})  # same set, other order: fine
    with pytest.raises(ArtifactError, match="PRT needs the same label set"):
        PRTRewardModel.from_pretrained(tmp_path, id2label={0: "neg", 1: "neutral"})


def test_push_to_hub_uploads_weights_config_and_card(tmp_path, tokenizer, source_base, mock_hub):
    trainer, path = train_and_save(tmp_path, tokenizer, source_base)
    PRTRewardModel.from_pretrained(path).push_to_hub("me/tiny-prt-reward")
    assert mock_hub["repo_id"] == "me/tiny-prt-reward"
    assert {"model.safetensors", "prt_config.json", "README.md"} <= set(mock_hub)
    assert b"Portable Reward Tuning" in mock_hub["README.md"]


def test_image_classifier_reward_round_trips(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    labels = {0: "shirt", 1: "shoe", 2: "bag"}
    config = ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=1,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        id2label=labels,
    )
    model = ViTForImageClassification(config).eval()
    prt_config = PRTConfig(task_type="classification", id2label=labels)
    PRTRewardModel(model, prt_config).save_pretrained(tmp_path)
    loaded = PRTRewardModel.from_pretrained(tmp_path, id2label=labels)
    pixels = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=pixels).logits, model(pixel_values=pixels).logits)


def test_a_truncated_weights_file_and_a_mistyped_folder_are_named(tmp_path, tokenizer, source_base):
    _, path = train_and_save(tmp_path, tokenizer, source_base)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match=r"model.safetensors does not match its checksum"):
        PRTRewardModel.from_pretrained(path)
    (path / MANIFEST_FILE).unlink()  # a folder from before manifests: the reader still names the file
    with pytest.raises(
        ArtifactError, match=r"a weights file \(model.safetensors\) is unreadable .* truncated"
    ):
        PRTRewardModel.from_pretrained(path)
    for typo in (str(tmp_path / "rewrad"), "./rewrad"):
        with pytest.raises(ArtifactError, match="no such folder"):
            PRTRewardModel.from_pretrained(typo)
    with pytest.raises(ArtifactError, match="has no prt_config.json"):
        PRTRewardModel.from_pretrained(tmp_path)
