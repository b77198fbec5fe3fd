"""``prunetune report``: the self-contained report.html, its figures, and a real headless browser.

The experiment directory is built from a synthetic ledger written with the ledger's own
writer (no Ray): prune and adaptive trials, some growing groups beyond the base widths.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from search.cli import main
from search.config import config_from_dict
from search.report.html import (
    PLOT_IDS,
    ReportInputs,
    choice_counts,
    learning_curves,
    pareto_scatter,
    widths_heatmap,
    write_html_report,
)
from search.results.ledger import Ledger, pareto_front, read_epochs, read_trials

CHROMIUM = Path("/usr/bin/chromium")
GROUPS = ["features.0", "features.4", "features.8"]
BASE = {"val_acc": 0.97, "test_acc": 0.96, "macs": 479_552, "params": 14_458, "latency_ms": 2.0,
        "widths": [16, 32, 32], "group_names": GROUPS}  # fmt: skip
BUDGET = 400_000


def _macs(w: list[int]) -> int:  # tiny_vgg on 1x16x16 digits
    return 16 * 16 * 9 * w[0] + 8 * 8 * 9 * w[0] * w[1] + 4 * 4 * 9 * w[1] * w[2] + 10 * w[2]


def make_experiment(root: Path, n: int = 24) -> Path:
    """results/synth as a search leaves it: config.yaml, base.json, trials/epochs/pareto Parquet."""
    cfg = config_from_dict({
        "experiment": {"name": "synth", "results_dir": str(root / "results")}, "model": {"name": "tiny_vgg"},
        "search": {"modes": ["prune", "adaptive"], "criteria": ["l1", "taylor_fo"], "ratio_max": 1.5, "grow": True},
        "objectives": {"macs_budget": BUDGET}, "num_samples": n + 2,
    })  # fmt: skip
    exp = cfg.exp_dir
    exp.mkdir(parents=True)
    (exp / "config.yaml").write_text(cfg.to_yaml())
    (exp / "base.json").write_text(json.dumps(BASE))
    rng = np.random.default_rng(0)
    ledger = Ledger(exp, "synth")
    now = dt.datetime.now(dt.timezone.utc)
    for i in range(n):
        mode = "adaptive" if i % 3 == 0 else "prune"
        top = 1.6 if mode == "adaptive" else 1.0
        widths = [max(1, int(b * rng.uniform(0.2, top))) for b in BASE["widths"]]
        macs = _macs(widths)
        acc = float(np.clip(0.75 + 0.22 * np.sqrt(macs / BASE["macs"]) + rng.normal(0, 0.01), 0, 1))
        epochs = int(rng.integers(2, 5))
        ledger.add_trial({
            "trial_id": f"t{i:03d}", "status": "TERMINATED", "mode": mode,
            "criterion": None if mode == "adaptive" else ("l1", "taylor_fo")[i % 2],
            "params_json": json.dumps({"mode": mode, "finetune_epochs": epochs}), "widths": widths,
            "group_names": GROUPS, "val_acc": acc, "test_acc": acc - 0.01, "macs": macs, "params": macs // 30,
            "latency_ms": 0.5 + macs / 2e5, "macs_ratio": macs / BASE["macs"], "epochs": epochs, "finished_at": now,
        })  # fmt: skip
        ledger.add_epochs([{"trial_id": f"t{i:03d}", "epoch": e, "val_acc": acc * (0.8 + 0.2 * e / epochs),
                            "train_loss": 1.0 / e, "macs": macs, "widths": widths} for e in range(1, epochs + 1)])
    ledger.add_trial({"trial_id": "stop1", "status": "STOPPED", "mode": "prune", "criterion": "l1", "val_acc": 0.5,
                      "test_acc": 0.5, "macs": 100_000, "params": 3000, "latency_ms": 1.0})
    ledger.add_trial({"trial_id": "err1", "status": "ERROR", "mode": "prune", "error": "NaN loss"})
    ledger.flush()
    return exp


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_experiment(tmp_path_factory.mktemp("report"))


def inputs_of(exp: Path) -> ReportInputs:
    return ReportInputs(trials=read_trials(exp), epochs=read_epochs(exp), base=BASE, title="synth",
                        macs_budget=BUDGET)


# --------------------------------------------------------------------------- the command


def test_report_command_writes_one_self_contained_file(experiment: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(experiment)]) == 0
    out = experiment / "report.html"
    assert f"wrote {out}" in capsys.readouterr().out
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=|@import", page)  # nothing fetched: opens offline
    assert len(page) > 3_000_000 and "Plotly.newPlot" in page  # plotly.js is inline
    for div_id in PLOT_IDS:
        assert page.count(f'id="{div_id}"') == 1
    assert "synth: tiny_vgg on digits" in page and "MACs budget 400.0k" in page
    assert not [p.name for p in experiment.iterdir() if p.name.endswith(".tmp")]  # atomic: no temp left


def test_report_on_a_directory_that_is_not_an_experiment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "nothing").mkdir()
    assert main(["report", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prunetune: error: ") and err.count("\n") == 1 and "not an experiment directory" in err
    assert list((tmp_path / "nothing").iterdir()) == []


def test_a_failed_write_leaves_the_previous_report(experiment: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = experiment / "kept.html"
    out.write_text("previous")

    def boom(*_args: object, **_kw: object) -> str:
        raise RuntimeError("disk full")

    monkeypatch.setattr(Path, "write_text", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_html_report(inputs_of(experiment), out)
    monkeypatch.undo()
    assert out.read_text() == "previous"
    assert not [p.name for p in experiment.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- the figures


def test_pareto_scatter_hover_base_and_axis_menu(experiment: Path) -> None:
    inputs = inputs_of(experiment)
    front = pareto_front(inputs.trials)
    fig = pareto_scatter(inputs, front)
    by_name = {}
    for trace in fig.data:
        by_name.setdefault(trace.name, []).append(trace)
    front_name = next(n for n in by_name if n.startswith("Pareto front"))
    assert len(by_name["base model"]) == 2 and by_name["base model"][0].marker.symbol == "star"  # val and test
    val_trace, test_trace = by_name[front_name]
    assert list(val_trace.y) == pytest.approx(list(100 * front["val_acc"]))
    assert list(test_trace.y) == pytest.approx(list(100 * front["test_acc"]))
    row = front.iloc[0]
    hover = val_trace.text[0]
    for fragment in (f"trial {row['trial_id']}", f"mode {row['mode']}", "criterion",
                     "widths " + "-".join(map(str, row["widths"])),
                     f"finetune epochs {json.loads(row['params_json'])['finetune_epochs']}"):
        assert fragment in hover, (fragment, hover)
    over = [n for n in by_name if n.startswith("infeasible")]
    done = inputs.trials[inputs.trials["status"].isin(["TERMINATED", "STOPPED"])]
    assert len(over) == 1 and len(by_name[over[0]][0].x) == int((done["macs"] > BUDGET).sum()) > 0
    assert all(x > BUDGET for t in by_name[over[0]] for x in t.x)
    assert [s.x0 for s in fig.layout.shapes] == [BUDGET, BUDGET]  # the budget line in both panels
    # MACs span more than 10x here: a log axis labelled like pareto.png.
    assert fig.layout.xaxis.type == "log" and len(fig.layout.xaxis.ticktext) >= 3
    assert all(re.fullmatch(r"\d+(\.\d+)?[kMG]?", t) for t in fig.layout.xaxis.ticktext), fig.layout.xaxis.ticktext
    # The menu puts latency / params on x for every trace, in trace order.
    buttons = {b.label: b for b in fig.layout.updatemenus[0].buttons}
    assert list(buttons) == ["x: MACs per sample", "x: latency (ms)", "x: parameters"]
    latency = buttons["x: latency (ms)"].args[0]["x"]
    assert len(latency) == len(fig.data)
    index = list(fig.data).index(val_trace)
    assert list(latency[index]) == pytest.approx(list(front["latency_ms"]))
    assert fig.layout.xaxis.type == buttons["x: MACs per sample"].args[1]["xaxis.type"]
    assert buttons["x: latency (ms)"].args[1]["shapes[0].visible"] is False  # the budget is in MACs


def test_widths_heatmap_shows_kept_share_per_group_in_model_order(experiment: Path) -> None:
    inputs = inputs_of(experiment)
    front = pareto_front(inputs.trials).sort_values("macs", kind="mergesort")
    heat = widths_heatmap(front, BASE).data[0]
    assert list(heat.x) == GROUPS and heat.y[0] == "base"
    z = np.asarray(heat.z, dtype=float)
    assert z.shape == (len(front) + 1, 3) and (z[0] == 100).all()
    expected = 100 * np.vstack(front["widths"].to_list()) / np.array(BASE["widths"])
    assert z[1:] == pytest.approx(expected)
    assert heat.zmid == 100
    grown = [r for r in read_trials(experiment).to_dict("records")
             if r["widths"] is not None and any(w > b for w, b in zip(r["widths"], BASE["widths"], strict=True))]
    assert grown  # the data has growth; the chart can show > 100% where a front trial grew
    assert widths_heatmap(front, None).layout.annotations[0].text.startswith("no base model widths")


def test_learning_curves_and_counts(experiment: Path) -> None:
    inputs = inputs_of(experiment)
    front = pareto_front(inputs.trials)
    curves = learning_curves(front, inputs.epochs)
    val_lines = [t for t in curves.data if t.showlegend]
    assert sorted(t.name for t in val_lines) == sorted(front["trial_id"])
    first = front.iloc[0]
    line = next(t for t in val_lines if t.name == first["trial_id"])
    assert list(line.x) == list(range(1, int(first["epochs"]) + 1))
    counts = choice_counts(inputs.trials, front)
    bars = {(t.name.split(" (")[0], t.xaxis): dict(zip(t.x, t.y, strict=True)) for t in counts.data}
    trials = inputs.trials
    assert bars[("all trials", "x")]["l1"] == int((trials["criterion"] == "l1").sum())
    assert bars[("all trials", "x")]["(none)"] == int(trials["criterion"].isna().sum())
    assert bars[("all trials", "x2")]["adaptive"] == int((trials["mode"] == "adaptive").sum())
    assert sum(bars[("Pareto front", "x2")].values()) == len(front)


# --------------------------------------------------------------------------- a real browser


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-logging=stderr", "--v=0"]  # fmt: skip


def chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium on ``page`` (virtual time lets plotly finish drawing)."""
    cmd = [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000", *args,
           page.resolve().as_uri()]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)


def console_messages(stderr: str) -> list[str]:
    """The page's console output and uncaught errors as Chromium logs them (any is a failure here)."""
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]


def plot_sections(dom: str) -> dict[str, str]:
    """The DOM of each plot div (from its id to the next one's)."""
    starts = sorted((dom.index(f'id="{p}"'), p) for p in PLOT_IDS)
    ends = [s for s, _ in starts[1:]] + [len(dom)]
    return {p: dom[s:e] for (s, p), e in zip(starts, ends, strict=True)}


needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="headless browser test needs Debian's chromium at /usr/bin/chromium "
    "(apt-get install -y chromium)",
)


@needs_chromium
def test_report_renders_in_headless_chromium_without_console_errors(experiment: Path, tmp_path: Path) -> None:
    page = write_html_report(inputs_of(experiment), tmp_path / "report.html")
    dump = chromium(page, tmp_path / "profile", "--dump-dom")
    assert dump.returncode == 0, dump.stderr[-2000:]
    assert console_messages(dump.stderr) == []
    sections = plot_sections(dump.stdout)
    for div_id, dom in sections.items():
        assert 'class="main-svg"' in dom, f"{div_id}: plotly drew no SVG"
    trials = read_trials(experiment)
    done = trials[trials["status"].isin(["TERMINATED", "STOPPED"])]
    # Every finished trial is a drawn point in the val and the test panel, those over the MACs
    # budget get a cross on top, and the base model is a star in each panel.
    assert sections["pareto"].count('class="point"') == 2 * (len(done) + int((done["macs"] > BUDGET).sum()) + 1)
    assert "updatemenu-button" in sections["pareto"] or "updatemenu-header" in sections["pareto"]
    assert re.search(r'class="hm".*?<image', sections["widths"], re.S), "heatmap not drawn"
    assert sections["curves"].count('class="js-line"') >= 2 * len(pareto_front(trials))
    assert sections["counts"].count('class="point"') >= 4  # bars

    shot = tmp_path / "shot.png"
    snap = chromium(page, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1280,1600",
                    "--hide-scrollbars")
    assert snap.returncode == 0 and console_messages(snap.stderr) == []
    from PIL import Image

    with Image.open(shot) as img:
        assert img.size == (1280, 1600)
        assert np.asarray(img.convert("L"), dtype=float).std() > 10  # not a blank page


@needs_chromium
def test_the_console_check_catches_a_script_error(tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text('<html><body><div id="x"></div><script>undefinedFunction();</script></body></html>')
    proc = chromium(page, tmp_path / "profile", "--dump-dom")
    assert any("Uncaught ReferenceError" in m for m in console_messages(proc.stderr))



def test_report_of_an_experiment_without_trials_yet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config_from_dict({"experiment": {"name": "empty", "results_dir": str(tmp_path)}})
    cfg.exp_dir.mkdir()
    (cfg.exp_dir / "config.yaml").write_text(cfg.to_yaml())  # started, base model not trained yet
    assert main(["report", str(cfg.exp_dir)]) == 0
    page = (cfg.exp_dir / "report.html").read_text(encoding="utf-8")
    assert "0 trials: 0 completed" in page and "no completed trials on the front yet" in page
    assert "no base model widths recorded" in page and "no per-epoch rows recorded" in page


def _x_axis(dom: str) -> tuple[list[str], list[str], int]:
    """Axis titles, tick labels and dashed lines (the budget) drawn in a plot's DOM."""
    titles = re.findall(r'class="x\d*title"[^>]*data-unformatted="([^"]*)"', dom)
    ticks = re.findall(r'class="x\d*tick"><text[^>]*>([^<]*)<', dom)
    return titles, ticks, len(re.findall(r"<path[^>]*stroke-dasharray", dom))


@needs_chromium
def test_the_axis_menu_switches_to_latency_in_the_browser(experiment: Path, tmp_path: Path) -> None:
    page = write_html_report(inputs_of(experiment), tmp_path / "report.html")
    # What choosing "x: latency (ms)" in the menu does: Plotly.update with that button's arguments.
    click = ('<script>var gd = document.getElementById("pareto"); var b = gd.layout.updatemenus[0].buttons[1];'
             "Plotly.update(gd, b.args[0], b.args[1]);</script></body>")
    switched = tmp_path / "switched.html"
    switched.write_text(page.read_text(encoding="utf-8").replace("</body>", click), encoding="utf-8")
    before = chromium(page, tmp_path / "p1", "--dump-dom")
    after = chromium(switched, tmp_path / "p2", "--dump-dom")
    assert console_messages(before.stderr) == [] and console_messages(after.stderr) == []
    titles, ticks, dashed = _x_axis(plot_sections(before.stdout)["pareto"])
    assert titles == ["MACs per sample"] * 2 and dashed == 2  # the budget line in both panels
    assert ticks and all(re.fullmatch(r"\d+(\.\d+)?[kMG]", t) for t in ticks), ticks
    titles, ticks, dashed = _x_axis(plot_sections(after.stdout)["pareto"])
    assert titles == ["latency (ms)"] * 2 and dashed == 0
    assert ticks and all(re.fullmatch(r"\d+(\.\d+)?", t) for t in ticks), ticks
