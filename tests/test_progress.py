"""Progress output (search/report/progress.py): which epochs get a line, the line formats, --quiet, the tally."""

import io

import pytest

from pruning.train import EpochMetrics
from search.report.progress import MAX_LINES, EpochProgress, SearchTally, epoch_stride, fmt_duration, epoch_shown, tally_line


def epochs_shown(total: int) -> list[int]:
    out = io.StringIO()
    with EpochProgress("base training", total, out=out, tty=False) as progress:
        for e in range(1, total + 1):
            progress(EpochMetrics(epoch=e, train_loss=1.0, val_acc=0.5, lr=0.1, wall_s=2.0))
    return [int(line.split("epoch ")[1].split("/")[0]) for line in out.getvalue().splitlines()]


@pytest.mark.parametrize(("total", "lines"), [(1, 1), (2, 2), (7, 7), (30, 30), (31, 17), (160, 17), (1000, 21),
                                             (12345, 26)])
def test_a_phase_shows_its_first_and_last_epoch_and_at_most_max_lines(total, lines):
    got = epochs_shown(total)
    assert got[0] == 1 and got[-1] == total and got == sorted(set(got))
    assert len(got) == lines <= MAX_LINES
    if total <= 30:
        assert got == list(range(1, total + 1))  # short phases: every epoch


def test_160_epochs_print_every_10th():
    assert epoch_stride(160) == 10
    assert epochs_shown(160) == [1, *range(10, 161, 10)]
    assert [e for e in range(1, 161) if epoch_shown(e, 160, 10)] == [1, *range(10, 161, 10)]


def test_epoch_line_has_epoch_total_loss_val_seconds_and_eta():
    out = io.StringIO()
    progress = EpochProgress("base training", 160, out=out, tty=False)
    for e in range(1, 13):
        progress(EpochMetrics(epoch=e, train_loss=0.4123, val_acc=0.913, lr=0.1, wall_s=3.1))
    expected = "base training: epoch 10/160  loss 0.412  val 91.3%  3.1 s/epoch  ETA 7m45s"  # 150 epochs x 3.1 s
    assert out.getvalue().splitlines()[-1] == expected
    # epoch 12 is not epoch_shown yet; close() shows the last epoch of a phase that ended early
    progress.close()
    assert out.getvalue().splitlines()[-1].startswith("base training: epoch 12/160  loss 0.412")


def test_slow_epochs_print_at_least_every_max_silence():
    out, now = io.StringIO(), [0.0]
    progress = EpochProgress("finetune", 100, out=out, tty=False, max_silence_s=300, clock=lambda: now[0])
    for e in range(1, 5):  # stride 5: epochs 2-4 would be silent, but each takes 200 s
        progress(EpochMetrics(epoch=e, train_loss=1.0, val_acc=0.5, lr=0.1, wall_s=200.0))
        now[0] += 200.0
    assert [ln.split("/")[0] for ln in out.getvalue().splitlines()] == ["finetune: epoch 1", "finetune: epoch 3"]


def test_quiet_shows_nothing_and_extra_is_only_computed_for_shown_lines():
    out, calls = io.StringIO(), []
    with EpochProgress("grow", 100, out=out, tty=False, quiet=True, extra=lambda m, n: calls.append(m) or "x") as p:
        for e in range(1, 101):
            p(EpochMetrics(epoch=e, train_loss=1.0, val_acc=0.5, lr=0.1, wall_s=1.0))
    assert out.getvalue() == "" and calls == []
    out = io.StringIO()
    with EpochProgress("grow", 100, out=out, tty=False, extra=lambda m, n: calls.append(m) or "MACs 1.0M") as p:
        for e in range(1, 101):
            p(EpochMetrics(epoch=e, train_loss=1.0, val_acc=0.5, lr=0.1, wall_s=1.0))
    assert len(calls) == len(out.getvalue().splitlines()) == 21
    assert out.getvalue().splitlines()[0].endswith("ETA 1m39s  MACs 1.0M")


def test_a_terminal_gets_one_tqdm_bar_that_ends_its_line():
    out = io.StringIO()
    with EpochProgress("grow", 10, out=out, tty=True) as progress:
        for e in range(1, 7):  # stops early at 6 of 10
            progress(EpochMetrics(epoch=e, train_loss=0.25, val_acc=0.4, lr=0.1, wall_s=1.0))
    text = out.getvalue()
    assert "\r" in text and text.endswith("\n") and text.count("\n") == 1
    assert "6/6" in text and "loss 0.250  val 40.0%  1.0 s/epoch  ETA 4s" in text and "grow: epoch" not in text


def test_fmt_duration():
    assert [fmt_duration(s) for s in (0, 42.4, 454, 3600 * 2 + 5 * 60 + 9, float("nan"))] == \
        ["0s", "42s", "7m34s", "2h05m", "?"]


def test_search_tally_line_and_its_eta_from_this_sessions_pace():
    assert tally_line(5, 16, 2, 0, 190) == "search: 5/16 done, 2 running, 0 errored, ETA 3m10s"
    now = [100.0]
    tally = SearchTally(16, held=4, clock=lambda: now[0])  # resumed with 4 trials already in the ledger
    assert tally.line(4, 2, 1) == "search: 4/16 done, 2 running, 1 errored, ETA ?"
    now[0] += 60.0  # two trials of this session took a minute: 30 s each, 10 left
    assert tally.line(6, 2, 1) == "search: 6/16 done, 2 running, 1 errored, ETA 5m00s"
    assert tally.line(16, 0, 1).endswith("ETA 0s")


def test_search_tally_is_due_again_after_its_heartbeat():
    now = [0.0]
    tally = SearchTally(8, clock=lambda: now[0], heartbeat_s=60)
    assert not tally.due()
    now[0] = 61.0
    assert tally.due()
    tally.line(0, 2, 0)  # a line resets the heartbeat
    assert not tally.due()
