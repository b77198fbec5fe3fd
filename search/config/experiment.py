"""The whole config (:class:`ExperimentConfig`): its sections, the checks across them, its
directory and the hash that resume compares."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml
from pydantic import Field, model_validator

from search.config._section import _Section
from search.config.sections import (DataSection, ExperimentSection, FinalizeSection, ModelSection, ObjectivesSection,
                                    ResourcesSection, SamplerSection, SchedulerSection, TrainSection)
from search.config.space import SpaceSection
from search.results.cachedir import remote_experiment_cache


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
