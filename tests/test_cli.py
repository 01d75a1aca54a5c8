import json

from hf_coop.commands import main


def _tiny_model_folder(tmp_path, tokenizer):
    from hf_coop.testing import tiny_causal_lm

    tiny_causal_lm(tokenizer).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    return str(tmp_path)


def test_score_prints_json(tmp_path, capsys, byte_level_tokenizer):
    folder = _tiny_model_folder(tmp_path, byte_level_tokenizer)
    assert main(["score", "--model", folder, "--json", "Hello world"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_bytes"] == 11 and out["nats"] < 0 and out["bits_per_byte"] > 0
    assert out["canonical_nats"] == out["nats"]


def test_score_reads_a_file_and_reports_bad_input(tmp_path, capsys, byte_level_tokenizer):
    folder = _tiny_model_folder(tmp_path / "m", byte_level_tokenizer)
    text = tmp_path / "t.txt"
    text.write_text("A text from a file.", encoding="utf-8")
    assert main(["score", "--model", folder, "--file", str(text)]) == 0
    assert "bits/byte" in capsys.readouterr().out
    text.write_bytes(b"\xff\xfe bad")
    assert main(["score", "--model", folder, "--file", str(text)]) == 2
    assert "not UTF-8" in capsys.readouterr().err
    assert main(["score", "--model", str(tmp_path), "x"]) == 2
    assert "not a Hugging Face model" in capsys.readouterr().err


def test_score_marginal_and_sub_vocab(tmp_path, capsys, byte_level_tokenizer):
    folder = _tiny_model_folder(tmp_path, byte_level_tokenizer)
    assert (
        main(
            [
                "score",
                "--model",
                folder,
                "--json",
                "--sub-vocab",
                "max-bytes:3",
                "--max-hypotheses",
                "0",
                "--prune-ratio",
                "0",
                "It is a",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert (
        out["nats"] == out["marginal_nats"] >= out["reduced_canonical_nats"] >= out["canonical_nats"] - 1e-4
    )
    assert out["truncated_mass"] == 0.0 and out["n_bytes"] == 7 and out["sub_vocab"] == "max-bytes:3"
    assert main(["score", "--model", folder, "--sub-vocab", "words", "x"]) == 2
    assert "unknown sub-vocabulary" in capsys.readouterr().err


def test_a_mistyped_local_path_is_no_such_folder_in_every_command(tmp_path, capsys):
    """Never the Hub's "Repo id must be in the form ..." for what can only be a local path."""
    typo = str(tmp_path / "typo")
    for argv in (
        ["score", "--model", typo, "x"],
        ["score", "--model", "./typo", "x"],
        ["mcv", typo, "./typo"],
        ["ensemble", "--model", typo, "--model", "./typo", "x"],
        ["prt", "generate", "--base", typo, "--reward", "./typo", "x"],
        ["slt", "inspect", typo],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "no such folder" in err and "Repo id" not in err, (argv, err)


def test_a_missing_optional_package_names_its_extra(monkeypatch, capsys):
    """After `pip install hf-coop` without extras, a subcommand that needs one says which to install."""
    import builtins

    real_import = builtins.__import__

    def without_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ModuleNotFoundError("No module named 'sklearn'", name="sklearn")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_sklearn)
    assert main(["slt", "train", "--task", "digits", "--output", "unused", "--epochs", "1"]) == 2
    assert "pip install 'hf-coop[slt]'" in capsys.readouterr().err
