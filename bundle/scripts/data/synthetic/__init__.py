# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""The embedded synthetic dataset of the quick start: anatomy (the shapes), rendering (the modalities'
images of them) and the dataset writer (files and datalist)."""

from .dataset import SYNTHETIC_LABELS, SyntheticContrast, generate_synthetic_dataset, synthetic_contrast

__all__ = ["SYNTHETIC_LABELS", "SyntheticContrast", "generate_synthetic_dataset", "synthetic_contrast"]
