"""The real `prunetune prune` command, via subprocess."""

import json
import subprocess
import sys

import pytest
import torch

from search.cli import main

PRUNETUNE = [sys.executable, "-m", "search.cli"]


def run(*args, cwd=None):
    return subprocess.run([*PRUNETUNE, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_prune_end_to_end(tmp_path):
    out = tmp_path / "out"
    r = run("prune", "--model", "tiny_vgg", "--data", "digits", "--limit", "300", "--criterion", "taylor_guided",
            "--ratio", "0.5", "--steps", "2", "--epochs", "2", "--finetune-epochs", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "MACs reduction" in r.stdout and "base" in r.stdout and "pruned" in r.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pruned"]["macs"] < 0.5 * metrics["base"]["macs"]
    assert json.loads((out / "widths.json").read_text()) == {"features.0": 8, "features.4": 16, "features.8": 16}
    model = torch.load(out / "model.pt", weights_only=False)  # plain torch
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 10)
    assert torch.export.load(out / "model.pt2").module()(torch.zeros(3, 1, 16, 16)).shape == (3, 10)
    assert "onnxruntime CPU latency" in r.stdout and (out / "model.onnx").is_file()
    assert metrics["latency_ms_onnxruntime"]["base"] > 0 and metrics["latency_ms_onnxruntime"]["pruned"] > 0
    # the saved base model can be reused with --checkpoint, and a MACs budget as a share works
    r2 = run("prune", "--model", "tiny_vgg", "--data", "digits", "--limit", "300", "--checkpoint",
             str(out / "base.pt"), "--target-macs", "30%", "--finetune-epochs", "0", "--out", str(tmp_path / "o2"))
    assert r2.returncode == 0, r2.stderr
    m2 = json.loads((tmp_path / "o2" / "metrics.json").read_text())
    assert m2["pruned"]["macs"] <= 0.3 * m2["base"]["macs"]
    assert m2["base"]["val_acc"] == metrics["base"]["val_acc"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "vgg99", "--data", "digits", "--ratio", "0.5"], "unknown model 'vgg99'; choose one of:"),
        (["--model", "tiny_vgg", "--data", "mnist", "--ratio", "0.5"], "unknown dataset 'mnist'; choose one of:"),
        (["--model", "tiny_vgg", "--data", "digits", "--criterion", "tayler", "--ratio", "0.5"],
         "unknown criterion 'tayler'; choose one of:"),
        (["--model", "tiny_vgg", "--data", "digits", "--ratio", "1.5"], "must be in (0, 1], got 1.5"),
        (["--model", "tiny_vgg", "--data", "digits", "--ratio", "0"], "must be in (0, 1], got 0"),
        (["--model", "tiny_vgg", "--data", "digits", "--ratios", "conv9=0.5", "--epochs", "0"],
         "unknown group 'conv9'; choose one of: features.0"),
        (["--model", "tiny_vgg", "--data", "digits", "--target-macs", "10", "--epochs", "0"],
         "below the smallest network"),
        (["--model", "tiny_vgg", "--data", "digits", "--ratio", "0.5", "--checkpoint", "/nonexistent.pt"],
         "does not exist"),
        (["--model", "tiny_vgg", "--data", "cifar10", "--root", "/nonexistent", "--ratio", "0.5"], "/nonexistent"),
        (["--model", "tiny_vgg", "--data", "digits", "--ratio", "0.5", "--max-drop", "-1"],
         "max_drop_pts must be >= 0 percentage points, got -1.0"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, monkeypatch, args, message):
    # In-process (same code path as the console script) to keep the suite fast; the
    # subprocess test below checks the real entry point once.
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    code = main(["prune", *args, "--limit", "100", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert message in err
    assert not out.exists() and not (tmp_path / "results").exists()


def test_unreadable_checkpoint_via_real_entry_point(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_text("garbage")
    r = run("prune", "--model", "tiny_vgg", "--data", "digits", "--ratio", "0.5", "--checkpoint", str(bad),
            "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "not readable" in r.stderr and not (tmp_path / "out").exists()
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_max_drop_keeps_the_last_step_within_the_allowed_drop(tmp_path, capsys):
    """--max-drop 0 with an unfinetuned cut to 20%: the cut loses accuracy, so the base model is kept."""
    out = tmp_path / "out"
    code = main(["prune", "--model", "tiny_vgg", "--data", "digits", "--limit", "300", "--epochs", "5", "--lr", "0.1",
                 "--ratio", "0.2", "--finetune-epochs", "0", "--max-drop", "0", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert "stopped after step 0 of 1: step 1 lost more than 0.0 points" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["stop_step"], metrics["stop_reason"], metrics["max_drop_pts"]) == (0, "max_drop", 0.0)
    assert metrics["steps"][0]["accepted"] is False and metrics["steps"][0]["val_acc"] < metrics["base"]["val_acc"]
    assert metrics["pruned"]["macs"] == metrics["base"]["macs"]
    assert metrics["pruned"]["val_acc"] == metrics["base"]["val_acc"]


def test_progress_lines_per_epoch_and_quiet_prints_only_the_summary(tmp_path, capsys):
    import re

    args = ["prune", "--model", "tiny_vgg", "--data", "digits", "--limit", "200", "--ratio", "0.5", "--steps", "2",
            "--step-epochs", "1", "--finetune-epochs", "2"]
    assert main([*args, "--epochs", "3", "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    line = re.compile(r"^(base training|finetune): epoch (\d+)/(\d+)  loss \d+\.\d{3}  val \d+\.\d%  "
                      r"\d+\.\d s/epoch  ETA (\d+s|\d+m\d\ds)$")
    progress = [m.groups()[:3] for m in map(line.match, out.splitlines()) if m]
    # every epoch of both phases (short phases), numbered against the phase's total
    assert progress == [("base training", "1", "3"), ("base training", "2", "3"), ("base training", "3", "3"),
                        ("finetune", "1", "3"), ("finetune", "2", "3"), ("finetune", "3", "3")]
    assert out.index("base training: epoch 3/3") < out.index("pruning with") < out.index("finetune: epoch 1/3")
    assert out.index("finetune: epoch 3/3") < out.index("MACs reduction")

    assert main([*args, "--epochs", "1", "--out", str(tmp_path / "b"), "--quiet"]) == 0
    quiet = capsys.readouterr().out.splitlines()
    assert quiet[0].startswith("model ") and quiet[1].startswith("base ") and quiet[2].startswith("pruned ")
    assert quiet[3].startswith("MACs reduction") and quiet[4].startswith("onnxruntime CPU latency")
    assert quiet[5].startswith("widths: ") and quiet[6].startswith("wrote ")
    assert len(quiet) == 7  # no dataset line, no epoch lines, no stage messages
