"""Tests of the loss-weight schedules."""

from __future__ import annotations

import math

import pytest

from scripts.methods.rampup import ConstantWeight, CosineRampDown, LinearRampUp, SigmoidRampUp


class TestSigmoidRampUp:
    def test_values(self):
        schedule = SigmoidRampUp(weight=2.0, length=10.0, start=5.0)
        assert schedule(0.0) == 0.0
        assert schedule(4.999) == 0.0
        assert schedule(5.0) == pytest.approx(2.0 * math.exp(-5.0))
        assert schedule(10.0) == pytest.approx(2.0 * math.exp(-5.0 * 0.25))  # t = 0.5
        assert schedule(7.5) == pytest.approx(2.0 * math.exp(-5.0 * 0.75**2))  # fractional epoch
        assert schedule(15.0) == pytest.approx(2.0)
        assert schedule(1000.0) == pytest.approx(2.0)

    def test_monotone(self):
        schedule = SigmoidRampUp(weight=1.0, length=40.0)
        values = [schedule(e / 2) for e in range(100)]
        assert all(a <= b for a, b in zip(values, values[1:]))
        assert values[-1] == 1.0

    def test_zero_length(self):
        schedule = SigmoidRampUp(weight=0.3, length=0.0, start=2.0)
        assert schedule(1.9) == 0.0
        assert schedule(2.0) == pytest.approx(0.3)
        assert schedule(50.0) == pytest.approx(0.3)

    def test_default_start(self):
        schedule = SigmoidRampUp(weight=1.0, length=4.0)
        assert schedule(-1.0) == 0.0
        assert schedule(0.0) == pytest.approx(math.exp(-5.0))
        assert schedule(4.0) == pytest.approx(1.0)


class TestLinearRampUp:
    def test_values(self):
        schedule = LinearRampUp(weight=4.0, length=8.0, start=2.0)
        expected = {0.0: 0.0, 2.0: 0.0, 4.0: 1.0, 6.0: 2.0, 10.0: 4.0, 100.0: 4.0}  # 4 * (epoch - 2) / 8, clipped
        assert [schedule(e) for e in expected] == pytest.approx(list(expected.values()))

    def test_zero_length(self):
        schedule = LinearRampUp(weight=1.5, length=0.0, start=3.0)
        assert schedule(2.5) == 0.0
        assert schedule(3.0) == pytest.approx(1.5)


class TestCosineRampDown:
    def test_values_against_the_hand_formula(self):
        schedule = CosineRampDown(weight=2.0, length=10.0, start=4.0)
        assert schedule(0.0) == 0.0
        assert schedule(3.999) == 0.0
        assert schedule(4.0) == pytest.approx(2.0)  # t = 0: cos(0) = 1
        assert schedule(6.5) == pytest.approx(2.0 * 0.5 * (math.cos(math.pi * 0.25) + 1.0))  # t = 0.25
        assert schedule(9.0) == pytest.approx(1.0)  # t = 0.5: half the weight
        assert schedule(11.5) == pytest.approx(2.0 * 0.5 * (math.cos(math.pi * 0.75) + 1.0))
        assert schedule(14.0) == pytest.approx(0.0, abs=1e-12)
        assert schedule(100.0) == pytest.approx(0.0, abs=1e-12)

    def test_official_cmc_cac_weight(self):
        # the CMC authors' CAC weight 0.5 * (cos(pi * epoch / max_epochs) + 1), active from 70% of 500 epochs
        schedule = CosineRampDown(weight=1.0, length=500.0)
        for epoch in (350.0, 400.0, 499.0):
            assert schedule(epoch) == pytest.approx(0.5 * (math.cos(math.pi * epoch / 500.0) + 1.0))
        assert schedule(350.0) == pytest.approx(0.2061, abs=1e-4)

    def test_monotone_decreasing(self):
        schedule = CosineRampDown(weight=1.0, length=20.0)
        values = [schedule(e / 4) for e in range(100)]
        assert all(a >= b for a, b in zip(values, values[1:]))
        assert values[0] == 1.0

    def test_zero_length(self):
        schedule = CosineRampDown(weight=0.3, length=0.0, start=2.0)
        assert schedule(1.9) == 0.0
        assert schedule(2.0) == pytest.approx(0.0, abs=1e-12)


class TestConstantWeight:
    def test_values(self):
        schedule = ConstantWeight(weight=0.7, start=1.0)
        assert schedule(0.0) == 0.0
        assert schedule(0.99) == 0.0
        assert schedule(1.0) == pytest.approx(0.7)
        assert schedule(500.0) == pytest.approx(0.7)
        assert ConstantWeight(weight=0.2)(0.0) == pytest.approx(0.2)


@pytest.mark.parametrize("cls", [SigmoidRampUp, LinearRampUp, CosineRampDown, ConstantWeight])
class TestValidation:
    def test_negative_weight(self, cls):
        with pytest.raises(ValueError):
            cls(weight=-1.0)

    def test_negative_length(self, cls):
        with pytest.raises(ValueError):
            cls(weight=1.0, length=-1.0)

    def test_negative_start(self, cls):
        with pytest.raises(ValueError):
            cls(weight=1.0, start=-2.0)

    def test_non_finite(self, cls):
        with pytest.raises(ValueError):
            cls(weight=float("nan"))
        with pytest.raises(ValueError):
            cls(weight=1.0, length=float("inf"))

    def test_returns_float(self, cls):
        value = cls(weight=1, length=2, start=0)(1)
        assert isinstance(value, float)
