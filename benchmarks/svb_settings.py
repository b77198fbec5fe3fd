"""What ``search_vs_baselines.py`` runs: the design constants, the testbeds and :class:`Settings`
(shared with its arms, :mod:`svb_arms`, and its report, :mod:`svb_report`)."""

from __future__ import annotations

from dataclasses import dataclass

DATASET = "fashion_mnist"
ZHANG = ("taylor_guided", "attribution", "attribution_iba")
FORWARDS = 3  # a training step costs ~3 forward passes (pruning.adaptive.TRAIN_STEP_FORWARDS)
# Distillation (Hinton et al. 2015): the fixed recipe's alpha and T are the middle of the ranges the
# search may choose from (DISTILL_RANGES), not tuned to this data.
DISTILL_RANGES = {"distill_alpha": (0.5, 0.9), "distill_temperature": (2.0, 6.0)}
DISTILL_ALPHA, DISTILL_T = (sum(DISTILL_RANGES["distill_alpha"]) / 2, sum(DISTILL_RANGES["distill_temperature"]) / 2)


@dataclass(frozen=True)
class Testbed:
    """A model and the image size it runs at (the same testbeds as ``allocation_headroom.py``)."""

    width_mult: float
    image_size: int
    base_epochs: int
    note: str


# cifar_vgg16 has 5 max-pools: it needs >= 32 px (28 px pools to 0x0); narrowed to x0.25 by default so
# that its dense MACs (19.6M at 32 px, 1 channel) are within ~3x of small_vgg at 16 px.
TESTBEDS = {
    "small_vgg": Testbed(1.0, 16, 15, "5 convs with BN"),
    "cifar_resnet20": Testbed(1.0, 16, 12, "19 convs in 3 stages of residual blocks, BN"),
    # 30 base epochs: at 10 the dense model (81.3% test) was beaten by its 10%-MACs subnetworks trained
    # from scratch for 15 epochs (85%): prune-and-finetune arms started from an unconverged model.
    "cifar_vgg16": Testbed(0.25, 32, 30, "13 convs with BN"),
}


@dataclass(frozen=True)
class Settings:
    model: str = "small_vgg"
    width_mult: float = 1.0
    image_size: int = 16
    limit: int = 4000
    val_limit: int = 1000
    select_fraction: float = 0.1  # carved from the (limited) train split; no arm trains on it
    base_epochs: int = 15
    finetune_epochs: int = 5
    search_trials: int = 24
    search_epochs: int = 2
    screen_candidates: int = 100
    screen_keep: int = 4
    screen_proxy: str = "epochs1"  # allocation_headroom: ABN does not rank-correlate at 10%, one epoch ~0.6
    screen_batches: int = 20
    finalize_top: int = 3  # finalize retrains this many best trials per target + the uniform baseline
    finalize_distill: bool = False  # also finalize with distillation: its own arm
    finalize_plain: bool = True  # False (with finalize_distill): finalize with distillation only
    # finalize's pick also read with --pick-alpha (uniform unless beaten on select with McNemar
    # p <= this): the same candidates, another rule, reported as its own arm
    pick_alpha: float = 0.1
    # also finalize --with-scratch: each finalize variant's candidates also trained from scratch
    # (base + finetune epochs, as (f)), all competing for the pick: its own arms
    finalize_scratch: bool = False
    # also finalize with every candidate finetuned base + finetune epochs (as long as scratch
    # trains), in a copy of the experiment: its own arms ("... --long")
    finalize_long: bool = False
    # the search's profile parameterisation (search.tie): "none", a keep value per group; "slope",
    # one depth slope per trial (search.trial.params.depth_profile) in search.slope_range
    tie: str = "none"
    zhang_arms: bool = True  # the (c) arms (iterative global taylor_guided / attribution / attribution_iba)
    seeds: tuple[int, ...] = (0, 1, 2)
    budgets: tuple[float, ...] = (0.3, 0.1)
    lr: float = 0.05
    finetune_lr: float = 0.01
    batch_size: int = 64
    iter_steps: int = 3
    calib_batches: int = 4  # (c): batches of 64 scored per step (attribution_iba optimises per batch: costly)
    # BN statistics re-estimated on this many train batches right after every cut, in every pruning
    # arm: the search's trials do it (search.recalib_batches, default 20), so the fixed arms must too.
    recalib_batches: int = 20
    workers: int = 2

    @property
    def finalize_variants(self) -> tuple[bool, ...]:
        """The ``distill`` flag of each finalize the search arm runs, in order."""
        return (False, True)[0 if self.finalize_plain else 1:] if self.finalize_distill else (False,)

    @property
    def extra_finalizes(self) -> tuple[str, ...]:
        """The extra finalize arms after each finalize variant: "scratch" (--with-scratch), "long"."""
        return ("scratch",) * self.finalize_scratch + ("long",) * self.finalize_long

    def exp_name(self, seed: int, frac: float) -> str:
        """The experiment name of the search at one seed and budget."""
        return f"{self.model}_seed{seed}_b{round(100 * frac)}"

    @property
    def label(self) -> str:
        w = "" if self.width_mult == 1.0 else f" ×{self.width_mult:g}"
        return f"{self.model}{w}"


def for_testbed(s: Settings, model: str, width_mult: float | None = None) -> Settings:
    """``s`` on testbed ``model``: its image size, width multiplier (unless given) and base epochs."""
    from dataclasses import replace

    t = TESTBEDS[model]
    return replace(s, model=model, width_mult=t.width_mult if width_mult is None else width_mult,
                   image_size=t.image_size, base_epochs=min(s.base_epochs, t.base_epochs) if s is QUICK else t.base_epochs)


QUICK = Settings(limit=600, val_limit=300, base_epochs=3, finetune_epochs=3, search_trials=4, search_epochs=1, calib_batches=1,
                 screen_candidates=6, screen_keep=3, screen_batches=2, finalize_top=1, seeds=(0,))
