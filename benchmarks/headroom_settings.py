"""What allocation_headroom.py runs: testbeds, settings, the kinds of allocations it records."""

from __future__ import annotations

import json
from dataclasses import dataclass

DATASET = "fashion_mnist"


@dataclass(frozen=True)
class Testbed:
    model: str
    width_mult: float
    image_size: int
    base_epochs: int

    @property
    def label(self) -> str:
        w = "" if self.width_mult == 1.0 else f" ×{self.width_mult:g}"
        return f"{self.model}{w} @{self.image_size}px"


# cifar_vgg16 has 5 max-pools: it needs >= 32 px (28 px pools to 0x0). Narrowed to x0.25 so that
# its dense MACs (19.6M at 32 px, 1 channel) are within ~3x of small_vgg at 16 px.
TESTBEDS = {
    "small_vgg": Testbed("small_vgg", 1.0, 16, 15),
    "cifar_resnet20": Testbed("cifar_resnet20", 1.0, 16, 12),
    "cifar_vgg16": Testbed("cifar_vgg16", 0.25, 32, 10),
    "cifar_mobilenet": Testbed("cifar_mobilenet", 0.5, 32, 30),
}


@dataclass(frozen=True)
class Settings:
    testbeds: tuple[str, ...] = ("cifar_resnet20", "cifar_vgg16", "small_vgg")
    seeds: tuple[int, ...] = (0, 1, 2)
    budget: float = 0.1
    limit: int = 4000
    val_limit: int = 1000
    lr: float = 0.05
    finetune_epochs: int = 3
    finetune_lr: float = 0.01
    batch_size: int = 64
    allocations: int = 16
    screen: int = 20
    screen_top: int = 2
    abn_batches: int = 20
    min_channels: int = 2
    workers: int = 2
    base_epochs: int | None = None  # None: the testbed's own
    graded: bool = True  # also the cost-graded profiles (GRADED)
    # uniform finetuned with this many data orders (at least 2: it and the noise floor's): the
    # best of N uniform draws by val is what the best of N random allocations by val must beat
    uniform_draws: int = 2
    slopes: tuple[float, ...] = ()  # depth-slope profiles (see the module docstring)
    slope_draws: int = 4  # data orders each depth slope (and named profile) is finetuned with
    # named profiles: (name, relative keep value per group in model order), finetuned like the slopes
    profiles: tuple[tuple[str, tuple[float, ...]], ...] = ()


QUICK = Settings(seeds=(0,), limit=300, val_limit=200, finetune_epochs=2, allocations=3, screen=6, screen_top=1,
                 abn_batches=3, base_epochs=1)
#: Cost-graded profiles: p_g = (d_min / d_g)^beta ("cost-aware": channels that cost few MACs are kept
#: more) or (d_g / d_max)^beta ("cost-inverse"), d_g = the MACs one more channel of group g adds at
#: the uniform widths. Deterministic: one each per seed.
GRADED = (("cost-aware β=0.25", 0.25), ("cost-aware β=0.5", 0.5), ("cost-inverse β=0.25", -0.25))
NOISE_SEED = 1000  # the noise-floor finetune's data order: seed + NOISE_SEED


def slope_kind(slope: float) -> str:
    return f"depth slope {slope:g}"


def profile_kind(name: str) -> str:
    return f"profile {name}"


#: The allocations finetuned with ``slope_draws`` data orders each (compared in expectation).
DRAWN_PREFIXES = ("depth slope", "profile ")

REFINED = ("uniform, refined", "best random by val, refined")
UNIFORM_KINDS = ("uniform", "uniform, another seed", "uniform, draw")  # every finetune of the uniform cut
RANKED = ("uniform", "random", "abn-screened")  # the allocations the proxy correlations are over


def base_epochs(s: Settings, tb: str) -> int:
    return s.base_epochs if s.base_epochs is not None else TESTBEDS[tb].base_epochs


def first_random(s: Settings, bases: list[dict], rows: list[dict]) -> list[dict]:
    """``rows`` with only the first ``s.allocations`` random allocations of each base model's plan (the
    draws are sequential, so a run resumed with more allocations holds a report of fewer as a prefix)."""
    keep = {(b["tb"], b["seed"]): {json.dumps(a["widths"]) for a in [a for a in b["allocs"] if a["kind"] == "random"]
                                   [:s.allocations]} for b in bases}
    return [r for r in rows if r["kind"] != "random" or json.dumps(r["widths"]) in keep.get((r["tb"], r["seed"]), ())]
