#!/usr/bin/env python
"""Inference time of one volume: a 4-modality 240x240x155 volume (random intensities) through a 3-D
``CMCNet`` with ``SlidingWindowInferer``, and a MyoPS cardiac case
(``../shared/data/myops/labeled/Case3001``, 3 sequences) through a 2-D ``CMCNet`` slice by slice with
``SliceInferer`` (skipped, with a message, when the data is absent).

    python scripts/bench_inference.py --threads 1
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fire
import torch

from bench_common import MYOPS_CASE, plain, timed
from benchmarking.machine import describe_machine, format_machine
from bundle_path import use_bundle_scripts

use_bundle_scripts()  # the bundle's components, imported where used


def _time_inference(inferer: Any, network: torch.nn.Module, volume: torch.Tensor, repeats: int, amp: bool) -> list[float]:
    network.eval()
    autocast = torch.autocast("cuda") if amp and volume.is_cuda else contextlib.nullcontext()
    times = []
    with torch.no_grad(), autocast:
        for _ in range(int(repeats)):
            times.append(timed(lambda: inferer(volume, network)))
    return times


def brain_volume_inference(
    shape: Sequence[int] = (240, 240, 155),
    modalities: int = 4,
    classes: int = 4,
    roi_size: int = 96,
    sw_batch_size: int = 2,
    overlap: float = 0.25,
    repeats: int = 1,
    channels: Sequence[int] = (16, 32, 64, 128),
) -> dict[str, Any]:
    """Seconds to segment one multimodal volume (random intensities) with a 3-D CMCNet and sliding windows.

    ``channels`` are the network's (the bundle's default unless given).
    """
    from monai.inferers import SlidingWindowInferer

    from scripts.networks import CMCNet

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    network = CMCNet(3, int(modalities), int(classes), channels=tuple(channels)).to(device)
    volume = torch.randn(1, int(modalities), *[int(s) for s in shape], device=device)
    inferer = SlidingWindowInferer(roi_size=[int(roi_size)] * 3, sw_batch_size=int(sw_batch_size), overlap=overlap)
    with torch.no_grad():  # warm-up: one window
        network.eval()
        network(volume[..., : int(roi_size), : int(roi_size), : int(roi_size)][: 1])
    times = _time_inference(inferer, network, volume, repeats, amp=torch.cuda.is_available())
    return {
        "volume_shape": list(volume.shape),
        "roi_size": [int(roi_size)] * 3,
        "sw_batch_size": int(sw_batch_size),
        "overlap": overlap,
        "seconds": times,
        "median_seconds": statistics.median(times),
    }


def cardiac_case_inference(
    case_dir: str | None = None,
    sequences: Sequence[str] = ("C0", "LGE", "T2"),
    classes: int = 4,
    pixdim_mm: float = 1.5,
    roi_size: int = 96,
    sw_batch_size: int = 4,
    overlap: float = 0.25,
    repeats: int = 3,
    channels: Sequence[int] = (16, 32, 64, 128),
) -> dict[str, Any]:
    """Seconds to segment one MyoPS case slice by slice with a 2-D CMCNet (``SliceInferer``).

    The sequences are stacked as channels and resampled in-plane to ``pixdim_mm`` (the through-plane
    spacing is kept); every short-axis slice (the axis with the largest spacing) is segmented with
    ``roi_size`` windows by a ``CMCNet`` with ``channels``. Returns ``{"skipped": reason}`` when the
    case is absent.
    """
    from monai.inferers import SliceInferer
    from monai.transforms import LoadImage, NormalizeIntensity, Spacing

    from scripts.networks import CMCNet

    folder = Path(case_dir) if case_dir else MYOPS_CASE
    files = [folder / f"{folder.name}_{s}.nii.gz" for s in sequences]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        return {"skipped": f"MyoPS case not found ({missing[0]})"}
    loader = LoadImage(image_only=True, ensure_channel_first=True)
    sequence_images = [loader(str(f)) for f in files]
    image = torch.cat(sequence_images, dim=0)
    image.meta = sequence_images[0].meta
    image.affine = sequence_images[0].affine
    spacing = [float(s) for s in sequence_images[0].pixdim[:3]]
    slice_axis = max(range(3), key=lambda a: spacing[a])
    target = [0.0 if a == slice_axis else float(pixdim_mm) for a in range(3)]  # <= 0: keep the spacing
    start = time.perf_counter()
    image = NormalizeIntensity(channel_wise=True)(Spacing(pixdim=target, mode="bilinear")(image))
    preprocessing_s = time.perf_counter() - start
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    volume = plain(image).unsqueeze(0).float().to(device)
    network = CMCNet(2, len(sequences), int(classes), channels=tuple(channels)).to(device)
    inferer = SliceInferer(
        spatial_dim=slice_axis, roi_size=(int(roi_size), int(roi_size)), sw_batch_size=int(sw_batch_size), overlap=overlap
    )
    _time_inference(inferer, network, volume, 1, amp=torch.cuda.is_available())  # warm-up
    times = _time_inference(inferer, network, volume, repeats, amp=torch.cuda.is_available())
    return {
        "case": folder.name,
        "original_shape": list(sequence_images[0].shape[1:]),
        "original_spacing_mm": [round(s, 3) for s in spacing],
        "volume_shape": list(volume.shape),
        "slices": int(volume.shape[2 + slice_axis]),
        "roi_size": [int(roi_size)] * 2,
        "preprocessing_seconds": preprocessing_s,
        "seconds": times,
        "median_seconds": statistics.median(times),
    }


def format_inference(results: dict[str, Any]) -> list[str]:
    """The report lines of the ``brain_inference`` and ``cardiac_inference`` entries of ``results``."""
    out: list[str] = []
    for key, title in (("brain_inference", "sliding-window inference, 3-D CMCNet"),
                       ("cardiac_inference", "slice-by-slice inference, 2-D CMCNet (MyoPS)")):
        r = results.get(key)
        if not r:
            continue
        if "skipped" in r:
            out += ["", f"[{title}] skipped: {r['skipped']}"]
            continue
        detail = f"volume {r['volume_shape']}, roi {r['roi_size']}"
        if "slices" in r:
            detail += f", {r['slices']} slices (from {r['original_shape']} at {r['original_spacing_mm']} mm)"
        out += ["", f"[{title}] {detail}",
                f"  {r['median_seconds']:.2f} s per volume (runs: " + ", ".join(f"{s:.2f}" for s in r["seconds"]) + " s)"]
    return out


def main(threads: int | None = None, brain_roi: int = 96, brain_repeats: int = 1, cardiac_repeats: int = 3) -> None:
    """Command line: both inference timings, printed with the machine."""
    if threads:
        torch.set_num_threads(int(threads))
    results = {"brain_inference": brain_volume_inference(roi_size=brain_roi, repeats=brain_repeats),
               "cardiac_inference": cardiac_case_inference(repeats=cardiac_repeats)}
    print("\n".join([format_machine(describe_machine()), *format_inference(results)]))


if __name__ == "__main__":
    fire.Fire(main)
