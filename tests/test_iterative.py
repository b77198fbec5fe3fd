import copy
from dataclasses import replace

import pytest
import torch
from torch import nn

from pruning.cost import count_macs
from pruning.data import load_data
from pruning.errors import UsageError
from pruning.iterative import PruneSpec, prune_iteratively
from pruning.models import create_model
from pruning.recalibrate import recalibrate_bn
from pruning.surgery import widths
from pruning.train import DistillConfig, TrainConfig, evaluate, train


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)  # module fixtures run before the per-test seed: fix the init here
    data = load_data("digits", limit=300)
    model = create_model("tiny_vgg", 10, in_channels=1)
    train(model, data, TrainConfig(epochs=5, lr=0.1, batch_size=32))  # ~90% val: accuracy drops are visible
    return data, model


def _ft(epochs=1):
    return TrainConfig(epochs=epochs, lr=0.01, batch_size=32)


def test_iterative_steps_shrink_monotonically_and_record(trained):
    data, base = trained
    model = copy.deepcopy(base)
    dense_macs = count_macs(model, data.input_shape)
    epochs = []
    res = prune_iteratively(model, data, PruneSpec(criterion="taylor", ratio=0.4, steps=3, step_epochs=1), _ft(1),
                            on_epoch=lambda m, _: epochs.append(m.epoch))
    macs = [s.macs for s in res.steps]
    assert len(res.steps) == 3 and macs == sorted(macs, reverse=True) and macs[-1] < 0.5 * dense_macs
    assert epochs == [1, 2, 3]  # 1 epoch after steps 1 and 2, then the final finetune epoch
    assert list(res.steps[-1].widths.values()) == [round(0.4 * c) for c in (16, 32, 32)]


def test_global_ranking_and_per_group_ratios(trained):
    data, base = trained
    m1 = copy.deepcopy(base)
    prune_iteratively(m1, data, PruneSpec(criterion="l1", ratio=0.5, ranking="global"), _ft(0))
    assert sum(widths(m1, data.example_input()).values()) == 40  # half of 80 channels overall
    m2 = copy.deepcopy(base)
    prune_iteratively(m2, data, PruneSpec(criterion="fpgm", ratios={"features.4": 0.25}), _ft(0))
    assert widths(m2, data.example_input()) == {"features.0": 16, "features.4": 8, "features.8": 32}


def test_macs_target_is_met(trained):
    data, base = trained
    model = copy.deepcopy(base)
    target = count_macs(model, data.input_shape) // 3
    prune_iteratively(model, data, PruneSpec(criterion="taylor_fo", target_macs=target, steps=2, step_epochs=0),
                      _ft(0))
    assert count_macs(model, data.input_shape) <= target


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ratio": 1.5}, r"\(0, 1\]"),
        ({}, "exactly one of"),
        ({"ratio": 0.5, "target_macs": 10}, "exactly one of"),
        ({"ratio": 0.5, "criterion": "tayler"}, "choose one of: .*taylor"),
        ({"ratio": 0.5, "ranking": "best"}, "choose one of: uniform, global"),
        ({"ratio": 0.5, "steps": 0}, "steps must be"),
        ({"ratio": 0.5, "recalib_batches": -1}, "recalib_batches must be >= 0"),
        ({"ratio": 0.5, "max_drop_pts": -0.5}, "max_drop_pts must be >= 0 percentage points, got -0.5"),
    ],
)
def test_bad_specs(kwargs, match):
    with pytest.raises(UsageError, match=match):
        PruneSpec(**kwargs)


def test_unknown_group_in_ratios(trained):
    data, base = trained
    with pytest.raises(UsageError, match="unknown group 'conv9'"):
        prune_iteratively(copy.deepcopy(base), data, PruneSpec(ratios={"conv9": 0.5}), _ft(0))


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_last_step_record_is_after_the_final_finetune(trained):
    data, base = trained
    model = copy.deepcopy(base)
    res = prune_iteratively(model, data, PruneSpec(criterion="l1", ratio=0.5, steps=2, step_epochs=1), _ft(1))
    assert res.stop_step == 2 and res.stop_reason == "completed" and res.base_val_acc is None
    assert all(s.accepted and s.cut_val_acc is not None for s in res.steps)
    assert res.steps[-1].val_acc == evaluate(model, data.val) == res.epochs[-1].val_acc


def test_max_drop_zero_rejects_a_lossy_first_step_and_keeps_the_dense_model(trained):
    data, base = trained
    model = copy.deepcopy(base)
    spec = PruneSpec(criterion="l1", ratio=0.2, step_epochs=0, max_drop_pts=0.0)
    res = prune_iteratively(model, data, spec, _ft(0))
    assert res.base_val_acc == evaluate(base, data.val)
    assert res.steps[0].val_acc < res.base_val_acc  # the cut did cost accuracy: the guard had to act
    assert (res.stop_step, res.stop_reason) == (0, "max_drop") and not res.steps[0].accepted
    assert widths(model, data.example_input()) == widths(base, data.example_input())
    assert _same_weights(model, base) and res.model is model


def test_max_drop_stops_at_the_last_step_within_the_allowed_drop(trained):
    """Step 2 (to 5% of the channels, no finetune) is forced to lose far more than step 1."""
    data, base = trained
    spec = PruneSpec(criterion="l1", ratio=0.05, steps=2, step_epochs=1)
    free = copy.deepcopy(base)
    unguarded = prune_iteratively(free, data, spec, _ft(0))
    base_acc = evaluate(base, data.val)
    acc1, acc2 = (s.val_acc for s in unguarded.steps)
    assert acc2 < acc1 - 0.2, (acc1, acc2)  # the forced drop
    allowed = 100.0 * (base_acc - (acc1 + acc2) / 2)  # between the two steps' drops, in points
    model = copy.deepcopy(base)
    res = prune_iteratively(model, data, replace(spec, max_drop_pts=allowed), _ft(0))
    assert (res.stop_step, res.stop_reason) == (1, "max_drop")
    assert [s.accepted for s in res.steps] == [True, False]
    assert [s.val_acc for s in res.steps] == [acc1, acc2]  # the guard changes nothing before it acts
    assert widths(model, data.example_input()) == unguarded.steps[0].widths
    assert evaluate(model, data.val) == acc1  # exactly the model step 1 left behind
    train(model, data, _ft(1))  # the restored module is a working model (parameters, optimizer, BN)
    assert res.epochs and [m.epoch for m in res.epochs] == [1]  # step 1's finetune only; step 2 had none


def test_recalibration_after_each_cut(trained):
    data, base = trained
    spec = PruneSpec(criterion="l1", ratio=0.5, recalib_batches=3, calib_batch_size=32)
    model = copy.deepcopy(base)
    res = prune_iteratively(model, data, spec, _ft(0))
    by_hand = copy.deepcopy(base)
    prune_iteratively(by_hand, data, replace(spec, recalib_batches=0), _ft(0))
    assert not _same_weights(model, by_hand)  # BN statistics differ
    recalibrate_bn(by_hand, data.train.batches(32, shuffle=True, seed=0 + 1), num_batches=3)  # step 1's seed
    assert _same_weights(model, by_hand)
    assert res.steps[0].cut_val_acc == evaluate(by_hand, data.val)


def test_finetune_distils_from_a_teacher(trained):
    data, base = trained
    teacher = copy.deepcopy(base)
    model = copy.deepcopy(base)
    cfg = replace(_ft(1), distill=DistillConfig(alpha=0.5, temperature=2.0))
    res = prune_iteratively(model, data, PruneSpec(criterion="l1", ratio=0.5), cfg, teacher=teacher)
    assert res.epochs[0].teacher_macs == count_macs(teacher, data.input_shape) * len(data.train)
    assert _same_weights(teacher, base)


def _saved(point):
    """A ResumePoint as a retried trial gets it back: through torch.save/torch.load (a copy)."""
    import io

    buf = io.BytesIO()
    torch.save(point, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("at", [1, 2, 4], ids=["in-step-1", "in-final-step", "after-last-epoch"])
def test_resume_from_a_saved_point_ends_as_the_uninterrupted_run(trained, at):
    data, base = trained
    spec = PruneSpec(criterion="taylor_fo", ratio=0.5, steps=2, step_epochs=1)
    model, points, epochs = copy.deepcopy(base), [], []
    full = prune_iteratively(model, data, spec, _ft(3), on_state=lambda p: points.append(_saved(p)),
                             on_epoch=lambda m, _: epochs.append(m.epoch))
    assert [(p.step, p.phase_done, p.epochs_done) for p in points] == [(1, 1, 1), (2, 1, 2), (2, 2, 3), (2, 3, 4)]
    assert epochs == [1, 2, 3, 4]
    point = points[at - 1]
    rerun = []
    res = prune_iteratively(point.model, data, spec, _ft(3), resume=point, on_epoch=lambda m, _: rerun.append(m.epoch))
    assert rerun == list(range(at + 1, 5))  # only the epochs after the checkpoint run again
    assert res.stop_step == 2 and res.steps[-1].widths == full.steps[-1].widths
    for a, b in zip(model.state_dict().values(), point.model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)  # same batches, LR schedule and momentum as the uninterrupted run


def test_resume_is_refused_with_the_accuracy_guard(trained):
    data, base = trained
    spec = PruneSpec(criterion="l1", ratio=0.5, steps=1)
    points = []
    prune_iteratively(copy.deepcopy(base), data, spec, _ft(1), on_state=points.append)
    with pytest.raises(UsageError, match="max_drop_pts"):
        prune_iteratively(points[0].model, data, replace(spec, max_drop_pts=1.0), _ft(1), resume=points[0])
