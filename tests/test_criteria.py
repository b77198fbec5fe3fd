"""Conformance suite for every registered criterion on the tiny VGG and tiny ResNet.

A new criterion is tested by registering it; it must also declare its sanity property
in ``SANITY`` (or be listed in ``NO_SANITY``), which ``test_every_criterion_declares_a_sanity_property``
enforces.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pruning.criteria import CRITERIA, Criterion, combine_profit, get_criterion, p_next, p_self
from pruning.criteria.attribution import agreement
from pruning.criteria.attribution_iba import bottleneck_capacity, gaussian_capacity
from pruning.selection import normalize
from pruning.errors import UsageError
from pruning.models import create_model
from pruning.surgery import ChannelGroup, GroupGraph

MODELS = ["tiny_vgg", "tiny_resnet"]
NAMES = CRITERIA.names()
K = 3  # the channel every sanity construction targets, in every group
# Options that make a criterion's sanity property hold (profit with γ=1 is P_self only).
SANITY_OPTIONS: dict[str, dict[str, object]] = {"profit": {"gamma": 1.0}}
# Criteria whose score is exactly 0 when nothing downstream reads the channel.
DOWNSTREAM_ZERO = {"taylor", "taylor_fo", "taylor_guided", "profit"}


def _batches(n: int = 2, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


def _setup(model_name: str) -> tuple[nn.Module, list[ChannelGroup], list[tuple[Tensor, Tensor]]]:
    """A seeded tiny model with non-trivial BN parameters and statistics, its groups, 2 batches."""
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    groups = GroupGraph(model, torch.randn(2, 3, 16, 16)).groups
    return model, groups, _batches()


def _rows(member_idxs: tuple[int, ...], member_root: tuple[int, ...], k: int) -> list[int]:
    return [i for i, r in zip(member_idxs, member_root) if r == k]


@torch.no_grad()
def _zero_channel(model: nn.Module, groups: list[ChannelGroup], k: int) -> None:
    """Zero channel k's filters (and bias) at every producer and its γ, β at every BN.

    In eval mode the channel's feature map is then exactly 0 everywhere.
    """
    for g in groups:
        for p in g.producers:
            rows = _rows(p.idxs, p.root_idxs, k)
            p.module.weight[rows] = 0
            if p.module.bias is not None:
                p.module.bias[rows] = 0
        for n in g.norms:
            rows = _rows(n.idxs, n.root_idxs, k)
            n.module.weight[rows] = 0
            n.module.bias[rows] = 0


@torch.no_grad()
def _mean_filter(model: nn.Module, groups: list[ChannelGroup], k: int) -> None:
    """Set channel k's filter at every producer to the mean of that layer's other filters.

    The mean is near the layer's geometric median, so its summed distance to the other
    filters is the smallest of the layer: FPGM's "redundant" filter.
    """
    for g in groups:
        for p in g.producers:
            w = p.module.weight
            rows = _rows(p.idxs, p.root_idxs, k)
            others = [i for i in range(w.shape[0]) if i not in rows]
            w[rows] = w[others].mean(0, keepdim=True)


@torch.no_grad()
def _zero_consumers(model: nn.Module, groups: list[ChannelGroup], k: int) -> None:
    """Zero every consumer's input columns reading channel k (the channel no longer reaches the output)."""
    for g in groups:
        for c in g.consumers:
            c.module.weight[:, _rows(c.idxs, c.root_idxs, k)] = 0


# Sanity property of each criterion: after ``construct(model, groups, K)`` channel K
# scores lowest (≤ every other channel) in every group.
SANITY: dict[str, Callable[[nn.Module, list[ChannelGroup], int], None]] = {
    "l1": _zero_channel,
    "l2": _zero_channel,
    "bn_scale": _zero_channel,
    "fpgm": _mean_filter,
    "taylor": _zero_channel,
    "taylor_fo": _zero_channel,
    "taylor_guided": _zero_channel,
    "attribution": _zero_channel,
    "attribution_iba": _zero_channel,
    "profit": _zero_channel,  # with gamma=1 (SANITY_OPTIONS)
}
NO_SANITY = {"random"}


def _no_hooks(model: nn.Module) -> bool:
    return all(
        not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)
        for m in model.modules()
    )


# --------------------------------------------------------------------------- conformance


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("name", NAMES)
def test_scores_well_formed_deterministic_and_model_untouched(name: str, model_name: str) -> None:
    model, groups, batches = _setup(model_name)
    model.train()
    model.get_submodule(groups[0].norms[0].name).eval()  # a frozen BN inside a training model
    frozen = groups[-1].producers[0].module.weight
    frozen.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = {n: m.training for n, m in model.named_modules()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}

    crit = get_criterion(name)
    assert isinstance(crit, Criterion) and crit.name == name
    first = crit.score(model, groups, batches)
    second = get_criterion(name).score(model, groups, batches)

    assert list(first) == [g.name for g in groups]
    for g in groups:
        s = first[g.name]
        assert s.shape == (g.size,) and s.dtype == torch.float32 and s.device.type == "cpu"
        assert torch.isfinite(s).all()
        assert torch.equal(s, second[g.name]), f"{name} is not deterministic on {g.name}"
    # The model is exactly as it was.
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert _no_hooks(model)


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("name", NAMES)
def test_sanity_constructed_channel_scores_lowest(name: str, model_name: str) -> None:
    if name in NO_SANITY:
        pytest.skip(f"{name} has no sanity property")
    model, groups, batches = _setup(model_name)
    SANITY[name](model, groups, K)
    scores = get_criterion(name, **SANITY_OPTIONS.get(name, {})).score(model, groups, batches)
    for g in groups:
        s = scores[g.name]
        assert s[K] <= s.min(), f"{name}: channel {K} of {g.name} is not lowest: {s}"
        assert s.max() > s[K], f"{name}: all of {g.name} tie, the property is not tested: {s}"


@pytest.mark.parametrize("name", NAMES)
def test_all_zero_layer_gives_finite_scores(name: str) -> None:
    """A whole dead layer (and the zero gradients it causes upstream) must not produce NaN."""
    model, groups, batches = _setup("tiny_vgg")
    for k in range(groups[1].size):
        _zero_channel(model, groups[1:2], k)
    scores = get_criterion(name, **SANITY_OPTIONS.get(name, {})).score(model, groups, batches)
    assert all(torch.isfinite(s).all() for s in scores.values())
    if name not in NO_SANITY:
        assert torch.equal(scores[groups[1].name], torch.zeros(groups[1].size)), name


def test_every_criterion_declares_a_sanity_property() -> None:
    assert set(NAMES) == set(SANITY) | NO_SANITY


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("name", sorted(DOWNSTREAM_ZERO))
def test_channel_unread_downstream_scores_zero(name: str, model_name: str) -> None:
    """Trained vs dead: a channel no consumer reads has no effect on the loss: score exactly 0."""
    model, groups, batches = _setup(model_name)
    _zero_consumers(model, groups, K)
    scores = get_criterion(name, **SANITY_OPTIONS.get(name, {})).score(model, groups, batches)
    for g in groups:
        assert scores[g.name][K] == 0, f"{name}: {g.name}[{K}] = {scores[g.name][K]}"
        assert scores[g.name].max() > 0


def test_random_depends_on_seed_only() -> None:
    model, groups, _ = _setup("tiny_resnet")
    a = get_criterion("random", seed=3).score(model, groups, [])
    b = get_criterion("random", seed=3).score(model, groups[::-1], [])  # order of groups is irrelevant
    c = get_criterion("random", seed=4).score(model, groups, [])
    for g in groups:
        assert torch.equal(a[g.name], b[g.name])
        assert not torch.equal(a[g.name], c[g.name])
        assert ((a[g.name] >= 0) & (a[g.name] < 1)).all()
    assert not torch.equal(a[groups[1].name], a[groups[2].name][: groups[1].size])  # groups differ


@pytest.mark.parametrize("name", [n for n in NAMES if CRITERIA[n].requires_data])
def test_data_criteria_need_batches(name: str) -> None:
    model, groups, _ = _setup("tiny_vgg")
    with pytest.raises(UsageError, match="0 batches"):
        get_criterion(name).score(model, groups, [])


def test_scoring_under_no_grad_and_flatten_head() -> None:
    """Works inside ``torch.no_grad`` and with a Linear reading several columns per channel."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 10),
    )
    groups = GroupGraph(model, torch.randn(2, 3, 16, 16)).groups
    assert [g.size for g in groups] == [4]
    with torch.no_grad():
        for name in NAMES:
            s = get_criterion(name).score(model, groups, _batches())[groups[0].name]
            assert s.shape == (4,) and torch.isfinite(s).all(), name
    # P_next sums all 4 columns of each channel (layout channel*H*W).
    w = model[5].weight.detach()
    expected = w.pow(2).reshape(10, 4, 4).sum(dim=(0, 2))
    torch.testing.assert_close(p_next(groups)[groups[0].name], expected)


# --------------------------------------------------------------------------- formulas


def test_weight_criteria_match_hand_computation() -> None:
    model, groups, _ = _setup("tiny_resnet")
    stem = next(g for g in groups if g.name == "conv1")  # residual: conv1 + layer1.0.conv2, bn1 + bn2
    w1, w2 = model.conv1.weight.detach().flatten(1), model.layer1[0].conv2.weight.detach().flatten(1)
    g1, g2 = model.bn1.weight.detach(), model.layer1[0].bn2.weight.detach()
    expected = {
        "l1": w1.abs().sum(1) + w2.abs().sum(1),
        "l2": w1.norm(dim=1) + w2.norm(dim=1),
        "fpgm": torch.cdist(w1, w1).sum(1) + torch.cdist(w2, w2).sum(1),
        "bn_scale": g1.abs() + g2.abs(),
    }
    for name, want in expected.items():
        torch.testing.assert_close(get_criterion(name).score(model, [stem], [])["conv1"], want, rtol=1e-5, atol=1e-5)


def _reference(model_name: str) -> tuple[nn.Module, list[ChannelGroup], list, dict[str, dict[str, list]]]:
    """Per batch and per BN of each group: BN output a, ∂L/∂a, ∂y_c/∂a, ∂L/∂γ, ∂L/∂β.

    Computed independently of the library: a deep copy with non-in-place ReLUs, hooks
    keeping the BN outputs, ``autograd.grad``. In both tiny models every producer is
    followed by its own BN, so the group's BNs are exactly its feature-map sites.
    """
    model, groups, batches = _setup(model_name)
    ref = copy.deepcopy(model).eval()
    for m in ref.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    bns = {n.name: ref.get_submodule(n.name) for g in groups for n in g.norms}
    rows: dict[str, dict[str, list]] = {g.name: {n.name: [] for n in g.norms} for g in groups}
    group_of = {n.name: g.name for g in groups for n in g.norms}
    for x, y in batches:
        feats: dict[str, Tensor] = {}
        handles = [
            bn.register_forward_hook(lambda _m, _i, o, n=name: feats.__setitem__(n, o)) for name, bn in bns.items()
        ]
        logits = ref(x)
        for h in handles:
            h.remove()
        names = list(bns)
        loss = F.cross_entropy(logits, y)
        g_loss = torch.autograd.grad(loss, [feats[n] for n in names], retain_graph=True)
        g_logit = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), [feats[n] for n in names], retain_graph=True)
        p_grads = torch.autograd.grad(loss, [p for n in names for p in (bns[n].weight, bns[n].bias)])
        for i, n in enumerate(names):
            gate = bns[n].weight.detach() * p_grads[2 * i] + bns[n].bias.detach() * p_grads[2 * i + 1]
            rows[group_of[n]][n].append((feats[n].detach(), g_loss[i], g_logit[i], gate))
    return model, groups, batches, rows


def _unit(v: Tensor) -> Tensor:
    return v / v.norm()


@pytest.mark.parametrize("model_name", MODELS)
def test_data_criteria_match_hand_computation(model_name: str) -> None:
    """The criteria's formulas (their docstrings), per layer (BN output), L2-normalised per layer, summed over a group's layers."""
    model, groups, batches, ref = _reference(model_name)
    names = ("taylor", "taylor_fo", "taylor_guided", "attribution")
    got = {name: get_criterion(name).score(model, groups, batches) for name in names}
    for group, per_bn in ref.items():
        guided = attr = 0
        for rows in per_bn.values():
            guided = guided + _unit(
                torch.cat([(a.clamp(min=0) * gc.clamp(min=0)).mean(dim=(2, 3)) for a, _, gc, _ in rows]).mean(0)
            )
            per_sample = []
            for a, _g, gc, _t in rows:
                cam = (gc.mean(dim=(2, 3), keepdim=True) * a).sum(1).clamp(min=0)  # Grad-CAM [N, H, W]
                cam = cam / cam.sum(dim=(1, 2), keepdim=True).clamp(min=1e-12)
                act = a.clamp(min=0)
                act = act / act.sum(dim=(2, 3), keepdim=True).clamp(min=1e-12)
                per_sample.append((act * cam[:, None]).sum(dim=(2, 3)))
            attr = attr + _unit(torch.cat(per_sample).mean(0))
        # taylor_fo: the group's BN gates are summed per batch, then squared, then averaged.
        n_batches = len(batches)
        gates = [sum(rows[b][3] for rows in per_bn.values()) for b in range(n_batches)]
        fo = torch.stack([t**2 for t in gates]).mean(0)
        torch.testing.assert_close(got["taylor_guided"][group], guided, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got["attribution"][group], attr, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got["taylor_fo"][group], fo, rtol=1e-4, atol=1e-12)
    # The BN gate γ·∂L/∂γ + β·∂L/∂β is Σ over batch and space of a·∂L/∂a at the BN output.
    a, g, _gc, gate = next(iter(ref[groups[0].name].values()))[0]
    torch.testing.assert_close((a * g).sum(dim=(0, 2, 3)), gate, rtol=1e-4, atol=1e-9)
    assert any(len(per_bn) > 1 for per_bn in ref.values()) == (model_name == "tiny_resnet")


def _taylor_by_hand(model: nn.Module, groups: list[ChannelGroup], batches: list) -> dict[str, Tensor]:
    """Molchanov et al. 2017, one example at a time: |mean over space of a·∂L_n/∂a| per example,
    averaged over all examples, L2-normalised per BN (layer), summed over a group's BNs."""
    ref = copy.deepcopy(model).eval()
    for m in ref.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    bns = {n.name: ref.get_submodule(n.name) for g in groups for n in g.norms}
    totals = {name: 0 for name in bns}
    count = 0
    for x, y in batches:
        for n in range(len(y)):  # each example on its own: its own loss, its own gradient
            feats: dict[str, Tensor] = {}
            handles = [bn.register_forward_hook(lambda _m, _i, o, k=k: feats.__setitem__(k, o))
                       for k, bn in bns.items()]
            loss = F.cross_entropy(ref(x[n:n + 1]), y[n:n + 1])
            for h in handles:
                h.remove()
            grads = torch.autograd.grad(loss, [feats[k] for k in bns])
            for k, g in zip(bns, grads):
                totals[k] = totals[k] + (feats[k].detach() * g)[0].mean(dim=(1, 2)).abs()
            count += 1
    out = {}
    for g in groups:
        out[g.name] = sum(_unit(totals[n.name] / count) for n in g.norms)
    return out


@pytest.mark.parametrize("model_name", MODELS)
def test_taylor_takes_the_absolute_value_per_example(model_name: str) -> None:
    model, groups, batches = _setup(model_name)
    batches = [batches[0], (batches[1][0][:3], batches[1][1][:3])]  # unequal batch sizes
    got = get_criterion("taylor").score(model, groups, batches)
    want = _taylor_by_hand(model, groups, batches)
    for g in groups:
        torch.testing.assert_close(got[g.name], want[g.name].float(), rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- profit


def test_profit_gamma_validation() -> None:
    for bad in (1.5, -0.1, "0.5", True):
        with pytest.raises(UsageError, match=r"gamma must be in \[0, 1\], got"):
            get_criterion("profit", gamma=bad)
    with pytest.raises(UsageError, match="1.5"):
        get_criterion("profit", gamma=1.5)


@pytest.mark.parametrize("model_name", MODELS)
def test_profit_gamma0_ranks_by_next_layer_use_only(model_name: str) -> None:
    model, groups, batches = _setup(model_name)
    crit = get_criterion("profit", gamma=0)
    assert not crit.requires_data
    before = crit.score(model, groups, [])  # data-free at gamma=0
    nxt = p_next(groups)
    for g in groups:
        torch.testing.assert_close(before[g.name], nxt[g.name] / nxt[g.name].max())
    _zero_consumers(model, groups, K)
    after = crit.score(model, groups, batches)
    for g in groups:
        assert after[g.name][K] == 0 and after[g.name][K] <= after[g.name].min()
        assert after[g.name].max() == 1


def test_profit_mixes_max_normalised_terms() -> None:
    model, groups, batches = _setup("tiny_resnet")
    own, nxt = p_self(model, groups, batches), p_next(groups)
    mixed = get_criterion("profit", gamma=0.25).score(model, groups, batches)
    for g in groups:
        want = 0.25 * own[g.name] / own[g.name].max() + 0.75 * nxt[g.name] / nxt[g.name].max()
        torch.testing.assert_close(mixed[g.name], want)
    # Max-normalisation has no epsilon floor: a tiny P_self still spans [0, 1].
    tiny = combine_profit({n: v * 1e-30 for n, v in own.items()}, nxt, gamma=1.0)
    for g in groups:
        assert tiny[g.name].max().item() == pytest.approx(1.0)


# --------------------------------------------------------------------------- API


def test_per_group_normalisation_of_scores() -> None:
    """``selection.normalize`` (the one per-group L2 normalisation) on criterion scores."""
    scores = {"a": torch.tensor([3.0, 4.0]), "b": torch.zeros(3), "c": torch.tensor([1e-20, 0.0, 2e-20])}
    out = {g: normalize(s) for g, s in scores.items()}
    torch.testing.assert_close(out["a"], torch.tensor([0.6, 0.8], dtype=torch.float64))
    assert torch.equal(out["b"], torch.zeros(3, dtype=torch.float64))
    assert torch.linalg.vector_norm(out["c"]).item() == pytest.approx(1.0, rel=1e-5)
    assert torch.equal(scores["a"], torch.tensor([3.0, 4.0]))  # input untouched
    model, groups, batches = _setup("tiny_vgg")
    for s in (normalize(v) for v in get_criterion("taylor_fo").score(model, groups, batches).values()):
        assert torch.linalg.vector_norm(s).item() == pytest.approx(1.0, rel=1e-5)


def test_unknown_criterion_lists_every_name() -> None:
    with pytest.raises(UsageError) as err:
        get_criterion("tayler")
    msg = str(err.value)
    assert "'tayler'" in msg
    for name in NAMES:
        assert name in msg


def test_unknown_or_bad_option_is_named() -> None:
    with pytest.raises(UsageError, match="'gama'.*valid options: gamma"):
        get_criterion("profit", gama=0.5)
    with pytest.raises(UsageError, match="'seed'.*valid options: none"):
        get_criterion("l1", seed=1)
    with pytest.raises(UsageError, match="seed must be an integer"):
        get_criterion("random", seed=1.5)


# --------------------------------------------------------------------------- attribution_iba


def test_gaussian_capacity_is_the_kl_of_the_bottleneck_from_the_noise() -> None:
    """KL(N(λa + (1−λ)μ, ((1−λ)σ)²) ‖ N(μ, σ²)) in the layer's units equals the closed form on â = (a−μ)/σ."""
    g = torch.Generator().manual_seed(0)
    # float64: the reference forms 1 − sigmoid(α) directly, which float32 rounds badly for large α
    a = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64) * 2 + 1
    alpha = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64) * 3
    mu = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64).view(1, 3, 1, 1)
    sigma = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64).view(1, 3, 1, 1)
    lam = torch.sigmoid(alpha)
    posterior = torch.distributions.Normal(lam * a + (1 - lam) * mu, (1 - lam) * sigma)
    prior = torch.distributions.Normal(mu.expand_as(a), sigma.expand_as(a))
    want = torch.distributions.kl_divergence(posterior, prior)
    torch.testing.assert_close(gaussian_capacity((a - mu) / sigma, alpha), want, rtol=1e-9, atol=1e-9)
    assert gaussian_capacity(torch.zeros(1), torch.tensor([-30.0])).abs() < 1e-6  # all noise: no information
    assert torch.isfinite(gaussian_capacity(torch.ones(1), torch.tensor([60.0])))  # λ → 1 stays finite


def _quadrant_model(threshold: float) -> nn.Module:
    """Filter 0 copies input channel 0, filter 1 input channel 1, filter 2 is zero. The head
    reads only filter 0's mean over the top-left quadrant: class 0 above ``threshold``, 1 below."""
    m = nn.Sequential(nn.Conv2d(2, 3, 1, bias=False), nn.BatchNorm2d(3), nn.ReLU(inplace=True),
                      nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 10))  # fmt: skip
    with torch.no_grad():
        m[0].weight.zero_()
        m[0].weight[0, 0] = m[0].weight[1, 1] = 1
        m[5].weight.zero_()
        m[5].bias.fill_(-10)
        m[5].weight[0, 0], m[5].bias[0] = 5.0, -5.0 * threshold  # flattened column 0: channel 0, top-left cell
        m[5].weight[1, 0], m[5].bias[1] = -5.0, 5.0 * threshold
    return m.eval()


def _quadrant_data(n: int = 16) -> tuple[nn.Module, Tensor, Tensor]:
    """Input channel 0 lives in the top-left quadrant, channel 1 in the bottom-right; labels are the model's own."""
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(n, 2, 16, 16)
    x[:, 0, :8, :8] = torch.rand(n, 8, 8, generator=g) * torch.rand(n, 1, 1, generator=g) * 4
    x[:, 1, 8:, 8:] = torch.rand(n, 8, 8, generator=g) * torch.rand(n, 1, 1, generator=g) * 4
    model = _quadrant_model(float(x[:, 0, :8, :8].mean(dim=(1, 2)).median()))
    with torch.no_grad():
        y = model(x).argmax(1)
    assert set(y.tolist()) == {0, 1}  # both classes occur: the information is needed
    return model, x, y


def test_iba_keeps_information_only_where_the_model_reads_it() -> None:
    model, x, y = _quadrant_data()
    a, capacity = bottleneck_capacity(model, model[1], x, y, generator=torch.Generator().manual_seed(0))
    assert a.shape == capacity.shape == (16, 3, 16, 16) and (capacity >= 0).all()
    read = capacity[:, 0, :8, :8].mean()  # channel 0, top-left: what the head uses
    unread = torch.cat([capacity[:, 0, 8:].flatten(), capacity[:, 0, :8, 8:].flatten(), capacity[:, 1:].flatten()])
    assert read > 20 * unread.mean(), (read, unread.mean())
    assert _no_hooks(model) and all(p.grad is None for p in model.parameters())


def test_attribution_iba_ranks_the_read_filter_first_and_a_zero_filter_last() -> None:
    model, x, y = _quadrant_data()
    groups = GroupGraph(model, x[:2]).groups
    s = get_criterion("attribution_iba").score(model, groups, [(x[:8], y[:8]), (x[8:], y[8:])])[groups[0].name]
    assert s[0] > 2 * s[1] > 0 and s[2] == 0, s  # top-left filter > bottom-right filter > zero filter
    assert torch.linalg.vector_norm(s).item() == pytest.approx(1.0, rel=1e-5)  # L2-normalised per layer
    other_seed = get_criterion("attribution_iba", seed=1).score(model, groups, [(x, y)])[groups[0].name]
    assert other_seed[0] > other_seed[1] > other_seed[2] == 0


def test_agreement_is_highest_for_a_filter_shaped_like_the_map() -> None:
    heat = torch.tensor([[4.0, 3.0, 1.0, 0.0, 0.0, 0.0]])  # [N=1, S=6], non-uniform
    a = torch.stack([heat[0], torch.ones(6), torch.tensor([0, 0, 0, 1.0, 2.0, 1.0]), torch.zeros(6)])[None]
    s = agreement(a, heat)
    assert s[0] > s[1] > s[2] == 0 and s[3] == 0, s  # same shape > uniform > disjoint = zero filter
    torch.testing.assert_close(s[0], (heat / heat.sum()).pow(2).sum())


@pytest.mark.parametrize(
    "options, match",
    [({"beta": -1.0}, "beta must be a number >= 0, got -1.0"), ({"steps": 0}, "steps must be an integer >= 1"),
     ({"steps": 2.5}, "steps must be an integer"), ({"lr": 0}, "lr must be a number > 0"),
     ({"seed": "x"}, "seed must be an integer"), ({"gamma": 1}, "'gamma'.*valid options: beta, steps, lr, seed")],
)  # fmt: skip
def test_attribution_iba_options_are_checked(options: dict, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        get_criterion("attribution_iba", **options)
