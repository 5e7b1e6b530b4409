"""The ICL study on the `tiny` preset: it runs end to end, reports every metric the issue names, and its theory
numbers agree with an independent recomputation."""

import pytest
import numpy as np

from robust_jax.configs import icl
from robust_jax.core.run import run_study
from robust_jax.icl import study, theory


@pytest.mark.slow
def test_tiny_study_runs_and_reports(tmp_path, one_device):
    config = icl.get_config("tiny")
    metrics = run_study(config, str(tmp_path), mesh=one_device)["metrics"]
    for name in ("lsa_minimum_rel_err", "lsa_zero_entries_max_rel", "lsa_test_mse", "theory_test_mse",
                 "varying_minimum_rel_err", "covariate_scale_table", "shift_table"):
        assert name in metrics
    low, high = metrics["lsa_test_mse_interval"]
    assert low <= metrics["lsa_test_mse"] <= high
    cov = np.diag(config.train_eigenvalues)
    assert np.isclose(metrics["theory_test_mse"],
                      float(theory.expected_test_error(cov, config.n_context, config.test_context)), rtol=1e-6)
    table = metrics["covariate_scale_table"]
    assert set(table) == {"c=1", "c=2", "c=3"}
    # Least squares is exact on noiseless prompts with M >= d whatever the scale.
    assert all(row["least_squares"] < 1e-6 for row in table.values())
    assert set(metrics["shift_table"]) == set(config.shifts)
    for shift in config.shifts:
        assert (tmp_path / f"errors_{shift}.png").exists()


def test_minimum_errors_at_the_closed_form_are_zero():
    cov = np.diag([1.0, 2.0, 4.0])
    w_kq, w_pv = (np.asarray(w, np.float64) for w in theory.global_minimum(cov, 10))
    target = np.linalg.inv(np.asarray(theory.gamma(cov, 10), np.float64))
    errors = study.minimum_errors(w_kq, w_pv, target)
    assert errors["rel_err"] < 1e-6 and errors["zero_entries_max_rel"] == 0.0
    w_kq[3, 0] = 0.01 * np.abs(w_kq).max()
    assert np.isclose(study.minimum_errors(w_kq, w_pv, target)["zero_entries_max_rel"], 0.01 * np.abs(w_kq).max()
                      / max(np.abs(w_kq).max(), np.abs(w_pv).max()))
