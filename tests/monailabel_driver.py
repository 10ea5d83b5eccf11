"""Runs MONAI Label's own bundle tasks on a bundle in an app's model folder (used by test_monailabel.py).

    python monailabel_driver.py infer <bundle folder> <image> <result.json>
    python monailabel_driver.py train <bundle folder> <studies.json> <max_epochs>

`infer` runs BundleInferTask as the MONAI Label server does and writes {"label": <written file>} to
result.json; `train` runs a plain BundleTrainTask on the labeled studies listed in studies.json
([{"image": ..., "label": ...}], what a datastore's datalist() returns).
"""

from __future__ import annotations

import json
import logging
import sys


class _Datastore:
    """The part of a MONAI Label datastore that BundleTrainTask uses."""

    def __init__(self, studies: list[dict]) -> None:
        self.studies = studies

    def datalist(self) -> list[dict]:
        return self.studies


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO)
    command, bundle = argv[0], argv[1]
    if command == "infer":
        from monailabel.tasks.infer.bundle import BundleInferTask

        task = BundleInferTask(bundle, {})
        assert task.is_valid(), f"BundleInferTask rejected {bundle}"
        label, _ = task({"image": argv[2], "device": "cpu"})
        with open(argv[3], "w") as f:
            json.dump({"label": label}, f)
    elif command == "train":
        from monailabel.tasks.train.bundle import BundleTrainTask

        with open(argv[2]) as f:
            studies = json.load(f)
        task = BundleTrainTask(bundle, {})
        assert task.is_valid(), f"BundleTrainTask rejected {bundle}"
        request = {"model": "multimodal_mri_semisupervised_segmentation", "max_epochs": int(argv[3]),
                   "val_split": 0.2, "device": "cpu", "multi_gpu": False, "pretrained": True}
        task(request, _Datastore(studies))
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv[1:])
