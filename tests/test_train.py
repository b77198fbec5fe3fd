import copy
from dataclasses import replace

import pytest
import torch

from pruning.cost import count_macs
from pruning.data import load_data
from pruning.errors import TrialError, UsageError
from pruning.models import create_model
from pruning.train import (
    DistillConfig,
    TrainConfig,
    distillation_loss,
    evaluate,
    load_checkpoint,
    save_checkpoint,
    train,
)


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", limit=300)


def test_training_lowers_loss_and_reports_each_epoch(digits):
    model = create_model("tiny_vgg", 10, in_channels=1)
    seen = []
    hist = train(model, digits, TrainConfig(epochs=3, lr=0.05, batch_size=32), on_epoch=lambda m, _: seen.append(m))
    assert [m.epoch for m in seen] == [1, 2, 3]
    assert hist[-1].train_loss < hist[0].train_loss
    assert hist[-1].val_acc > 0.3  # chance is 0.1
    assert evaluate(model, digits.val) == pytest.approx(hist[-1].val_acc)


def test_same_seed_same_weights(digits):
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        m = create_model("tiny_vgg", 10, in_channels=1)
        train(m, digits, TrainConfig(epochs=1, batch_size=64, seed=3))
        runs.append(m.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_nan_loss_is_a_trial_error(digits):
    model = create_model("tiny_vgg", 10, in_channels=1)
    with pytest.raises(TrialError, match="loss became"):
        train(model, digits, TrainConfig(epochs=1, lr=1e30))


def test_checkpoint_round_trip_and_bad_files(tmp_path, digits):
    model = create_model("tiny_resnet", 10, in_channels=1)
    path = save_checkpoint(tmp_path / "m.pt", model, note="x")
    loaded = load_checkpoint(path)
    assert loaded["note"] == "x"
    x = digits.example_input(2)
    model.eval(), loaded["model"].eval()
    assert torch.equal(model(x), loaded["model"](x))
    assert not list(tmp_path.glob("*.tmp"))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError, match="not readable"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(UsageError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


# ----------------------------------------------------------------------------- distillation


def test_distillation_loss_matches_an_independent_computation():
    g = torch.Generator().manual_seed(0)
    zs = torch.randn(6, 5, generator=g, requires_grad=True)
    zt = torch.randn(6, 5, generator=g, requires_grad=True)
    y = torch.randint(0, 5, (6,), generator=g)
    alpha, t = 0.3, 2.5
    p_t = torch.exp(zt / t) / torch.exp(zt / t).sum(1, keepdim=True)
    p_s = torch.exp(zs / t) / torch.exp(zs / t).sum(1, keepdim=True)
    kl = (p_t * (p_t.log() - p_s.log())).sum(1).mean()  # KL(p_t || p_s), mean over the batch
    ce = -torch.log(torch.exp(zs) / torch.exp(zs).sum(1, keepdim=True))[torch.arange(6), y].mean()
    got = distillation_loss(zs, zt, y, alpha, t)
    torch.testing.assert_close(got, (1 - alpha) * ce + alpha * t * t * kl)
    torch.testing.assert_close(distillation_loss(zs, zt, y, 0.0, t), ce)
    torch.testing.assert_close(distillation_loss(zs, zs, y, 1.0, t), torch.tensor(0.0), atol=1e-6, rtol=0)
    got.backward()
    assert zt.grad is None and zs.grad is not None  # no gradient reaches the teacher
    smooth = distillation_loss(zs, zt, y, alpha, t, label_smoothing=0.1)
    want = (1 - alpha) * torch.nn.functional.cross_entropy(zs, y, label_smoothing=0.1) + alpha * t * t * kl
    torch.testing.assert_close(smooth, want)


def _student_and_teacher():
    torch.manual_seed(1)
    teacher = create_model("tiny_vgg", 10, in_channels=1)
    torch.manual_seed(2)
    student = create_model("tiny_vgg", 10, in_channels=1)
    return student, teacher


def test_alpha_zero_is_plain_cross_entropy_training(digits):
    plain, teacher = _student_and_teacher()
    distilled = copy.deepcopy(plain)
    cfg = TrainConfig(epochs=1, batch_size=64, seed=3)
    train(plain, digits, cfg)
    hist = train(distilled, digits, replace(cfg, distill=DistillConfig(alpha=0.0, temperature=3.0)), teacher=teacher)
    after = distilled.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in plain.state_dict().items())
    assert hist[0].teacher_macs == 0  # alpha 0: the teacher never runs


def test_distillation_uses_the_teacher_leaves_it_alone_and_counts_its_compute(digits):
    plain, teacher = _student_and_teacher()
    distilled = copy.deepcopy(plain)
    teacher.train()
    frozen = copy.deepcopy(teacher.state_dict())
    cfg = TrainConfig(epochs=2, batch_size=64, seed=3)
    train(plain, digits, cfg)
    hist = train(distilled, digits, replace(cfg, distill=DistillConfig(alpha=0.7, temperature=4.0)), teacher=teacher)
    assert teacher.training  # mode restored; it ran in eval mode, so its BN statistics did not move
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in frozen.items())
    assert not all(torch.equal(v, distilled.state_dict()[k]) for k, v in plain.state_dict().items())
    per_sample = count_macs(teacher, digits.input_shape)
    assert [m.teacher_macs for m in hist] == [per_sample * len(digits.train)] * 2
    assert all(m.teacher_macs == 0 for m in train(copy.deepcopy(plain), digits, replace(cfg, epochs=1)))


def test_distillation_config_errors(digits):
    student, teacher = _student_and_teacher()
    with pytest.raises(UsageError, match="alpha must be in \\[0, 1\\], got 1.5"):
        DistillConfig(alpha=1.5)
    with pytest.raises(UsageError, match="temperature must be > 0, got 0"):
        DistillConfig(temperature=0)
    with pytest.raises(UsageError, match="no teacher model"):
        train(student, digits, TrainConfig(epochs=1, distill=DistillConfig()))
    with pytest.raises(UsageError, match="distill is not set"):
        train(student, digits, TrainConfig(epochs=1), teacher=teacher)
