"""SAMPLERS: the Optuna samplers a search can use, by name (``sampler.name`` in a config).

Each entry builds its sampler from the ``optuna`` module it is given: Optuna is imported when
a sampler is built (:func:`make_sampler`), not with this module, so the config's names
(``SamplerName``, checked here to be the same) and :func:`check_available` load no Optuna
(``prunetune run`` checks the sampler before it writes a file; ``finalize`` needs no sampler).

A MACs budget is a constraint that TPE and NSGA-II read from each finished trial
(``Trial.set_constraint("macs_budget", macs - budget)``, feasible when <= 0; set by the
searcher); CMA-ES, which ignores constraints, gets a penalty on its objective instead
(:data:`PENALISES_MACS`); random search ignores the budget.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_args

from pruning.errors import UsageError
from pruning.registry import Registry
from search.config import SamplerName

__all__ = ["PENALISES_MACS", "SAMPLERS", "SamplerName", "check_available", "make_sampler"]

#: Samplers that ignore Optuna constraints; the searcher penalises their objective instead.
PENALISES_MACS = frozenset({"cmaes"})


@dataclass(frozen=True)
class SamplerEntry:
    """``build(optuna, seed, n_startup_trials, population_size)`` returns the sampler; ``requires``
    names an extra package."""

    build: Callable[[Any, int, int, int], Any]
    requires: str | None = None


SAMPLERS: Registry[SamplerEntry] = Registry("sampler")


def _tpe(optuna: Any, seed: int, n_startup_trials: int, population_size: int) -> Any:
    return optuna.samplers.TPESampler(n_startup_trials=n_startup_trials, seed=seed, multivariate=True, group=True,
                                      constant_liar=True)


def _nsga2(optuna: Any, seed: int, n_startup_trials: int, population_size: int) -> Any:
    return optuna.samplers.NSGAIISampler(population_size=population_size, seed=seed)


def _random(optuna: Any, seed: int, n_startup_trials: int, population_size: int) -> Any:
    return optuna.samplers.RandomSampler(seed=seed)


def _cmaes(optuna: Any, seed: int, n_startup_trials: int, population_size: int) -> Any:
    return optuna.samplers.CmaEsSampler(n_startup_trials=n_startup_trials, seed=seed,
                                        warn_independent_sampling=False)


SAMPLERS.register("tpe")(SamplerEntry(_tpe))
SAMPLERS.register("nsga2")(SamplerEntry(_nsga2))
SAMPLERS.register("random")(SamplerEntry(_random))
SAMPLERS.register("cmaes")(SamplerEntry(_cmaes, requires="cmaes"))  # Optuna imports it only when sampling
assert set(SAMPLERS.names()) == set(get_args(SamplerName)), "SamplerName and SAMPLERS disagree"


def check_available(name: str) -> None:
    """UsageError when sampler ``name`` is unknown or its extra package is not installed."""
    entry = SAMPLERS[name]
    if entry.requires is not None and importlib.util.find_spec(entry.requires) is None:
        others = ", ".join(n for n in get_args(SamplerName) if SAMPLERS[n].requires is None)
        raise UsageError(f"sampler {name} needs the {entry.requires!r} package (pip install {entry.requires}); "
                         f"or choose one of: {others}")


def make_sampler(name: str, *, seed: int, n_startup_trials: int, population_size: int) -> Any:
    """The Optuna sampler ``name`` (``sampler.name``), seeded with ``seed``; the other arguments are the
    ``sampler`` section's (``make_sampler(**cfg.sampler.model_dump(), seed=...)``), each used by the
    samplers that have it."""
    import optuna  # Optuna: loaded only when a sampler is built (the names are checked without it)

    check_available(name)
    with warnings.catch_warnings():
        # TPE's multivariate/group/constant_liar are "experimental" in Optuna: noise for our users.
        warnings.filterwarnings("ignore", message=".*experimental.*")
        return SAMPLERS[name].build(optuna, seed, n_startup_trials, population_size)
