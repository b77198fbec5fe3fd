"""The report: human counts, the Pareto table, the PNG."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from search.results.ledger import Ledger, pareto_front
from search.report.png import _use_log_x, pareto_figure, plot_pareto
from search.report.table import human_count, pareto_table, tick_label

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BASE = dict(val_acc=0.9512, test_acc=0.9487, macs=313_730_000, params=14_730_000, latency_ms=3.1)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0"),
        (512, "512"),
        (999, "999"),
        (1000, "1.00k"),
        (140_312, "140.3k"),
        (7_251_000, "7.25M"),
        (3_470_000, "3.47M"),
        (34_700_000, "34.7M"),
        (999_960, "1.00M"),  # rounds up into the next unit, not "1000.0k"
        (9_999_000, "10.0M"),
        (4_100_000_000, "4.10G"),
        (-2500, "-2.50k"),
        (None, "-"),
        (np.nan, "-"),
        (pd.NA, "-"),
    ],
)
def test_human_count(n: object, text: str) -> None:
    assert human_count(n) == text


def make_ledger(tmp_path: Path) -> Ledger:
    led = Ledger(tmp_path, "exp")
    rng = np.random.default_rng(0)
    for i in range(40):
        macs = int(rng.integers(2, 300)) * 1_000_000
        acc = float(np.clip(0.6 + 0.33 * np.sqrt(macs / 3e8) + rng.normal(0, 0.02), 0, 1))
        led.add_trial(dict(
            trial_id=f"trial_{i:03d}", status="TERMINATED", mode="prune" if i % 2 else "adaptive",
            criterion="l1", widths=[int(w) for w in rng.integers(4, 64, 3)], val_acc=acc, test_acc=acc - 0.01,
            macs=macs, params=macs // 20, latency_ms=macs / 1e8, macs_ratio=macs / BASE["macs"],
        ))
    led.add_trial(dict(trial_id="stopped", status="STOPPED", val_acc=0.5, macs=5_000_000))
    led.add_trial(dict(trial_id="broken", status="ERROR", error="NaN loss"))
    return led


def test_pareto_table_lists_front_in_macs_order_after_base(tmp_path: Path) -> None:
    led = make_ledger(tmp_path)
    front = led.pareto()
    assert len(front) >= 3
    shuffled = front.sample(frac=1.0, random_state=1)  # the table sorts by itself
    text = pareto_table(shuffled, base=BASE)
    lines = text.splitlines()

    header = lines[0]
    for col in ("trial_id", "val_acc%", "test_acc%", "MACs", "MACs_kept%", "params", "latency_ms", "widths"):
        assert col in header
    assert lines[2].startswith("base ")
    assert "95.12" in lines[2] and "94.87" in lines[2] and "313.7M" in lines[2] and "100.00" in lines[2]

    body = lines[3:]
    assert len(body) == len(front)
    ids = [line.split()[0] for line in body]
    assert ids == list(front.sort_values("macs")["trial_id"])
    assert "broken" not in text and "stopped" not in text

    first = front.sort_values("macs").iloc[0]
    row = body[0]
    assert f"{100 * first['val_acc']:.2f}" in row
    assert human_count(first["macs"]) in row
    assert f"{100 * first['macs'] / BASE['macs']:.2f}" in row
    assert row.endswith("-".join(str(w) for w in first["widths"]))
    # Fixed width: the numeric columns end at the same place on every line.
    macs_end = header.index("MACs") + len("MACs")
    assert all(line[:macs_end].endswith(human_count(m)) for line, m in zip(body, sorted(front["macs"]), strict=True))


def test_pareto_table_without_base_and_empty() -> None:
    empty = pareto_front(pd.DataFrame(columns=["trial_id", "status", "val_acc", "macs"]))
    text = pareto_table(empty)
    assert "base" not in text and "no completed trials" in text
    one = pd.DataFrame({
        "trial_id": ["x"], "status": ["TERMINATED"], "mode": ["prune"], "criterion": [None],
        "val_acc": [0.5], "test_acc": [np.nan], "macs": [1500], "macs_ratio": [np.nan], "widths": [None],
    })
    lines = pareto_table(one).splitlines()
    assert len(lines) == 3 and lines[2].split()[:5] == ["x", "prune", "-", "50.00", "-"]
    # macs_ratio missing, but the base MACs are known: kept % is computed.
    assert "50.00" in pareto_table(one, base=dict(val_acc=0.9, test_acc=0.9, macs=3000, params=10)).splitlines()[3]


def test_plot_pareto_writes_a_png(tmp_path: Path) -> None:
    led = make_ledger(tmp_path)
    out = plot_pareto(led.trials(), led.pareto(), tmp_path / "plots" / "pareto.png", base=BASE, title="test")
    assert out == tmp_path / "plots" / "pareto.png"
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 20_000
    assert [p.name for p in out.parent.iterdir()] == ["pareto.png"]  # no temp file left

    # Replacing an existing PNG works too, and an empty experiment still draws.
    empty = led.trials().iloc[0:0]
    out2 = plot_pareto(empty, pareto_front(empty), out)
    assert out2.read_bytes()[:8] == PNG_MAGIC and out2.read_bytes() != data


def test_log_scale_only_for_wide_macs_range() -> None:
    assert _use_log_x(np.array([1e6, 2e6, 3e8]))
    assert not _use_log_x(np.array([1e6, 9e6]))
    assert not _use_log_x(np.array([1e6]))
    assert not _use_log_x(np.array([0.0, np.nan, 5e6]))


@pytest.mark.parametrize(("value", "text"), [(500, "500"), (1e3, "1k"), (2.5e5, "250k"), (1e6, "1M"),
                                             (1.5e6, "1.5M"), (5e7, "50M"), (999_999.9, "1M"), (2e9, "2G")])
def test_tick_label(value: float, text: str) -> None:
    assert tick_label(value) == text


TICK = re.compile(r"^\d+(\.\d+)?[kMG]?$")


def _visible_tick_labels(fig) -> list:  # noqa: ANN001 - a matplotlib Figure
    ax = fig.axes[0]
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    ticks = ax.xaxis.get_major_ticks()
    return [t.label1 for t in ticks if lo <= t.get_loc() <= hi and t.label1.get_visible() and t.label1.get_text()]


@pytest.mark.parametrize("spread", ["ledger", "six_decades", "narrow"])
def test_macs_axis_labels_share_one_format_and_do_not_overlap(tmp_path: Path, spread: str) -> None:
    trials = make_ledger(tmp_path).trials()
    if spread == "six_decades":  # 1k .. 1G MACs
        trials["macs"] = np.logspace(3, 9, len(trials)).astype(np.int64)
    elif spread == "narrow":  # 1.0M .. 1.9M: a linear axis
        trials["macs"] = np.linspace(1_000_000, 1_900_000, len(trials)).astype(np.int64)
    base = BASE if spread == "ledger" else None
    fig = pareto_figure(trials, pareto_front(trials), base=base)
    labels = _visible_tick_labels(fig)
    texts = [lab.get_text() for lab in labels]
    assert len(texts) >= 3, texts
    assert all(TICK.match(t) for t in texts), texts
    if spread == "ledger":
        assert {"5M", "10M", "20M", "100M"} <= set(texts), texts
    boxes = sorted((lab.get_window_extent() for lab in labels), key=lambda b: b.x0)
    for left, right in zip(boxes, boxes[1:]):
        assert left.x1 < right.x0, (texts, left, right)
    assert not any(lab.get_text() for lab in fig.axes[0].xaxis.get_minorticklabels())


def test_trials_over_the_macs_budget_are_marked_infeasible(tmp_path: Path) -> None:
    led = make_ledger(tmp_path)
    trials = led.trials()
    budget = 100_000_000
    over = int(((trials["macs"] > budget) & trials["status"].isin(["TERMINATED", "STOPPED"])).sum())
    assert 0 < over < len(trials)
    fig = pareto_figure(trials, led.pareto(), base=BASE, macs_budget=budget)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert f"infeasible: over MACs budget ({over})" in legend and "MACs budget 100M" in legend
    crosses = [c for c in fig.axes[0].collections if c.get_label().startswith("infeasible")]
    assert len(crosses) == 1 and (crosses[0].get_offsets()[:, 0] > budget).all()
    assert len(crosses[0].get_offsets()) == over
    assert "infeasible" not in " ".join(t.get_text() for t in pareto_figure(trials, led.pareto()).axes[0]
                                        .get_legend().get_texts())
    out = plot_pareto(trials, led.pareto(), tmp_path / "budget.png", base=BASE, macs_budget=budget)
    assert out.read_bytes()[:8] == PNG_MAGIC
