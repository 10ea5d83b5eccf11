"""The bundle's metadata against the MONAI schema (offline copy in ../shared)."""

from __future__ import annotations

import json

import pytest

from bundle_runner import BUNDLE, REPO_ROOT, run_bundle

SCHEMA = REPO_ROOT.parent / "shared" / "schemas" / "meta_schema_20240725.json"


@pytest.mark.skipif(not SCHEMA.is_file(), reason="../shared/schemas/meta_schema_20240725.json is absent")
def test_verify_metadata_against_shared_schema():
    proc = run_bundle(["verify_metadata", "--meta_file", str(BUNDLE / "configs" / "metadata.json"), "--filepath", str(SCHEMA)])
    assert "metadata is verified with no error" in proc.stdout + proc.stderr


def test_metadata_matches_config():
    from monai.bundle import ConfigParser

    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.yaml"))
    modalities = parser.get_parsed_content("modalities")  # the embedded dataset's (no datalist given)
    classes = parser.get_parsed_content("class_names")
    image = meta["network_data_format"]["inputs"]["image"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert image["num_channels"] == len(modalities)
    assert [image["channel_def"][str(i)] for i in range(len(modalities))] == modalities
    assert pred["num_channels"] == len(classes) + 1
    assert [pred["channel_def"][str(i + 1)] for i in range(len(classes))] == classes
