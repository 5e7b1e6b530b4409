"""The 2D-OOD corruptions against closed forms and statistical bounds, the evaluation split, and the report."""

import csv

import numpy as np
import pytest

from robust_jax.data import multiview
from robust_jax.omniview import evaluation, report, zero_shot


def test_blur_of_a_point_is_the_normalised_gaussian():
    sigma = 1.3
    image = np.zeros((15, 15, 1))
    image[7, 7] = 1.0
    got = evaluation.gaussian_blur(image, sigma)[..., 0]
    offsets = np.arange(15) - 7.0
    radius = int(np.ceil(3 * sigma))
    g = np.where(np.abs(offsets) <= radius, np.exp(-offsets**2 / (2 * sigma**2)), 0.0)
    g /= g.sum()
    np.testing.assert_allclose(got, np.outer(g, g), atol=1e-12)
    np.testing.assert_allclose(evaluation.gaussian_blur(np.full((6, 6, 3), 0.4), sigma), 0.4)  # flat stays flat


def test_noise_and_colour_shift_are_what_they_claim():
    grey = np.full((64, 64, 3), 128, np.uint8)
    noisy = evaluation.corrupt(grey, "noise", np.random.default_rng(0)).astype(float) / 255
    residual = noisy - 128 / 255
    # 12,288 draws: the sample std is within 3 % of sigma (rounding to 1/255 adds variance 1/12 / 255^2).
    assert abs(residual.std() - np.hypot(evaluation.NOISE_SIGMA, 1 / 255 / np.sqrt(12))) < 0.03 * evaluation.NOISE_SIGMA
    assert abs(residual.mean()) < 4 * evaluation.NOISE_SIGMA / np.sqrt(residual.size)
    ramp = np.tile(np.linspace(60, 200, 16).astype(np.uint8)[:, None, None], (1, 4, 3))
    shifted = evaluation.corrupt(ramp, "colour_shift", np.random.default_rng(1)).astype(float)
    for c in range(3):  # an affine map per channel: gain and offset within their ranges
        gain, offset = np.polyfit(ramp[:, 0, c] / 255, shifted[:, 0, c] / 255, 1)
        assert evaluation.COLOUR_GAIN_RANGE[0] - 0.02 <= gain <= evaluation.COLOUR_GAIN_RANGE[1] + 0.02
        assert abs(offset) <= evaluation.COLOUR_OFFSET + 0.02


def test_evaluation_set_holds_only_heldout_objects(tmp_path):
    data = multiview.make_multiview_dataset(3, 8, 16, seed=0, cache_dir=tmp_path)
    eval_set = evaluation.evaluation_set(data, seed=0)
    summary = multiview.split_summary(data)
    groups = eval_set["groups"]
    assert groups["canonical"].sum() == summary["heldout_canonical_images"]
    assert groups["viewpoint_ood"].sum() == summary["heldout_viewpoint_ood_images"]
    assert sum(groups[f"ood_{k}"].sum() for k in ("below", "above", "behind", "rolled")) == groups["viewpoint_ood"].sum()
    assert groups["corrupted"].sum() == 3 * summary["heldout_canonical_images"]
    heldout_images = {data["image"][i].tobytes() for i in np.flatnonzero(data["heldout"])}
    shown = eval_set["image"][groups["canonical"] | groups["viewpoint_ood"]]
    assert {image.tobytes() for image in shown} <= heldout_images
    np.testing.assert_array_equal(eval_set["image"], evaluation.evaluation_set(data, seed=0)["image"])
    # Every image names the held-out object it shows: its canonical and viewpoint-OOD views are that object's.
    heldout_objects = set(data["object_id"][data["heldout"]].tolist())
    assert set(eval_set["object"].tolist()) == heldout_objects
    views_of = {obj: {data["image"][i].tobytes() for i in np.flatnonzero(data["object_id"] == obj)}
                for obj in heldout_objects}
    for i in np.flatnonzero(groups["canonical"] | groups["viewpoint_ood"]):
        assert eval_set["image"][i].tobytes() in views_of[int(eval_set["object"][i])]
    # A blurred image (the one corruption without randomness) is the blur of a canonical view of the object it names.
    canonical_of = {obj: [data["image"][i] for i in np.flatnonzero((data["object_id"] == obj)
                                                                    & (data["view_split"] == multiview.CANONICAL))]
                    for obj in heldout_objects}
    for i in np.flatnonzero(groups["corrupted_blur"]):
        assert any(np.array_equal(eval_set["image"][i], evaluation.corrupt(view, "blur", None))
                   for view in canonical_of[int(eval_set["object"][i])])
    for group in ("canonical", "viewpoint_ood", "corrupted"):  # the same number of images per object
        assert len(set(np.unique(eval_set["object"][groups[group]], return_counts=True)[1].tolist())) == 1


def test_the_headline_group_holds_the_held_out_views_of_its_kinds_only(tmp_path):
    data = multiview.make_multiview_dataset(3, 8, 16, seed=0, cache_dir=tmp_path)
    groups = evaluation.evaluation_set(data, seed=0, headline_view_kinds=("below", "rolled"))["groups"]
    held_out = np.flatnonzero(data["heldout"])  # the set's first images, in this order
    kinds = np.asarray(multiview.VIEW_KINDS)[data["view_kind"][held_out]]
    expected = np.zeros(len(groups["canonical"]), bool)
    expected[:len(held_out)] = np.isin(kinds, ["below", "rolled"])
    np.testing.assert_array_equal(groups["viewpoint_ood"], expected)
    expected[:len(held_out)] = kinds != "canonical"
    np.testing.assert_array_equal(groups["viewpoint_ood_all"], expected)
    with pytest.raises(ValueError, match="canonical"):
        evaluation.evaluation_set(data, seed=0, headline_view_kinds=("canonical",))


def test_paired_units_are_per_object_accuracies():
    from robust_jax.omniview import study

    groups = {"viewpoint_ood": np.array([1, 1, 1, 1, 0, 0], bool), "canonical": np.array([0, 0, 0, 0, 1, 1], bool),
              "corrupted": np.array([0, 0, 0, 0, 1, 1], bool)}
    eval_set = {"object": np.array([7, 3, 7, 3, 3, 7]), "groups": groups}
    reports = {"base": {"top1_correct": np.array([1, 0, 0, 0, 1, 1], bool)},
               "ovt": {"top1_correct": np.array([1, 1, 1, 0, 0, 1], bool)}}
    units = study.paired_units(reports, eval_set)
    assert units["viewpoint_ood_top1"] == {"unit": "held-out object", "ids": ["3", "7"],
                                           "values": {"base": [0.0, 0.5], "ovt": [0.5, 1.0]}}
    assert units["canonical_top1"]["values"] == {"base": [1.0, 1.0], "ovt": [0.0, 1.0]}


def test_a_variant_over_two_tuning_seeds_has_the_mean_of_their_accuracies_and_units():
    from robust_jax.omniview import study, tuning
    from robust_jax.configs import omniview as omniview_config

    groups = {"viewpoint_ood": np.array([1, 1, 1, 1, 0, 0], bool), "canonical": np.array([0, 0, 0, 0, 1, 1], bool),
              "corrupted": np.array([0, 0, 0, 0, 1, 1], bool)}
    eval_set = {"object": np.array([7, 3, 7, 3, 3, 7]), "groups": groups}
    seeds = [{"top1_correct": np.array([1, 1, 1, 0, 0, 1], bool), "zero_shot_top1": {"viewpoint_ood": 0.75},
              "zero_shot_top5": {"viewpoint_ood": 1.0}, "zero_shot_count": {"viewpoint_ood": 4}},
             {"top1_correct": np.array([0, 1, 0, 0, 1, 1], bool), "zero_shot_top1": {"viewpoint_ood": 0.25},
              "zero_shot_top5": {"viewpoint_ood": 0.5}, "zero_shot_count": {"viewpoint_ood": 4}}]
    mean = study._mean_over_seeds(seeds)
    assert mean["zero_shot_top1"] == {"viewpoint_ood": 0.5} and mean["zero_shot_top5"] == {"viewpoint_ood": 0.75}
    units = study.paired_units({"ovt": mean}, eval_set)["viewpoint_ood_top1"]["values"]["ovt"]
    # object 3: views 1 and 3, right 1 + 0 times in seed 0 and 1 + 0 in seed 1; object 7: views 0 and 2, 2 and 0
    assert units == [0.5, 0.5]
    # A seed's config differs from the study's in the seed only; seed 0 is the study's config itself.
    config = omniview_config.get_config("tiny")
    assert tuning.seeded(config, 0) is config
    other = tuning.seeded(config, 2)
    assert other.seed == config.seed + 2 and {**other.to_dict(), "seed": config.seed} == config.to_dict()
    assert [tuning.training_name("ovt", k) for k in (0, 1)] == ["tune_ovt", "tune_ovt_seed1"]


def test_report_files(tmp_path):
    top1 = {"base": {"canonical": 0.9, "viewpoint_ood": 0.3, "corrupted": 0.8, "ood_below": 0.2},
            "ovt": {"canonical": 0.89, "viewpoint_ood": 0.5, "corrupted": 0.79, "ood_below": 0.4}}
    report.write_reports(top1, str(tmp_path))
    rows = list(csv.reader(open(tmp_path / "zero_shot_top1.csv")))
    assert rows[0] == ["model", "canonical", "viewpoint_ood", "corrupted", "ood_below"]
    assert rows[2][0] == "ovt" and float(rows[2][2]) == 0.5
    assert "| ovt | 89.0 | 50.0 | 79.0 | 40.0 |" in (tmp_path / "zero_shot_top1.md").read_text()
    assert (tmp_path / "zero_shot_top1.png").stat().st_size > 1000


def test_openai_templates_are_eighty_distinct_prompts():
    templates = zero_shot.OPENAI_IMAGENET_TEMPLATES
    assert len(templates) == len(set(templates)) == 80
    assert all(t.count("{}") == 1 for t in templates)
