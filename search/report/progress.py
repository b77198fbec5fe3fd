"""Progress output of long work: one line per epoch (or every N epochs), and a search's tally.

The CLI attaches these; library code never prints. :class:`EpochProgress` is an
``on_epoch(metrics, model)`` callback for ``pruning.train.train`` and the loops built on
it (base training, ``prune``'s finetune, ``grow``): with a terminal attached it draws a
``tqdm`` bar, otherwise (CI, logs, pipes) it prints plain lines such as::

    base training: epoch 10/160  loss 0.412  val 91.3%  3.1 s/epoch  ETA 7m45s

A long phase prints every :func:`epoch_stride` epochs (at most ~30 lines, the first and
the last epoch always), and a line at least every ``max_silence_s`` when epochs are slow.
:class:`SearchTally` builds a search's ``search: 5/16 done, 2 running, 0 errored, ETA 3m10s``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from tqdm import tqdm

#: At most about this many epoch lines per phase (plus the first and the last epoch).
MAX_LINES = 30

#: Strides read better as round numbers: 1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, ...
_NICE = (1, 2, 5, 10, 20, 25, 50)


def say_unless(quiet: bool) -> Callable[[str], None]:
    """``print`` (flushed) for a command's progress messages, or nothing with ``--quiet``."""
    return (lambda text: None) if quiet else (lambda text: print(text, flush=True))


def epoch_stride(total: int, max_lines: int = MAX_LINES) -> int:
    """The smallest round N such that printing every N-th epoch of ``total`` gives <= ``max_lines`` lines."""
    scale = 1
    while True:
        for n in _NICE:
            if math.ceil(total / (n * scale)) <= max_lines:
                return n * scale
        scale *= 10


def epoch_shown(epoch: int, total: int, stride: int) -> bool:
    """Whether epoch ``epoch`` (1-based) of ``total`` gets a line: the first, the last and every ``stride``-th."""
    return epoch <= 1 or epoch >= total or epoch % stride == 0


def fmt_duration(seconds: float) -> str:
    """``42s``, ``7m34s``, ``2h05m``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def epoch_line(label: str, epoch: int, total: int, loss: float, val_acc: float, epoch_s: float, eta_s: float,
               extra: str = "") -> str:
    """``base training: epoch 12/160  loss 0.412  val 91.3%  3.1 s/epoch  ETA 7m34s`` (+ ``extra``)."""
    line = (f"{label}: epoch {epoch}/{total}  loss {loss:.3f}  val {100 * val_acc:.1f}%  "
            f"{epoch_s:.1f} s/epoch  ETA {fmt_duration(eta_s)}")
    return f"{line}  {extra}" if extra else line


def _is_tty(out: TextIO) -> bool:
    try:
        return bool(out.isatty())
    except (AttributeError, ValueError):
        return False


class EpochProgress:
    """``on_epoch(metrics, model)`` callback that reports a training phase of ``total`` epochs.

    ``metrics`` is a ``pruning.train.EpochMetrics`` (``epoch``, ``train_loss``, ``val_acc``,
    ``wall_s``). ``extra(metrics, model)`` adds text to a shown line (computed only then).
    ``quiet`` shows nothing; ``tty`` (default: ``out.isatty()``) draws a tqdm bar instead of
    lines. Nothing is shown before the first epoch (a cached base model trains none).
    Call :meth:`close` (or use it as a context manager) when the phase ends: it shows the
    last epoch if the phase ended early (e.g. ``grow`` stopping its search).
    """

    def __init__(self, label: str, total: int, *, out: TextIO | None = None, quiet: bool = False,
                 tty: bool | None = None, extra: Callable[[Any, Any], str] | None = None,
                 max_lines: int = MAX_LINES, max_silence_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label, self.total, self.quiet, self.extra = label, max(1, int(total)), quiet, extra
        self.out = out if out is not None else sys.stdout
        self.tty = _is_tty(self.out) if tty is None else tty
        self.stride = epoch_stride(self.total, max_lines)
        self.max_silence_s, self.clock = max_silence_s, clock
        self.seconds = 0.0  # summed epoch seconds
        self.count = 0  # epochs seen
        self._last_shown_at: float | None = None
        self._pending: tuple[Any, Any] | None = None  # the newest epoch not shown yet
        self._bar: Any = None

    def __enter__(self) -> EpochProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def eta_s(self, epoch: int) -> float:
        """Seconds left after epoch ``epoch``: the mean epoch time so far x the epochs left."""
        return (self.seconds / max(1, self.count)) * max(0, self.total - epoch)

    def __call__(self, m: Any, model: Any = None) -> None:
        self.count += 1
        self.seconds += float(m.wall_s)
        if self.quiet:
            return
        if self.tty:
            self._update_bar(m, model)
            return
        now = self.clock()
        silent_too_long = self._last_shown_at is not None and now - self._last_shown_at >= self.max_silence_s
        if epoch_shown(m.epoch, self.total, self.stride) or silent_too_long:
            self._show(m, model)
        else:
            self._pending = (m, model)

    def close(self) -> None:
        """End the phase: show the last epoch if it was not shown; close the bar."""
        if self._bar is not None:
            self._bar.total = self._bar.n  # a phase that stopped early ends full, not at 60%
            self._bar.refresh()
            self._bar.close()
            self._bar = None
        elif self._pending is not None:
            self._show(*self._pending)

    def _text(self, m: Any, model: Any) -> str:
        return self.extra(m, model) if self.extra is not None else ""

    def _show(self, m: Any, model: Any) -> None:
        self._pending = None
        self._last_shown_at = self.clock()
        line = epoch_line(self.label, int(m.epoch), self.total, float(m.train_loss), float(m.val_acc),
                          float(m.wall_s), self.eta_s(int(m.epoch)), self._text(m, model))
        print(line, file=self.out, flush=True)

    def _update_bar(self, m: Any, model: Any) -> None:
        extra = self._text(m, model)
        text = (f"loss {float(m.train_loss):.3f}  val {100 * float(m.val_acc):.1f}%  {float(m.wall_s):.1f} s/epoch  "
                f"ETA {fmt_duration(self.eta_s(int(m.epoch)))}" + (f"  {extra}" if extra else ""))
        n = min(int(m.epoch), self.total)
        if self._bar is None:
            # Our own s/epoch and ETA, not tqdm's rate and elapsed time: the bar starts after the first epoch.
            self._bar = tqdm(total=self.total, initial=n, postfix=text, desc=self.label, unit="epoch", file=self.out,
                             dynamic_ncols=True, leave=True, bar_format="{desc}: {percentage:3.0f}%|{bar}| "
                                                                        "{n_fmt}/{total_fmt}{postfix}")
        else:
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.n = n
            self._bar.refresh()
        if m.epoch >= self.total:  # done: end the bar's line before anything else prints
            self.close()


def tally_line(done: int, total: int, running: int, errored: int, eta_s: float | None) -> str:
    """``search: 5/16 done, 2 running, 0 errored, ETA 3m10s`` (``ETA ?`` before any estimate)."""
    eta = fmt_duration(eta_s) if eta_s is not None else "?"
    return f"search: {done}/{total} done, {running} running, {errored} errored, ETA {eta}"


class SearchTally:
    """The search's running tally; the ETA comes from this session's rate of finished trials.

    ``held`` is how many trials the ledger already held when the session started (resume):
    they count as done but not towards the rate. Plain data, picklable (Ray stores callbacks).
    """

    def __init__(self, total: int, held: int = 0, clock: Callable[[], float] = time.monotonic,
                 heartbeat_s: float = 60.0) -> None:
        self.total, self.held, self.clock, self.heartbeat_s = int(total), int(held), clock, heartbeat_s
        self.started = self.last_line_at = clock()

    def due(self) -> bool:
        """True when no tally line was built for ``heartbeat_s`` (long trials: say the search is alive)."""
        return self.clock() - self.last_line_at >= self.heartbeat_s

    def eta_s(self, done: int) -> float | None:
        """Seconds to ``total`` at this session's pace; None until a trial finished in it."""
        new = done - self.held
        if new <= 0:
            return None
        return (self.clock() - self.started) / new * max(0, self.total - done)

    def line(self, done: int, running: int, errored: int) -> str:
        self.last_line_at = self.clock()
        return tally_line(done, self.total, running, errored, self.eta_s(done))
