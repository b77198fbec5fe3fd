"""``attribution_iba``: ``attribution`` with a per-sample information-bottleneck map instead of Grad-CAM.

Schulz et al. 2020, "Restricting the flow: information bottlenecks for attribution"
(ICLR), per-sample variant. At a layer with feature map a, noise replaces part of the
signal: z = λ·a + (1−λ)·ε, ε ~ N(μ, σ²) with the per-channel mean and standard deviation
of a over the batch, and λ = sigmoid(α) one value per element (C×H×W per sample). α is
optimised for a few steps to keep the true class predictable (cross-entropy) while
letting through as little information as possible: the KL divergence of z's distribution
from the pure-noise one, which for Gaussians is closed form and is the element's
*capacity* in nats. The attribution map is the capacity summed over channels (H×W): where
the model needs information, the bottleneck stays open.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pruning.criteria.attribution import agreement
from pruning.criteria.base import (
    Batch,
    Criterion,
    _device,
    _first_output,
    channels_last_flat,
    check_batches,
    finite_scores,
    find_sites,
    grad_eval_mode,
    register_criterion,
    sum_normalized_sites,
)
from pruning.errors import UsageError
from pruning.surgery import ChannelGroup

logger = logging.getLogger(__name__)

#: α starts at 5 (λ ≈ 0.993: almost all signal passes), as in Schulz et al.
INITIAL_ALPHA = 5.0
#: σ floor so that a constant channel still gets some noise (Schulz et al. use 0.01).
MIN_STD = 0.01


def gaussian_capacity(a_normalized: Tensor, alpha: Tensor) -> Tensor:
    """KL(N(λ·â, (1−λ)²) ‖ N(0, 1)) per element, in nats, with λ = sigmoid(α) and â = (a−μ)/σ.

    This is KL(N(z | a) ‖ N(μ, σ²)) in the layer's own units (KL is invariant under the
    affine map back): 0.5·((1−λ)² + λ²·â² − 1) − log(1−λ), where log(1−λ) = logsigmoid(−α)
    keeps it finite for large α.
    """
    lam = torch.sigmoid(alpha)
    return 0.5 * ((1.0 - lam) ** 2 + (lam * a_normalized) ** 2 - 1.0) - F.logsigmoid(-alpha)


class _SiteOutput:
    """A forward hook on one module: records its first output per forward, or replaces it."""

    def __init__(self) -> None:
        self.captured: Tensor | None = None
        self.replace: Tensor | None = None  # set: the module's first output becomes this tensor
        self._fired = False

    def reset(self) -> None:
        self.captured, self._fired = None, False

    def __call__(self, _module: nn.Module, _inp: object, out: object) -> object:
        if self._fired or not isinstance(out, Tensor):
            return None  # only the first call of a shared module is the site
        self._fired = True
        if self.replace is not None:
            return self.replace
        self.captured = out.detach().clone()  # clone: an in-place ReLU downstream would overwrite it
        return None


def bottleneck_capacity(
    model: nn.Module,
    module: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    beta: float = 10.0,
    steps: int = 10,
    lr: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-sample information bottleneck at ``module``'s output: ``(a, capacity)``, both ``[N, C, *space]``.

    ``a`` is the module's clean output on ``x``; ``capacity`` is the KL (nats) of each
    element after ``steps`` Adam steps (learning rate ``lr``) on α minimising
    Σ_n [CE(y_n, f(z_n)) + β·mean over elements of capacity_n], so every sample is
    optimised on its own. μ and σ are per channel over the batch (and space). The noise
    is drawn from ``generator`` (CPU). The caller puts the model in eval mode; this runs
    forwards with a hook on ``module`` and leaves no hook behind.
    """
    site = _SiteOutput()
    handle = module.register_forward_hook(site)
    try:
        with torch.no_grad():
            model(x)
        if site.captured is None:
            raise UsageError(f"module {type(module).__name__} did not run on the calibration batch")
        a = site.captured
        dims = [0, *range(2, a.ndim)]  # all but channels
        mu = a.mean(dim=dims, keepdim=True)
        std = a.std(dim=dims, keepdim=True, unbiased=False).clamp_min(MIN_STD)
        a_normalized = (a - mu) / std
        alpha = torch.full_like(a, INITIAL_ALPHA, requires_grad=True)
        optimizer = torch.optim.Adam([alpha], lr=lr)
        for _ in range(steps):
            noise = torch.randn(a.shape, generator=generator).to(a.device, a.dtype)
            lam = torch.sigmoid(alpha)
            site.reset()
            site.replace = mu + std * (lam * a_normalized + (1.0 - lam) * noise)
            logits = _first_output(model(x))
            site.replace = None
            capacity = gaussian_capacity(a_normalized, alpha)
            loss = F.cross_entropy(logits, y, reduction="sum") + beta * capacity.flatten(1).mean(1).sum()
            (alpha.grad,) = torch.autograd.grad(loss, [alpha])
            optimizer.step()
        return a, gaussian_capacity(a_normalized, alpha.detach())
    finally:
        site.replace = None
        handle.remove()


def _check_options(beta: float, steps: int, lr: float, seed: int) -> None:
    def number(v: object) -> bool:
        return isinstance(v, numbers.Real) and not isinstance(v, bool)

    if not number(beta) or not beta >= 0:
        raise UsageError(f"beta must be a number >= 0, got {beta!r}")
    if not isinstance(steps, numbers.Integral) or isinstance(steps, bool) or steps < 1:
        raise UsageError(f"steps must be an integer >= 1, got {steps!r}")
    if not number(lr) or not lr > 0:
        raise UsageError(f"lr must be a number > 0, got {lr!r}")
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise UsageError(f"seed must be an integer, got {seed!r}")


@register_criterion
class AttributionIBA(Criterion):
    """``attribution_iba``: score_k = ⟨ReLU(a_k)/‖ReLU(a_k)‖₁, H/‖H‖₁⟩ with H the IBA capacity map.

    Per calibration batch and per producer (its BN output if any), H = Σ_channels
    capacity from :func:`bottleneck_capacity` (``beta``, ``steps``, ``lr``; noise seeded
    by ``seed``); the agreement is that of ``attribution``, averaged over samples,
    L2-normalised per layer and summed over a group's producers. Cost per producer and
    batch: one forward pass plus ``steps`` forward/backward passes (``attribution`` needs
    one forward/backward pass per batch for all producers).
    """

    name = "attribution_iba"
    requires_data = True

    def __init__(self, *, beta: float = 10.0, steps: int = 10, lr: float = 1.0, seed: int = 0) -> None:
        _check_options(beta, steps, lr, seed)
        self.beta, self.steps, self.lr, self.seed = float(beta), int(steps), float(lr), int(seed)

    def score(self, model: nn.Module, groups: Sequence[ChannelGroup], batches: Sequence[Batch]) -> dict[str, Tensor]:
        check_batches(self, batches)
        sites = find_sites(model, groups, batches[0][0])
        device = _device(model)
        generator = torch.Generator().manual_seed(self.seed)
        sums: list[Tensor | None] = [None] * len(sites)
        samples = 0
        done: dict[int, Tensor] = {}  # a module that is the site of several producers is optimised once
        with grad_eval_mode(model, params_grad=False):  # only the masks are optimised
            for x, y in batches:
                x, y = x.to(device), y.to(device, torch.long)
                done.clear()
                for i, s in enumerate(sites):
                    if id(s.module) not in done:
                        try:
                            a, capacity = bottleneck_capacity(model, s.module, x, y, beta=self.beta,
                                                              steps=self.steps, lr=self.lr, generator=generator)
                        except UsageError:  # the producer never ran (an unused branch): it scores 0
                            logger.warning("producer %s never ran during calibration (scored 0)", s.producer)
                            continue
                        heat = capacity.sum(dim=1).reshape(len(y), -1)  # [N, S]: summed over channels
                        done[id(s.module)] = agreement(channels_last_flat(a), heat).to("cpu", torch.float64)
                    v = done[id(s.module)]
                    sums[i] = v if sums[i] is None else sums[i] + v
                samples += len(y)
        values = [None if v is None else v / samples for v in sums]
        return finite_scores(sum_normalized_sites(groups, sites, values))
