"""Experiment configuration: pydantic models, frozen, unknown keys rejected.

Load with ``load_config(path, overrides)``; every problem becomes one ``UsageError`` line
naming the key, the bad value and (for names) the valid choices. Inside the code the
config is trusted.

The sections live in ``sections`` (the ``search`` section, what a trial samples, in
``space``), the whole config and its hash in ``experiment``, reading and error messages in
``load``; import them from here.
"""

from __future__ import annotations

from search.config.experiment import ExperimentConfig
from search.config.load import config_from_dict, load_config, parse_set, with_overrides
from search.config.sections import (DataSection, ExperimentSection, FinalizeSection, ModelSection, Objective,
                                    ObjectivesSection, ResourcesSection, SamplerName, SamplerSection,
                                    SchedulerSection, TrainSection)
from search.config.space import AdaptiveSpace, Baseline, ScreenSection, SpaceSection

__all__ = ["AdaptiveSpace", "Baseline", "DataSection", "ExperimentConfig", "ExperimentSection", "FinalizeSection",
           "ModelSection", "Objective", "ObjectivesSection", "ResourcesSection", "SamplerName", "SamplerSection",
           "SchedulerSection", "ScreenSection", "SpaceSection", "TrainSection", "config_from_dict", "load_config",
           "parse_set", "with_overrides"]
