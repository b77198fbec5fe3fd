import pytest
import torch

from pruning.data import load_data
from pruning.errors import TrialError, UsageError
from pruning.models import create_model
from pruning.train import TrainConfig, evaluate, load_checkpoint, save_checkpoint, train


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
