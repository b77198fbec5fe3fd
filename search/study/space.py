"""The search space: what Optuna chooses for one trial, defined by run (``suggest``).

A trial's ``params`` is a flat dict of JSON scalars:

* ``mode``: ``"prune"``, ``"adaptive"`` or ``"scratch"`` (a choice among ``search.modes``);
* prune mode only: ``criterion`` (among ``search.criteria``), ``steps`` (among
  ``search.steps``) and the **ratio keys** - keep ratios in ``[ratio_min, ratio_max]``;
  a ratio above 1 is a width multiplier (the group is grown, ``search.grow``);
* adaptive mode only: ``gamma``, ``prune_threshold``, ``patience``, ``grow_fraction``,
  ``eval_every_steps``, ``grow_method`` (the ranges of ``search.adaptive``), and
  ``macs_budget_ratio``, the trial's MACs budget as a fraction of the base model's MACs,
  in the range prune trials reach (``macs_budget_range``), so that adaptive and prune
  trials compete on the same part of the front;
* both modes: ``finetune_epochs``, ``finetune_lr`` (log scale), and ``grow_method`` when
  ``search.grow`` is on (how prune-mode groups with a ratio > 1 are widened);
* scratch mode only: the ratio keys (the widths, trained from random weights for
  ``search.scratch_epochs``; no ``finetune_epochs``/``finetune_lr``);
* prune and scratch modes, when ``search.distill`` offers ``true``: ``distill`` (bool)
  and, when true, ``distill_alpha`` and ``distill_temperature``;
* baselines only: ``baseline`` (``"uniform"`` | ``"global"``) and ``ratio`` (see
  ``baseline_params``);
* with ``objectives.macs_targets``: ``macs_target`` (one of the targets) in every mode;
  the ratio keys of prune and scratch trials are then a *profile* the trial scales onto
  its target (``search.targets``), and an adaptive trial's ``macs_budget_ratio`` is its
  target (not sampled);
* screened candidates only (``search.screen``): ``screen_candidate``, the candidate's index.

With ``search.tie: slope`` (which needs targets) a prune or scratch trial samples no ratio
keys but one ``depth_slope`` in ``search.slope_range``: its profile is
``search.trial.params.depth_profile`` (exp(-slope · depth), early groups wider for a positive
slope), scaled onto the target like any profile; a baseline's slope is 0, the uniform profile.

Ratio keys (``ratio_keys``) depend on ``search.tie``: ``r_all`` for every group
(``all``); ``r_<group>`` per group (``none``); per stage (``stage``), a key named after
the *first* group of the stage, ``r_<first group>``. One rule reads all three back
(``ratios_from_params``): walking the groups in model order, a group takes the ratio of
its own key if present, else the ratio of the nearest preceding keyed group - so a
params dict alone (as stored in the ledger) says which ratio every group got.
Characters outside ``[A-Za-z0-9_.-]`` in a group name become ``_`` in its key (Ray
splits config keys on ``/``).

Stages (``stage_map``) are found from the model, not from names: a group's stage is
the spatial resolution of its feature map (the output of its named layer), ranked
from the input side, so VGG stages are the runs between poolings and ResNet stages
are ``layer1``, ``layer2``...; the strided first conv of a stage belongs to the new
stage, and a CIFAR ResNet stem shares ``layer1``'s stage. A stage that is not
contiguous in model order is split into contiguous runs, one key each.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import optuna
import torch
from torch import nn

from pruning.cost import count_macs
from pruning.errors import UsageError
from pruning.selection import grow_counts, keep_by_ratios
from pruning.surgery import GroupGraph, grow
from search.config import ExperimentConfig
from search.trial.materialize import experiment_data, model_for_groups
from search.trial.materialize import group_names  # noqa: F401 - the groups a search is over: space.group_names
from search.trial.params import (ADAPTIVE_CHOICE_KNOBS, ADAPTIVE_FLOAT_KNOBS, ALL_KEY, BASELINES, BUDGET_KEY,
                                 SCREEN_KEY, SLOPE_KEY, TARGET_KEY, baseline_defaults, ratio_key)



def stage_map(model: nn.Module, groups: Sequence[str], example_input: torch.Tensor) -> dict[str, str]:
    """``{group: "s<k>"}``: k ranks the resolution of the group's feature map, 0 = largest.

    One forward pass of ``example_input`` with a hook on each group's named layer; a
    Linear group (no spatial dimensions) ranks after every conv resolution.
    """
    modules = dict(model.named_modules())
    missing = [g for g in groups if g not in modules]
    if missing:
        raise UsageError(f"unknown group {missing[0]!r}: not a layer of {type(model).__name__}")
    pixels: dict[str, int] = {}

    def hook(name: str):
        def record(_m: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
            pixels.setdefault(name, math.prod(out.shape[2:]) if out.ndim > 2 else 0)

        return record

    handles = [modules[g].register_forward_hook(hook(g)) for g in groups]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    unused = [g for g in groups if g not in pixels]
    if unused:
        raise UsageError(f"group {unused[0]!r} is not used in the forward pass; cannot place it in a stage")
    levels = sorted(set(pixels.values()), reverse=True)
    return {g: f"s{levels.index(pixels[g])}" for g in groups}


def ratio_keys(cfg: ExperimentConfig, groups: list[str]) -> dict[str, str]:
    """``{group: sampled parameter name}`` for ``cfg.search.tie`` (see the module docstring).

    ``tie="stage"`` builds the model (untrained) to find the stages.
    """
    tie = cfg.search.tie
    if tie == "all":
        return {g: ALL_KEY for g in groups}
    if tie == "none":
        return {g: ratio_key(g) for g in groups}
    model, x = model_for_groups(cfg)
    stages = stage_map(model, groups, x)
    keys: dict[str, str] = {}
    current, previous_stage = "", None
    for g in groups:
        if stages[g] != previous_stage:
            current, previous_stage = ratio_key(g), stages[g]
        keys[g] = current
    return keys


def _unique(values: Mapping[str, str]) -> list[str]:
    return list(dict.fromkeys(values.values()))


def profile_space(cfg: ExperimentConfig, groups: list[str]) -> dict[str, tuple[float, float]]:
    """``{key: (low, high)}`` of the values that give a prune or scratch trial its widths: the ratio
    keys in ``[ratio_min, ratio_max]``, or with ``search.tie: slope`` the one ``depth_slope`` in
    ``slope_range``. The sampler (``suggest``), screening and the baselines all read it."""
    s = cfg.search
    if s.tie == "slope":
        return {SLOPE_KEY: s.slope_range}
    return {key: (s.ratio_min, s.ratio_max) for key in _unique(ratio_keys(cfg, groups))}


def _enqueued(trial: Any) -> Mapping[str, Any]:
    """Params fixed for this trial by ``study.enqueue_trial`` (Ray: ``points_to_evaluate``).

    Optuna keeps them private (``Trial._fixed_params``; ``FixedTrial._params``); Ray's
    define-by-run wrapper forwards attribute access to the Optuna trial. They are read
    only to carry a baseline's ``baseline``/``ratio`` markers, which are not sampled.
    """
    for attr in ("_fixed_params", "_params"):
        fixed = getattr(trial, attr, None)
        if isinstance(fixed, Mapping):
            return fixed
    return {}


def suggest(trial: optuna.trial.BaseTrial, cfg: ExperimentConfig, groups: list[str]) -> dict[str, Any]:
    """Sample one trial's params with ``trial.suggest_*`` and return them, complete.

    For Ray's ``OptunaSearch(space=functools.partial(suggest, cfg=cfg, groups=groups))``:
    Ray merges the returned dict into what it captured, so the trial's config is exactly
    this dict. It contains every sampled value plus, for an enqueued baseline, the
    unsampled ``baseline`` and ``ratio`` markers. Conditional: ``criterion``, ``steps``
    and ratio keys only in prune mode; the adaptive knobs only in adaptive mode.
    """
    s = cfg.search
    targets = cfg.objectives.macs_targets  # budget-exact trials (search.targets): the target is a parameter
    params: dict[str, Any] = {"mode": trial.suggest_categorical("mode", list(s.modes))}
    if params["mode"] == "prune":
        params["criterion"] = trial.suggest_categorical("criterion", list(s.criteria))
        params["steps"] = trial.suggest_categorical("steps", list(s.steps))
    if targets:
        params[TARGET_KEY] = trial.suggest_categorical(TARGET_KEY, list(targets))
    if params["mode"] in ("prune", "scratch"):  # scratch: widths only, trained from random weights
        for key, (lo, hi) in profile_space(cfg, groups).items():  # with targets: a profile, scaled onto the target
            params[key] = trial.suggest_float(key, lo, hi)
    else:
        a = s.adaptive
        for knob in ADAPTIVE_FLOAT_KNOBS:
            lo, hi = getattr(a, knob)
            params[knob] = trial.suggest_float(knob, lo, hi)
        for knob in ADAPTIVE_CHOICE_KNOBS:
            params[knob] = trial.suggest_categorical(knob, list(getattr(a, knob)))
        if targets:
            params[BUDGET_KEY] = float(params[TARGET_KEY])
        else:
            params[BUDGET_KEY] = trial.suggest_float(BUDGET_KEY, *macs_budget_range(cfg, groups))
    if s.grow and "grow_method" not in params:
        params["grow_method"] = trial.suggest_categorical("grow_method", list(s.adaptive.grow_method))
    if params["mode"] != "scratch":  # scratch trains at train.lr for scratch_epochs
        params["finetune_epochs"] = trial.suggest_int("finetune_epochs", *s.finetune_epochs)
        params["finetune_lr"] = trial.suggest_float("finetune_lr", *s.finetune_lr, log=True)
    if True in s.distill and params["mode"] != "adaptive":  # the adaptive loop takes no teacher
        params.update(_suggest_distill(trial, cfg))
    fixed = _enqueued(trial)
    if params["mode"] == "prune" and fixed.get("baseline") in BASELINES:
        params["baseline"] = fixed["baseline"]
        params["ratio"] = float(fixed["ratio"])
    if params["mode"] == "prune" and fixed.get(SCREEN_KEY) is not None:  # a screened candidate (search.screen)
        params[SCREEN_KEY] = int(fixed[SCREEN_KEY])
    return params


def _suggest_distill(trial: optuna.trial.BaseTrial, cfg: ExperimentConfig) -> dict[str, Any]:
    """``distill`` (among ``search.distill``) and, when on, ``distill_alpha``/``distill_temperature``."""
    s = cfg.search
    out: dict[str, Any] = {"distill": bool(trial.suggest_categorical("distill", list(s.distill)))}
    if out["distill"]:
        out["distill_alpha"] = trial.suggest_float("distill_alpha", *s.distill_alpha)
        out["distill_temperature"] = trial.suggest_float("distill_temperature", *s.distill_temperature)
    return out


_REACH_CACHE: dict[str, tuple[float, float, int]] = {}


def macs_budget_range(cfg: ExperimentConfig, groups: list[str]) -> tuple[float, float]:
    """The adaptive budget's range, ``(low, high)`` fractions of the base model's MACs.

    What prune trials can reach: the MACs with every group at ``ratio_min`` (the widths a
    one-step prune keeps, ``min_channels``/``round_to`` applied) and with every group at
    ``ratio_max`` (grown when above 1). MACs grow with every group's width, so no prune
    trial's ratios give fewer or more. ``objectives.macs_budget`` caps ``high`` (and
    ``low``). Computed once per process and config (untrained model or ``model.checkpoint``).
    """
    key = cfg.model_dump_json(include={"model", "data", "search"}) + repr(groups)
    if key not in _REACH_CACHE:
        _REACH_CACHE[key] = _reach(cfg, groups)
    low, high, base_macs = _REACH_CACHE[key]
    if cfg.objectives.macs_budget is not None:
        high = min(high, cfg.objectives.macs_budget / base_macs)
        low = min(low, high)
    return low, high


def _reach(cfg: ExperimentConfig, groups: list[str]) -> tuple[float, float, int]:
    """(MACs at ratio_min everywhere, at ratio_max everywhere) / base MACs, and base MACs."""
    s = cfg.search
    model, x = model_for_groups(cfg)
    shape = tuple(experiment_data(cfg).input_shape)
    base_macs = count_macs(model, shape)
    out = []
    for r in (s.ratio_min, s.ratio_max):
        m = copy.deepcopy(model)
        graph = GroupGraph(m, x)
        widths = {g: n for g, n in graph.widths().items() if g in groups}
        if r < 1.0:
            scores = {g: torch.arange(n, 0, -1, dtype=torch.float32) for g, n in widths.items()}
            graph.prune(keep_by_ratios(scores, r, min_channels=s.min_channels, round_to=s.round_to))
        elif r > 1.0:
            grow(m, grow_counts(dict.fromkeys(widths, r), widths, s.round_to), x, method="zero")
        out.append(count_macs(m, shape) / base_macs)
    return out[0], out[1], base_macs


def baseline_params(cfg: ExperimentConfig, groups: list[str]) -> list[dict[str, Any]]:
    """Each ``search.baselines`` entry as a complete params dict of the space, in config order.

    Mode ``prune``, the baseline's criterion, the first of ``search.steps``, the most
    finetune epochs of the range and the geometric middle of the finetune LR range, so
    every baseline gets the same (full) budget. ``baseline`` and ``ratio`` decide what
    the trial does (one ratio per group, or one global ranking); the ratio keys are set
    to the ratio clipped into ``[ratio_min, ratio_max]`` only so that the point lies in
    the sampler's space (for a global baseline they are nominal).
    """
    s = cfg.search
    keys = profile_space(cfg, groups)
    default = baseline_defaults(cfg)
    out = []
    # With macs_targets, every baseline runs at every target: the all-ones profile projected
    # onto it (uniform), or a global ranking bisected onto it; its ``ratio`` is then 1.0.
    targets: list[float | None] = list(cfg.objectives.macs_targets or [None])
    for b, target in ((b, t) for t in targets for b in s.baselines):
        if target is not None:
            b = b.model_copy(update={"ratio": 1.0})
        params: dict[str, Any] = {"mode": "prune", "criterion": b.criterion, "steps": default["steps"]}
        # the baseline's ratio on every ratio key, or slope 0 (the uniform profile), clipped into the range
        params.update({k: min(max(0.0 if k == SLOPE_KEY else b.ratio, lo), hi) for k, (lo, hi) in keys.items()})
        if s.grow:
            params["grow_method"] = default["grow_method"]
        params["finetune_epochs"] = default["finetune_epochs"]
        params["finetune_lr"] = default["finetune_lr"]
        if True in s.distill:  # a point of the space; without distillation when that is a choice
            params["distill"] = s.distill[0] if len(s.distill) == 1 else False
            if params["distill"]:
                params["distill_alpha"] = default["distill_alpha"]
                params["distill_temperature"] = default["distill_temperature"]
        params["baseline"] = b.ranking
        params["ratio"] = b.ratio
        if target is not None:
            params[TARGET_KEY] = target
        out.append(params)
    return out


def baseline_identity(params: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """``(ranking, ratio, criterion)`` of a baseline's params, plus its ``macs_target`` when it
    has one; None for any other trial.

    What tells baselines apart (a ledger row's ``params_json`` carries all of it): a
    uniform and a global baseline with the same criterion and ratio are different trials,
    and so are the same baseline at two targets.
    """
    if params.get("baseline") not in BASELINES:
        return None
    identity: tuple[Any, ...] = (str(params["baseline"]), float(params["ratio"]), str(params.get("criterion")))
    target = params.get(TARGET_KEY)
    return identity if target is None else (*identity, float(target))


def missing_baselines(baselines: Sequence[Mapping[str, Any]],
                      held: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The ``baselines`` (``baseline_params``) whose identity no params in ``held`` carry.

    ``held`` are the params of trials that ran or will run (the ledger's, and those
    proposed but not yet recorded). Counted as a multiset: a baseline listed twice
    in the config runs twice.
    """
    left = Counter(baseline_identity(p) for p in held)
    out = []
    for b in baselines:
        key = baseline_identity(b)
        if left[key] > 0:
            left[key] -= 1
        else:
            out.append(dict(b))
    return out


def param_distributions(
    cfg: ExperimentConfig, groups: list[str], params: Mapping[str, Any]
) -> dict[str, optuna.distributions.BaseDistribution]:
    """The Optuna distribution of every sampled value in ``params`` (for ``optuna.trial.create_trial``).

    Lets a resumed search hand finished trials back to a study (warm start) with the
    distributions ``suggest`` would have used. Markers (``baseline``, ``ratio``) are not
    distributions and are left out.
    """
    fixed = optuna.trial.FixedTrial(dict(params))
    suggest(fixed, cfg, groups)
    return fixed.distributions
