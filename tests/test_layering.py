"""The layering rules, each checked in a fresh interpreter (imports already made by other
tests would hide a violation):

- ``pruning`` never loads ``search``, Ray, Optuna, pandas or pyarrow;
- ``prunetune status`` and ``prunetune pareto`` on an existing experiment never load Ray
  (nor Optuna): they read the experiment directory (``search.results.expdir``) and the ledger only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_PRUNING = ("search", "ray", "optuna", "pandas", "pyarrow")


def _python(code: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_pruning_loads_no_search_ray_optuna_pandas_or_pyarrow() -> None:
    proc = _python(f"""
        import importlib, pkgutil, sys
        import pruning
        forbidden = {FORBIDDEN_IN_PRUNING!r}
        names = sorted(m.name for m in pkgutil.walk_packages(pruning.__path__, "pruning."))
        for name in names:
            importlib.import_module(name)
            bad = sorted({{m.split(".")[0] for m in sys.modules}} & set(forbidden))
            assert not bad, f"importing {{name}} loaded {{bad}}"
        print(len(names))
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) >= 15  # every module was imported, criteria/ included


def _tiny_experiment(tmp_path: Path) -> Path:
    """An experiment directory as a finished search leaves it, written without running one."""
    from search.config import load_config
    from search.results.expdir import BASE_FILE, save_config
    from search.results.ledger import Ledger

    cfg = load_config(None, ["experiment.name=tiny", f"experiment.results_dir={tmp_path}", "model.name=tiny_vgg",
                             "num_samples=3"])
    save_config(cfg, cfg.exp_dir)
    (cfg.exp_dir / BASE_FILE).write_text(json.dumps({"val_acc": 0.9, "test_acc": 0.9, "macs": 1000, "params": 100,
                                                     "latency_ms": None, "widths": [8, 8], "group_names": ["a", "b"]}))
    led = Ledger(cfg.exp_dir, "tiny")
    for i, (acc, macs) in enumerate([(0.85, 500), (0.80, 300), (0.70, 400)]):
        led.add_trial({"trial_id": f"t{i}", "status": "TERMINATED", "val_acc": acc, "macs": macs, "params": 50,
                       "macs_ratio": macs / 1000, "widths": [4, 4], "group_names": ["a", "b"]})
    led.flush()
    return cfg.exp_dir


def test_status_and_pareto_load_no_ray_optuna_or_torch(tmp_path: Path) -> None:
    exp = _tiny_experiment(tmp_path)
    # what each prints when it did its job: status the best trial, pareto the front's cheapest one
    for command, expected in (("status", "best val so far: 85.00% (trial t0"), ("pareto", "t1")):
        proc = _python(f"""
            import sys
            from search.cli import main
            rc = main([{command!r}, {str(exp)!r}])
            loaded = sorted({{m.split(".")[0] for m in sys.modules}} & {{"ray", "optuna", "torch"}})
            print("LOADED", loaded)
            sys.exit(rc)
        """, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "LOADED []" in proc.stdout, f"prunetune {command} loaded {proc.stdout.splitlines()[-1]}"
        assert expected in proc.stdout, proc.stdout
