import argparse

import pytest

from hf_coop.commands.prt import add_subcommands
from hf_coop.testing import tiny_causal_lm


def run(argv):
    parser = argparse.ArgumentParser(prog="hf-coop")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture()
def saved_models(tmp_path, tokenizer):
    folders = {}
    for name, arch, seed in (("source", "llama", 0), ("new", "gpt2", 1)):
        folder = tmp_path / name
        tiny_causal_lm(tokenizer, arch=arch, seed=seed).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[name] = str(folder)
    return folders


def test_train_then_generate(tmp_path, saved_models, capsys):
    data = tmp_path / "train.txt"
    data.write_text("Question: Tom has 3 apples. Answer: 7\nThe quick brown fox\n" * 4)
    output = tmp_path / "reward"
    assert (
        run(
            [
                "prt",
                "train",
                "--base",
                saved_models["source"],
                "--data",
                str(data),
                "--output",
                str(output),
                "--max-steps",
                "2",
                "--batch-size",
                "4",
                "--lora-r",
                "2",
                "--lambda",
                "0.5",
            ]
        )
        == 0
    )
    assert (output / "prt_config.json").is_file() and (output / "adapter_config.json").is_file()
    capsys.readouterr()
    assert (
        run(
            [
                "prt",
                "generate",
                "The quick",
                "--base",
                saved_models["new"],
                "--reward",
                str(output),
                "--max-new-tokens",
                "5",
                "--num-beams",
                "2",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip()


def test_unknown_data_file_type_is_refused(tmp_path, saved_models):
    data = tmp_path / "train.parquetx"
    data.write_text("x")
    with pytest.raises(ValueError, match="unknown file type"):
        run(
            [
                "prt",
                "train",
                "--base",
                saved_models["source"],
                "--data",
                str(data),
                "--output",
                str(tmp_path / "o"),
            ]
        )


def test_generate_with_a_reward_over_another_tokenizer_runs_over_the_common_vocabulary(
    tmp_path, saved_models, sentencepiece_tokenizer, capsys
):
    from hf_coop.models import load_model
    from hf_coop.prt import PRTModel, PRTRewardModel

    data = tmp_path / "train.txt"
    data.write_text("Q: 3 + 4\nA: 7\n" * 8)
    reward_folder = tmp_path / "reward"
    train = [
        "prt",
        "train",
        "--base",
        saved_models["source"],
        "--data",
        str(data),
        "--output",
        str(reward_folder),
    ]
    assert run([*train, "--max-steps", "2", "--batch-size", "4", "--lora-r", "2"]) == 0
    new_folder = tmp_path / "new-sp"
    tiny_causal_lm(sentencepiece_tokenizer, arch="gemma3", seed=5).save_pretrained(new_folder)
    sentencepiece_tokenizer.save_pretrained(new_folder)
    capsys.readouterr()
    command = ["prt", "generate", "Q: 3 + 4", "--model", str(new_folder), "--reward", str(reward_folder)]
    assert run([*command, "--max-new-tokens", "4"]) == 0
    captured = capsys.readouterr()
    assert "common vocabulary" in captured.err
    new_base, tokenizer = load_model(str(new_folder))
    model = PRTModel(new_base, PRTRewardModel.from_pretrained(reward_folder), tokenizer=tokenizer)
    inputs = model.tokenizer("Q: 3 + 4", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    expected = model.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert captured.out == expected + "\n"
