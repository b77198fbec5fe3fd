"""Experiment configuration: pydantic models, frozen, unknown keys rejected.

Load with ``load_config(path, overrides)``; every problem becomes one ``UsageError`` line
naming the key, the bad value and (for names) the valid choices. Inside the code the
config is trusted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from pruning.errors import UsageError
from search.results.cachedir import parse_results_dir, remote_experiment_cache


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _saved(info: ValidationInfo) -> bool:
    """Reading back a config a search saved: its registry names (model, dataset, criteria) were
    checked when it started, and checking them again would import torch into ``status``."""
    return bool(info.context and info.context.get("saved"))


class ExperimentSection(_Section):
    name: str = Field("demo", pattern=r"^[A-Za-z0-9_.\-]+$")
    seed: int = 0
    results_dir: str = "results"  # the experiment lives in <results_dir>/<name>/: a (shared) path, s3:// or gs://

    @field_validator("results_dir")
    @classmethod
    def _results_location(cls, v: str) -> str:
        return parse_results_dir(v)


class ModelSection(_Section):
    name: str = "small_vgg"
    width_mult: float = Field(1.0, gt=0)
    checkpoint: str | None = None  # a trained base model to start from instead of training one

    @field_validator("name")
    @classmethod
    def _known_model(cls, v: str, info: ValidationInfo) -> str:
        if _saved(info):
            return v
        from pruning.models import MODELS, model_names  # torch: not when reading a saved config (status)

        if v in MODELS or ":" in v:  # registered or a user factory: no need to import torchvision
            return v
        if v.removeprefix("torchvision.") not in model_names():
            raise ValueError(MODELS.unknown_message(v, extra=", any torchvision classification model, or 'pkg.module:fn'"))
        return v


class DataSection(_Section):
    name: str = "digits"
    root: str | None = None
    image_size: int | None = Field(None, gt=0)  # None: the dataset's own (imagefolder: the images' size)
    limit: int | None = Field(None, gt=0)
    val_limit: int | None = Field(None, gt=0)  # at most this many validation samples (seeded, stratified)
    # Share of the training samples held out as the selection split (seeded, stratified):
    # nothing trains on it and the search never ranks on it; finalize picks its model on it.
    # None: no selection split (finalize then picks on val). A saved config older than this
    # key reads back as None (see config_from_dict), so old experiments keep their data.
    select_fraction: float | None = 0.1

    @field_validator("select_fraction")
    @classmethod
    def _select_fraction(cls, v: float | None) -> float | None:
        # The bounds of pruning.data.loading.check_select_fraction, which this module cannot
        # import (pruning.data imports torch; ``status`` reads configs without it).
        if v is not None and not (0.0 < v <= 0.5):
            raise ValueError(f"select_fraction must be in (0, 0.5] (a share of the training samples held out for "
                             f"the final pick), got {v}")
        return v

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, v: str, info: ValidationInfo) -> str:
        if _saved(info):
            return v
        from pruning.data import DATASETS  # torch: not when reading a saved config (status)

        DATASETS[v]
        return v


class TrainSection(_Section):
    """Base-model training (also the defaults for finetuning, with ``finetune_lr``)."""

    epochs: int = Field(30, ge=0)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: int = Field(64, ge=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    augment: bool = False
    device: str = "auto"
    calib_batches: int = Field(8, ge=1)
    latency_batch: int = Field(64, ge=1)
    # Where latency_ms is measured (the choices of pruning.cost.LATENCY_BACKENDS): eager torch,
    # or the model exported to ONNX on onnxruntime's CPU provider; 1 thread either way.
    latency_backend: Literal["torch", "onnxruntime"] = "torch"


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


class Objective(_Section):
    metric: Literal["val_acc", "macs", "latency_ms", "params"]
    mode: Literal["max", "min"]


class ObjectivesSection(_Section):
    objectives: list[Objective] = [Objective(metric="val_acc", mode="max"), Objective(metric="macs", mode="min")]
    macs_budget: int | None = Field(None, gt=0)  # trials above it are infeasible (sampler constraint)
    # Budget-exact trials: each trial picks one of these fractions of the base model's MACs and
    # its ratio keys become a profile scaled onto it (search.targets); "10%" or 0.1.
    macs_targets: list[float] | None = None

    @field_validator("macs_targets", mode="before")
    @classmethod
    def _fractions(cls, v: Any) -> Any:
        if v is None:
            return v
        if isinstance(v, (str, int, float)):
            v = [v]
        out = []
        for item in v:
            if isinstance(item, str):
                text = item.strip()
                try:
                    item = float(text[:-1]) / 100 if text.endswith("%") else float(text)
                except ValueError:
                    raise ValueError(f"macs_targets: {item!r} is not a fraction (0.1) or a percentage (10%)") from None
            if isinstance(item, bool) or not isinstance(item, (int, float)) or not 0.0 < float(item) <= 1.0:
                raise ValueError(f"macs_targets: {item!r} is not a fraction of the base MACs in (0, 1] "
                                 f"(e.g. 0.1 or 10%)")
            out.append(float(item))
        if not out:
            raise ValueError("macs_targets lists no target; give fractions such as [10%, 30%] or leave it out")
        if len(set(out)) != len(out):
            raise ValueError(f"macs_targets {out} names a target twice")
        return out

    @model_validator(mode="after")
    def _nonempty(self) -> ObjectivesSection:
        if not self.objectives:
            raise ValueError("objectives is empty; choose from: val_acc (max), macs, latency_ms, params (min)")
        if len({o.metric for o in self.objectives}) != len(self.objectives):
            raise ValueError("objectives name a metric twice")
        return self


#: The valid ``sampler.name`` values (``search.study.samplers`` checks that SAMPLERS has exactly these).
SamplerName = Literal["tpe", "nsga2", "random", "cmaes"]


class SamplerSection(_Section):
    name: SamplerName = "tpe"  # the SAMPLERS registry
    n_startup_trials: int = Field(4, ge=0)
    population_size: int = Field(8, ge=2)  # NSGA-II


class SchedulerSection(_Section):
    name: Literal["none", "asha"] = "none"
    grace_period: int = Field(1, ge=1)
    reduction_factor: int = Field(2, ge=2)


class ResourcesSection(_Section):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)  # fractions pack several trials per GPU, e.g. 0.25 -> 4 per GPU
    num_cpus: int | None = Field(None, ge=1)  # for a local Ray start; None = all
    num_gpus: int | None = Field(None, ge=0)
    max_failures: int = Field(2, ge=0)  # retries of a trial whose worker/node died
    # A trial saves its model, optimizer and position every this many finetune epochs (0 = never);
    # a retried trial continues from its last save instead of from epoch 0.
    checkpoint_every: int = Field(1, ge=0)
    # Custom Ray resources each trial needs, e.g. {"slot": 1} with `ray start --resources '{"slot": 1}'`.
    custom: dict[str, float] = Field(default_factory=dict)


class FinalizeSection(_Section):
    """What ``prunetune run`` does at its end (and ``prunetune finalize``'s defaults): retrain
    the ``top`` best trials per target and the uniform baseline, pick on the selection split.
    ``top`` None: ``run`` does not finalize. Not part of the search hash (it changes no trial)."""

    top: int | None = Field(None, ge=1)
    epochs: int | None = Field(None, ge=1)  # None: search.finetune_epochs' max (from_scratch: scratch_epochs)
    distill: bool = False  # every candidate distils the base model
    from_scratch: bool = False  # every candidate's widths trained from random weights
    compare: bool = False  # also run the pick's widths with distillation and from scratch
    # The uniform baseline stays the pick unless the best candidate on select beats it there with
    # a one-sided exact McNemar p-value <= pick_alpha; None: the best on select, whatever the margin.
    pick_alpha: float | None = Field(None, gt=0, le=1)
    # Every candidate is also trained from random weights (scratch_epochs, distilled with distill)
    # and those runs compete for the pick with the finetuned ones.
    with_scratch: bool = False
    scratch_epochs: int | None = Field(None, ge=1)  # None: search.scratch_epochs

    @model_validator(mode="after")
    def _one_scratch(self) -> FinalizeSection:
        if self.with_scratch and self.from_scratch:
            raise ValueError("with_scratch adds from-scratch runs beside the finetuned ones, from_scratch makes every "
                             "run one: set one of them")
        return self


class ExperimentConfig(_Section):
    experiment: ExperimentSection = ExperimentSection()
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    train: TrainSection = TrainSection()
    search: SpaceSection = SpaceSection()
    objectives: ObjectivesSection = ObjectivesSection()
    sampler: SamplerSection = SamplerSection()
    scheduler: SchedulerSection = SchedulerSection()
    resources: ResourcesSection = ResourcesSection()
    finalize: FinalizeSection = FinalizeSection()
    num_samples: int = Field(16, ge=1)
    max_concurrent: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _sampler_fits(self) -> ExperimentConfig:
        if self.sampler.name == "cmaes" and len(self.objectives.objectives) != 1:
            raise ValueError("sampler cmaes is single-objective; give one objective or choose tpe, nsga2, random")
        targets = self.objectives.macs_targets
        if targets and self.search.grow:
            raise ValueError("objectives.macs_targets and search.grow exclude each other: a profile scaled onto a "
                             "target keeps ratios <= 1; remove one of them")
        if self.search.tie == "slope" and not targets:
            raise ValueError("search.tie: slope needs objectives.macs_targets (a slope is a profile, scaled onto "
                             "each target); give targets or choose tie none, stage or all")
        if self.search.screen is not None and not targets:
            raise ValueError("search.screen needs objectives.macs_targets (candidates are screened per target)")
        if self.search.screen is not None and "prune" not in self.search.modes:
            raise ValueError("search.screen enqueues prune trials: add 'prune' to search.modes or remove search.screen")
        return self

    @property
    def exp_dir(self) -> Path:
        """The experiment's local directory. For an object-store ``results_dir`` (``s3://``,
        ``gs://``), a local cache of what must be a file (the base model); its files
        live in ``search.results.expdir.experiment_store(cfg)``."""
        if "://" in self.experiment.results_dir:
            return remote_experiment_cache(f"{self.experiment.results_dir}/{self.experiment.name}")
        return Path(self.experiment.results_dir) / self.experiment.name

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def search_hash(self) -> str:
        """Hash of everything that changes what a trial means (resume refuses a change)."""
        d = self.model_dump(mode="json")
        d.pop("max_concurrent", None)
        d["resources"] = None
        d["experiment"].pop("results_dir", None)
        d.pop("finalize", None)  # what happens after the search changes no trial
        if d["data"].get("select_fraction") is None:  # hashes of configs from before the key stay the same
            d["data"].pop("select_fraction", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _valid_keys(loc: Sequence[Any]) -> list[str]:
    """Field names of the section at ``loc`` (list indices skipped), for an unknown-key message."""
    model: type[BaseModel] = ExperimentConfig
    for part in loc:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[str(part)].annotation
        inner = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        model = next((a for a in inner if issubclass(a, BaseModel)), model)
    return list(model.model_fields)


def _section_label(loc: Sequence[Any]) -> str:
    return f" of {'.'.join(str(p) for p in loc)!r}" if loc else ""


def _format_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        section = err["loc"][:-1]
        return f"unknown key {loc!r} in config; valid keys{_section_label(section)}: {', '.join(_valid_keys(section))}"
    if err["type"].startswith("literal_error"):
        return f"{loc}: got {err.get('input')!r}; {msg.lower()}"
    where = f"{loc}: " if loc else ""
    value = err.get("input")
    # Our validators' messages name the bad value themselves; pydantic's own never do.
    if err["type"] == "value_error" or isinstance(value, dict):
        return f"{where}{msg}"
    return f"{where}{msg} (got {value!r})"


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> nested dict; values are parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise UsageError(f"bad --set {item!r}; expected key.path=value, e.g. num_samples=8")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UsageError(f"bad --set {item!r}: {p!r} is set twice")
        node[parts[-1]] = yaml.safe_load(value)
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        merged[k] = _merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def config_from_dict(raw: dict[str, Any], *, saved: bool = False) -> ExperimentConfig:
    """Validate a config; ``saved``: one a search wrote, whose registry names are trusted.

    A saved config without ``data.select_fraction`` was written before the selection split
    existed: it reads back as None (no split), so its trials, base model and hash stay what
    they were; a new config without the key gets the default."""
    data = raw.get("data")
    if saved and isinstance(data, dict) and "select_fraction" not in data:
        raw = {**raw, "data": {**data, "select_fraction": None}}
    try:
        return ExperimentConfig.model_validate(raw, context={"saved": saved})
    except ValidationError as e:
        raise UsageError(_format_error(e)) from None
    except UsageError as e:  # a registry lookup inside a validator
        raise UsageError(str(e)) from None


def load_config(path: str | Path | None, overrides: Sequence[str] = (), *, saved: bool = False) -> ExperimentConfig:
    """Read a YAML config (or start from the defaults when ``path`` is None) and apply ``--set`` overrides.

    ``saved``: the file is one a search saved (see :func:`config_from_dict`)."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"config file {str(p)!r} does not exist")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise UsageError(f"config file {str(p)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise UsageError(f"config file {str(p)!r} must hold a mapping of sections, got {type(raw).__name__}")
    return config_from_dict(_merge(raw, parse_set(overrides)), saved=saved)


def with_overrides(cfg: ExperimentConfig, overrides: Sequence[str]) -> ExperimentConfig:
    """``cfg`` with ``--set`` overrides applied and validated again (resume of a saved config)."""
    if not overrides:
        return cfg
    return config_from_dict(_merge(cfg.model_dump(mode="json"), parse_set(overrides)))
