"""The config's sections other than the search space: ``experiment``, ``model``, ``data``,
``train``, ``objectives``, ``sampler``, ``scheduler``, ``resources``, ``finalize``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from search.config._section import _saved, _Section
from search.results.cachedir import parse_results_dir


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
    # and those runs compete for the pick with the finetuned ones; pick_alpha's reference is then
    # the uniform baseline trained the most epochs (finalpick.reference_variant).
    with_scratch: bool = False
    scratch_epochs: int | None = Field(None, ge=1)  # None: search.scratch_epochs

    @model_validator(mode="after")
    def _one_scratch(self) -> FinalizeSection:
        if self.with_scratch and self.from_scratch:
            raise ValueError("with_scratch adds from-scratch runs beside the finetuned ones, from_scratch makes every "
                             "run one: set one of them")
        return self
