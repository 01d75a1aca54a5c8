import pytest
import torch
from datasets import Dataset

from hf_coop.errors import ConfigError, InputError
from hf_coop.prt import PRTConfig, PRTTrainer, PRTTrainingArguments
from hf_coop.testing import TINY_TRAINING_TEXTS as TEXTS
from hf_coop.testing import tiny_causal_lm, tiny_sequence_classifier


def padded_lm_dataset(tokenizer, texts=TEXTS):
    """Right-padded rows of different lengths; padding is masked with -100 labels."""
    enc = tokenizer(texts)
    width = max(len(ids) for ids in enc["input_ids"])
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for ids in enc["input_ids"]:
        pad = width - len(ids)
        rows["input_ids"].append(ids + [tokenizer.pad_token_id] * pad)
        rows["attention_mask"].append([1] * len(ids) + [0] * pad)
        rows["labels"].append(ids + [-100] * pad)
    return Dataset.from_dict(rows)


def make_args(tmp_path, **overrides):
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        seed=0,
        disable_tqdm=True,
    )
    return PRTTrainingArguments(**{**defaults, **overrides})


def snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_base_is_bit_identical_and_reward_changes(tmp_path, tokenizer):
    base = tiny_causal_lm(tokenizer, seed=0, extra_head_rows=3)
    before_base = snapshot(base)
    trainer = PRTTrainer(
        base, args=make_args(tmp_path), train_dataset=padded_lm_dataset(tokenizer), processing_class=tokenizer
    )
    before_reward = snapshot(trainer.model)
    assert all(torch.equal(before_reward[n], before_base[n]) for n in before_base), (
        "reward starts as the base"
    )
    trainer.train()
    assert all(torch.equal(p, before_base[n]) for n, p in base.named_parameters())
    assert not base.training and not any(p.requires_grad for p in base.parameters())
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before_reward[n])]
    assert len(changed) == len(before_reward)
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in base.parameters()}
    assert trainer.prt_config.vocab_size == len(tokenizer) and trainer.prt_config.vocab_fingerprint


def test_gradient_accumulation_2x4_equals_batch_8(tmp_path, tokenizer):
    base = tiny_causal_lm(tokenizer, seed=0)
    dataset = padded_lm_dataset(tokenizer)
    results = []
    for batch, accumulation in ((8, 1), (4, 2)):
        args = make_args(
            tmp_path,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
            optim="sgd",
            learning_rate=1.0,
            max_grad_norm=0.0,
            weight_decay=0.0,
        )
        trainer = PRTTrainer(
            base,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            prt_config=PRTConfig(entropy_weight=0.1),
        )
        start = snapshot(trainer.model)
        trainer.train()
        results.append({n: start[n] - p.detach() for n, p in trainer.model.named_parameters()})
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], atol=1e-6, rtol=1e-5)


def test_lora_reward_trains_only_the_adapter(tmp_path, tokenizer):
    from peft import LoraConfig

    base = tiny_causal_lm(tokenizer, seed=0)
    before_base = snapshot(base)
    trainer = PRTTrainer(
        base,
        args=make_args(tmp_path),
        train_dataset=padded_lm_dataset(tokenizer),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    before = snapshot(trainer.model)
    trainer.train()
    for name, p in trainer.model.named_parameters():
        assert torch.equal(p, before[name]) != ("lora_" in name), name
    assert all(torch.equal(p, before_base[n]) for n, p in base.named_parameters())


def test_classifier_reward_trains_over_labels_and_evaluates(tmp_path, tokenizer):
    base = tiny_sequence_classifier(tokenizer, labels=("neg", "pos"), seed=0)
    enc = tokenizer(TEXTS, padding="max_length", max_length=24, truncation=True)
    dataset = Dataset.from_dict({**enc, "labels": [i % 2 for i in range(len(TEXTS))]})
    trainer = PRTTrainer(
        base,
        args=make_args(tmp_path, eval_strategy="steps", eval_steps=1),
        train_dataset=dataset,
        eval_dataset=dataset,
    )
    assert trainer.prt_config.task_type == "classification"
    assert trainer.prt_config.label_names == ["neg", "pos"]
    trainer.train()
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] > 0
    predictions = trainer.predict(dataset).predictions
    assert predictions.shape == (len(TEXTS), 2)


def test_reward_with_other_labels_is_refused(tokenizer):
    base = tiny_sequence_classifier(tokenizer, labels=("neg", "pos"))
    with pytest.raises(ValueError, match="differ from the base"):
        PRTTrainer(
            base,
            model=tiny_sequence_classifier(tokenizer, labels=("pos", "neg")),
            args=PRTTrainingArguments(output_dir="unused", use_cpu=True, report_to=[]),
        )


def test_checkpoint_resume_reaches_the_same_weights(tmp_path, tokenizer):
    base = tiny_causal_lm(tokenizer, seed=0)
    dataset = padded_lm_dataset(tokenizer)
    straight = PRTTrainer(
        base, args=make_args(tmp_path / "a", max_steps=2), train_dataset=dataset, processing_class=tokenizer
    )
    straight.train()
    args = make_args(tmp_path / "b", max_steps=2, save_strategy="steps", save_steps=1)
    first = PRTTrainer(base, args=args, train_dataset=dataset, processing_class=tokenizer)
    first.train()
    checkpoint = tmp_path / "b" / "out" / "checkpoint-1"
    assert (checkpoint / "prt_config.json").is_file() and (checkpoint / "README.md").is_file()
    resumed = PRTTrainer(base, args=args, train_dataset=dataset, processing_class=tokenizer)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for (name, p), q in zip(straight.model.named_parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name)


def test_loss_components_are_logged(tmp_path, tokenizer):
    trainer = PRTTrainer(
        tiny_causal_lm(tokenizer),
        args=make_args(tmp_path),
        processing_class=tokenizer,
        train_dataset=padded_lm_dataset(tokenizer),
        prt_config=PRTConfig(entropy_weight=0.5),
    )
    trainer.train()
    logged = trainer.state.log_history[0]
    assert {"prt_ce", "prt_reward_entropy"} <= set(logged)
    assert logged["loss"] == pytest.approx(logged["prt_ce"] - 0.5 * logged["prt_reward_entropy"], rel=1e-4)


def test_batches_without_labels_are_refused_clearly(tmp_path, tokenizer):
    dataset = padded_lm_dataset(tokenizer).remove_columns("labels")
    trainer = PRTTrainer(
        tiny_causal_lm(tokenizer), args=make_args(tmp_path), train_dataset=dataset, processing_class=tokenizer
    )
    with pytest.raises(ValueError, match="needs `labels`"):
        trainer.train()


def test_labels_shifted_by_the_user_are_refused(tmp_path, tokenizer):
    """Pre-shifted labels (length L-1) would train against targets off by one more position."""
    trainer = PRTTrainer(tiny_causal_lm(tokenizer), args=make_args(tmp_path), processing_class=tokenizer)
    batch = padded_lm_dataset(tokenizer)[:4]
    inputs = {k: torch.tensor(v) for k, v in batch.items()}
    inputs["labels"] = inputs["labels"][:, 1:]
    with pytest.raises(InputError, match=r"labels have shape \(4, \d+\) but input_ids \(4, \d+\).*unshifted"):
        trainer.compute_loss(trainer.model, inputs)


def test_a_batch_without_labelled_tokens_is_skipped_not_nan(tmp_path, tokenizer, caplog):
    """Every label -100 is 0/0: the batch contributes a zero loss (with a warning), whatever the
    accumulation count, and the reward's weights do not move."""
    trainer = PRTTrainer(tiny_causal_lm(tokenizer), args=make_args(tmp_path), processing_class=tokenizer)
    batch = padded_lm_dataset(tokenizer)[:4]
    inputs = {k: torch.tensor(v) for k, v in batch.items()}
    inputs["labels"] = torch.full_like(inputs["labels"], -100)
    for items in (None, 0, torch.tensor(0)):
        loss = trainer.compute_loss(trainer.model, inputs, num_items_in_batch=items)
        assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in trainer.model.parameters())
    assert "no labelled tokens" in caplog.text


def test_a_classifier_base_with_a_causal_lm_config_is_refused(tokenizer):
    with pytest.raises(ConfigError, match="task_type is 'causal_lm' but the base .* is a classifier"):
        PRTTrainer(
            tiny_sequence_classifier(tokenizer),
            args=PRTTrainingArguments(output_dir="unused", use_cpu=True, report_to=[]),
            prt_config=PRTConfig(),
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(reward_scale=float("inf")), r"reward_scale \(λ\) must be a finite number, got inf"),
        (dict(reward_scale=0.0), r"reward_scale \(λ\) must be in \(0.0, inf\]"),
        (dict(entropy_weight=float("nan")), r"entropy_weight \(α\) must be a finite number, got nan"),
        (dict(reward_scale="1"), r"reward_scale \(λ\) must be a finite number, got '1'"),
    ],
)
def test_prt_config_values_are_checked_where_they_are_set(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PRTConfig(**kwargs)
