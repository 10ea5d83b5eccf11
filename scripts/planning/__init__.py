"""Dataset planning for ``scripts/plan.py``: a fingerprint of the dataset (``fingerprint``), the rules
that turn it into bundle ids (``rules``), and the override file they are written to (``plan_file``)."""

from .fingerprint import dataset_fingerprint
from .plan_file import plan_yaml
from .rules import DEVICES, Plan, plan_from_fingerprint

__all__ = ["DEVICES", "Plan", "dataset_fingerprint", "plan_from_fingerprint", "plan_yaml"]
