# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""
Strong views of a batch of multimodal images, for weak-to-strong consistency training.

A weak view (the unlabeled batch as the data pipeline delivers it: flips, small rotations and
intensity changes) gives pseudo-labels; a strong view of the same images must reproduce them. The
perturbations here act on whole batches of channel-first tensors ``(B, M, *spatial)``, one channel
per imaging sequence, on the training device, after the data pipeline:

- :class:`SequenceIntensityPerturbation`: each sequence of each case gets its own contrast, brightness,
  gamma and noise, so that the network cannot rely on one sequence's exact intensities;
- :class:`SequenceDropout`: one or more sequences of a case are zeroed (the mean intensity after the
  bundle's z-score normalisation), so that the network learns to segment from the others;
- :class:`BatchModalityMisalignment`: the bundle's :class:`scripts.data.misalignment.RandModalityMisalignd`
  applied case by case, moving the non-reference sequences (the pseudo-label stays on the reference
  sequence's grid);
- :class:`BoxCutMix`: CutMix (Yun et al., ICCV 2019) between the cases of the batch: a random box of
  each case is replaced by the same box of another case, and its pseudo-label and confidence mask with
  the same box.

:class:`StrongView` chains them in that order. Every part respects **missing sequences** (a channel
that is constant over a case, ``scripts.data.missing_modalities.modality_presence``: a zero-filled
file, or, on own grids, every sequence but the case's own): only present sequences are perturbed or
dropped (at least one present sequence is kept), a case whose reference sequence is missing is not
misaligned, and CutMix mixes a case only with a case that has the same sequences. A strong view
therefore never makes an absent sequence look present, nor blanks a case, nor moves the only
sequence a pseudo-label follows. All randomness comes from torch's global generator
(seeded by ``monai.utils.set_determinism`` and saved with the training state), so a run is
reproducible and a resumed run continues the same draws.

The combination follows the weak-to-strong consistency of FixMatch (Sohn et al., NeurIPS 2020) and
UniMatch (Yang et al., CVPR 2023); sequence dropout and per-sequence perturbation are the multimodal
additions of this bundle.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from torch import nn

from ..data.misalignment import RandModalityMisalignd
from ..data.missing_modalities import modality_presence

__all__ = ["SequenceIntensityPerturbation", "SequenceDropout", "BatchModalityMisalignment", "BoxCutMix", "StrongView"]


def _uniform(shape: Sequence[int], low: float, high: float, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(tuple(shape), device=like.device, dtype=like.dtype) * (high - low) + low


def _check_probability(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}.")
    return value


class SequenceIntensityPerturbation(nn.Module):
    """
    (Batched on the training device, one draw per case and channel: MONAI's ``RandAdjustContrast`` /
    ``RandGaussianNoise`` act on one case at a time, with one draw for all its channels.)

    Independent intensity perturbation of every sequence (channel) of every case.

    With probability ``prob`` per case and channel, the channel ``x`` becomes::

        lo, hi = min(x), max(x)
        x = lo + (hi - lo) * ((x - lo) / (hi - lo)) ** gamma      # gamma = exp(U(-log g, log g))
        x = x * (1 + U(-contrast, contrast)) + U(-brightness, brightness) + N(0, noise_std^2)

    Args:
        prob: probability that a channel of a case is perturbed.
        contrast: maximum relative change of the contrast (a multiplicative factor in ``1 +- contrast``).
        brightness: maximum additive shift (in the units of the normalised intensities).
        gamma: maximum gamma factor ``g >= 1`` (gamma drawn log-uniformly in ``[1/g, g]``); 1 disables it.
        noise_std: standard deviation of the additive Gaussian noise; 0 disables it.
    """

    def __init__(
        self,
        prob: float = 0.8,
        contrast: float = 0.3,
        brightness: float = 0.3,
        gamma: float = 1.5,
        noise_std: float = 0.1,
    ) -> None:
        super().__init__()
        self.prob = _check_probability("prob", prob)
        for name, value in (("contrast", contrast), ("brightness", brightness), ("noise_std", noise_std)):
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite non-negative number, got {value}.")
        if not np.isfinite(gamma) or gamma < 1:
            raise ValueError(f"gamma must be a finite number >= 1, got {gamma}.")
        if contrast >= 1:
            raise ValueError(f"contrast must be < 1 (the factor 1 - contrast must stay positive), got {contrast}.")
        self.contrast, self.brightness = float(contrast), float(brightness)
        self.gamma, self.noise_std = float(gamma), float(noise_std)

    def forward(self, image: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """``image`` (B, M, *spatial) -> perturbed copy of the same shape; only the channels where
        ``present`` (B, M; default :func:`modality_presence` of ``image``) is True change."""
        b, m = image.shape[:2]
        ones = [1] * (image.ndim - 2)
        present = modality_presence(image) if present is None else present.to(torch.bool)
        on = ((torch.rand(b, m, device=image.device) < self.prob) & present).to(image.dtype).view(b, m, *ones)
        x = image
        if self.gamma > 1:
            flat = x.reshape(b, m, -1)
            lo = flat.amin(dim=-1).view(b, m, *ones)
            span = (flat.amax(dim=-1).view(b, m, *ones) - lo).clamp_min(1e-6)
            log_g = float(np.log(self.gamma))
            g = torch.exp(_uniform((b, m), -log_g, log_g, x)).view(b, m, *ones)
            x = lo + span * ((x - lo) / span).clamp(0, 1) ** g
        scale = 1 + _uniform((b, m), -self.contrast, self.contrast, x).view(b, m, *ones)
        shift = _uniform((b, m), -self.brightness, self.brightness, x).view(b, m, *ones)
        x = x * scale + shift
        if self.noise_std > 0:
            x = x + torch.randn_like(x) * self.noise_std
        return on * x + (1 - on) * image


class SequenceDropout(nn.Module):
    """
    Zeroes whole sequences (channels) of some cases: with probability ``prob`` a case loses between 1 and
    ``max_dropped`` of the ``P`` sequences it has (chosen uniformly among its present sequences; at least
    one is always kept, so a case with one sequence is never changed).

    After the bundle's per-sequence z-score normalisation, zero is a sequence's mean intensity, i.e. a
    sequence that carries no information.

    Sequences named in ``always_keep`` are never dropped: where only one sequence shows the target (a
    FLAIR abnormality, which the T1 scans barely show), a strong view without it would ask the network
    to find the target where no input shows it, and teach it to guess. The planner
    (``scripts/plan.py``) names such sequences from the dataset (bundle/docs/planning.md). The other
    sequences are still dropped, so the network still learns to do without them.

    Args:
        prob: probability that a case loses sequences.
        max_dropped: most sequences dropped from one case; ``None``: ``M - 1``.
        always_keep: names of sequences never dropped (from ``modalities``).
        modalities: the sequence names in channel order; needed when ``always_keep`` is given.
    """

    def __init__(
        self,
        prob: float = 0.5,
        max_dropped: int | None = None,
        always_keep: Sequence[str] = (),
        modalities: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.prob = _check_probability("prob", prob)
        if max_dropped is not None and int(max_dropped) < 1:
            raise ValueError(f"max_dropped must be >= 1 or None, got {max_dropped}.")
        self.max_dropped = None if max_dropped is None else int(max_dropped)
        always_keep = [always_keep] if isinstance(always_keep, str) else list(always_keep or ())
        unknown = [n for n in always_keep if n not in list(modalities or [])]
        if unknown:
            raise ValueError(
                f"always_keep names {unknown}, which are not among the modalities {list(modalities or [])}."
            )
        self.kept = sorted({list(modalities).index(n) for n in always_keep}) if always_keep else []

    def sample(
        self,
        batch_size: int,
        num_sequences: int,
        device: torch.device | str = "cpu",
        present: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """A (B, M) boolean mask of the dropped sequences, drawn among ``present`` (B, M; None: all)."""
        if self.kept and max(self.kept) >= num_sequences:
            raise ValueError(f"always_keep refers to channel {max(self.kept)}, but the images have {num_sequences}.")
        dropped = torch.zeros(batch_size, num_sequences, dtype=torch.bool, device=device)
        for i in range(batch_size):
            have = torch.arange(num_sequences) if present is None else torch.nonzero(present[i].cpu()).flatten()
            # a present sequence that must stay lets every other present one go; otherwise one must stay
            keeps_one = any(int(h) in self.kept for h in have)
            have = have[[int(h) not in self.kept for h in have]] if self.kept else have
            most = len(have) if keeps_one else len(have) - 1
            if most < 1 or float(torch.rand(())) >= self.prob:
                continue
            most = min(self.max_dropped or most, most)
            k = int(torch.randint(1, most + 1, ()))
            dropped[i, have[torch.randperm(len(have))[:k]].to(device)] = True
        return dropped

    @staticmethod
    def apply(image: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
        """``image`` (B, M, *spatial) with the channels where ``dropped`` (B, M) is True set to zero."""
        keep = (~dropped).to(image.dtype).view(*dropped.shape, *[1] * (image.ndim - 2))
        return image * keep

    def forward(self, image: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        present = modality_presence(image) if present is None else present
        return self.apply(image, self.sample(image.shape[0], image.shape[1], image.device, present))


class BatchModalityMisalignment(nn.Module):
    """
    The bundle's misalignment augmentation (:class:`~scripts.data.misalignment.RandModalityMisalignd`)
    applied to every case of a batch: each non-reference sequence is, with probability ``prob``, shifted
    and rotated on its own; the reference sequence (channel ``reference_modality``), and therefore a
    pseudo-label on its grid, does not move. A case whose reference sequence is missing is left as it is
    (its pseudo-label follows the sequences it has, which must not move against it).

    Args:
        spacing: voxel size (mm) of the batch's spatial axes, so that the limits are in mm (e.g. the
            cardiac config's in-plane ``pixdim``); ``None``: 1 mm.
        prob, max_shift_mm, max_rotation_deg, reference_modality: as ``RandModalityMisalignd``.
    """

    def __init__(
        self,
        spacing: Sequence[float] | None = None,
        prob: float = 0.5,
        max_shift_mm: float | Sequence[float] = 5.0,
        max_rotation_deg: float | Sequence[float] = 5.0,
        reference_modality: int = 0,
    ) -> None:
        super().__init__()
        self.reference_modality = int(reference_modality)
        self.spacing = None if spacing is None else [float(s) for s in spacing]
        self.transform = RandModalityMisalignd(
            keys="image",
            label_keys=None,
            prob=prob,
            max_shift_mm=max_shift_mm,
            max_rotation_deg=max_rotation_deg,
            reference_modality=reference_modality,
        )

    def forward(self, image: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        if image.shape[1] < 2:
            return image
        present = modality_presence(image) if present is None else present
        d = image.ndim - 2
        spacing = self.spacing or [1.0] * d
        if len(spacing) != d:
            raise ValueError(f"spacing has {len(spacing)} values, the images have {d} spatial axes.")
        affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
        # the transform draws from its own numpy generator: seed it from torch's, so that the global
        # seed (and a resumed run's saved random state) decide the motions
        self.transform.set_random_state(seed=int(torch.randint(0, 2**31 - 1, ())))
        moved = []
        for case, has in zip(image, present, strict=True):
            out = self.transform({"image": MetaTensor(case.detach().cpu().float(), affine=affine)})["image"]
            moved.append(
                torch.as_tensor(out).to(device=image.device, dtype=image.dtype)
                if has[self.reference_modality]
                else case
            )
        return torch.stack(moved)


class BoxCutMix(nn.Module):
    """
    (Written here rather than using ``monai.transforms.CutMix``: MONAI's mixes the label with the area
    weight, as for classification; segmentation pseudo-labels and their confidence masks must be cut
    with the same box, voxel by voxel.)

    CutMix between the cases of a batch (Yun et al., "CutMix", ICCV 2019), applied identically to the
    images and to their per-voxel targets.

    With probability ``prob`` a case ``i`` receives, inside one random box, the content of its partner:
    the next case, cyclically, that has the same sequences present (``partner[i] = (i + 1) mod B`` when
    all cases have all sequences); a case with no such partner is not mixed. (Mixing an MR case with an
    ultrasound case would put both sequences into one image, and a missing sequence would look present.)
    The box covers a fraction of the image drawn uniformly in
    ``[min_area, max_area]``, with side ratios drawn log-uniformly up to ``max_aspect``.

    Args:
        prob: probability that a case is mixed.
        min_area, max_area: range of the box's share of the image, ``0 < min_area <= max_area <= 1``.
        max_aspect: largest ratio between two box sides (>= 1).
    """

    def __init__(
        self, prob: float = 0.5, min_area: float = 0.02, max_area: float = 0.4, max_aspect: float = 3.3
    ) -> None:
        super().__init__()
        self.prob = _check_probability("prob", prob)
        if not 0 < min_area <= max_area <= 1:
            raise ValueError(f"need 0 < min_area <= max_area <= 1, got {min_area} and {max_area}.")
        if max_aspect < 1:
            raise ValueError(f"max_aspect must be >= 1, got {max_aspect}.")
        self.min_area, self.max_area, self.max_aspect = float(min_area), float(max_area), float(max_aspect)

    def sample(self, batch_size: int, spatial_shape: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
        """A (B, 1, *spatial) boolean mask: True inside each mixed case's box (all False for unmixed cases)."""
        d = len(spatial_shape)
        box = torch.zeros(batch_size, 1, *spatial_shape, dtype=torch.bool, device=device)
        for i in range(batch_size):
            if float(torch.rand(())) >= self.prob:
                continue
            area = float(torch.empty(()).uniform_(self.min_area, self.max_area))
            log_ratios = torch.empty(d).uniform_(-np.log(self.max_aspect) / 2, np.log(self.max_aspect) / 2)
            log_ratios = log_ratios - log_ratios.mean()  # the side ratios multiply to 1: area is kept
            sides = [
                max(1, min(n, int(round(n * area ** (1 / d) * float(np.exp(float(r)))))))
                for n, r in zip(spatial_shape, log_ratios, strict=False)
            ]
            starts = [int(torch.randint(0, n - s + 1, ())) for n, s in zip(spatial_shape, sides, strict=False)]
            box[(i, 0, *[slice(a, a + s) for a, s in zip(starts, sides, strict=False)])] = True
        return box

    @staticmethod
    def partner(batch_size: int, present: torch.Tensor | None = None) -> torch.Tensor:
        """Index of the case each case takes its box from: the next one, cyclically, with the same
        ``present`` row (B, M; None: the next one); itself when there is none."""
        if present is None:
            return torch.roll(torch.arange(batch_size), -1)
        rows = present.cpu()
        partner = torch.arange(batch_size)
        for i in range(batch_size):
            for step in range(1, batch_size):
                j = (i + step) % batch_size
                if torch.equal(rows[j], rows[i]):
                    partner[i] = j
                    break
        return partner

    @staticmethod
    def apply(x: torch.Tensor, box: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, *spatial) with the content of ``x[partner]`` inside ``box`` (B, 1, *spatial)."""
        return torch.where(box, x[partner.to(x.device)], x)

    def forward(
        self, image: torch.Tensor, *targets: torch.Tensor, present: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Mix ``image`` and every target (each (B, C, *spatial)) with the same boxes and partners
        (``present``: the (B, M) sequences of each case; default :func:`modality_presence` of ``image``)."""
        present = modality_presence(image) if present is None else present
        partner = self.partner(image.shape[0], present)
        box = self.sample(image.shape[0], image.shape[2:], image.device)
        box &= (partner != torch.arange(image.shape[0])).to(box.device).view(-1, *[1] * (box.ndim - 1))
        return (self.apply(image, box, partner), *(self.apply(t, box, partner) for t in targets))


class StrongView(nn.Module):
    """
    The strong view of a weakly augmented multimodal batch and its matching targets: per-sequence
    intensity perturbation, misalignment of the non-reference sequences, sequence dropout, then CutMix
    (images and targets mixed with the same boxes). Each part is optional (``None`` leaves it out).

    Args:
        intensity: a :class:`SequenceIntensityPerturbation`.
        misalignment: a :class:`BatchModalityMisalignment`.
        sequence_dropout: a :class:`SequenceDropout`.
        cutmix: a :class:`BoxCutMix`.

    Example::

        view = StrongView(SequenceIntensityPerturbation(), None, SequenceDropout(), BoxCutMix())
        strong, pseudo_label_s, mask_s = view(weak, pseudo_label, mask)
    """

    def __init__(
        self,
        intensity: SequenceIntensityPerturbation | None = None,
        misalignment: BatchModalityMisalignment | None = None,
        sequence_dropout: SequenceDropout | None = None,
        cutmix: BoxCutMix | None = None,
    ) -> None:
        super().__init__()
        self.intensity = intensity
        self.misalignment = misalignment
        self.sequence_dropout = sequence_dropout
        self.cutmix = cutmix

    def forward(self, image: torch.Tensor, *targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``image`` (B, M, *spatial) and targets (B, C, *spatial) on the same grid -> the strong image
        and the targets moved with it (only CutMix moves targets). The sequences present in each case
        are found once, on ``image``, and every part keeps to them."""
        present = modality_presence(image)
        x = image
        if self.intensity is not None:
            x = self.intensity(x, present)
        if self.misalignment is not None:
            x = self.misalignment(x, present)
        if self.sequence_dropout is not None:
            x = self.sequence_dropout(x, present)
        if self.cutmix is not None:
            return self.cutmix(x, *targets, present=present)
        return (x, *targets)
