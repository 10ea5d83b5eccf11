"""Tests of the CSC, CAC and ASC losses against direct, loop-based evaluations of their formulas."""

from __future__ import annotations

import math
from itertools import combinations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from method_references import reference_asc, reference_csc
from scripts.losses import (
    AnatomicalConsistencyLoss,
    AreaSimilarityContrastiveLoss,
    ChannelSemanticConsistencyLoss,
)

# --------------------------------------------------------------------------------------------------------------------
# reference implementations: plain Python loops over anchors, written straight from the formulas
# --------------------------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------------------------
# channel semantic consistency (CSC)
# --------------------------------------------------------------------------------------------------------------------


class TestChannelSemanticConsistencyLoss:
    @pytest.mark.parametrize("n_mod", [2, 3])
    @pytest.mark.parametrize("temperature", [0.5, 0.1, 1.0])
    def test_matches_loop_reference(self, n_mod, temperature):
        gen = torch.Generator().manual_seed(n_mod)
        features = [torch.randn(2, 4, 3, 2, 2, generator=gen) for _ in range(n_mod)]
        value = ChannelSemanticConsistencyLoss(temperature=temperature)(features)
        assert value.ndim == 0
        assert value.item() == pytest.approx(reference_csc(features, temperature), rel=1e-5, abs=1e-6)

    def test_matches_reference_2d(self):
        gen = torch.Generator().manual_seed(7)
        features = [torch.randn(3, 5, 4, 3, generator=gen) for _ in range(2)]
        value = ChannelSemanticConsistencyLoss(temperature=0.3)(features)
        assert value.item() == pytest.approx(reference_csc(features, 0.3), rel=1e-5)

    def test_reductions(self):
        gen = torch.Generator().manual_seed(3)
        features = [torch.randn(2, 3, 2, 2, 2, generator=gen) for _ in range(3)]
        none = ChannelSemanticConsistencyLoss(reduction="none")(features)
        assert none.shape == (2, 3)  # (B, number of modality pairs)
        for b in range(2):
            for p, (ma, mb) in enumerate(combinations(range(3), 2)):
                expected = reference_csc([features[ma][b : b + 1], features[mb][b : b + 1]], 0.5)
                assert none[b, p].item() == pytest.approx(expected, rel=1e-5)
        total = ChannelSemanticConsistencyLoss(reduction="sum")(features)
        mean = ChannelSemanticConsistencyLoss(reduction="mean")(features)
        assert total.item() == pytest.approx(none.sum().item(), rel=1e-6)
        assert mean.item() == pytest.approx(none.mean().item(), rel=1e-6)

    def test_identical_features_lower_than_permuted(self):
        gen = torch.Generator().manual_seed(0)
        f = torch.randn(2, 8, 4, 4, 4, generator=gen)
        loss = ChannelSemanticConsistencyLoss(temperature=0.5)
        identical = loss([f, f.clone()])
        permuted = loss([f, f[:, torch.randperm(8, generator=gen)]])
        shifted = loss([f, f.roll(1, dims=1)])
        assert identical < permuted
        assert identical < shifted
        # a scaled copy has the same unit vectors, hence the same loss
        assert loss([f, 3.0 * f]).item() == pytest.approx(identical.item(), rel=1e-5)

    def test_temperature_effect(self):
        gen = torch.Generator().manual_seed(1)
        f = torch.randn(1, 6, 3, 3, 3, generator=gen)
        # identical modalities: positives have similarity 1 > every negative, so a sharper softmax lowers the loss
        values = [ChannelSemanticConsistencyLoss(temperature=t)([f, f]).item() for t in (1.0, 0.5, 0.1, 0.05)]
        assert all(x > y for x, y in zip(values, values[1:]))
        assert values[-1] < 1e-3
        # a very small temperature must stay finite (no overflow of exp)
        g = torch.randn(1, 6, 3, 3, 3, generator=gen)
        assert torch.isfinite(ChannelSemanticConsistencyLoss(temperature=1e-3)([f, g]))

    def test_gradient_flows_to_all_inputs(self):
        gen = torch.Generator().manual_seed(2)
        features = [torch.randn(2, 4, 3, 3, 3, generator=gen, requires_grad=True) for _ in range(3)]
        ChannelSemanticConsistencyLoss()(features).backward()
        for f in features:
            assert f.grad is not None
            assert torch.isfinite(f.grad).all()
            assert f.grad.abs().sum() > 0

    def test_gradient_through_encoder(self):
        torch.manual_seed(0)
        encoders = nn.ModuleList(
            nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 8, 3, stride=2, padding=1))
            for _ in range(2)
        )
        images = [torch.randn(2, 1, 8, 8, 8) for _ in range(2)]
        loss = ChannelSemanticConsistencyLoss()([enc(x) for enc, x in zip(encoders, images)])
        loss.backward()
        for param in encoders.parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0

    def test_memory_large_bottleneck(self):
        """(1, 256, 24, 24, 24) features: no intermediate may be larger than a few copies of the inputs."""

        class LargestTensor(TorchDispatchMode):
            def __init__(self):
                super().__init__()
                self.numel = 0

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in out if isinstance(out, (tuple, list)) else (out,):
                    if isinstance(t, torch.Tensor):
                        self.numel = max(self.numel, t.numel())
                return out

        shape = (1, 256, 24, 24, 24)
        features = [torch.randn(shape, requires_grad=True) for _ in range(2)]
        tracker = LargestTensor()
        with tracker:
            loss = ChannelSemanticConsistencyLoss()(features)
            loss.backward()
        voxels = 24**3
        assert torch.isfinite(loss)
        assert tracker.numel <= 2 * 256 * voxels  # the concatenated (2C, N) channel vectors at most
        assert tracker.numel < voxels * voxels // 10  # an order of magnitude below one voxel x voxel matrix
        assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in features)

    def test_validation(self):
        for bad in (dict(temperature=0.0), dict(temperature=-0.5), dict(reduction="max")):
            with pytest.raises(ValueError):
                ChannelSemanticConsistencyLoss(**bad)
        loss = ChannelSemanticConsistencyLoss()
        with pytest.raises(ValueError):
            loss([torch.randn(1, 4, 2, 2, 2)])
        with pytest.raises(ValueError):
            loss([])
        with pytest.raises(ValueError):
            loss([torch.randn(1, 4, 2, 2, 2), torch.randn(1, 4, 2, 2, 3)])
        with pytest.raises(ValueError):
            loss([torch.randn(1, 4, 2, 2, 2), torch.randn(1, 3, 2, 2, 2)])


# --------------------------------------------------------------------------------------------------------------------
# cross-modal anatomical consistency (CAC)
# --------------------------------------------------------------------------------------------------------------------


class TestAnatomicalConsistencyLoss:
    def test_hand_computed(self):
        # one case, two classes, two voxels
        pa = torch.tensor([[[0.8, 0.3], [0.2, 0.7]]])
        pb = torch.tensor([[[0.6, 0.1], [0.4, 0.9]]])
        s = 1e-5
        dice0 = (2 * (0.8 * 0.6 + 0.3 * 0.1) + s) / (0.8**2 + 0.3**2 + 0.6**2 + 0.1**2 + s)
        dice1 = (2 * (0.2 * 0.4 + 0.7 * 0.9) + s) / (0.2**2 + 0.7**2 + 0.4**2 + 0.9**2 + s)
        loss = AnatomicalConsistencyLoss(softmax=False)
        assert loss([pa, pb]).item() == pytest.approx(1 - (dice0 + dice1) / 2, rel=1e-6)
        no_bg = AnatomicalConsistencyLoss(include_background=False, softmax=False)
        assert no_bg([pa, pb]).item() == pytest.approx(1 - dice1, rel=1e-6)

    def test_zero_for_identical_predictions(self):
        gen = torch.Generator().manual_seed(0)
        logits = torch.randn(2, 3, 4, 4, 4, generator=gen)
        assert AnatomicalConsistencyLoss()([logits, logits.clone(), logits.clone()]).item() == pytest.approx(
            0.0, abs=1e-6
        )
        soft = torch.softmax(logits, dim=1)  # soft, far from one-hot
        assert AnatomicalConsistencyLoss(softmax=False)([soft, soft.clone()]).item() == pytest.approx(0.0, abs=1e-6)
        uniform = torch.full((1, 2, 3, 3), 0.5)
        assert AnatomicalConsistencyLoss(softmax=False)([uniform, uniform]).item() == pytest.approx(0.0, abs=1e-6)

    def test_positive_for_different_predictions(self):
        gen = torch.Generator().manual_seed(1)
        a, b = torch.randn(2, 3, 4, 4, generator=gen), torch.randn(2, 3, 4, 4, generator=gen)
        assert AnatomicalConsistencyLoss()([a, b]).item() > 0.01
        # disjoint one-hot predictions: Dice 0 for every class
        one = torch.zeros(1, 2, 4)
        one[0, 0, :2] = 1
        one[0, 1, 2:] = 1
        other = one.flip(1)
        assert AnatomicalConsistencyLoss(softmax=False)([one, other]).item() == pytest.approx(1.0, abs=1e-5)

    def test_symmetric_and_pair_average(self):
        gen = torch.Generator().manual_seed(2)
        preds = [torch.randn(2, 3, 3, 3, 3, generator=gen) for _ in range(3)]
        loss = AnatomicalConsistencyLoss()
        assert loss([preds[0], preds[1]]).item() == pytest.approx(loss([preds[1], preds[0]]).item(), rel=1e-6)
        pairs = [loss([preds[i], preds[j]]).item() for i, j in combinations(range(3), 2)]
        assert loss(preds).item() == pytest.approx(sum(pairs) / 3, rel=1e-6)

    def test_softmax_option(self):
        gen = torch.Generator().manual_seed(3)
        a, b = torch.randn(2, 3, 5, 5, generator=gen), torch.randn(2, 3, 5, 5, generator=gen)
        with_softmax = AnatomicalConsistencyLoss(softmax=True)([a, b])
        on_probs = AnatomicalConsistencyLoss(softmax=False)([a.softmax(1), b.softmax(1)])
        assert with_softmax.item() == pytest.approx(on_probs.item(), rel=1e-6)

    def test_include_background_matches_loop(self):
        gen = torch.Generator().manual_seed(4)
        pa = torch.rand(2, 3, 4, 4, generator=gen).softmax(1)
        pb = torch.rand(2, 3, 4, 4, generator=gen).softmax(1)
        for include_background, classes in ((True, range(3)), (False, range(1, 3))):
            values = []
            for n in range(2):
                for k in classes:
                    x, y = pa[n, k].double(), pb[n, k].double()
                    dice = (2 * float((x * y).sum()) + 1e-5) / (float((x * x).sum()) + float((y * y).sum()) + 1e-5)
                    values.append(1 - dice)
            loss = AnatomicalConsistencyLoss(include_background=include_background, softmax=False)([pa, pb])
            assert loss.item() == pytest.approx(sum(values) / len(values), rel=1e-5)

    def test_gradient_flows_to_all_logits(self):
        gen = torch.Generator().manual_seed(5)
        logits = [torch.randn(2, 3, 4, 4, 4, generator=gen, requires_grad=True) for _ in range(2)]
        AnatomicalConsistencyLoss()(logits).backward()
        for x in logits:
            assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0

    def test_validation(self):
        with pytest.raises(ValueError):
            AnatomicalConsistencyLoss(smooth=-1.0)
        loss = AnatomicalConsistencyLoss()
        with pytest.raises(ValueError):
            loss([torch.randn(1, 2, 3, 3)])
        with pytest.raises(ValueError):
            loss([torch.randn(1, 2, 3, 3), torch.randn(1, 3, 3, 3)])


# --------------------------------------------------------------------------------------------------------------------
# area-similarity contrastive (ASC)
# --------------------------------------------------------------------------------------------------------------------


def _probabilities(n_mod, shape, seed, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    logits = [torch.randn(shape, generator=gen, requires_grad=requires_grad) for _ in range(n_mod)]
    return logits, [F.softmax(x, dim=1) for x in logits]


class TestAreaSimilarityContrastiveLoss:
    @pytest.mark.parametrize("n_mod", [2, 3])
    @pytest.mark.parametrize("include_background", [False, True])
    def test_matches_loop_reference(self, n_mod, include_background):
        _, probs = _probabilities(n_mod, (3, 3, 4, 4, 4), seed=n_mod)
        value = AreaSimilarityContrastiveLoss(include_background=include_background)(probs)
        expected = reference_asc(probs, include_background=include_background)
        assert value.ndim == 0
        assert value.item() == pytest.approx(expected, rel=1e-5)

    def test_temperature(self):
        _, probs = _probabilities(2, (3, 2, 5, 5), seed=10)
        default = AreaSimilarityContrastiveLoss()(probs)
        unit = AreaSimilarityContrastiveLoss(temperature=1.0)(probs)
        assert default.item() == pytest.approx(unit.item(), rel=1e-7)
        for tau in (0.5, 0.1):
            value = AreaSimilarityContrastiveLoss(temperature=tau)(probs)
            assert value.item() == pytest.approx(reference_asc(probs, temperature=tau), rel=1e-5)
            assert value.item() != pytest.approx(default.item(), rel=1e-3)

    def test_hand_computed_two_cases(self):
        # B = 2 one-hot-like cases of 2 voxels, 2 classes; the background channel is dropped
        fg = {(0, 0): [1.0, 0.0], (0, 1): [1.0, 1.0], (1, 0): [0.0, 1.0], (1, 1): [0.0, 1.0]}  # (case, modality)
        probs = []
        for m in range(2):
            t = torch.tensor([fg[0, m], fg[1, m]]).unsqueeze(1)  # (B, 1, 2) foreground
            probs.append(torch.cat([1 - t, t], dim=1))
        s = 1e-5
        sim = {
            ((0, 0), (0, 1)): 2 * 1 / (1 + 2 + s),
            ((0, 0), (1, 0)): 0.0,
            ((0, 0), (1, 1)): 0.0,
            ((0, 1), (1, 0)): 2 * 1 / (2 + 1 + s),
            ((0, 1), (1, 1)): 2 * 1 / (2 + 1 + s),
            ((1, 0), (1, 1)): 2 * 1 / (1 + 1 + s),
        }
        sim.update({(q, p): v for (p, q), v in list(sim.items())})

        def term(anchor, pos, negatives):
            numerator = math.exp(sim[anchor, pos])
            return -math.log(numerator / (numerator + sum(math.exp(sim[anchor, n]) for n in negatives)))

        terms = [
            term((0, 0), (0, 1), [(1, 0), (1, 1)]),
            term((0, 1), (0, 0), [(1, 0), (1, 1)]),
            term((1, 0), (1, 1), [(0, 0), (0, 1)]),
            term((1, 1), (1, 0), [(0, 0), (0, 1)]),
        ]
        value = AreaSimilarityContrastiveLoss()(probs)
        assert value.item() == pytest.approx(sum(terms) / 4, rel=1e-5)

    def test_single_case_batch_is_zero(self):
        logits, probs = _probabilities(3, (1, 3, 4, 4), seed=11, requires_grad=True)
        value = AreaSimilarityContrastiveLoss(temperature=0.5)(probs)
        assert torch.isfinite(value)
        assert value.item() == 0.0
        value.backward()  # still part of the graph, must not crash
        for x in logits:
            assert x.grad is not None and torch.isfinite(x.grad).all()

    def test_gradient_flows(self):
        logits, probs = _probabilities(3, (2, 3, 4, 4, 4), seed=12, requires_grad=True)
        AreaSimilarityContrastiveLoss(temperature=0.5)(probs).backward()
        for x in logits:
            assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0

    def test_agreement_lowers_loss(self):
        _, probs = _probabilities(2, (4, 2, 6, 6), seed=13)
        loss = AreaSimilarityContrastiveLoss(include_background=True, temperature=0.1)
        agree = loss([probs[0], probs[0].clone()])
        disagree = loss([probs[0], probs[0].roll(1, dims=0)])  # modality b shows another case
        assert agree < disagree

    def test_validation(self):
        for bad in (dict(temperature=0.0), dict(temperature=-1.0), dict(smooth=-1e-5)):
            with pytest.raises(ValueError):
                AreaSimilarityContrastiveLoss(**bad)
        loss = AreaSimilarityContrastiveLoss()
        with pytest.raises(ValueError):
            loss([torch.rand(2, 2, 3, 3)])
        with pytest.raises(ValueError):
            loss([torch.rand(2, 2, 3, 3), torch.rand(3, 2, 3, 3)])
