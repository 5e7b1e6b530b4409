"""Certified accuracy on hand-made results whose answers are counted by hand."""

import csv

import numpy as np
import pytest

from robust_jax.smoothing import CertificationResults, accuracy_table, certified_accuracy, markdown_table, write_report

# Five examples: correct at radius 0.5, correct at 0.2, abstained, correct at 1.0, wrong class with a large radius.
HAND_MADE = CertificationResults(
    labels=np.array([0, 1, 2, 3, 4]),
    predictions=np.array([0, 1, -1, 3, 0]),
    radii=np.array([0.5, 0.2, 0.0, 1.0, 0.9]),
)


def test_certified_accuracy_counts_correct_and_large_enough_radius():
    accuracies = certified_accuracy(HAND_MADE, [0.0, 0.2, 0.25, 0.5, 0.75, 1.0, 1.5])
    # r = 0.5 and 1.0 include the examples whose radius equals r (R >= r).
    np.testing.assert_allclose(accuracies, [3 / 5, 3 / 5, 2 / 5, 2 / 5, 1 / 5, 1 / 5, 0.0])


def test_abstention_is_wrong_even_if_labels_were_negative():
    results = CertificationResults(labels=np.array([-1]), predictions=np.array([-1]), radii=np.array([0.0]))
    assert certified_accuracy(results, [0.0])[0] == 0.0


def test_envelope_is_the_best_sigma_at_each_radius():
    large_sigma = CertificationResults(labels=np.zeros(2), predictions=np.array([0, 1]), radii=np.array([2.0, 0.0]))
    table = accuracy_table({0.5: HAND_MADE, 1.0: large_sigma}, radii=[0.0, 1.0, 2.0])
    np.testing.assert_allclose(table[0.5], [0.6, 0.2, 0.0])
    np.testing.assert_allclose(table[1.0], [0.5, 0.5, 0.5])
    np.testing.assert_allclose(table["best"], [0.6, 0.5, 0.5])
    assert list(table) == [0.5, 1.0, "best"]


def test_report_files(tmp_path):
    radii = [0.0, 0.5, 1.0]
    paths = write_report({0.25: HAND_MADE}, str(tmp_path), radii=radii)
    markdown = open(paths["md"]).read()
    assert markdown == markdown_table(accuracy_table({0.25: HAND_MADE}, radii), radii)
    assert "| sigma=0.25 | 0.600 | 0.400 | 0.200 |" in markdown and "| best |" in markdown
    rows = list(csv.DictReader(open(paths["csv"])))
    assert {"sigma": "0.25", "radius": "0.5", "certified_accuracy": "0.400000"} in rows
    assert len(rows) == 2 * len(radii)
    assert open(paths["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="labels, predictions and radii"):
        CertificationResults(labels=np.zeros(3), predictions=np.zeros(2), radii=np.zeros(3))
