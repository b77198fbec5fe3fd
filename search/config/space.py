"""The ``search`` section: what the sampler chooses per trial (modes, criteria, widths, finetune,
distillation), the adaptive loop's knob ranges, baselines and screening."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from search.config._section import _saved, _Section


class AdaptiveSpace(_Section):
    """Ranges of the online grow/prune loop's knobs (trial mode ``adaptive``)."""

    gamma: tuple[float, float] = (0.3, 0.8)
    prune_threshold: tuple[float, float] = (0.3, 0.7)
    patience: list[int] = [1, 2]
    grow_fraction: tuple[float, float] = (0.1, 0.3)
    eval_every_steps: list[int] = [10, 20]
    grow_method: list[Literal["split", "zero"]] = ["split"]
    max_width_mult: float = Field(2.0, gt=0)
    epochs: int = Field(6, ge=1)  # training epochs of the adaptive loop (then finetune_epochs)
    from_scratch: bool = False

    @model_validator(mode="after")
    def _ranges(self) -> AdaptiveSpace:
        for name in ("gamma", "prune_threshold", "grow_fraction"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: min {lo} > max {hi}")
        for name in ("gamma", "prune_threshold"):
            lo, hi = getattr(self, name)
            if not (0.0 <= lo and hi <= 1.0):
                raise ValueError(f"{name} range {[lo, hi]} must lie in [0, 1]")
        if self.grow_fraction[0] < 0:
            raise ValueError(f"grow_fraction range {list(self.grow_fraction)} must be >= 0")
        for name in ("patience", "eval_every_steps", "grow_method"):
            if not getattr(self, name):
                raise ValueError(f"{name} lists no value to choose from")
        for name in ("patience", "eval_every_steps"):
            if min(getattr(self, name)) < 1:
                raise ValueError(f"{name} values must be integers >= 1, got {getattr(self, name)}")
        return self


class Baseline(_Section):
    """A fixed trial enqueued before the sampler's: uniform ratio or global ranking."""

    ranking: Literal["uniform", "global"] = "uniform"
    ratio: float = Field(0.5, gt=0, le=1)
    criterion: str = "l1"


class ScreenSection(_Section):
    """Cheap screening of many budget-exact candidates before the full trials (``search.screen``).

    Per target of ``objectives.macs_targets``: ``candidates`` seeded random profiles, each
    projected onto the target, cut from the base model and scored by ``proxy`` (``abn``:
    BN recalibration on ``batches`` train batches, then val accuracy; ``epochs1``: one
    finetune epoch, then val accuracy); the ``keep`` best become full trials
    (:mod:`search.screen`).
    """

    candidates: int = Field(100, ge=1)
    keep: int = Field(4, ge=1)
    proxy: Literal["abn", "epochs1"] = "abn"
    batches: int = Field(20, ge=1)

    @model_validator(mode="after")
    def _keep_fits(self) -> ScreenSection:
        if self.keep > self.candidates:
            raise ValueError(f"keep {self.keep} > candidates {self.candidates}: cannot finetune more than are screened")
        return self


class SpaceSection(_Section):
    """What the sampler chooses per trial."""

    modes: list[Literal["prune", "adaptive", "scratch"]] = ["prune"]
    criteria: list[str] = ["l1", "taylor_fo"]
    ratio_min: float = Field(0.2, gt=0)
    ratio_max: float = Field(1.0, gt=0)
    # one ratio per group, per stage, or one for all; "slope": one depth slope per trial (a profile
    # exp(-slope * depth) scaled onto the trial's target; needs objectives.macs_targets)
    tie: Literal["none", "stage", "all", "slope"] = "none"
    slope_range: tuple[float, float] = (-2.0, 2.0)  # tie slope: the range of the sampled depth slope
    grow: bool = False  # allow ratio_max > 1: widen groups by growth before finetuning
    steps: list[int] = [1]
    finetune_epochs: tuple[int, int] = (3, 3)
    finetune_lr: tuple[float, float] = (0.01, 0.01)
    min_channels: int = Field(1, ge=1)
    round_to: int = Field(1, ge=1)
    adaptive: AdaptiveSpace = AdaptiveSpace()
    baselines: list[Baseline] = []
    scratch_epochs: int = Field(10, ge=1)  # mode scratch: train the sampled widths from random init this long
    recalib_batches: int = Field(20, ge=0)  # BN recalibration batches after each cut (0 = off)
    distill: list[bool] = [False]  # choices: distil the base model while finetuning / training
    distill_alpha: tuple[float, float] = (0.5, 0.5)  # range of the teacher term's weight
    distill_temperature: tuple[float, float] = (4.0, 4.0)  # range of the softmax temperature
    max_drop_pts: float | None = Field(None, ge=0)  # stop iterative pruning past this val drop (points)
    screen: ScreenSection | None = None  # cheap screening of many candidates per target (needs macs_targets)

    @field_validator("criteria")
    @classmethod
    def _known_criteria(cls, v: list[str], info: ValidationInfo) -> list[str]:
        if _saved(info):
            return v
        from pruning.criteria import CRITERIA  # torch: not when reading a saved config (status)

        for name in v:
            CRITERIA[name]
        return v

    @model_validator(mode="after")
    def _consistent(self) -> SpaceSection:
        if not self.modes:
            raise ValueError("search space is empty: modes lists no trial mode; choose from: prune, adaptive, scratch")
        if "prune" in self.modes and not self.criteria:
            raise ValueError("search space is empty: criteria lists no criterion")
        if self.ratio_min > self.ratio_max:
            raise ValueError(f"ratio_min {self.ratio_min} > ratio_max {self.ratio_max}")
        if self.slope_range[0] > self.slope_range[1]:
            raise ValueError(f"slope_range {list(self.slope_range)} must satisfy min <= max")
        if self.ratio_max > 1.0 and not self.grow:
            raise ValueError(f"ratio_max {self.ratio_max} > 1 needs grow: true (widening by growth)")
        if not self.steps or min(self.steps) < 1:
            raise ValueError(f"steps must be a non-empty list of integers >= 1, got {self.steps}")
        lo, hi = self.finetune_epochs
        if lo < 0 or lo > hi:
            raise ValueError(f"finetune_epochs range {[lo, hi]} must satisfy 0 <= min <= max")
        if not (0 < self.finetune_lr[0] <= self.finetune_lr[1]):
            raise ValueError(f"finetune_lr range {list(self.finetune_lr)} must satisfy 0 < min <= max")
        self._check_distill()
        if self.baselines and "prune" not in self.modes:
            raise ValueError("baselines are prune trials: add 'prune' to modes or remove the baselines")
        for b in self.baselines:
            # A baseline is a point of the sampler's space, so its criterion must be one of the choices.
            if b.criterion not in self.criteria:
                raise ValueError(
                    f"baseline criterion {b.criterion!r} is not in criteria; choose one of: {', '.join(self.criteria)}"
                )
        return self

    def _check_distill(self) -> None:
        if not self.distill:
            raise ValueError("distill lists no value to choose from; use [false], [true] or [false, true]")
        a, t = self.distill_alpha, self.distill_temperature
        if not (0.0 <= a[0] <= a[1] <= 1.0):
            raise ValueError(f"distill_alpha range {list(a)} must satisfy 0 <= min <= max <= 1")
        if not (0.0 < t[0] <= t[1]):
            raise ValueError(f"distill_temperature range {list(t)} must satisfy 0 < min <= max")
