"""One training/evaluation loop: SGD + momentum, cosine LR, optional label smoothing, AMP on CUDA.

Data comes as ``Split`` tensors already on the device (``Split.batches``), so small
datasets cost no DataLoader work. A NaN/inf loss ends training with ``TrialError``.
Optionally the loss distils a teacher's logits (``TrainConfig.distill``, Hinton et al. 2015).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pruning.atomic import atomic_write
from pruning.cost import count_macs
from pruning.errors import TrialError, UsageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation (Hinton et al. 2015): the weight ``alpha`` in [0, 1] of the
    teacher term and the softmax ``temperature`` T > 0 (see :func:`distillation_loss`)."""

    alpha: float = 0.5
    temperature: float = 4.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise UsageError(f"distillation alpha must be in [0, 1], got {self.alpha}")
        if not self.temperature > 0:
            raise UsageError(f"distillation temperature must be > 0, got {self.temperature}")


@dataclass(frozen=True)
class TrainConfig:
    """How to train. ``lr`` is the peak rate of a per-step cosine schedule to 0.

    ``distill`` set: the loss distils the ``teacher`` model given to :func:`train`.
    """

    epochs: int = 10
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    label_smoothing: float = 0.0
    augment: bool = False
    seed: int = 0
    device: str = "cpu"
    amp: bool = True  # only takes effect on CUDA
    distill: DistillConfig | None = None


@dataclass(frozen=True)
class EpochMetrics:
    """One epoch. ``teacher_macs``: the teacher's forward MACs spent in it (per-sample
    MACs x samples; 0 without distillation), training compute on top of the student's."""

    epoch: int
    train_loss: float
    val_acc: float
    lr: float
    wall_s: float
    teacher_macs: int = 0


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} requested but CUDA is not available; choose one of: auto, cpu")
    return torch.device(device)


def make_optimizer(model: nn.Module, cfg: TrainConfig, lr: float | None = None) -> torch.optim.SGD:
    """SGD with momentum; no weight decay on BN and biases (1-D parameters)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr if lr is None else lr,
        momentum=cfg.momentum,
        nesterov=cfg.momentum > 0,
    )


def cosine_lr(peak: float, step: int, total_steps: int) -> float:
    return 0.5 * peak * (1.0 + math.cos(math.pi * min(step, total_steps) / max(1, total_steps)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    alpha: float,
    temperature: float,
    label_smoothing: float = 0.0,
) -> Tensor:
    """(1−α)·CE(z_s, y) + α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)), both terms batch means.

    The T² keeps the soft term's gradient on the same scale as CE's when T changes
    (Hinton et al. 2015). The teacher logits carry no gradient.
    """
    ce = nn.functional.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    t = temperature
    kl = nn.functional.kl_div(
        nn.functional.log_softmax(student_logits / t, dim=1),
        nn.functional.log_softmax(teacher_logits.detach() / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1.0 - alpha) * ce + alpha * t * t * kl


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    scaler: torch.amp.GradScaler | None = None,
    teacher: nn.Module | None = None,
) -> float:
    """One SGD step on a batch; returns the loss. Raises ``TrialError`` on a non-finite loss.

    With ``cfg.distill`` and a ``teacher`` (in eval mode) the loss is
    :func:`distillation_loss`; the teacher runs under ``no_grad``.
    """
    use_amp = scaler is not None
    with torch.autocast(device_type=x.device.type, dtype=torch.float16, enabled=use_amp):
        logits = model(x)
        if cfg.distill is not None and cfg.distill.alpha > 0 and teacher is not None:
            with torch.no_grad():
                teacher_logits = teacher(x)
            loss = distillation_loss(logits, teacher_logits, y, cfg.distill.alpha, cfg.distill.temperature,
                                     cfg.label_smoothing)  # fmt: skip
        else:
            loss = nn.functional.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
    if not torch.isfinite(loss):
        raise TrialError(f"training loss became {loss.item()} (lr={optimizer.param_groups[0]['lr']:.4g})")
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return float(loss.detach())


@torch.no_grad()
def evaluate(model: nn.Module, split: Any, *, batch_size: int = 512, device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on a ``Split`` (eval mode; training mode restored)."""
    right = hits(model, split, batch_size=batch_size, device=device)
    return int(right.sum()) / max(1, len(right))


def hits(model: nn.Module, split: Any, *, batch_size: int = 512, device: str | torch.device = "cpu") -> torch.Tensor:
    """Per example of ``split``, in order: whether ``model``'s top-1 class is right (bool, on CPU)."""
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for x, y in split.batches(batch_size, device=device):
            out.append((model(x).argmax(1) == y).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def make_scaler(device: torch.device, cfg: TrainConfig) -> torch.amp.GradScaler | None:
    return torch.amp.GradScaler("cuda") if (cfg.amp and device.type == "cuda") else None


def train(
    model: nn.Module,
    data: Any,
    cfg: TrainConfig,
    *,
    on_epoch: Callable[[EpochMetrics, nn.Module], None] | None = None,
    start_epoch: int = 0,
    teacher: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> list[EpochMetrics]:
    """Train ``model`` in place on ``data.train`` for ``cfg.epochs`` epochs, evaluating on ``data.val``.

    ``on_epoch(metrics, model)`` is called after every epoch (report, checkpoint).
    ``start_epoch`` resumes the cosine schedule where a checkpoint left it (the schedule is
    a function of the step, so it is the whole scheduler state); ``optimizer`` (default:
    :func:`make_optimizer`) lets a caller keep its state for a checkpoint or load one.
    ``teacher`` is the model distilled when ``cfg.distill`` is set (e.g. the unpruned base
    model); it is moved to the device, run in eval mode and left unchanged (its training
    mode is restored). Each epoch's ``teacher_macs`` counts its forward passes.
    """
    device = resolve_device(cfg.device)
    model.to(device)
    teacher_modes = [(m, m.training) for m in teacher.modules()] if teacher is not None else []
    teacher_macs_per_sample = _prepare_teacher(teacher, cfg, data, device)
    optimizer = optimizer if optimizer is not None else make_optimizer(model, cfg)
    scaler = make_scaler(device, cfg)
    steps_per_epoch = max(1, math.ceil(len(data.train) / cfg.batch_size))
    total = steps_per_epoch * cfg.epochs
    history = []
    step = start_epoch * steps_per_epoch
    try:
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            model.train()
            losses = []
            samples = 0
            for x, y in data.train.batches(
                cfg.batch_size, shuffle=True, seed=cfg.seed * 100_003 + epoch, device=device, augment=cfg.augment
            ):
                set_lr(optimizer, cosine_lr(cfg.lr, step, total))
                losses.append(train_step(model, optimizer, x, y, cfg, scaler, teacher))
                samples += len(y)
                step += 1
            metrics = EpochMetrics(
                epoch=epoch + 1,
                train_loss=sum(losses) / max(1, len(losses)),
                val_acc=evaluate(model, data.val, device=device),
                lr=cosine_lr(cfg.lr, step, total),
                wall_s=time.perf_counter() - t0,
                teacher_macs=teacher_macs_per_sample * samples,
            )
            log.info("epoch %d/%d loss %.4f val_acc %.4f", metrics.epoch, cfg.epochs, metrics.train_loss,
                     metrics.val_acc)  # fmt: skip
            history.append(metrics)
            if on_epoch is not None:
                on_epoch(metrics, model)
    finally:
        for m, training in teacher_modes:
            m.training = training
    return history


def _prepare_teacher(teacher: nn.Module | None, cfg: TrainConfig, data: Any, device: torch.device) -> int:
    """Check the teacher/distill pairing, move the teacher to ``device`` in eval mode; its MACs per sample."""
    if cfg.distill is None:
        if teacher is not None:
            raise UsageError("a teacher model was given but TrainConfig.distill is not set")
        return 0
    if teacher is None:
        raise UsageError("TrainConfig.distill is set but no teacher model was given")
    teacher.to(device).eval()
    return count_macs(teacher, data.input_shape) if cfg.distill.alpha > 0 else 0


def save_checkpoint(path: str | Path, model: nn.Module, **extra: Any) -> Path:
    """Save the whole module (pruned shapes included) plus metadata, atomically.

    The file loads with plain ``torch.load(path, weights_only=False)["model"]``.
    """
    return atomic_write(path, lambda tmp: torch.save({"model": model, **extra}, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint``; ``UsageError`` if it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises many types for a corrupt file
        raise UsageError(f"checkpoint {str(path)!r} is not readable: {type(e).__name__}: {e}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), nn.Module):
        raise UsageError(f"checkpoint {str(path)!r} is not a prunetune checkpoint (no 'model' module in it)")
    return ckpt
