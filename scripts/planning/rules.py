"""The planning rules: from a dataset fingerprint (``fingerprint.py``) to the ids of a bundle override.

Every decision is a pure function of the fingerprint and the target machine (``device``: ``"cpu"``
or ``"gpu"``), so the same datalist always gives the same plan, and each one records its reason.
The rules, their constants and where they come from are documented in bundle/docs/planning.md.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Plan", "plan_from_fingerprint", "DEVICES"]

# nnU-Net's threshold: a grid whose coarsest spacing is 3x the next is anisotropic
ANISOTROPY = 3.0
# a stack whose fewest-voxel axis has at most half the voxels of the next is a stack of slices
THIN_STACK = 0.5
# how much the in-plane spacing of a 2-D plan may be coarsened to fit the field of view in the ROI
MAX_COARSENING = 2.0
# the margin (mm, and as a share) kept around the farthest foreground when cropping the field of view
CROP_MARGIN_MM, CROP_MARGIN_SHARE = 8.0, 0.1
# a class whose largest connected component holds this share of its voxels (median case) is one structure
ONE_STRUCTURE = 0.9
# no crop when it would keep at least this share of the image (the field-of-view crop, and the crop to
# the images' content)
NO_CROP_SHARE = 0.8
# a sequence shows a class when its visibility score (fingerprint.class_visibility, median over cases) is at
# least this share of the clearest sequence's; a class no sequence shows at VISIBLE_FLOOR is not judged
SHOWS_SHARE, VISIBLE_FLOOR = 0.5, 0.1


@dataclass(frozen=True)
class Device:
    """What a machine affords: the largest ROI side, the voxels of one labeled batch, the voxels per
    second of a supervised forward and backward pass of the planned UNet (measured, see
    docs/planning.md), the time a semi-supervised run may take, and the network's first width."""

    max_side_2d: int
    max_side_3d: int
    batch_voxels_2d: int
    batch_voxels_3d: int
    voxels_per_s_2d: float
    voxels_per_s_3d: float
    minutes_2d: float
    minutes_3d: float
    first_width: int
    max_width: int
    max_iterations: int
    max_levels: int
    # seconds per voxel of each volume an iteration draws (labeled and unlabeled): MONAI's CacheDataset
    # copies the cached (resampled) volume before the random transforms, and RandCropByPosNegLabeld
    # searches a labeled one for foreground and background on every draw. The training process does
    # both itself on the CPU (no loader workers there); on a GPU machine loader workers overlap them
    volume_s_per_voxel: float = 0.0


DEVICES = {
    # 2 CPU cores, torch threads = 2, measured on the project's 2-core machine, each run alone: the 2-D
    # rate calibrated on a whole weak-to-strong iteration of the LGG plan (0.436 s for 8 slices of 128^2,
    # augmentation included, of which 0.056 s is the handling of its 8 volumes of 128 x 128 x 36); the
    # 3-D rate from the network's passes alone (0.147 s for 2 x 48^3); the per-voxel cost of a drawn
    # volume from a whole weak-to-strong iteration of the BraTS plan (0.79 s, of which 0.42 s is its
    # 4 volumes of 240 x 240 x 155: 12 ns per voxel)
    "cpu": Device(128, 64, 8 * 128 * 128, 2 * 48 ** 3, 0.86e6, 1.5e6, 15.0, 20.0, 16, 256, 2000, 5, 12e-9),
    # one data-centre GPU (nnU-Net's 2-D and 3-D patch scales); the budget is not measured in this project
    "gpu": Device(512, 128, 12 * 256 * 256, 2 * 128 ** 3, 60e6, 40e6, 60.0, 90.0, 32, 320, 20000, 6),
}
# a semi-supervised iteration (weak-to-strong: labeled pass, weak unlabeled pass, strong unlabeled
# pass) costs about this many supervised ones
SEMI_COST = 2.5
ITERATIONS_PER_EPOCH = 50
VALIDATIONS = 10


@dataclass
class Plan:
    """The override ids (``ids``) and, per decision in decision order, the ids it set and its reason
    (``decisions``: ``(ids, reason)``)."""

    ids: dict[str, Any] = field(default_factory=dict)
    decisions: list[tuple[list[str], str]] = field(default_factory=list)

    def decide(self, name: str, value: Any, reason: str, **more: Any) -> Any:
        """Sets ``name`` (and the ``more`` ids that go with it) for ``reason``."""
        self.ids[name] = value
        self.ids.update(more)
        self.decisions.append(([name, *more], reason))
        return value


def _median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64)))


def _multiple(value: float, step: int) -> int:
    return max(step, int(math.ceil(value / step - 1e-9)) * step)


def _is_ct(name: str, stats: dict[str, float]) -> bool:
    return bool(re.search(r"(^|[^a-z])ct([^a-z]|$)", name.lower())) or stats["p00_5"] <= -500.0


def _is_uint8(stats: dict[str, Any]) -> bool:
    return str(stats.get("dtype", "")) == "uint8"


def _geometry(fp: dict[str, Any], plan: Plan) -> tuple[bool, list[list[int]], list[list[float]]]:
    """2-D or 3-D, and every case's shape and spacing in the planned axis order (2-D: in-plane axes,
    then the slice axis; 3-D: RAS)."""
    cases = fp["cases"]
    anisotropy = _median([sorted(c["spacing"])[2] / sorted(c["spacing"])[1] for c in cases])
    thinness = _median([sorted(c["shape"])[0] / sorted(c["shape"])[1] for c in cases])
    slices = _median([min(c["shape"]) for c in cases])
    if anisotropy >= ANISOTROPY:
        two_d = True
        reason = (f"slices are thick: the median ratio of the coarsest to the next spacing is {anisotropy:.2f} "
                  f">= {ANISOTROPY} (nnU-Net's anisotropy threshold); 2-D slice by slice")
    elif thinness <= THIN_STACK:
        two_d = True
        reason = (f"stacks of few slices: the median fewest-voxel axis ({slices:g} slices) has {thinness:.2f} of the "
                  f"voxels of the next (<= {THIN_STACK}); 2-D slice by slice, the slice axis found from the shape")
    else:
        two_d = False
        reason = (f"volumes: spacing anisotropy {anisotropy:.2f} < {ANISOTROPY} and the shortest axis holds "
                  f"{thinness:.2f} of the next axis's voxels (> {THIN_STACK}); 3-D")
    plan.decide("spatial_dims", 2 if two_d else 3, reason, image_spatial_dims=3)
    if two_d and anisotropy < ANISOTROPY:
        plan.decide("thin_slice_ratio", THIN_STACK, "the headers give no coarser slice spacing: the slice axis "
                    "of each case is its fewest-voxel axis")
    shapes, spacings = [], []
    for c in cases:
        if two_d:
            sp = np.asarray(c["spacing"], dtype=float)
            axis = int(np.argmax(sp)) if sorted(sp)[2] >= 1.5 * sorted(sp)[1] else int(np.argmin(c["shape"]))
            order = [a for a in range(3) if a != axis] + [axis]
            shapes.append([c["shape"][a] for a in order])
            spacings.append([c["spacing"][a] for a in order])
            c["_planned_axes"] = order
        else:
            shapes.append(list(c["ras_shape"]))
            spacings.append(list(c["ras_spacing"]))
    return two_d, shapes, spacings


def _content_crop(fp: dict[str, Any], two_d: bool, shapes: list[list[int]], plan: Plan) -> list[list[int]]:
    """Whether every image is first cropped to the box of its content, the voxels above the sequence's
    constant background (nnU-Net's crop to the non-zero region; planned.yaml's ``crop_to_content``), and
    the planned shapes after it (RAS, 3-D plans)."""
    if two_d:
        plan.decide("crop_to_content", False, "2-D plans sample whole slices of small stacks: images are not cropped "
                    "to their content (not measured for 2-D here)")
        return shapes
    if not all(c.get("content_ras_shape") for c in fp["cases"]):
        plan.decide("crop_to_content", False, "the fingerprint lacks some case's content box: images are not cropped")
        return shapes
    cropped = [list(c["content_ras_shape"]) for c in fp["cases"]]
    share = _median([np.prod(n) / np.prod(s) for n, s in zip(cropped, shapes)])
    outside = [c["case"] for c in fp["cases"] if c.get("labeled") and c.get("fg_outside_content")]
    if share >= NO_CROP_SHARE:
        plan.decide("crop_to_content", False, f"the box of the voxels above each sequence's background (its minimum) "
                    f"fills {share:.0%} of an image (median; a crop is worth it below {NO_CROP_SHARE:.0%}): images are "
                    "not cropped")
        return shapes
    if outside:
        named = ", ".join(outside[:5]) + (f" and {len(outside) - 5} more" if len(outside) > 5 else "")
        plan.decide("crop_to_content", False, f"the box of the voxels above each sequence's background fills {share:.0%} "
                    f"of an image (median), but labeled voxels lie outside it in {named}: a crop would cut them, so "
                    "images are not cropped")
        return shapes
    plan.decide("crop_to_content", True, f"the voxels above each sequence's constant background (its minimum: zero "
                f"outside a skull-stripped brain, or padding) fill a box of {share:.0%} of the image (median), and every "
                "labeled voxel lies in it: each image is first cropped to that box (nnU-Net's crop to the non-zero "
                "region; inference pads the prediction back), so the field of view, the ROI and the time a drawn "
                "volume costs are those of the box")
    return cropped


def _sequences_kept(fp: dict[str, Any], plan: Plan) -> None:
    """The sequences that the strong views' sequence dropout never drops: those that alone show a class."""
    modalities = list(fp["modalities"])
    per_class: dict[str, list[list[float]]] = {}
    for c in fp["cases"]:
        for k, scores in (c.get("visibility") or {}).items():
            per_class.setdefault(k, [[] for _ in modalities])
            for m, v in enumerate(scores):
                if v is not None:
                    per_class[k][m].append(float(v))
    if len(modalities) < 2 or not per_class:
        why = ("one sequence: nothing to drop" if len(modalities) < 2 else
               "no labeled case has two sequences on its label's grid (own grids, or incomplete cases): nothing to "
               "judge, sequence dropout draws among the sequences a case has")
        plan.decide("strong_sequences_kept", [], why)
        return
    names = plan.ids.get("class_names") or []
    kept, lines = [], []
    for k in sorted(per_class, key=int):
        score = {m: _median(v) for m, v in zip(modalities, per_class[k]) if v}
        label = names[int(k) - 1] if 0 < int(k) <= len(names) else f"class {k}"
        described = ", ".join(f"{m} {v:.2f}" for m, v in score.items())
        best = max(score.values())
        if best < VISIBLE_FLOOR:
            lines.append(f"{label}: no sequence shows it ({described})")
            continue
        shows = [m for m, v in score.items() if v >= SHOWS_SHARE * best]
        if len(shows) == 1:
            kept += [m for m in shows if m not in kept]
            lines.append(f"{label}: only {shows[0]} shows it ({described})")
        else:
            lines.append(f"{label}: {', '.join(shows)} show it ({described})")
    if kept:
        effect = (f"strong views never drop {', '.join(kept)}: without it no input shows that class, and the network "
                  "would learn to guess it; the other sequences are still dropped")
    else:
        effect = "no class is shown by one sequence alone: sequence dropout draws among all of them"
    plan.decide("strong_sequences_kept", [m for m in modalities if m in kept],
                f"how well each sequence shows each class (|2 AUC - 1| of the class's intensities against a ring "
                f"around it, median over the labeled cases; a sequence shows a class at >= {SHOWS_SHARE:g} of the "
                f"clearest's): {'; '.join(lines)}. So {effect}")


def plan_from_fingerprint(fp: dict[str, Any], device: str = "cpu") -> Plan:
    """The plan of a dataset fingerprint for ``device`` (``"cpu"`` or ``"gpu"``)."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {sorted(DEVICES)}, got {device!r}.")
    if not fp.get("cases"):
        raise ValueError("the fingerprint has no cases.")
    dev = DEVICES[device]
    plan = Plan()
    fp = {**fp, "cases": [dict(c) for c in fp["cases"]]}
    modalities = list(fp["modalities"])
    plan.decide("modalities", modalities, "the datalist's modalities, in its order")
    num_classes = int(fp["num_classes"])
    declared = list(fp.get("class_names") or [])
    if len(declared) >= num_classes - 1:
        found = "" if len(declared) == num_classes - 1 else f"; the labels found hold classes 1..{num_classes - 1}"
        plan.decide("class_names", declared, f"the datalist's declared labels, in the order of their values{found}")
    else:
        more = f" (the datalist declares {len(declared)})" if declared else ""
        plan.decide("class_names", [f"class_{i}" for i in range(1, num_classes)],
                    f"labels hold classes 1..{num_classes - 1} besides background{more} (rename with --class_names)")
    num_classes = len(plan.ids["class_names"]) + 1

    # ---- geometry
    two_d, shapes, spacings = _geometry(fp, plan)
    shapes = _content_crop(fp, two_d, shapes, plan)
    n_axes = 2 if two_d else 3
    if two_d:
        inplane = _median([s for sp in spacings for s in sp[:2]])
        target = [inplane, inplane]
        why = f"the median in-plane spacing ({inplane:.4g} mm), as nnU-Net takes the median; slices keep their spacing"
    else:
        target = [_median([sp[a] for sp in spacings]) for a in range(3)]
        why = "the median spacing per axis (RAS), as nnU-Net"
    image_mm = [_median([sh[a] * sp[a] for sh, sp in zip(shapes, spacings)]) for a in range(n_axes)]

    # field of view: where the labeled foreground lies, measured from the image centre
    need = []
    for c in fp["cases"]:
        if c.get("labeled") and c.get("fg_halfwidth_mm"):
            axes = c.get("_planned_axes", None)
            hw = c["fg_halfwidth_mm"]
            if two_d:
                need.append(max(hw[a] for a in axes[:2]))
            else:
                need.append(max(hw))
    crop_mm = None
    if plan.ids["crop_to_content"]:
        # the foreground's distances were measured from the uncropped image's centre
        crop_why = "the images are cropped to their content first: no centred field-of-view crop besides"
    elif need:
        half = max(need) * (1.0 + CROP_MARGIN_SHARE) + CROP_MARGIN_MM
        if 2 * half < NO_CROP_SHARE * min(image_mm):
            crop_mm = [float(_multiple(2 * half, 8))] * n_axes
            crop_why = (f"every labeled structure lies within {max(need):.0f} mm of the image centre; with a "
                        f"{CROP_MARGIN_SHARE:.0%} + {CROP_MARGIN_MM:g} mm margin a centred {crop_mm[0]:g} mm field of view "
                        f"keeps them all (the median image spans {min(image_mm):.0f} mm)")
        else:
            crop_why = (f"labeled structures reach {max(need):.0f} mm from the centre of images {min(image_mm):.0f} mm "
                        f"wide: the whole field of view is kept")
    else:
        crop_why = "no labeled foreground to locate: the whole field of view is kept"

    # ROI and, for 2-D, the in-plane spacing that fits the field of view in it
    fov_mm = crop_mm or image_mm[:n_axes]
    if two_d:
        fov_px = max(f / t for f, t in zip(fov_mm, target))
        if fov_px > dev.max_side_2d:
            coarser = min(max(fov_mm) / dev.max_side_2d, MAX_COARSENING * target[0])
            why += (f"; coarsened to {coarser:.4g} mm so that the {max(fov_mm):.0f} mm field of view fits a "
                    f"{dev.max_side_2d}-pixel ROI (at most {MAX_COARSENING:g}x the median)")
            target = [coarser, coarser]
            fov_px = max(fov_mm) / coarser
        side = min(dev.max_side_2d, _multiple(fov_px, 16))
        roi = [side, side]
        roi_why = (f"the field of view is {fov_px:.0f} pixels at the target spacing: a square {side}-pixel ROI "
                   f"(a multiple of 16, at most {dev.max_side_2d} on {device}) covers {'it' if side >= fov_px else 'part of it; inference slides'}")
    else:
        fov_vox = [f / t for f, t in zip(fov_mm, target)]
        roi = [min(dev.max_side_3d, _multiple(v, 16)) for v in fov_vox]
        roi[0] = roi[1] = max(roi[0], roi[1])  # square in-plane, so that 90-degree rotations keep the shape
        budget = dev.batch_voxels_3d // 2
        while int(np.prod(roi)) > budget and max(roi) > 16:
            big = int(np.argmax(roi))
            for a in ((0, 1) if big in (0, 1) else (2,)):
                roi[a] -= 16
        roi_why = (f"the field of view is {[round(v) for v in fov_vox]} voxels at the target spacing; the ROI is the "
                   f"largest multiple of 16 per axis (square in-plane) within {budget} voxels per patch on {device}, "
                   "so that a batch of 2 keeps the run in its time budget; inference slides over the rest")
    target = [round(t, 4) for t in target]
    plan.decide("pixdim", target, why)
    plan.decide("crop_fov_mm", crop_mm, crop_why)
    plan.decide("roi_size", roi, roi_why)

    # ---- batch: the device's voxel budget of a labeled batch
    if two_d:
        per_batch = max(2, dev.batch_voxels_2d // (roi[0] * roi[1]))
        samples = 2 if per_batch >= 4 else 1
        batch = max(1, per_batch // samples)
        plan.decide("batch_size", batch, f"{dev.batch_voxels_2d} pixels per labeled batch on {device}: "
                    f"{batch} volumes x {samples} slices of {roi[0]}x{roi[1]}", samples_per_volume=samples)
    else:
        batch, samples = 2, 1
        plan.decide("batch_size", 2, "two 3-D patches per batch (nnU-Net's minimum), one per volume",
                    samples_per_volume=1)

    if two_d:
        dice_why = ("2-D slices, many without foreground: the supervised Dice over the whole batch (nnU-Net's batch "
                    "Dice), not per slice; on LGG's validation cases it raised full supervision from 0.796 to 0.810")
    else:
        dice_why = "3-D patches: the supervised Dice per patch (nnU-Net's choice for full-resolution 3-D)"
    plan.decide("batch_dice", two_d, dice_why)

    # ---- sampling: how often a labeled patch is centred on foreground
    labeled = [c for c in fp["cases"] if c.get("labeled") and c.get("fg_slice_share") is not None]
    if labeled:
        if two_d:
            share = _median([c["fg_slice_share"][c["_planned_axes"][2]] for c in labeled])
            what = f"{share:.0%} of the slices (median) hold foreground"
        else:
            share = _median([float(np.prod(c["fg_slice_share"])) for c in labeled])
            what = f"the foreground's bounding box fills {share:.0%} of the volume (median)"
        shares = [s for c in labeled for s in c["class_share"].values()]
        tiny = min(shares) < 1e-3 if shares else False
        pos_share = min(0.75, max(1.0 / 3.0, 1.0 - share))
        if tiny:
            pos_share = 0.75
            what += f"; the smallest class fills {min(shares):.2%} of an image (< 0.1%)"
        pos, neg = min(((1, 2), (1, 1), (2, 1), (3, 1)), key=lambda pn: abs(pn[0] / sum(pn) - pos_share))
        plan.decide("foreground_pos", pos, f"{what}: {pos}:{neg} labeled patches centred on foreground:background "
                    "(at least nnU-Net's one in three, at most three in four)", foreground_neg=neg)
    else:
        plan.decide("foreground_pos", 1, "no labeled foreground found: 1:1", foreground_neg=1)

    # ---- post-processing: keep the largest connected component of classes that are one structure
    if labeled:
        keep, shares_by_class = [], {}
        for k in range(1, num_classes):
            values = [c.get("largest_component_share", {}).get(str(k)) for c in labeled]
            values = [v for v in values if v is not None]
            if values:
                shares_by_class[k] = _median(values)
                if shares_by_class[k] >= ONE_STRUCTURE:
                    keep.append(k)
        described = ", ".join(f"class {k}: {v:.0%}" for k, v in shares_by_class.items())
        plan.decide("keep_largest_component", keep or None,
                    f"median share of a class's voxels in its largest connected component ({described}); classes at "
                    f">= {ONE_STRUCTURE:.0%} are one structure per case, so every other predicted component of them is "
                    "removed (nnU-Net decides the same post-processing, on its validation folds)")

    # ---- intensities, per modality
    schemes, lines = [], []
    for name in modalities:
        st = fp["intensity"][name]
        if _is_ct(name, st):
            low, high = st["fg_p00_5"], st["fg_p99_5"]
            schemes.append({"scheme": "window", "low": round(low, 3), "high": round(high, 3),
                            "mean": round(st["fg_mean"], 3), "std": round(max(st["fg_std"], 1e-3), 3)})
            lines.append(f"{name}: CT (Hounsfield units): clip to the foreground's 0.5-99.5th percentiles "
                         f"[{low:g}, {high:g}], z-score with the foreground's mean and std (nnU-Net's CT scheme)")
        elif _is_uint8(st):
            schemes.append({"scheme": "window", "low": 0.0, "high": 255.0,
                            "mean": round(st["mean"], 3), "std": round(max(st["std"], 1e-3), 3)})
            lines.append(f"{name}: 8-bit data, already windowed by its exporter: kept on its [0, 255] scale, "
                         f"z-scored with the dataset's mean and std")
        else:
            schemes.append({"scheme": "zscore", "lower": 1.0, "upper": 99.0})
            lines.append(f"{name}: MR-like, no physical unit: per image, clip to its 1-99th percentiles, then z-score")
    plan.decide("intensity_schemes", schemes, "; ".join(lines))

    _sequences_kept(fp, plan)

    # ---- network: a UNet as deep as the ROI allows
    smallest = min(roi)
    levels = 1
    while levels < dev.max_levels and smallest / 2 ** levels >= 4:
        levels += 1
    widths = [min(dev.max_width, dev.first_width * 2 ** i) for i in range(levels)]
    plan.decide("unet_channels", widths, f"{levels} levels: the smallest ROI side {smallest} is halved {levels - 1} times, "
                f"keeping >= 4 voxels at the bottom as nnU-Net does (at most {dev.max_levels} levels on {device}); "
                f"widths from {dev.first_width}, doubling, at most {dev.max_width}")

    # ---- budget
    voxels = batch * samples * int(np.prod(roi))
    rate = dev.voxels_per_s_2d if two_d else dev.voxels_per_s_3d
    width_cost = (dev.first_width / 16.0) ** 2 if device == "cpu" else 1.0
    # one planned volume (resampled, cropped, padded to the ROI); an iteration draws `batch` labeled and
    # as many unlabeled ones
    volume = float(np.prod([max(r, f / t) for r, f, t in zip(roi, fov_mm, target)]))
    if two_d:
        volume *= _median([sh[2] for sh in shapes])
    handling = 2 * batch * volume * dev.volume_s_per_voxel
    seconds = SEMI_COST * voxels * width_cost / rate + handling
    handling_why = (f", and {handling:.2f} s to copy and sample {2 * batch} volumes of {volume / 1e6:.2g} M voxels"
                    if handling >= 0.005 else "")
    minutes = dev.minutes_2d if two_d else dev.minutes_3d
    iterations = int(min(dev.max_iterations, max(ITERATIONS_PER_EPOCH, minutes * 60 / seconds)))
    iterations = iterations // ITERATIONS_PER_EPOCH * ITERATIONS_PER_EPOCH
    epochs = iterations // ITERATIONS_PER_EPOCH
    plan.decide("epochs", epochs,
                f"{iterations} iterations of {ITERATIONS_PER_EPOCH}: a semi-supervised iteration on {device} is estimated "
                f"at {seconds:.2f} s ({SEMI_COST:g} supervised passes of {voxels} voxels{handling_why}), so the run takes about "
                f"{iterations * seconds / 60:.0f} min (budget {minutes:g} min, at most {dev.max_iterations} iterations)",
                iterations_per_epoch=ITERATIONS_PER_EPOCH, val_interval=max(1, epochs // VALIDATIONS))
    return plan
