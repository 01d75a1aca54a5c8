import argparse
import json
import subprocess
import sys
from pathlib import Path

from hf_coop.commands import main as hf_coop_main
from hf_coop.commands import slt as cli

EXAMPLE = Path(__file__).parents[2] / "examples" / "slt_lottery_ticket.py"


def run(argv):
    parser = argparse.ArgumentParser(prog="hf-coop")
    cli.add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_train_then_inspect(tmp_path, capsys):
    ticket = tmp_path / "ticket"
    assert (
        run(
            [
                "slt",
                "train",
                "--task",
                "digits",
                "--output",
                str(ticket),
                "--epochs",
                "1",
                "--width",
                "4",
                "--sparsity",
                "0.7",
                "--pruned-ratio",
                "0.3",
                "--locked-ratio",
                "0.1",
            ]
        )
        == 0
    )
    assert "test accuracy" in capsys.readouterr().out
    assert run(["slt", "inspect", str(ticket)]) == 0
    out = capsys.readouterr().out
    assert "bytes compact" in out and "classifier.7" in out
    assert run(["slt", "inspect", str(ticket), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert abs(report["sparsity"] - 0.7) < 1e-3 and report["compression"] > 1
    assert hf_coop_main(["slt", "inspect", str(ticket)]) == 0  # registered in the `hf-coop` command
    assert hf_coop_main(["slt", "inspect", str(tmp_path)]) == 2  # not a ticket: a clear error, no traceback
    assert "not an hf_coop.slt ticket" in capsys.readouterr().err


def test_example_runs_in_fast_mode(tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--fast", "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "reloaded ticket gives identical logits: True" in result.stdout
