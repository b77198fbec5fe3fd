"""The search CLI through a subprocess: bad input, a small search end to end, kill and resume.

Real Ray (a local instance per command), real Optuna, real Parquet, real trials on a tiny
VGG and a slice of digits. Every subprocess carries a unique PRUNETUNE_TEST_TAG in its
environment and runs in the test's own directory; the Ray processes it starts inherit
both, so the tests can stop exactly the processes they caused (a SIGKILLed driver leaves
Ray's agent processes behind).
"""

from __future__ import annotations

import json
import re
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))

TINY = {
    "experiment": {"name": "tiny", "seed": 0},
    "model": {"name": "tiny_vgg"},
    "data": {"name": "digits", "limit": 200},
    "train": {"epochs": 1, "device": "cpu"},
    "search": {"criteria": ["l1", "taylor_fo"], "finetune_epochs": [1, 1], "finetune_lr": [0.01, 0.01],
               "baselines": [{"ranking": "uniform", "ratio": 0.5, "criterion": "l1"}]},
    "sampler": {"name": "tpe", "n_startup_trials": 2},
    "resources": {"cpu": 1, "num_cpus": 2, "max_failures": 0},
    "num_samples": 4,
    "max_concurrent": 2,
}


def ours(tag: str, cwd: Path) -> list[int]:
    """Pids of processes this test started: they carry ``tag`` in their environment or run
    in ``cwd`` (Ray's agents rename themselves with setproctitle, which clobbers the
    environment block that /proc shows, but keep the working directory)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            env = (proc / "environ").read_bytes()
            where = os.readlink(proc / "cwd")
        except OSError:
            continue
        if f"PRUNETUNE_TEST_TAG={tag}".encode() in env.split(b"\0") or Path(where) == cwd or cwd in Path(where).parents:
            pids.append(int(proc.name))
    return pids


def kill_ours(tag: str, cwd: Path) -> None:
    """SIGKILL every process this test started (see :func:`ours`), never anyone else's."""
    for _ in range(5):
        pids = ours(tag, cwd)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.5)


class Cli:
    """Runs ``prunetune`` in a subprocess with a per-test tag and a short Ray temp dir."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.tag = uuid.uuid4().hex
        self.ray_tmp = tempfile.mkdtemp(prefix="ptr", dir="/tmp")  # unix socket paths must stay short
        self.env = {**os.environ, "PRUNETUNE_TEST_TAG": self.tag, "RAY_TMPDIR": self.ray_tmp,
                    "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "search.cli", *args]

    def __call__(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def start(self, *args: str, log: Path) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*args), cwd=self.cwd, env=self.env, stdout=log.open("w"),
                                stderr=subprocess.STDOUT)

    def close(self) -> None:
        kill_ours(self.tag, self.cwd)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


@pytest.fixture
def cli(tmp_path):
    c = Cli(tmp_path)
    yield c
    c.close()


def write_config(tmp_path: Path, **changes) -> Path:
    cfg = json.loads(json.dumps(TINY))
    cfg["experiment"]["results_dir"] = str(tmp_path / "results")
    for key, value in changes.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def main_in_process(*args: str) -> subprocess.CompletedProcess:
    """``prunetune ARGS`` through ``search.cli.main`` in this process, as a CompletedProcess."""
    import contextlib
    import io

    from search.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse errors
            code = int(e.code or 0)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def assert_usage_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("prunetune: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    from search.config import load_config

    cfg = load_config(path)
    assert cfg.experiment.name == path.stem
    assert cfg.num_samples >= 1 and cfg.max_concurrent >= 1


def test_gpu_configs_pack_trials_on_gpus_and_the_demo_is_a_short_cpu_run():
    from search.config import load_config

    demo = load_config(REPO / "configs" / "demo.yaml")
    assert demo.resources.gpu == 0 and demo.data.name == "digits" and demo.model.name in ("small_vgg", "tiny_vgg")
    assert demo.num_samples == 16 and demo.train.device == "cpu"
    for name in ("cifar10_vgg16", "cifar10_resnet56", "flowers102_vgg16"):
        cfg = load_config(REPO / "configs" / f"{name}.yaml")
        assert 0 < cfg.resources.gpu < 1, name  # several trials per GPU
        assert cfg.train.device == "auto"


# --------------------------------------------------------------------------- bad input


BAD_RUNS = {
    "unknown key": (["--set", "search.ratio_minn=0.1"], ["unknown key 'search.ratio_minn'", "ratio_min"]),
    "unknown model": (["--set", "model.name=tiny_vgq"], ["tiny_vgq", "tiny_vgg"]),
    "unknown criterion": (["--set", "search.criteria=[tayler]"], ["tayler", "taylor"]),
    "empty space": (["--set", "search.modes=[]"], ["search space is empty"]),
    "num_samples < 1": (["--set", "num_samples=0"], ["num_samples"]),
    "unknown latency backend": (["--set", "train.latency_backend=tensorrt"], ["'tensorrt'", "'torch' or 'onnxruntime'"]),
    "r_min > r_max": (["--set", "search.ratio_min=0.9", "--set", "search.ratio_max=0.5"], ["ratio_min 0.9 > ratio_max 0.5"]),
}


@pytest.mark.parametrize("case", BAD_RUNS, ids=list(BAD_RUNS))
def test_bad_run_input_is_one_line_exit_2_and_writes_nothing(tmp_path, cli, case):
    args, fragments = BAD_RUNS[case]
    config = write_config(tmp_path)
    proc = cli("run", str(config), *args)
    assert_usage_error(proc, *fragments)
    assert not (tmp_path / "results").exists()


def test_run_refuses_mixed_image_sizes_before_anything_is_written(tmp_path):
    from PIL import Image

    for k in range(2):
        for i in range(4):
            (tmp_path / "imgs" / f"c{k}").mkdir(parents=True, exist_ok=True)
            Image.new("L", (24, 24) if i else (20, 16), 60 * k).save(tmp_path / "imgs" / f"c{k}" / f"{i}.png")
    config = write_config(tmp_path, **{"data.name": "imagefolder", "data.root": str(tmp_path / "imgs")})
    proc = main_in_process("run", str(config))  # in-process: the data is checked before Ray starts
    assert_usage_error(proc, "most common 24x24", "6 of 8 images", "--image-size N (data.image_size in a config)")
    assert "data: imagefolder" not in proc.stdout
    assert not (tmp_path / "results").exists()


def test_unwritable_results_dir_is_refused(tmp_path, cli):
    blocker = tmp_path / "afile"
    blocker.write_text("not a directory")
    config = write_config(tmp_path, **{"experiment.results_dir": str(blocker / "results")})
    assert_usage_error(cli("run", str(config)), "not writable")
    assert blocker.read_text() == "not a directory"


def test_resume_of_a_directory_that_is_not_an_experiment_is_refused(tmp_path, cli):
    (tmp_path / "nothing").mkdir()
    assert_usage_error(cli("resume", str(tmp_path / "nothing")), "not an experiment directory")
    assert list((tmp_path / "nothing").iterdir()) == []
    for cmd in ("status", "pareto", "export"):  # the same code path, in-process (a subprocess costs seconds)
        assert_usage_error(main_in_process(cmd, str(tmp_path / "nothing"), *(["--trial", "x"] if cmd == "export" else [])),
                           "not an experiment directory")


def test_resume_refuses_a_changed_config_unless_forced(tmp_path, cli):
    from search.config import load_config

    exp = tmp_path / "results" / "tiny"
    exp.mkdir(parents=True)
    saved = load_config(write_config(tmp_path))
    (exp / "config.yaml").write_text(saved.to_yaml())
    before = sorted(p.name for p in exp.iterdir())
    proc = cli("resume", str(exp), "--set", "search.ratio_min=0.3")
    assert_usage_error(proc, "differs from the one", "--force")
    assert sorted(p.name for p in exp.iterdir()) == before
    # Concurrency is not part of what a trial means: allowed without --force (not run here).

    # --force accepts it; a ledger already holding num_samples trials makes it a resume that runs
    # nothing (no Ray session, no base training) and reports the experiment
    from search.results.ledger import Ledger

    (exp / "base.json").write_text(json.dumps({"val_acc": 0.95, "test_acc": 0.94, "macs": 1000, "params": 100,
                                               "widths": [8], "group_names": ["a"]}))
    ledger = Ledger(exp, "tiny")
    for i in range(saved.num_samples):
        ledger.add_trial({"trial_id": f"t{i}", "status": "TERMINATED", "params_json": "{}", "val_acc": 0.9 - i / 100,
                          "macs": 100 * (i + 1), "widths": [4], "group_names": ["a"]})
    ledger.flush()
    forced = cli("resume", str(exp), "--set", "search.ratio_min=0.3", "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert f"already holds {saved.num_samples}/{saved.num_samples} trials; nothing to resume" in forced.stdout
    assert f"search tiny: {saved.num_samples}/{saved.num_samples} trials (0 errored, 0 stopped early)" in forced.stdout


def _synthetic_experiment(tmp_path: Path) -> Path:
    """An experiment dir as an interrupted search leaves it: config, base, 2 of 4 trials."""
    import datetime as dt

    from search.config import load_config
    from search.results.ledger import Ledger

    cfg = load_config(write_config(tmp_path))
    exp = cfg.exp_dir
    exp.mkdir(parents=True)
    (exp / "config.yaml").write_text(cfg.to_yaml())
    (exp / "base.json").write_text(json.dumps({"val_acc": 0.95, "test_acc": 0.94, "macs": 479552, "params": 14458,
                                               "latency_ms": 2.0, "widths": [16, 32, 32]}))
    (exp / "progress.json").write_text(json.dumps({"pid": 2**22 + 7, "host": os.uname().nodename, "running": ["x"],
                                                   "finished": False, "updated_at": "2026-01-01T00:00:00+00:00"}))
    ledger = Ledger(exp, "tiny")
    now = dt.datetime.now(dt.timezone.utc)
    for i, (acc, macs) in enumerate([(0.93, 120_000), (0.91, 200_000)]):
        ledger.add_trial({"trial_id": f"abc{i}", "status": "TERMINATED", "mode": "prune", "criterion": "l1",
                          "params_json": "{}", "widths": [8, 16, 16], "group_names": ["a", "b", "c"], "val_acc": acc,
                          "test_acc": acc, "macs": macs, "params": 5000, "macs_ratio": macs / 479552,
                          "finished_at": now})
    ledger.add_trial({"trial_id": "err9", "status": "ERROR", "params_json": "{}", "error": "TrialError: boom"})
    ledger.flush()
    return exp


def test_status_pareto_and_refusals_on_an_interrupted_experiment(tmp_path, cli):
    exp = _synthetic_experiment(tmp_path)
    status = cli("status", str(exp))
    assert status.returncode == 0, status.stderr
    assert "3/4 trials recorded" in status.stdout and "done 2, stopped early 0, errored 1, running 0" in status.stdout
    assert "search not running; continue it with `prunetune resume" in status.stdout  # the pid is dead
    assert "error in err9: TrialError: boom" in status.stdout
    table = cli("pareto", "tiny")  # by name: ./results/tiny (the subprocess runs in tmp_path)
    assert table.returncode == 0, table.stderr
    assert "abc0" in table.stdout and "abc1" not in table.stdout  # abc1 is dominated (less acc, more MACs)
    assert (exp / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = {p.name: p.stat().st_mtime_ns for p in exp.iterdir()}
    assert_usage_error(main_in_process("export", str(exp), "--trial", "nosuch"), "unknown trial 'nosuch'", "abc0")
    assert_usage_error(main_in_process("export", str(exp), "--trial", "err9"), "status ERROR")
    assert_usage_error(main_in_process("run", str(write_config(tmp_path))), "already holds an experiment", "--fresh")
    assert {p.name: p.stat().st_mtime_ns for p in exp.iterdir()} == before


def test_resume_quiet_prints_only_the_summary(tmp_path):
    import yaml as _yaml

    exp = _synthetic_experiment(tmp_path)
    cfg = _yaml.safe_load((exp / "config.yaml").read_text())
    cfg["num_samples"] = 3  # the 3 trials it holds: nothing to run, no Ray
    (exp / "config.yaml").write_text(_yaml.safe_dump(cfg))
    loud = main_in_process("resume", str(exp))
    assert loud.returncode == 0, loud.stderr
    assert loud.stdout.startswith(f"resuming {exp}\n") and "already holds 3/3 trials; nothing to resume" in loud.stdout
    quiet = main_in_process("resume", str(exp), "--quiet")
    assert quiet.returncode == 0, quiet.stderr
    lines = quiet.stdout.splitlines()
    assert lines[0].startswith("search tiny: 3/3 trials (1 errored, 0 stopped early) in "), lines
    assert "resuming" not in quiet.stdout and "nothing to resume" not in quiet.stdout
    assert "Pareto front:" in quiet.stdout and lines[-1].startswith("wrote ")


# --------------------------------------------------------------------------- end to end


TRIAL_COLUMNS = [
    "experiment", "trial_id", "status", "mode", "criterion", "params_json", "widths", "group_names", "base_val_acc",
    "val_acc", "test_acc", "macs", "params", "latency_ms", "macs_ratio", "epochs", "wall_s", "seed", "git_sha",
    "prunetune_version", "started_at", "finished_at", "checkpoint", "error",
    "val_acc_pruned", "stop_step", "stop_reason", "train_macs", "teacher_macs",
    "retries", "node", "hostname", "macs_target",
]
EPOCH_COLUMNS = ["trial_id", "epoch", "train_loss", "val_acc", "macs", "widths", "lr", "wall_s", "attempt", "node"]


@pytest.mark.slow
def test_small_search_end_to_end_then_status_pareto_export(tmp_path, cli):
    import pandas as pd
    import torch

    config = write_config(tmp_path)
    proc = cli("run", str(config))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "trial 4/4" in out and "Pareto front:" in out and "wrote " in out
    assert re.search(r"^base training: epoch 1/1  loss \S+  val \S+%  \S+ s/epoch  ETA 0s$", out, re.M), out
    lines = out.splitlines()
    tally = re.compile(r"^search: (\d)/4 done, ([012]) running, 0 errored, ETA (?:\?|\d+s|\d+m\d\ds)$")
    after_trials = [tally.match(lines[i + 1]) for i, ln in enumerate(lines) if ln.startswith("trial ")]
    assert [m and m.group(1) for m in after_trials] == ["1", "2", "3", "4"], out  # a tally after each trial's line
    assert after_trials[-1].group(2) == "0"
    assert out.count("data: digits — train 180 / val 360 / test 360 / select 20, input 1×16×16, 10 classes") == 1
    assert "Configuration for experiment" not in out + proc.stderr  # Ray's banner is off by default
    exp = tmp_path / "results" / "tiny"
    for name in ("config.yaml", "trials.parquet", "epochs.parquet", "pareto.parquet", "pareto.png", "optuna.journal"):
        assert (exp / name).is_file(), name
    trials = pd.read_parquet(exp / "trials.parquet")
    assert list(trials.columns) == TRIAL_COLUMNS
    assert len(trials) == 4 and trials["trial_id"].is_unique and (trials["status"] == "TERMINATED").all()
    assert trials["val_acc"].between(0, 1).all() and (trials["macs"] > 0).all()
    assert [json.loads(p).get("baseline") for p in trials["params_json"]].count("uniform") == 1  # the baseline ran
    epochs = pd.read_parquet(exp / "epochs.parquet")
    assert list(epochs.columns) == EPOCH_COLUMNS
    assert set(epochs["trial_id"]) == set(trials["trial_id"]) and (epochs["epoch"] == 1).all()
    pareto = pd.read_parquet(exp / "pareto.parquet")
    assert list(pareto.columns) == TRIAL_COLUMNS + ["rank"] and (pareto["rank"] == 1).all()
    assert set(pareto["trial_id"]) <= set(trials["trial_id"])
    assert (exp / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    status = cli("status", str(exp))
    assert status.returncode == 0 and "4/4 trials recorded" in status.stdout and "search finished" in status.stdout

    (exp / "pareto.png").unlink()
    table = cli("pareto", str(exp))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.startswith("trial_id"))
    rows = [ln.split() for ln in lines[header + 2:] if ln and not ln.startswith("wrote")]
    assert rows[0][0] == "base" and {r[0] for r in rows[1:]} == set(pareto["trial_id"])
    assert (exp / "pareto.png").is_file()

    best = pareto.sort_values("val_acc").iloc[-1]
    proc = cli("export", str(exp), "--trial", best["trial_id"][:6])
    assert proc.returncode == 0, proc.stderr
    out_dir = exp / "export" / best["trial_id"]
    widths = json.loads((out_dir / "widths.json").read_text())
    assert list(widths) == list(best["group_names"]) and list(widths.values()) == list(best["widths"])
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["trial_id"] == best["trial_id"] and metrics["val_acc"] == pytest.approx(best["val_acc"])
    # model.pt2 needs nothing but torch: load it in a fresh interpreter without prunetune on the path.
    probe = subprocess.run(
        [sys.executable, "-I", "-c", "import sys, torch; m = torch.export.load(sys.argv[1]).module(); "
         "print(tuple(m(torch.zeros(2, 1, 16, 16)).shape))", str(out_dir / "model.pt2")],
        capture_output=True, text=True, timeout=120, cwd="/",
    )
    assert probe.returncode == 0 and probe.stdout.strip() == "(2, 10)", probe.stderr
    model = torch.load(out_dir / "model.pt", weights_only=False).eval()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == list(best["widths"])
    x = torch.randn(3, 1, 16, 16)
    assert torch.allclose(model(x), torch.export.load(out_dir / "model.pt2").module()(x), atol=1e-5)



@pytest.mark.slow
def test_search_killed_part_way_resumes_to_exactly_num_samples_unique_trials(tmp_path, cli):
    import pandas as pd

    n = 6
    config = write_config(tmp_path, num_samples=n, **{"search.finetune_epochs": [2, 2]})
    exp = tmp_path / "results" / "tiny"
    driver = cli.start("run", str(config), log=tmp_path / "run.log")
    deadline = time.time() + 240
    recorded = 0
    while time.time() < deadline and driver.poll() is None:
        try:
            recorded = len(pd.read_parquet(exp / "trials.parquet"))
        except (OSError, ValueError):
            recorded = 0
        if recorded >= 2:
            break
        time.sleep(0.2)
    assert driver.poll() is None, (tmp_path / "run.log").read_text()
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    kill_ours(cli.tag, cli.cwd)  # what the killed driver left behind (Ray agents), like a crashed machine
    before = pd.read_parquet(exp / "trials.parquet")  # still a valid file
    assert 2 <= len(before) < n, (tmp_path / "run.log").read_text()

    proc = cli("resume", str(exp), timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = pd.read_parquet(exp / "trials.parquet")
    assert len(trials) == n, trials[["trial_id", "status"]]
    assert trials["trial_id"].is_unique and trials["params_json"].is_unique
    assert set(trials["status"]) == {"TERMINATED"}
    assert set(before["trial_id"]) <= set(trials["trial_id"])  # nothing lost
    kept = trials.set_index("trial_id").loc[list(before["trial_id"])]
    assert (kept["finished_at"].values == before.set_index("trial_id")["finished_at"].values).all()  # nor re-run
    epochs = pd.read_parquet(exp / "epochs.parquet")
    assert set(epochs["trial_id"]) == set(trials["trial_id"])
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    assert f"{n}/{n} trials" in proc.stdout
    assert "(resumed: Ray state restored)" in proc.stdout  # Tuner.restore, not the warm-start fallback
