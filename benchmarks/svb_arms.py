"""The fixed-recipe arms of ``search_vs_baselines.py``: each a function run in a worker process
(1 thread) returning one result row: (a)/(c) our pruning, (b) torch-pruning's global Taylor,
(d) online grow/prune, (f) widths trained from scratch, and the dense base model they share."""

from __future__ import annotations

import copy
import functools
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from svb_settings import DATASET, DISTILL_ALPHA, DISTILL_T, FORWARDS, Settings



@functools.lru_cache(maxsize=1)
def _data(s: Settings, seed: int) -> Any:
    from pruning.data import load_data

    # The selection split is carved from train exactly as the search's experiment data does it
    # (search.trial.materialize: load_data with the same seed and select_fraction), so that every
    # arm, the base model and the search train on the same images and none trains on select.
    return load_data(DATASET, seed=seed, image_size=s.image_size, limit=s.limit, val_limit=s.val_limit,
                     select_fraction=s.select_fraction)


def _train_cfg(s: Settings, seed: int, epochs: int, lr: float, distill: bool = False) -> Any:
    from pruning.train import DistillConfig, TrainConfig

    kd = DistillConfig(alpha=DISTILL_ALPHA, temperature=DISTILL_T) if distill else None
    return TrainConfig(epochs=epochs, lr=lr, batch_size=s.batch_size, seed=seed, device="cpu", distill=kd)


class _Compute:
    """``on_epoch`` callback: adds per-sample MACs x samples x 3 for every training epoch."""

    def __init__(self, n: int, input_shape: tuple[int, ...]) -> None:
        self.n, self.shape, self.macs, self.epochs = n, input_shape, 0, 0

    def __call__(self, metrics: Any, model: nn.Module) -> None:
        from pruning.cost import count_macs

        self.macs += FORWARDS * count_macs(model, self.shape) * self.n + getattr(metrics, "teacher_macs", 0)
        self.epochs += 1


def _result(name: str, model: nn.Module, data: Any, compute: int, epochs: int, t0: float, **extra: Any) -> dict:
    from pruning.cost import count_macs
    from pruning.surgery import widths
    from pruning.train import evaluate

    model.cpu()
    return {"arm": name, "test_acc": evaluate(model, data.test), "val_acc": evaluate(model, data.val),
            "macs": count_macs(model, data.input_shape), "compute": int(compute), "epochs": int(epochs),
            "widths": widths(model, data.example_input()), "wall_s": time.perf_counter() - t0, **extra}


def _init_worker() -> None:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)


def base_name(s: Settings, seed: int) -> str:
    """File name of the base model of ``seed``: a hash of what determines it, so ``--keep DIR`` reuses it."""
    import hashlib

    recipe = [s.model, s.width_mult, DATASET, s.image_size, s.limit, s.val_limit, s.select_fraction, s.base_epochs, s.lr,
              s.batch_size, seed]
    return f"base-{s.model}-seed{seed}-{hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:10]}.pt"


def job_base(s: Settings, seed: int, ckpt: str) -> dict:
    """Train the dense base model of ``seed`` and save it to ``ckpt`` (or load ``ckpt`` if it exists)."""
    from pruning.cost import count_macs
    from pruning.models import create_model
    from pruning.train import save_checkpoint, train

    t0 = time.perf_counter()
    data = _data(s, seed)
    if Path(ckpt).is_file():  # trained by an earlier run with the same recipe; its compute still counts
        model = _load_base(ckpt)
        compute = FORWARDS * count_macs(model, data.input_shape) * len(data.train) * s.base_epochs
        return _result("dense", model, data, compute, s.base_epochs, t0, reused=True)
    torch.manual_seed(seed)
    model = create_model(s.model, data.num_classes, in_channels=data.input_shape[0], width_mult=s.width_mult)
    meter = _Compute(len(data.train), tuple(data.input_shape))
    train(model, data, _train_cfg(s, seed, s.base_epochs, s.lr), on_epoch=meter)
    save_checkpoint(ckpt, model.cpu(), recipe=s.model)
    return _result("dense", model, data, meter.macs, meter.epochs, t0)


def _load_base(ckpt: str) -> nn.Module:
    from pruning.train import load_checkpoint

    return load_checkpoint(ckpt)["model"]


def arm_ours(s: Settings, seed: int, budget: int, ckpt: str, criterion: str, ranking: str, steps: int,
             distill: bool = False) -> dict:
    """(a) and (c): our ``prune_iteratively`` to the MACs budget, then the finetune epochs
    (``distill``: distilling the base model at DISTILL_ALPHA, DISTILL_T while finetuning)."""
    from pruning.iterative import PruneSpec, prune_iteratively

    t0 = time.perf_counter()
    data, model = _data(s, seed), _load_base(ckpt)
    teacher = _load_base(ckpt).eval() if distill else None
    meter = _Compute(len(data.train), tuple(data.input_shape))
    spec = PruneSpec(criterion=criterion, target_macs=budget, ranking=ranking, steps=steps, step_epochs=1,
                     calib_batches=s.calib_batches, calib_batch_size=s.batch_size, recalib_batches=s.recalib_batches)
    prune_iteratively(model, data, spec, _train_cfg(s, seed, s.finetune_epochs, s.finetune_lr, distill),
                      finetune_epochs=s.finetune_epochs - (steps - 1), on_epoch=meter, teacher=teacher)
    return _result(f"{ranking} {criterion}" + (" + distill" if distill else ""), model, data, meter.macs,
                   meter.epochs, t0)


def arm_tp_taylor(s: Settings, seed: int, budget: int, ckpt: str) -> dict:
    """(b): torch-pruning MetaPruner, global GroupTaylorImportance, bisection on its ratio to the budget."""
    import torch_pruning as tp

    from pruning.cost import count_macs
    from pruning.models import classifier_layer
    from pruning.train import train

    t0 = time.perf_counter()
    data, base = _data(s, seed), _load_base(ckpt)
    calib = [b for _, b in zip(range(8), data.train.batches(s.batch_size, shuffle=True, seed=seed))]

    def pruned(ratio: float) -> nn.Module:
        m = copy.deepcopy(base).eval()  # eval: the gradient passes must not move BN statistics
        m.zero_grad()
        for x, y in calib:
            nn.functional.cross_entropy(m(x), y).backward()
        pruner = tp.pruner.MetaPruner(m, data.example_input(), importance=tp.importance.GroupTaylorImportance(),
                                      global_pruning=True, pruning_ratio=ratio, max_pruning_ratio=0.97,
                                      ignored_layers=[classifier_layer(m)])
        pruner.step()
        m.zero_grad(set_to_none=True)
        return m.train()

    lo, hi, best = 0.0, 0.97, None
    for _ in range(12):
        mid = (lo + hi) / 2
        m = pruned(mid)
        if count_macs(m, data.input_shape) <= budget:
            hi, best = mid, m
        else:
            lo = mid
    model = best if best is not None else pruned(hi)
    if s.recalib_batches:  # as every other pruning arm and the search's trials do after the cut
        from pruning.recalibrate import recalibrate_bn

        recalibrate_bn(model, data.train.batches(s.batch_size, shuffle=True, seed=seed), s.recalib_batches)
    meter = _Compute(len(data.train), tuple(data.input_shape))
    train(model, data, _train_cfg(s, seed, s.finetune_epochs, s.finetune_lr), on_epoch=meter)
    return _result("global Taylor (torch-pruning)", model, data, meter.macs, meter.epochs, t0)


def arm_adaptive(s: Settings, seed: int, budget: int, ckpt: str) -> dict:
    """(d): the online grow/prune loop from the base model with the MACs budget."""
    from pruning.adaptive import AdaptiveConfig, run_adaptive

    t0 = time.perf_counter()
    data, model = _data(s, seed), _load_base(ckpt)
    search_epochs = min(2, s.finetune_epochs - 1)
    cfg = AdaptiveConfig(budget_macs=budget, max_epochs=search_epochs, finetune_epochs=s.finetune_epochs - search_epochs,
                         finetune_lr=s.finetune_lr, eval_every_steps=5)
    res = run_adaptive(model, data, _train_cfg(s, seed, s.finetune_epochs, s.finetune_lr), cfg)
    return _result("adaptive grow/prune", res.model, data, res.train_macs, res.epochs, t0, note=res.stop_reason)


def arm_scratch(s: Settings, seed: int, widths: dict[str, int], name: str) -> dict:
    """(f): a model of ``widths`` with fresh random weights, trained base + finetune epochs."""
    from pruning.models import create_model
    from pruning.surgery import prune
    from pruning.train import train

    t0 = time.perf_counter()
    data = _data(s, seed)
    torch.manual_seed(seed)
    model = create_model(s.model, data.num_classes, in_channels=data.input_shape[0], width_mult=s.width_mult)
    prune(model, {g: list(range(w)) for g, w in widths.items()}, data.example_input())
    for m in model.modules():  # re-initialise at the new shapes (fan-in changed)
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    meter = _Compute(len(data.train), tuple(data.input_shape))
    train(model, data, _train_cfg(s, seed, s.base_epochs + s.finetune_epochs, s.lr), on_epoch=meter)
    return _result(name, model, data, meter.macs, meter.epochs, t0)
