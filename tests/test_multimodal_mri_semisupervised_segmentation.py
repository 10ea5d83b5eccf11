"""Model Zoo style unit test of the bundle: what the zoo's `ci/unit_tests/runner.py -b <bundle name>` runs.

Dropped into a zoo checkout as `ci/unit_tests/test_multimodal_mri_semisupervised_segmentation.py`, it
tests `models/multimodal_mri_semisupervised_segmentation` (the working directory is the zoo root);
here it tests a copy of bundle/. Like the zoo's tests it is a `unittest.TestCase` that writes a fake
dataset to a temporary folder and runs the train, evaluate and inference configs with
`monai.bundle.ConfigWorkflow` (initialize, check_properties, run, finalize), one short epoch.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import unittest
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigWorkflow

NAME = "multimodal_mri_semisupervised_segmentation"
ZOO_BUNDLE = os.path.join("models", NAME)
REPO_BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
MODALITIES = ["t1", "t2", "flair"]
SIZE = 32

TRAIN_OVERRIDE = {
    "epochs": 1,
    "iterations_per_epoch": 2,
    "val_interval": 1,
    "batch_size": 2,
    "roi_size": [SIZE, SIZE],
    "cache_rate": 0.0,
    "resume": False,
}


def _bundle_copy(workdir: str) -> str:
    """The zoo's bundle folder when run from a zoo checkout, else a copy of this repository's bundle/."""
    if os.path.isfile(os.path.join(ZOO_BUNDLE, "configs", "metadata.json")):
        return os.path.abspath(ZOO_BUNDLE)
    target = os.path.join(workdir, NAME)
    shutil.copytree(REPO_BUNDLE, target, ignore=lambda folder, names: [
        n for n in names if n == "__pycache__" or (Path(folder) == REPO_BUNDLE and n in ("runs", "data", "eval"))])
    return target


class TestMultimodalMRISemisupervisedSegmentation(unittest.TestCase):
    def setUp(self):
        self.workdir = tempfile.mkdtemp()
        self.bundle_root = _bundle_copy(self.workdir)
        self.dataset_dir = os.path.join(self.workdir, "dataset")
        self.produce_fake_dataset()

    def tearDown(self):
        shutil.rmtree(self.workdir)

    def produce_fake_dataset(self):
        """Per-modality 2-D NIfTI files and labels in 4 classes; a datalist with every split."""
        rng = np.random.RandomState(0)
        os.makedirs(self.dataset_dir)
        cases = []
        for i in range(8):
            case = {"case": f"c{i}"}
            for m in MODALITIES:
                nib.save(nib.Nifti1Image(rng.rand(SIZE, SIZE).astype(np.float32), np.eye(4)),
                         os.path.join(self.dataset_dir, f"c{i}_{m}.nii.gz"))
                case[m] = f"c{i}_{m}.nii.gz"
            nib.save(nib.Nifti1Image(rng.randint(0, 4, (SIZE, SIZE)).astype(np.uint8), np.eye(4)),
                     os.path.join(self.dataset_dir, f"c{i}_seg.nii.gz"))
            case["label"] = f"c{i}_seg.nii.gz"
            cases.append(case)
        unlabeled = [{k: v for k, v in c.items() if k != "label"} for c in cases[2:4]]
        datalist = {"modalities": MODALITIES, "training": cases[:2] + cases[4:6], "unlabeled": unlabeled,
                    "validation": cases[6:7], "testing": cases[7:]}
        with open(os.path.join(self.dataset_dir, "datalist.json"), "w") as f:
            json.dump(datalist, f)

    def _workflow(self, workflow_type: str, configs: list[str], **override) -> ConfigWorkflow:
        return ConfigWorkflow(
            workflow_type=workflow_type,
            config_file=[os.path.join(self.bundle_root, "configs", c) for c in configs],
            logging_file=os.path.join(self.bundle_root, "configs", "logging.conf"),
            meta_file=os.path.join(self.bundle_root, "configs", "metadata.json"),
            bundle_root=self.bundle_root,
            **override,
        )

    def _run(self, workflow: ConfigWorkflow, check: bool = True) -> None:
        workflow.initialize()
        if check:
            missing = workflow.check_properties()
            self.assertFalse(missing, f"check properties for {workflow.workflow_type} config failed: {missing}")
        workflow.run()
        workflow.finalize()

    @pytest.mark.slow  # long in-process training
    def test_train_eval_config(self):
        out = os.path.join(self.workdir, "out")
        override = dict(TRAIN_OVERRIDE, dataset_dir=self.dataset_dir, output_dir=out, ckpt_dir=out)
        self._run(self._workflow("train", ["train.yaml"], **override))
        self.assertTrue(os.path.isfile(os.path.join(out, "model.pt")))
        eval_dir = os.path.join(self.workdir, "eval")
        # evaluate.yaml overrides train.yaml: no property check, as in the zoo's tests
        self._run(self._workflow("eval", ["train.yaml", "evaluate.yaml"], **dict(override, output_dir=eval_dir)),
                  check=False)
        self.assertTrue(os.path.isfile(os.path.join(eval_dir, "metrics.json")))

    def test_infer_config(self):
        out = os.path.join(self.workdir, "pred")
        workflow = self._workflow("infer", ["inference.yaml"], dataset_dir=self.dataset_dir, output_dir=out,
                                  roi_size=[SIZE, SIZE])
        self._run(workflow)
        written = sorted(os.listdir(out))
        self.assertEqual(written, ["c7_seg.nii.gz"])
        self.assertEqual(nib.load(os.path.join(out, written[0])).shape, (SIZE, SIZE))


if __name__ == "__main__":
    unittest.main()
