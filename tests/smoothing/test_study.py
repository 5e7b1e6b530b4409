"""The smoothing study end to end on the `tiny` preset: every sigma and radius reported, files written, resumable."""

import json

import numpy as np
import pytest

from robust_jax.configs import smoothing
from robust_jax.core import verdicts
from robust_jax.core.run import run_study
from robust_jax.smoothing import study
from robust_jax.smoothing.report import CertificationResults
from tests.requirements import require


@pytest.mark.slow
def test_tiny_study_reports_every_sigma_and_radius(tmp_path):
    config = smoothing.get_config("tiny")
    results = run_study(config, str(tmp_path))
    assert list(results["metrics"]["certified_accuracy"]) == list(config.methods) == ["gaussian_consistency"]
    certified = results["metrics"]["certified_accuracy"]["gaussian_consistency"]
    assert set(certified) == {f"sigma={s:g}" for s in config.sigmas} | {"best"}
    for row in certified.values():
        assert list(row) == [f"r={r:g}" for r in config.radii]
        values = list(row.values())
        assert all(0.0 <= v <= 1.0 for v in values)
        assert values == sorted(values, reverse=True)  # certified accuracy cannot grow with the radius
    for r in config.radii:
        assert certified["best"][f"r={r:g}"] == max(certified[f"sigma={s:g}"][f"r={r:g}"] for s in config.sigmas)
    for name in ("certified_accuracy.md", "certified_accuracy.csv", "certified_accuracy.png", "results.json",
                 "inference_cost.json", "gaussian_consistency/certified_accuracy.md",
                 "gaussian_consistency/certify_sigma0.25.tsv"):
        assert (tmp_path / name).exists()
    assert results["metrics"]["inference_flops_per_sample"]["gaussian_consistency"] > 0
    # The per-image units agree with the certified accuracy: the fraction of images certified at radius >= r.
    units = verdicts.check_unit_sets(results["metrics"]["units"])
    assert set(units) == {study.unit_set_name(s) for s in config.sigmas}
    for sigma in config.sigmas:
        unit_set = units[study.unit_set_name(sigma)]
        count = results["metrics"]["certified_examples"]
        assert unit_set["ids"] == [str(k * config.certify_every) for k in range(count)]
        radii = np.asarray(unit_set["values"]["gaussian_consistency"])
        for r in config.radii:
            assert np.mean(radii >= r) == pytest.approx(certified[f"sigma={sigma:g}"][f"r={r:g}"])
    # A second run in the same workdir resumes everything and reports the same numbers.
    again = run_study(config, str(tmp_path))
    assert again["metrics"] == json.loads((tmp_path / "results.json").read_text())["metrics"] == results["metrics"]


def test_paired_units_per_certified_image():
    # Three images: right with radius 0.4, abstained (-1, radius 0), wrong with radius 0.9.
    at_25 = CertificationResults(labels=[1, 2, 3], predictions=[1, -1, 4], radii=[0.4, 0.0, 0.9])
    other = CertificationResults(labels=[1, 2, 3], predictions=[1, 2, 3], radii=[0.1, 0.2, 0.3])
    units = study.paired_units({"a": {0.25: at_25, 0.5: other}, "b": {0.25: other}}, certify_every=3)
    assert verdicts.check_unit_sets(units) is units
    assert units["certified_radius/sigma=0.25"] == {
        "unit": "certified test image", "ids": ["0", "3", "6"],
        "values": {"a": [0.4, -1.0, -1.0], "b": [0.1, 0.2, 0.3]}}
    assert units["certified_radius/sigma=0.5"]["values"] == {"a": [0.1, 0.2, 0.3]}
    short = CertificationResults(labels=[1], predictions=[1], radii=[0.1])
    with pytest.raises(ValueError, match="different numbers of images at sigma=0.25"):
        study.paired_units({"a": {0.25: at_25}, "b": {0.25: short}}, certify_every=3)


@pytest.mark.slow
def test_cifar10_preset_runs_on_mock_tfds_with_folded_resnet(tmp_path, one_device):
    """The cifar10 preset's path (tfds + grain training stream, ResNet with BatchNorm, SGD step schedule, certification
    of every k-th test image through the folded network), shrunk to seconds on tfds's mock data."""
    tfds = require("tensorflow_datasets")
    config = smoothing.get_config("cifar10")
    config.model = "resnet20"
    config.sigmas = (0.25,)
    config.radii = (0.0, 0.25)
    config.num_steps = 2
    config.batch_size = 8
    config.eval_batch_size = 8
    config.log_every = 1
    config.checkpoint_every = 2
    config.n0, config.n, config.certify_batch_size, config.certify_every = 8, 16, 16, 3
    with tfds.testing.mock_data(num_examples=10, policy=tfds.testing.MockPolicy.USE_CODE):
        results = run_study(config, str(tmp_path), mesh=one_device)
    assert results["metrics"]["certified_examples"] == 4  # test indices 0, 3, 6, 9 of the 10 mock records
    assert list(config.methods) == ["gaussian"]
    lines = (tmp_path / "gaussian" / "certify_sigma0.25.tsv").read_text().splitlines()
    assert [int(line.split("\t")[0]) for line in lines[1:]] == [0, 3, 6, 9]
    assert 0.0 <= results["metrics"]["noisy_test_accuracy"]["gaussian"]["sigma=0.25"] <= 1.0
    assert (tmp_path / "gaussian" / "sigma=0.25").exists()


def test_imagenet_preset_is_valid_and_builds_resnet50():
    import jax

    from robust_jax.smoothing import study

    study.check_config(smoothing.get_config("cifar10"), device_count=8)
    config = smoothing.get_config("imagenet")
    study.check_config(config, device_count=8)
    classifier = study.build_classifier(config, num_classes=1000, image_shape=(224, 224, 3))
    params, model_state = jax.eval_shape(classifier.init_fn, jax.random.key(0))
    assert params["head"]["kernel"].shape == (2048, 1000) and "batch_stats" in model_state
    assert config.num_steps == 90 * 1_281_167 // 256 and config.n == 100_000 and config.certify_every == 100
