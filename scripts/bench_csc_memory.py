#!/usr/bin/env python
"""Peak memory (forward + backward) of the CSC loss: the bundle's ``ChannelSemanticConsistencyLoss``
against the authors' formulation (a reference implementation written here only for the comparison,
see :func:`official_csc_reference`), at bottleneck features of 3-D crops of several sizes,
extrapolated analytically to 128^3 crops.

    python scripts/bench_csc_memory.py
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import fire
import torch
import torch.nn.functional as F

from bench_common import MIB, peak_memory_bytes
from benchmarking.machine import describe_machine, format_machine
from bundle_path import use_bundle_scripts

use_bundle_scripts()  # the bundle's components, imported where used


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


def format_csc_memory(c: dict[str, Any]) -> list[str]:
    """The report lines of :func:`csc_memory`'s result."""
    out: list[str] = []
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
    return out


def main(**kwargs: Any) -> None:
    """Command line: :func:`csc_memory` with the same arguments, printed with the machine."""
    print("\n".join([format_machine(describe_machine()), *format_csc_memory(csc_memory(**kwargs))]))


if __name__ == "__main__":
    fire.Fire(csc_memory if "--help" in sys.argv or "-h" in sys.argv else main)
