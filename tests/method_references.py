"""Independent evaluations of the methods' loss terms, for the tests of the training steps.

Each function is written from the formula in the method's reference (not from the bundle's loss
classes), so that a test comparing a method's total loss with these terms fails when the method
drops a term, flips its sign or gives it the wrong weight. The NT-Xent references of CSC and ASC are
loops over anchors, here, and ``test_losses.py`` checks the loss classes against them.
"""

from __future__ import annotations

import copy
import math
from itertools import combinations

import torch
from monai.losses import DiceCELoss
from torch import nn


def _unit(v):
    return v / math.sqrt(float((v * v).sum()))


def reference_csc(features, temperature):
    """NT-Xent over channels: loop over batch elements, modality pairs and the 2C anchors."""
    n_batch, n_chan = features[0].shape[:2]
    per_sample = []
    for b in range(n_batch):
        pair_values = []
        for ma, mb in combinations(range(len(features)), 2):
            vectors = [_unit(features[ma][b, c].flatten().double()) for c in range(n_chan)]
            vectors += [_unit(features[mb][b, c].flatten().double()) for c in range(n_chan)]
            anchor_losses = []
            for i in range(2 * n_chan):
                pos = i + n_chan if i < n_chan else i - n_chan
                numerator = math.exp(float(vectors[i] @ vectors[pos]) / temperature)
                denominator = sum(
                    math.exp(float(vectors[i] @ vectors[k]) / temperature) for k in range(2 * n_chan) if k != i
                )
                anchor_losses.append(-math.log(numerator / denominator))
            pair_values.append(sum(anchor_losses) / len(anchor_losses))
        per_sample.append(sum(pair_values) / len(pair_values))
    return sum(per_sample) / len(per_sample)


def area_similarity(p, q, smooth=1e-5):
    return 2.0 * float((p * q).sum()) / (float(p.sum()) + float(q.sum()) + smooth)


def reference_asc(probabilities, temperature=1.0, include_background=False, smooth=1e-5):
    """Loop over anchors (case i, modality a) and positives (case i, modality b != a)."""
    n_mod = len(probabilities)
    n_batch = probabilities[0].shape[0]
    start = 0 if include_background else 1
    pred = {(i, m): probabilities[m][i, start:].double() for i in range(n_batch) for m in range(n_mod)}
    terms = []
    for i in range(n_batch):
        for a in range(n_mod):
            negatives = [
                math.exp(area_similarity(pred[i, a], pred[j, m], smooth) / temperature)
                for j in range(n_batch)
                if j != i
                for m in range(n_mod)
            ]
            for b in range(n_mod):
                if b == a:
                    continue
                pos = math.exp(area_similarity(pred[i, a], pred[i, b], smooth) / temperature)
                terms.append(-math.log(pos / (pos + sum(negatives))))
    return sum(terms) / len(terms)


def supervised(head_logits, label, reduction="mean", **dice_ce_kwargs):
    """MONAI Dice + CE of every head against the common label, averaged (or summed) over the heads."""
    loss = DiceCELoss(to_onehot_y=True, softmax=True, **dice_ce_kwargs)
    values = [loss(logits, label) for logits in head_logits]
    total = sum(values)
    return total / len(values) if reduction == "mean" else total


def cac(probabilities, smooth=1e-5):
    """1 - soft Dice (squared denominator) per pair of modalities, batch element and class; mean."""
    values = []
    for a, b in combinations(range(len(probabilities)), 2):
        p, q = probabilities[a], probabilities[b]
        dims = tuple(range(2, p.ndim))
        dice = (2 * (p * q).sum(dims) + smooth) / ((p * p).sum(dims) + (q * q).sum(dims) + smooth)
        values.append((1 - dice).mean())
    return sum(values) / len(values)


def mutual_mse(probabilities):
    """Mean over modality pairs of the mean squared difference of their probability maps."""
    pairs = list(combinations(range(len(probabilities)), 2))
    return sum(((probabilities[a] - probabilities[b]) ** 2).mean() for a, b in pairs) / len(pairs)


def soft_dice_ce(logits, target, smooth=1e-5):
    """CE with probability targets + the soft-label Dice of Wang & Blaschko (MICCAI 2023):
    ``tp = (|p|_1 + |t|_1 - |p - t|_1) / 2``, ``dice = (2 tp + s) / (|p|_1 + |t|_1 + s)`` per (batch, class)."""
    target = target.to(logits.dtype)
    ce = (-(target * torch.log_softmax(logits, dim=1)).sum(dim=1)).mean()
    p = torch.softmax(logits, dim=1)
    dims = tuple(range(2, p.ndim))
    p_l1, t_l1 = p.abs().sum(dims), target.abs().sum(dims)
    tp = (p_l1 + t_l1 - (p - target).abs().sum(dims)) / 2
    dice = (2 * tp + smooth) / (p_l1 + t_l1 + smooth)
    return (1 - dice).mean() + ce


def channel_attention(x, gamma):
    """DANet channel attention ``gamma * softmax(max(E) - E) @ X + X`` with ``E = X X^T``."""
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    energy = flat @ flat.transpose(1, 2)
    attention = torch.softmax(energy.max(dim=-1, keepdim=True).values - energy, dim=-1)
    return gamma * (attention @ flat).reshape(x.shape) + x


def cmc_bottlenecks(net, image, attended):
    """Per-modality bottleneck of a CMCNet with a shared encoder, computed block by block."""
    encoder = net.encoders[0]
    features = []
    for m in range(image.shape[1]):
        h = image[:, m : m + 1]
        for block in encoder.blocks:
            h = block(h)
        features.append(channel_attention(h, encoder.attention.gamma) if attended else h)
    return features


def mc_dropout_copy(teacher: nn.Module, dropout: bool) -> nn.Module:
    """A copy of the teacher in eval mode, with its dropout layers in train mode when ``dropout``."""
    replica = copy.deepcopy(teacher).eval()
    if dropout:
        for module in replica.modules():
            if isinstance(module, nn.modules.dropout._DropoutNd):
                module.train()
    return replica


@torch.no_grad()
def pseudo_label(replica, image, passes, noise_std, noise_clip=None):
    """Mean softmax of ``passes`` passes of ``replica`` on ``image`` + (clamped) Gaussian noise, drawing the
    random numbers in the order: noise of pass 1, the replica's dropout of pass 1, noise of pass 2, ..."""
    total = 0
    for _ in range(passes):
        x = image
        if noise_std > 0:
            noise = noise_std * torch.randn_like(image)
            if noise_clip is not None:
                noise = noise.clamp(*noise_clip)
            x = image + noise
        total = total + torch.softmax(replica(x).float(), dim=1)  # float32 probabilities, as documented
    return total / passes


def _scalar(value) -> float:
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def assert_weighted_sum(loss, weighted_terms, tol=1e-9):
    """``loss`` equals the sum of ``weighted_terms`` (name -> weight * term), and it would not if any single term
    were negated or dropped: every weighted term is far larger than the tolerance."""
    loss = _scalar(loss)
    values = {name: _scalar(v) for name, v in weighted_terms.items()}
    expected = sum(values.values())
    assert abs(loss - expected) <= tol * max(1.0, abs(expected)), (loss, expected, values)
    for name, value in values.items():
        assert abs(2 * value) > 1e3 * tol * max(1.0, abs(expected)), f"term {name} ({value}) is too small to test"
        assert abs(loss - (expected - 2 * value)) > 1e2 * tol, f"negating {name} would go unnoticed"
        assert abs(loss - (expected - value)) > 1e2 * tol, f"dropping {name} would go unnoticed"


__all__ = [
    "assert_weighted_sum",
    "cac",
    "channel_attention",
    "cmc_bottlenecks",
    "mc_dropout_copy",
    "mutual_mse",
    "pseudo_label",
    "reference_asc",
    "reference_csc",
    "soft_dice_ce",
    "supervised",
]
