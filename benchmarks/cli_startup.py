"""Start-up time of ``prunetune status`` and ``prunetune pareto``: this tree vs a git rev.

Builds one small finished experiment directory (config, base.json, a 24-trial ledger;
no search is run), extracts ``--rev`` (default d7dcf27, the tree before the search/
redesign) into a temporary directory with ``git archive``, then times both commands in a
fresh interpreter for both trees, alternating before/after runs, ``--repeats`` times
each. Reports the median wall seconds (interpreter start included) and whether the
command loaded Ray or Optuna.

The markdown table goes to stdout (``make bench`` splices it into the README); progress
to stderr.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_PROBE = """
import sys
from search.cli import main
rc = main(sys.argv[1:])
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"ray", "optuna", "torch"})
print("HEAVY", ",".join(heavy) or "-", file=sys.stderr)
sys.exit(rc)
"""


# Run with the *before* tree on the path: its ledger and config are what both trees can read
# (a newer tree reads older files; an older tree refuses newer columns and keys).
_MAKE_EXPERIMENT = """
import json, sys
from pathlib import Path
from search.ledger import Ledger  # the before tree's module path (it predates search.results)

exp = Path(sys.argv[1]) / "bench"
exp.mkdir(parents=True)
(exp / "config.yaml").write_text(
    f"experiment: {{name: bench, results_dir: '{exp.parent}'}}\\nmodel: {{name: tiny_vgg}}\\nnum_samples: 24\\n")
(exp / "base.json").write_text(json.dumps({"val_acc": 0.95, "test_acc": 0.94, "macs": 1_000_000, "params": 10_000,
                                           "latency_ms": 1.0, "widths": [16, 32, 32], "group_names": ["a", "b", "c"]}))
led = Ledger(exp, "bench")
for i in range(24):
    r = 0.2 + 0.8 * i / 23
    led.add_trial({"trial_id": f"t{i:03d}", "status": "TERMINATED", "val_acc": 0.6 + 0.3 * r ** 0.5,
                   "macs": int(1_000_000 * r * r), "params": int(10_000 * r), "macs_ratio": r * r,
                   "widths": [int(16 * r) + 1, int(32 * r) + 1, int(32 * r) + 1], "group_names": ["a", "b", "c"],
                   "params_json": '{"ratio": %f}' % r})
led.flush()
"""


def make_experiment(root: Path, tree: Path) -> Path:
    """A finished experiment as ``prunetune run`` leaves it (without Ray state), written by ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run([sys.executable, "-c", _MAKE_EXPERIMENT, str(root)], env=env, cwd=tree, check=True)
    return root / "bench"


def extract(rev: str, dest: Path) -> Path:
    """The tree of ``rev`` in ``dest`` (``git archive``: leaves the repository untouched)."""
    archive = dest / "tree.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), rev], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest / "tree", filter="data")
    return dest / "tree"


def run_once(tree: Path, args: list[str], cwd: Path) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: prunetune {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    heavy = next((ln.split(" ", 1)[1] for ln in proc.stderr.splitlines() if ln.startswith("HEAVY ")), "?")
    return wall, heavy


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default="d7dcf27", help="the 'before' git revision (default: d7dcf27)")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cli-startup-") as tmp:
        tmp_path = Path(tmp)
        before = extract(args.rev, tmp_path)
        exp = make_experiment(tmp_path / "results", before)
        trees = {f"before ({args.rev})": before, "after (this tree)": ROOT}
        rows = []
        for command in ("status", "pareto"):
            times: dict[str, list[float]] = {k: [] for k in trees}
            heavy: dict[str, str] = {}
            for i in range(args.repeats):
                for label, tree in trees.items():  # alternate, so drift hits both alike
                    wall, heavy[label] = run_once(tree, [command, str(exp)], tmp_path)
                    times[label].append(wall)
                print(f"{command} {i + 1}/{args.repeats}", file=sys.stderr)
            b, a = (statistics.median(times[k]) for k in trees)
            rows.append((command, b, a, *heavy.values()))
    print(f"`prunetune status|pareto` on one 24-trial experiment, wall seconds in a fresh interpreter "
          f"(median of {args.repeats}, alternating runs, same machine and venv):\n")
    print(f"| command | before ({args.rev}) | after | after / before | Ray, Optuna, torch loaded: before | after |")
    print("|---|---|---|---|---|---|")
    for command, b, a, hb, ha in rows:
        print(f"| `{command}` | {b:.2f} s | {a:.2f} s | {a / b:.2f} | {hb} | {ha} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
