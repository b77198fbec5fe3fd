"""The layering rules, each checked in a fresh interpreter (imports already made by other
tests would hide a violation):

- ``pruning`` never loads ``search``, Ray, Optuna, pandas or pyarrow;
- ``prunetune status`` and ``prunetune pareto`` on an existing experiment never load Ray
  (nor Optuna): they read the experiment directory (``search.results.expdir``) and the ledger only.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

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


SEARCH = ROOT / "search"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[ast.stmt, set[str]]]:
    """Each import statement of ``path`` and the ``search`` modules (or packages) it names."""
    modules = {_module_name(p) for p in SEARCH.rglob("*.py")}
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = {f"{node.module}.{a.name}" for a in node.names}
            out.append((node, {n for n in names if n in modules} or ({node.module} & modules)))
        elif isinstance(node, ast.Import):
            out.append((node, {a.name for a in node.names} & modules))
    return out


def _import_graph() -> dict[str, set[str]]:
    return {_module_name(p): {m for _, names in _imports(p) for m in names} - {_module_name(p)}
            for p in SEARCH.rglob("*.py")}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return path[path.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycle_among_search_modules() -> None:
    graph = _import_graph()
    assert len(graph) >= 50 and "search.trial.run" in graph["search._ray.trainable"]  # the graph is real
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]


def test_no_cli_module_imports_a_command_module() -> None:
    from search.cli.main import COMMANDS

    commands = set(COMMANDS.values())
    assert len(commands) == len(COMMANDS)  # one module per command
    for path in (SEARCH / "cli").glob("*.py"):
        imported = {m for _, names in _imports(path) for m in names}
        assert not imported & commands, f"{_module_name(path)} imports the command module(s) {imported & commands}"


def test_every_import_inside_a_function_says_why() -> None:
    lazy = []
    for path in sorted(SEARCH.rglob("*.py")):
        lines = path.read_text().splitlines()
        for fn in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        line = lines[node.lineno - 1]
                        assert "#" in line, f"{path.relative_to(ROOT)}:{node.lineno}: a lazy import without its reason"
                        lazy.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert len(lazy) == 9, lazy  # the README's module map counts them


@pytest.mark.parametrize(("packages", "forbidden"), [(("search.trial",), ("optuna", "ray")),
                                                     (("search.results", "search.report"), ("ray",))])
def test_layers_load_no_optuna_or_ray(packages: tuple[str, ...], forbidden: tuple[str, ...]) -> None:
    proc = _python(f"""
        import importlib, pkgutil, sys
        names = []
        for package in {packages!r}:
            names += [package] + sorted(m.name for m in pkgutil.walk_packages(
                importlib.import_module(package).__path__, package + "."))
        for name in names:
            importlib.import_module(name)
        bad = sorted({{m.split(".")[0] for m in sys.modules}} & set({forbidden!r}))
        assert not bad, f"importing {{names}} loaded {{bad}}"
        print(len(names))
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) >= 6  # every module of the packages was imported
