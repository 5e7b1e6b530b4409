"""Randomized smoothing (Cohen et al. 2019): PREDICT/CERTIFY, dataset certification and certified-accuracy reports;
the comparison of smoothing methods (noise training, consistency regularisation, diffusion denoising, rRCM) with
their inference cost per noise sample."""

from robust_jax.smoothing.certify import ABSTAIN, certify, lower_confidence_bound, predict, sample_counts
from robust_jax.smoothing.classifiers import CertifiableClassifier
from robust_jax.smoothing.comparison import comparison_table, write_comparison
from robust_jax.smoothing.dataset import (
    certification_path,
    certify_dataset,
    load_certification_results,
    read_certification_log,
)
from robust_jax.smoothing.inference_cost import flops_per_sample, seconds_per_sample
from robust_jax.smoothing.report import (
    CertificationResults,
    accuracy_table,
    certified_accuracy,
    markdown_table,
    plot_certified_accuracy,
    write_csv,
    write_report,
)

__all__ = [
    "ABSTAIN",
    "CertifiableClassifier",
    "CertificationResults",
    "accuracy_table",
    "certification_path",
    "certified_accuracy",
    "certify",
    "certify_dataset",
    "comparison_table",
    "flops_per_sample",
    "load_certification_results",
    "lower_confidence_bound",
    "markdown_table",
    "plot_certified_accuracy",
    "predict",
    "read_certification_log",
    "sample_counts",
    "seconds_per_sample",
    "write_comparison",
    "write_csv",
    "write_report",
]
