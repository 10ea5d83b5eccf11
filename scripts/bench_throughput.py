#!/usr/bin/env python
"""Training throughput, CSC loss memory and sliding-window inference time of the bundle, in one run.

Three measurements, printed with the machine they ran on:

1. **Training throughput**: samples per second of the bundle's workflow (``train.yaml`` parsed with
   ``monai.bundle.ConfigParser``, ``SemiSupervisedTrainer.run()`` with the configured iteration
   handlers: loss logging, TensorBoard, progress bar, learning-rate schedule; validation and the
   per-epoch training-state checkpoint are left out) against a minimal hand-written PyTorch loop
   doing the same forward/backward/step (same ``CMCNet``, same ``CMCMethod`` losses, same batch
   sizes, batches drawn beforehand and kept in memory as plain tensors). The two are timed in
   alternation, ``repeats`` times each after a warm-up, and the ratio of the medians is reported;
   below ``min_ratio`` (or with ``--profile``) the workflow is profiled with cProfile.
2. **CSC loss peak memory**: the bundle's ``ChannelSemanticConsistencyLoss`` against the authors'
   formulation (a reference implementation written here only for the comparison, see
   :func:`official_csc_reference`), forward and backward, at bottleneck features of 3-D crops of
   several sizes, extrapolated analytically to 128^3 crops.
3. **Sliding-window inference time** of one volume: a 4-modality 240x240x155 volume (random
   intensities) through a 3-D ``CMCNet`` with ``SlidingWindowInferer``, and a MyoPS cardiac case
   (``../shared/data/myops/labeled/Case3001``, 3 sequences) through a 2-D ``CMCNet`` slice by slice
   with ``SliceInferer`` (skipped, with a message, when the data is absent).

Example (the figures in bundle/docs/README.md):
    python scripts/bench_throughput.py --iterations 8 --repeats 3
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import json
import logging
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import fire
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundle"
CONFIGS = BUNDLE / "configs"
MYOPS_CASE = REPO_ROOT.parent / "shared" / "data" / "myops" / "labeled" / "Case3001"
if str(BUNDLE) not in sys.path:
    sys.path.insert(0, str(BUNDLE))  # the bundle's components, importable as `scripts`

MIB = 2**20


# ------------------------------------------------------------------------------------------------ machine
def machine_description() -> dict[str, Any]:
    """CPU model, core counts, accelerator and library versions of this machine."""
    import monai

    cpu_model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": cpu_model,
        "nproc": usable,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
    }


# ------------------------------------------------------------------------------------------------ memory
def peak_memory_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes of tensor memory allocated by ``fn()`` above what was allocated before it.

    On a CUDA device: ``torch.cuda.max_memory_allocated``. On the CPU, where torch keeps no such
    counter, the allocations and frees recorded by ``torch.profiler`` (``profile_memory=True``) are
    replayed in time order and the running total's maximum is taken. Both count tensor storage
    only (not the Python interpreter or allocator caches), so the figures compare formulations.
    """
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - before)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # an allocation is reported as the allocating op's own memory, a free as a "[memory]" event
    changes = sorted(
        (event.time_range.start, event.self_cpu_memory_usage)
        for event in prof.events()
        if event.self_cpu_memory_usage
    )
    live = peak = 0
    for _, delta in changes:
        live += delta
        peak = max(peak, live)
    return int(peak)


def official_csc_reference(features_a: torch.Tensor, features_b: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """The CSC loss as the authors' public code formulates it; a reference for the memory comparison only.

    For every batch element the ``(C, *spatial)`` bottleneck feature of each modality is reshaped
    (without transposing) into rows of ``C`` consecutive values, ``N = C * prod(spatial) / C`` rows;
    the rows of the two modalities are the samples of an NT-Xent contrast (row ``i`` of modality a
    and row ``i`` of modality b are positives, every other row a negative). The cosine similarity of
    all ``2N x 2N`` pairs is computed by broadcasting, as written there, which materialises a
    ``2N x 2N x C`` product. The per-element losses are averaged over the batch.

    Not used for training: the bundle's ``ChannelSemanticConsistencyLoss`` contrasts the ``C``
    channels instead and never forms anything of size ``N x N``.
    """
    batch, channels = features_a.shape[:2]
    total = features_a.new_zeros(())
    for b in range(batch):
        rows_a = features_a[b].reshape(-1, channels)
        rows_b = features_b[b].reshape(-1, channels)
        n = rows_a.shape[0]
        samples = torch.cat([rows_a, rows_b], dim=0)
        similarity = F.cosine_similarity(samples.unsqueeze(1), samples.unsqueeze(0), dim=2)  # (2N, 2N)
        positives = torch.cat([torch.diagonal(similarity, n), torch.diagonal(similarity, -n)])
        others = ~torch.eye(2 * n, dtype=torch.bool, device=samples.device)
        denominator = (torch.exp(similarity / temperature) * others).sum(dim=1)
        total = total + (-torch.log(torch.exp(positives / temperature) / denominator)).mean()
    return total / batch


def csc_memory(
    crop_sizes: Sequence[int] = (32, 48, 64),
    batch_size: int = 2,
    channels: int = 128,
    downsampling: int = 8,
    temperature: float = 0.5,
    target_crop: int = 128,
) -> dict[str, Any]:
    """Peak memory (forward + backward) of the CSC loss, the bundle's and the authors' formulation.

    The features are two modalities' bottlenecks of a 3-D ``CMCNet`` (``channels`` channels, crop
    size / ``downsampling`` voxels per axis: 128 and 8 for the default ``channels=(16, 32, 64, 128)``).
    Each formulation's peak is fitted (least squares over the measured sizes) as a constant plus a
    multiple of its dominant term (bundle: ``B C V`` floats for ``V`` bottleneck voxels; authors':
    ``(2N)^2 C`` floats, ``N = V`` rows, one batch element at a time) and extrapolated to
    ``target_crop``^3 crops.
    """
    from scripts.losses.channel_semantic_consistency import ChannelSemanticConsistencyLoss

    ours = ChannelSemanticConsistencyLoss(temperature=temperature)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for crop in crop_sizes:
        side = max(1, int(crop) // int(downsampling))
        shape = (int(batch_size), int(channels), side, side, side)
        voxels = side**3
        row: dict[str, Any] = {"crop": int(crop), "feature_shape": list(shape), "rows_N": voxels}
        for name, loss_fn in (("bundle", lambda a, b: ours([a, b])), ("official", lambda a, b: official_csc_reference(a, b, temperature))):
            g = torch.Generator().manual_seed(0)
            a = torch.randn(shape, generator=g).to(device).requires_grad_(True)
            b = torch.randn(shape, generator=g).to(device).requires_grad_(True)

            def forward_backward(a=a, b=b, loss_fn=loss_fn):
                loss_fn(a, b).backward()

            start = time.perf_counter()
            row[f"{name}_peak_mib"] = peak_memory_bytes(forward_backward) / MIB
            row[f"{name}_seconds"] = time.perf_counter() - start
        row["ratio_official_over_bundle"] = row["official_peak_mib"] / max(row["bundle_peak_mib"], 1e-9)
        rows.append(row)

    # peak = fixed + k * dominant term (float32 elements), least squares over the measured sizes
    def bundle_term(voxels: int) -> float:
        return 4.0 * batch_size * channels * voxels / MIB

    def official_term(voxels: int) -> float:
        return 4.0 * (2 * voxels) ** 2 * channels / MIB

    def fit(terms: list[float], peaks: list[float]) -> tuple[float, float]:
        if len(terms) < 2:
            return 0.0, peaks[0] / terms[0]
        mean_t, mean_p = statistics.fmean(terms), statistics.fmean(peaks)
        var = sum((t - mean_t) ** 2 for t in terms)
        k = sum((t - mean_t) * (p - mean_p) for t, p in zip(terms, peaks)) / var if var > 0 else mean_p / mean_t
        return max(mean_p - k * mean_t, 0.0), k

    bundle_fixed, k_bundle = fit([bundle_term(r["rows_N"]) for r in rows], [r["bundle_peak_mib"] for r in rows])
    official_fixed, k_official = fit([official_term(r["rows_N"]) for r in rows], [r["official_peak_mib"] for r in rows])
    target_side = int(target_crop) // int(downsampling)
    bundle_mib = bundle_fixed + k_bundle * bundle_term(target_side**3)
    official_mib = official_fixed + k_official * official_term(target_side**3)
    return {
        "device": str(device),
        "measured": rows,
        "fit": {
            "bundle": f"{bundle_fixed:.2f} MiB + {k_bundle:.2f} x (B*C*V float32)",
            "official": f"{official_fixed:.2f} MiB + {k_official:.2f} x ((2N)^2*C float32 per batch element)",
        },
        "extrapolated": {
            "crop": int(target_crop),
            "feature_shape": [int(batch_size), int(channels), target_side, target_side, target_side],
            "bundle_peak_mib": bundle_mib,
            "official_peak_mib": official_mib,
            "ratio_official_over_bundle": official_mib / bundle_mib,
        },
    }


# ------------------------------------------------------------------------------------------------ training
def _plain(x: Any) -> torch.Tensor:
    """A plain tensor (a MetaTensor's data without its metadata)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def build_training(
    iterations: int,
    batch_size: int,
    num_workers: int,
    workdir: str,
    synthetic_dir: str | None = None,
    synthetic: dict | None = None,
    spatial_dims: int = 2,
    roi_size: int | None = None,
    loader: str | None = None,
) -> dict[str, Any]:
    """The CMC training workflow of ``train.yaml`` (one epoch of ``iterations``), parsed but not run;
    ``loader`` replaces the class of its two training loaders (e.g. ``DataLoader``)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.yaml")])
    overrides: dict[str, Any] = {
        "bundle_root": str(BUNDLE),
        "output_dir": os.path.join(workdir, "out"),
        "ckpt_dir": os.path.join(workdir, "models"),
        "epochs": 1,
        "iterations_per_epoch": int(iterations),
        "val_interval": 10**9,  # the ValidationHandler stays attached but never fires
        "batch_size": int(batch_size),
        "num_workers": int(num_workers),
        "spatial_dims": int(spatial_dims),
        "validate_voxels": False,
    }
    if roi_size is not None:
        overrides["roi_size"] = [int(roi_size)] * int(spatial_dims)
    if synthetic_dir is not None:
        overrides["synthetic_dir"] = synthetic_dir
    if synthetic is not None:
        overrides["synthetic"] = dict(synthetic)
    if loader is not None:
        overrides["train#dataloader#_target_"] = loader
        overrides["train#unlabeled_dataloader#_target_"] = loader
    for key, value in overrides.items():
        parser[key] = value
    parser.parse(True)
    if "initialize" in parser:  # the seeds, as `monai.bundle run` does
        parser.get_parsed_content("initialize")
    trainer = parser.get_parsed_content("train#trainer")
    return {"parser": parser, "trainer": trainer}


def _draw_batches(trainer: Any, iterations: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """``iterations`` (image, label, unlabeled) batches from the workflow's own loaders, as plain tensors
    on the training device."""
    device = trainer.state.device
    batches = []
    labeled_iter = iter(trainer.data_loader)
    for _ in range(iterations):
        try:
            batch = next(labeled_iter)
        except StopIteration:
            labeled_iter = iter(trainer.data_loader)
            batch = next(labeled_iter)
        unlabeled = trainer.next_unlabeled()
        batches.append(
            (
                _plain(batch["image"]).to(device),
                _plain(batch["label"]).to(device),
                None if unlabeled is None else _plain(unlabeled).to(device),
            )
        )
    return batches


def _manual_loop(trainer: Any, batches: list, epoch_length: int) -> None:
    """What a hand-written PyTorch loop does per iteration, with the workflow's own network, method and optimizer."""
    network, method, optimizer = trainer.network, trainer.method, trainer.optimizer
    use_amp = bool(trainer.amp and trainer.scaler is not None)
    network.train()
    method.train()
    for i, (image, label, unlabeled) in enumerate(batches):
        epoch = i / max(epoch_length, 1)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda") if use_amp else contextlib.nullcontext():
            out = method.step(network, image, label, unlabeled, epoch)
        if use_amp:
            trainer.scaler.scale(out.loss).backward()
            trainer.scaler.step(optimizer)
            trainer.scaler.update()
        else:
            out.loss.backward()
            optimizer.step()
        method.after_optimizer_step(network, epoch)
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any]) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _profile(fn: Callable[[], Any], lines: int = 25) -> str:
    """cProfile of ``fn()``: where a workflow run spends its time (iteration, data loading, the rest),
    then the functions by cumulative time."""
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    fn()
    profiler.disable()
    total = time.perf_counter() - start
    stats = pstats.Stats(profiler)

    def cumulative(file_end: str, name: str) -> float:
        return sum(
            ct for (file, _, func), (_, _, _, ct, _) in stats.stats.items()  # type: ignore[attr-defined]
            if func == name and file.endswith(file_end)
        )

    iteration = cumulative(os.path.join("engine", "trainer.py"), "_iteration")
    data = cumulative(os.path.join("dataloader.py"), "__next__")
    unlabeled = cumulative(os.path.join("engine", "trainer.py"), "next_unlabeled")
    labeled = max(data - unlabeled, 0.0)  # the unlabeled batches are drawn inside the iteration
    compute = iteration - unlabeled
    stream = io.StringIO()
    stream.write(
        f"  breakdown of one run ({total:.2f} s under cProfile): forward/backward/step {compute:.2f} s "
        f"({100 * compute / total:.1f}%), data loading {data:.2f} s ({100 * data / total:.1f}%: labeled "
        f"{labeled:.2f} s, unlabeled {unlabeled:.2f} s), handlers and engine {total - compute - labeled - unlabeled:.2f} s "
        f"({100 * (total - compute - labeled - unlabeled) / total:.1f}%)\n"
    )
    stats.stream = stream  # type: ignore[attr-defined]
    stats.strip_dirs().sort_stats("cumulative").print_stats(lines)
    return stream.getvalue()


def training_throughput(
    iterations: int = 8,
    repeats: int = 3,
    batch_size: int = 8,
    num_workers: int = 0,
    min_ratio: float = 0.95,
    profile: bool = False,
    synthetic_dir: str | None = None,
    synthetic: dict | None = None,
    roi_size: int | None = None,
    compare_loader: str | None = "ThreadDataLoader",
) -> dict[str, Any]:
    """Samples per second of the bundle workflow and of a hand-written loop, timed in alternation.

    A sample is one image of the iteration's labeled or unlabeled batch. ``synthetic_dir`` /
    ``synthetic`` default to the bundle's embedded dataset (generated once under ``bundle/data``).
    ``compare_loader``: also time the workflow with its training loaders replaced by this class
    (``ThreadDataLoader``: batches prepared in a background thread while the network computes), in
    the same alternation; ``None`` skips it.
    """
    logging.basicConfig(level=logging.INFO, stream=open(os.devnull, "w"), force=True)  # logs formatted, not shown
    with tempfile.TemporaryDirectory() as workdir:
        built = build_training(iterations, batch_size, num_workers, workdir, synthetic_dir, synthetic, roi_size=roi_size)
        trainer = built["trainer"]
        samples_per_iteration = int(batch_size) + (
            int(built["parser"].get_parsed_content("unlabeled_batch_size")) if trainer._has_unlabeled() else 0
        )
        batches = _draw_batches(trainer, iterations)
        other = None
        if compare_loader:
            other = build_training(iterations, batch_size, num_workers, os.path.join(workdir, "other"),
                                   synthetic_dir, synthetic, roi_size=roi_size, loader=compare_loader)["trainer"]

        def one_more_epoch(engine: Any = trainer) -> None:
            # `run()` continues from the previous state: one more epoch of `iterations` iterations
            engine.state.max_epochs = engine.state.epoch + 1
            engine.run()

        # warm-up (allocations, first data-loader iterator), then alternate
        one_more_epoch()
        _manual_loop(trainer, batches, iterations)
        if other is not None:
            one_more_epoch(other)
        bundle_times, manual_times, other_times = [], [], []
        for _ in range(int(repeats)):
            bundle_times.append(_timed(one_more_epoch))
            manual_times.append(_timed(lambda: _manual_loop(trainer, batches, iterations)))
            if other is not None:
                other_times.append(_timed(lambda: one_more_epoch(other)))
        samples = samples_per_iteration * int(iterations)
        bundle_rate = samples / statistics.median(bundle_times)
        manual_rate = samples / statistics.median(manual_times)
        # adjacent runs share the machine's load best: the median of their ratios is the steadier figure
        paired = statistics.median(m / b for b, m in zip(bundle_times, manual_times))
        result: dict[str, Any] = {
            "iterations": int(iterations),
            "repeats": int(repeats),
            "samples_per_iteration": samples_per_iteration,
            "input_shape": list(batches[0][0].shape),
            "num_workers": int(num_workers),
            "amp": bool(trainer.amp),
            "bundle_seconds": bundle_times,
            "manual_seconds": manual_times,
            "bundle_samples_per_s": bundle_rate,
            "manual_samples_per_s": manual_rate,
            "ratio_bundle_over_manual": bundle_rate / manual_rate,
            "paired_ratio_median": paired,
            "loader": type(trainer.data_loader).__name__,
        }
        if other is not None:
            result["compare_loader"] = {
                "loader": type(other.data_loader).__name__,
                "seconds": other_times,
                "samples_per_s": samples / statistics.median(other_times),
                "ratio_over_manual": manual_rate and (samples / statistics.median(other_times)) / manual_rate,
                "paired_ratio_median": statistics.median(m / o for o, m in zip(other_times, manual_times)),
            }
        if profile or min(result["ratio_bundle_over_manual"], paired) < min_ratio:
            result["profile"] = _profile(one_more_epoch)
        return result


# ------------------------------------------------------------------------------------------------ inference
def _time_inference(inferer: Any, network: torch.nn.Module, volume: torch.Tensor, repeats: int, amp: bool) -> list[float]:
    network.eval()
    autocast = torch.autocast("cuda") if amp and volume.is_cuda else contextlib.nullcontext()
    times = []
    with torch.no_grad(), autocast:
        for _ in range(int(repeats)):
            times.append(_timed(lambda: inferer(volume, network)))
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
    volume = _plain(image).unsqueeze(0).float().to(device)
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


# ------------------------------------------------------------------------------------------------ report
def _format_report(results: dict[str, Any]) -> str:
    m = results["machine"]
    out = [
        f"machine: {m['cpu_model']}, {m['nproc']} usable cores, torch threads {m['torch_threads']}, "
        f"GPU {m['gpu'] or 'none'}; Python {m['python']}, torch {m['torch']}, MONAI {m['monai']}",
    ]
    t = results.get("training")
    if t:
        out += [
            "",
            f"[training throughput] CMC, input {t['input_shape']}, {t['samples_per_iteration']} samples/iteration "
            f"(labeled + unlabeled), {t['iterations']} iterations x {t['repeats']} alternating repeats, "
            f"num_workers {t['num_workers']}, amp {t['amp']}",
            f"  bundle workflow ({t['loader']}): {t['bundle_samples_per_s']:8.2f} samples/s  (runs: "
            + ", ".join(f"{s:.2f}" for s in t["bundle_seconds"]) + " s)",
            f"  hand-written    : {t['manual_samples_per_s']:8.2f} samples/s  (runs: "
            + ", ".join(f"{s:.2f}" for s in t["manual_seconds"]) + " s)",
            f"  ratio bundle / hand-written: {t['ratio_bundle_over_manual']:.3f} (medians), "
            f"{t['paired_ratio_median']:.3f} (median of adjacent pairs)",
        ]
        o = t.get("compare_loader")
        if o:
            out += [
                f"  bundle workflow with {o['loader']}: {o['samples_per_s']:8.2f} samples/s  (runs: "
                + ", ".join(f"{s:.2f}" for s in o["seconds"]) + " s)",
                f"  ratio with {o['loader']} / hand-written: {o['ratio_over_manual']:.3f} (medians), "
                f"{o['paired_ratio_median']:.3f} (median of adjacent pairs)",
            ]
        if "profile" in t:
            out += ["  profile of one workflow run (cProfile, cumulative):", t["profile"]]
    c = results.get("csc_memory")
    if c:
        out += ["", f"[CSC loss peak memory, forward + backward, {c['device']}]"]
        out.append("  crop  | feature shape        | bundle MiB | official MiB | official / bundle")
        for r in c["measured"]:
            out.append(
                f"  {r['crop']:>3}^3 | {str(r['feature_shape']):<20} | {r['bundle_peak_mib']:10.2f} | "
                f"{r['official_peak_mib']:12.1f} | {r['ratio_official_over_bundle']:10.1f}x"
            )
        out.append(f"  fit: bundle {c['fit']['bundle']}; official {c['fit']['official']}")
        e = c["extrapolated"]
        out.append(
            f"  {e['crop']:>3}^3 | {str(e['feature_shape']):<20} | {e['bundle_peak_mib']:10.2f} | "
            f"{e['official_peak_mib']:12.0f} | {e['ratio_official_over_bundle']:10.0f}x  (extrapolated)"
        )
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
    return "\n".join(out)


def run_benchmarks(
    sections: Sequence[str] = ("training", "memory", "inference"),
    iterations: int = 8,
    repeats: int = 3,
    batch_size: int = 8,
    num_workers: int = 0,
    profile: bool = False,
    compare_loader: str | None = "ThreadDataLoader",
    crop_sizes: Sequence[int] = (32, 48, 64),
    threads: int | None = None,
    brain_roi: int = 96,
    brain_repeats: int = 1,
    cardiac_repeats: int = 3,
    output: str | None = None,
) -> dict[str, Any]:
    """Run the chosen measurements in this one process, print them with the machine description and
    return every figure.

    Args:
        sections: any of ``training``, ``memory``, ``inference``.
        iterations: training iterations per timed run.
        repeats: timed runs of each training loop (alternating bundle / hand-written).
        batch_size: labeled (and unlabeled) batch size.
        num_workers: data-loading workers of the workflow.
        profile: profile the workflow even when it is fast enough.
        compare_loader: also time the workflow with this class as its training loaders (default
            ``ThreadDataLoader``, which prepares batches in a background thread); ``None`` skips it.
        crop_sizes: 3-D crop sizes at which the CSC losses are measured.
        threads: ``torch.set_num_threads`` for every measurement (default: torch's choice, one per
            core). On a machine whose cores are shared with other jobs, 1 avoids the stalls of
            multi-threaded CPU kernels waiting for a busy core, which otherwise dominate small copies.
        brain_roi: sliding-window size of the 3-D inference.
        brain_repeats: timed runs of the 3-D inference.
        cardiac_repeats: timed runs of the cardiac inference.
        output: also write every figure to this JSON file.
    """
    if isinstance(sections, str):
        sections = [sections]
    if threads is not None:
        torch.set_num_threads(int(threads))
    results: dict[str, Any] = {"machine": machine_description(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    if "training" in sections:
        results["training"] = training_throughput(iterations, repeats, batch_size, num_workers, profile=profile,
                                                  compare_loader=compare_loader)
    if "memory" in sections:
        results["csc_memory"] = csc_memory(crop_sizes)
    if "inference" in sections:
        results["brain_inference"] = brain_volume_inference(roi_size=brain_roi, repeats=brain_repeats)
        results["cardiac_inference"] = cardiac_case_inference(repeats=cardiac_repeats)
    print(_format_report(results), flush=True)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


def main(**kwargs: Any) -> None:
    """Command-line entry point: :func:`run_benchmarks` with the same arguments, printing only the report."""
    run_benchmarks(**kwargs)


if __name__ == "__main__":
    fire.Fire(run_benchmarks if "--help" in sys.argv or "-h" in sys.argv else main)
