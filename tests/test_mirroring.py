"""Test-time mirroring (scripts.evaluation.mirroring.MirroredInferer) against the formula written out by hand."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SimpleInferer, SlidingWindowInferer

from scripts.evaluation.mirroring import MirroredInferer


def _position_dependent(x: torch.Tensor) -> torch.Tensor:
    """Not mirror-symmetric: each output voxel depends on where it lies (a ramp) and on its neighbour."""
    ramp = torch.arange(x.shape[2], dtype=x.dtype).view(1, 1, -1, 1)
    return x * ramp + torch.roll(x, 1, dims=3)


def test_mean_over_the_input_and_its_three_mirror_images():
    x = torch.randn(2, 3, 6, 5, generator=torch.Generator().manual_seed(0))
    f = _position_dependent
    expected = (
        f(x)
        + f(x.flip(2)).flip(2)
        + f(x.flip(3)).flip(3)
        + f(x.flip(2, 3)).flip(2, 3)
    ) / 4
    got = MirroredInferer(SimpleInferer(), spatial_axes=[0, 1])(x, f)
    torch.testing.assert_close(got, expected)
    # one axis: two passes
    torch.testing.assert_close(MirroredInferer(SimpleInferer(), [1])(x, f), (f(x) + f(x.flip(3)).flip(3)) / 2)


def test_no_axes_is_the_inferer_alone_and_a_symmetric_network_is_unchanged():
    x = torch.randn(1, 2, 16, 16, generator=torch.Generator().manual_seed(1))
    f = _position_dependent
    torch.testing.assert_close(MirroredInferer(SimpleInferer(), None)(x, f), f(x))
    conv = torch.nn.Conv2d(2, 3, 1)  # voxel-wise: mirroring the input mirrors the output
    window = SlidingWindowInferer(roi_size=(8, 8), sw_batch_size=2, overlap=0.25)
    with torch.no_grad():
        torch.testing.assert_close(MirroredInferer(window, [0, 1])(x, conv), window(x, conv), atol=1e-5, rtol=1e-5)


def test_bad_axes_are_refused():
    with pytest.raises(ValueError, match="distinct non-negative"):
        MirroredInferer(SimpleInferer(), [0, 0])
    with pytest.raises(ValueError, match="cannot mirror axes"):
        MirroredInferer(SimpleInferer(), [2])(torch.zeros(1, 1, 4, 4), lambda t: t)


def test_evaluate_and_inference_configs_wrap_their_inferer():
    from monai.bundle import ConfigParser

    from bundle_runner import CONFIGS

    for files, key, base in (
        (["train.yaml", "evaluate.yaml"], "validate#evaluator#inferer", "validate#inferer"),
        (["inference.yaml"], "evaluator#inferer", "inferer"),
    ):
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / f) for f in files])
        parser["test_time_mirror_axes"] = [0, 1]
        inferer = parser.get_parsed_content(key)
        assert isinstance(inferer, MirroredInferer) and inferer.spatial_axes == (0, 1)
        assert type(inferer.inferer) is type(parser.get_parsed_content(base))
        parser["test_time_mirror_axes"] = None
        assert ConfigParser(parser.get()).get_parsed_content(key).spatial_axes == ()  # off by default: one pass
