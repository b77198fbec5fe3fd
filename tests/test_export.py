"""export_model's files load without prunetune; model.onnx runs in onnxruntime like the torch model."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from pruning.criteria import get_criterion
from pruning.export import export_model
from pruning.models import create_model
from pruning.selection import keep_by_ratios
from pruning.surgery import GroupGraph

SHAPE = (1, 16, 16)


def _pruned(name: str) -> torch.nn.Module:
    """A tiny model pruned to half its channels with odd BN statistics, so BN is not the identity."""
    model = create_model(name, num_classes=10, in_channels=SHAPE[0])
    model.train()
    with torch.no_grad():
        for _ in range(3):  # move BN running stats away from (0, 1)
            model(torch.randn(8, *SHAPE) * 3 + 1)
    graph = GroupGraph(model, torch.zeros(1, *SHAPE))
    scores = get_criterion("l1").score(model, graph.groups, [])
    graph.prune(keep_by_ratios(scores, 0.5))
    return model.eval()


@pytest.mark.parametrize("name", ["tiny_vgg", "tiny_resnet"])
def test_onnx_export_matches_torch_on_a_pruned_model(tmp_path, name):
    model = _pruned(name)
    paths = export_model(model, tmp_path, SHAPE, {"g": 1})
    assert paths["onnx"] == tmp_path / "model.onnx"
    proto = onnx.load(str(paths["onnx"]))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["input"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, dynamic batch axis
    session = ort.InferenceSession(str(paths["onnx"]), providers=["CPUExecutionProvider"])
    for batch in (1, 5):  # neither is the batch of 2 the exporter traced with
        x = torch.randn(batch, *SHAPE)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        assert got.shape == (batch, 10)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.pt", "model.pt2", "widths.json"]
