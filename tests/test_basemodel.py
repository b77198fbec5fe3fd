"""The base model and every from-scratch model are seeded by the experiment's seed alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pruning.data import load_data
from pruning.models import create_model
from search.config import config_from_dict
from search.trial.materialize import untrained_model

# Runs in a fresh process (no conftest autouse seed): first draws a process-dependent amount
# from the global RNG, as an earlier trial in a reused worker would, then trains the base.
_TRAIN_BASE = """
import hashlib, os, sys, torch
torch.set_num_threads(1)
torch.manual_seed(os.getpid()); torch.rand(1 + os.getpid() % 97)
from pruning.basemodel import get_base_model
from pruning.data import load_data
from pruning.train import TrainConfig
data = load_data("digits", limit=96, image_size=8)
cfg = TrainConfig(epochs=1, lr=0.05, batch_size=32, seed=int(sys.argv[1]), device="cpu")
model, _ = get_base_model("tiny_vgg", data, cfg)
h = hashlib.sha256()
for name, t in sorted(model.state_dict().items()):
    h.update(name.encode()); h.update(t.detach().cpu().contiguous().numpy().tobytes())
print(h.hexdigest())
"""


def _base_weights_hash(seed: int) -> str:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _TRAIN_BASE, str(seed)], capture_output=True, text=True,
                          timeout=300, env=env, cwd=root)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


@pytest.mark.slow  # three fresh processes (torch imports + one epoch each): ~15 s on a busy 2-core machine
def test_base_model_weights_are_bit_identical_across_processes_and_follow_the_seed() -> None:
    first, second, other = _base_weights_hash(3), _base_weights_hash(3), _base_weights_hash(4)
    assert first == second
    assert other != first


def test_seeded_create_model_ignores_and_keeps_the_global_rng() -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = create_model("tiny_vgg", 10, seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is not advanced
    torch.rand(17)
    b = create_model("tiny_vgg", 10, seed=5)
    c = create_model("tiny_vgg", 10, seed=6)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.features[0].weight, c.features[0].weight)


def test_from_scratch_trial_model_depends_on_the_experiment_seed_only() -> None:
    def cfg(seed: int):
        return config_from_dict({"experiment": {"seed": seed}, "model": {"name": "tiny_vgg"},
                                 "data": {"name": "digits", "limit": 60, "image_size": 8}})

    data = load_data("digits", limit=60, image_size=8)
    torch.manual_seed(1)
    a = untrained_model(cfg(7), data)
    torch.manual_seed(2)  # a reused worker: the global RNG is wherever earlier trials left it
    b = untrained_model(cfg(7), data)
    c = untrained_model(cfg(8), data)
    assert torch.equal(a.features[0].weight, b.features[0].weight)
    assert not torch.equal(a.features[0].weight, c.features[0].weight)
