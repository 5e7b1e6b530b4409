"""core.verdicts against independent computations: the bootstrap against an explicit loop over the documented draws
and against the normal approximation on a large sample, the exact tests against statsmodels and closed-form binomial
sums, the verdict words on constructed intervals, and the checks of the per-unit export contract."""

import math

import numpy as np
import pytest
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.descriptivestats import sign_test as statsmodels_sign_test

from robust_jax.core import verdicts


def _explicit_loop_bootstrap(values, confidence, resamples, seed):
    """The documented draws (row r of default_rng(seed).integers(0, n, (resamples, n)) is resample r), then one
    resample mean at a time and the quantile by hand: sorted means, linear interpolation at q * (resamples - 1)."""
    values = [float(v) for v in values]
    n = len(values)
    means = sorted(math.fsum(values[i] for i in indices) / n
                   for indices in np.random.default_rng(seed).integers(0, n, size=(resamples, n)))

    def quantile(q):
        position = q * (len(means) - 1)
        below = math.floor(position)
        above = min(below + 1, len(means) - 1)
        return means[below] + (position - below) * (means[above] - means[below])

    tail = (1 - confidence) / 2
    return quantile(tail), quantile(1 - tail)


@pytest.mark.parametrize("n,confidence,resamples,seed", [(9, 0.95, 10_000, 0), (40, 0.9, 3_001, 7), (1, 0.95, 50, 0)])
def test_bootstrap_matches_an_explicit_loop_over_the_documented_draws(n, confidence, resamples, seed):
    values = np.random.default_rng(123).normal(0.05, 0.1, size=n)
    got = verdicts.paired_bootstrap_interval(values, confidence=confidence, resamples=resamples, seed=seed)
    assert got == pytest.approx(_explicit_loop_bootstrap(values, confidence, resamples, seed), abs=1e-12)


def test_bootstrap_in_blocks_draws_the_rows_of_one_call():
    # 30,001 units: 2**22 // 30,001 = 139 rows per block, three blocks for 300 resamples (an odd count of draws per
    # block), against the documented single call.
    values = np.random.default_rng(5).exponential(1.0, size=30_001)
    got = verdicts.paired_bootstrap_interval(values, resamples=300)
    indices = np.random.default_rng(verdicts.BOOTSTRAP_SEED).integers(0, values.size, size=(300, values.size))
    assert got == pytest.approx(tuple(np.quantile(values[indices].mean(axis=1), [0.025, 0.975])), abs=1e-12)


def test_bootstrap_on_a_large_sample_agrees_with_the_normal_approximation():
    # 2,000 draws: the mean's sampling distribution is close to normal, so the 95% percentile interval is within a
    # few percent of mean +- 1.96 s / sqrt(n) (the bootstrap's Monte Carlo error with 10,000 resamples is ~1%).
    values = np.random.default_rng(0).normal(0.3, 1.0, size=2_000)
    low, high = verdicts.paired_bootstrap_interval(values)
    half_width = 1.959964 * values.std(ddof=1) / math.sqrt(values.size)
    assert low == pytest.approx(values.mean() - half_width, abs=0.05 * half_width)
    assert high == pytest.approx(values.mean() + half_width, abs=0.05 * half_width)
    low90, high90 = verdicts.paired_bootstrap_interval(values, confidence=0.9)
    assert low < low90 < values.mean() < high90 < high


def test_bootstrap_is_fixed_by_its_seed():
    values = np.random.default_rng(1).normal(size=12)
    assert verdicts.paired_bootstrap_interval(values) == verdicts.paired_bootstrap_interval(values)
    assert verdicts.paired_bootstrap_interval(values) == verdicts.paired_bootstrap_interval(
        values, seed=verdicts.BOOTSTRAP_SEED)
    assert verdicts.paired_bootstrap_interval(values) != verdicts.paired_bootstrap_interval(values, seed=1)


@pytest.mark.parametrize("differences", [
    [0.1, 0.2, -0.05, 0.3, 0.0, 0.4, 0.1, -0.2, 0.2],
    [1, 1, 1, 1, 1, 1, 1, 1],
    [-3, 2, -1, -4, -2, 0, 0, -1, -1, -2, 5, -1],
    [0.5],
])
def test_sign_test_matches_statsmodels_and_the_binomial_sums(differences):
    p = verdicts.sign_test(differences)
    assert p == pytest.approx(statsmodels_sign_test(np.asarray(differences, float), mu0=0.0)[1], rel=1e-12)
    positive = sum(d > 0 for d in differences)
    trials = sum(d != 0 for d in differences)
    upper = sum(math.comb(trials, k) for k in range(positive, trials + 1)) / 2**trials
    lower = sum(math.comb(trials, k) for k in range(0, positive + 1)) / 2**trials
    assert verdicts.sign_test(differences, "greater") == pytest.approx(upper, rel=1e-12)
    assert verdicts.sign_test(differences, "less") == pytest.approx(lower, rel=1e-12)
    assert p == pytest.approx(min(1.0, 2 * min(upper, lower)), rel=1e-12)  # symmetric at 1/2


def test_sign_test_without_a_non_zero_difference_is_one():
    assert verdicts.sign_test([0.0, 0.0, 0.0]) == 1.0


@pytest.mark.parametrize("a,b", [
    ([1, 1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 0], [1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1, 1]),
    ([True] * 30 + [False] * 5, [True] * 28 + [False] * 2 + [True] * 3 + [False] * 2),
    ([1, 0, 1, 0, 1], [1, 0, 1, 0, 1]),
])
def test_mcnemar_matches_statsmodels_exact(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    table = [[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]]
    expected = 1.0 if table[0][1] + table[1][0] == 0 else mcnemar(table, exact=True).pvalue
    assert verdicts.mcnemar_exact(a, b) == pytest.approx(expected, rel=1e-12)
    assert verdicts.discordant_counts(a, b) == (table[0][1], table[1][0])


@pytest.mark.parametrize("low,high,side,boundary,word", [
    (0.01, 0.2, "greater", 0.0, "holds"),
    (-0.1, 0.2, "greater", 0.0, "not shown"),
    (0.0, 0.2, "greater", 0.0, "not shown"),  # touching the boundary is not strictly above it
    (-0.3, -0.01, "greater", 0.0, "contradicted"),
    (-0.3, -0.01, "less", 0.0, "holds"),
    (0.01, 0.2, "less", 0.0, "contradicted"),
    (-0.04, 0.02, "greater", -0.053, "holds"),
    (-0.06, 0.02, "greater", -0.053, "not shown"),
    (0.01, 0.05, "greater", 0.076, "contradicted"),
])
def test_verdict_words(low, high, side, boundary, word):
    assert verdicts.verdict(low, high, side=side, boundary=boundary) == word
    assert word in verdicts.VERDICTS


@pytest.mark.parametrize("call,message", [
    (lambda: verdicts.verdict(0.1, 0.0, side="greater"), "not an interval"),
    (lambda: verdicts.verdict(0.0, 0.1, side="above"), r"side='above' is not allowed"),
    (lambda: verdicts.verdict(float("nan"), 0.1, side="greater"), "low=nan"),
])
def test_verdict_refuses_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_point_rule_words_are_labelled():
    assert verdicts.point_verdict(True) == "holds (exact rule)"
    assert verdicts.point_verdict(False) == "fails (exact rule)"
    assert verdicts.point_verdict(True, expected_figure=True) == "met (expected figure)"
    assert verdicts.point_verdict(False, expected_figure=True) == "missed (expected figure)"


def test_judge_paired_on_units_with_a_known_interval():
    a = np.array([0.9, 0.8, 0.85, 0.7, 0.95, 0.9, 0.75, 0.8, 0.88])
    b = a - np.array([0.1, 0.05, 0.12, 0.08, 0.02, 0.1, 0.06, 0.09, 0.04])
    judged = verdicts.judge_paired(a, b, side="greater")
    assert judged.n == 9 and judged.mean_difference == pytest.approx(np.mean(a - b))
    assert (judged.low, judged.high) == verdicts.paired_bootstrap_interval(a - b)
    assert judged.verdict == "holds" and judged.test == "sign test"
    assert judged.p_value == pytest.approx(2 / 2**9) and (judged.positive, judged.negative) == (9, 0)
    assert judged.describe("dataset/seed") == "holds (95% interval [0.0533, 0.0933] is above 0; n = 9, one per dataset/seed)"
    assert verdicts.judge_paired(a, b, side="less").verdict == "contradicted"
    # the interval is [0.053, 0.093]: boundary 0.07 sits inside it; a margin of 0.03 moves it to 0.04, below it
    assert verdicts.judge_paired(a, b, side="greater", boundary=0.07).verdict == "not shown"
    moved = verdicts.judge_paired(a, b, side="greater", boundary=0.07, margin=0.03)
    assert moved.boundary == pytest.approx(0.04) and moved.verdict == "holds"
    assert verdicts.judge_paired(a, b, side="less", boundary=0.0, margin=0.2).boundary == pytest.approx(0.2)


def test_judge_paired_binary_uses_mcnemar():
    a = [1] * 20 + [0] * 5
    b = [1] * 10 + [0] * 10 + [0] * 3 + [1] * 2
    judged = verdicts.judge_paired(a, b, side="greater", binary=True)
    assert judged.test == "McNemar" and (judged.positive, judged.negative) == (10, 2)
    assert judged.p_value == pytest.approx(mcnemar([[10, 10], [2, 3]], exact=True).pvalue)


def test_too_few_units_or_no_spread_give_no_verdict():
    judged = verdicts.judge_paired([0.5, 0.6, 0.7, 0.8], [0.0, 0.0, 0.0, 0.0], side="greater")
    assert judged.low > 0 and judged.verdict == "not shown" and judged.withheld == "fewer than 5 units"
    assert judged.describe("dataset/seed") == ("not shown (95% interval [0.55, 0.75] is above 0, but no verdict "
                                               "with fewer than 5 units; n = 4, one per dataset/seed)")
    assert verdicts.judge_paired([0.5, 0.6, 0.7, 0.8, 0.9], [0.0] * 5, side="greater").verdict == "holds"
    # Nine images both methods fail: the interval is [0, 0], above a non-inferiority boundary, yet it says nothing.
    same = verdicts.judge_paired([0] * 9, [0] * 9, side="greater", margin=0.02, binary=True)
    assert (same.low, same.high) == (0.0, 0.0) and same.verdict == "not shown"
    assert same.withheld == "no spread: every unit has the same difference"


@pytest.mark.parametrize("kwargs,message", [
    (dict(a=[1.0, 2.0], b=[1.0]), "one value per unit each, got 2 and 1"),
    (dict(a=[], b=[]), "a must be a non-empty"),
    (dict(a=[1.0, float("nan")], b=[1.0, 2.0]), "a must be finite; entry 1 is nan"),
    (dict(a=[1.0, 2.0], b=[1.0, float("inf")]), "b must be finite"),
    (dict(a=[1.0, 0.5], b=[1.0, 0.0], binary=True), "right/wrong outcomes"),
    (dict(a=[1.0], b=[0.0], margin=-0.1), "margin=-0.1 is not allowed"),
    (dict(a=[1.0], b=[0.0], side="bigger"), "side='bigger' is not allowed"),
])
def test_judge_paired_refuses_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        verdicts.judge_paired(**{"side": "greater", **kwargs})


def _units(**values):
    return {"unit": "dataset/seed", "ids": [f"d/seed={i}" for i in range(3)], "values": values}


def test_unit_sets_contract_and_paired_series():
    metrics = {"units": {"drop": _units(a=[0.1, 0.2, 0.3], b=[0.0, 0.1, 0.5]), "other": _units(b=[1.0, 2.0, 3.0])}}
    verdicts.check_unit_sets(metrics["units"])
    a, b, unit = verdicts.paired_series(metrics, "drop", "a", "b")
    np.testing.assert_array_equal(a - b, [0.1, 0.1, -0.2])
    assert unit == "dataset/seed"
    _, b_other, _ = verdicts.paired_series(metrics, "drop", "a", "b", units_b="other")
    np.testing.assert_array_equal(b_other, [1.0, 2.0, 3.0])
    a_at, _, _ = verdicts.paired_series(metrics, "drop", "a", "b", transform="at_least:0.2")
    np.testing.assert_array_equal(a_at, [0.0, 1.0, 1.0])
    assert verdicts.paired_series(metrics, "missing", "a", "b") is None
    assert verdicts.paired_series(metrics, "drop", "a", "c") is None
    assert verdicts.paired_series({}, "drop", "a", "b") is None


@pytest.mark.parametrize("unit_sets,message", [
    ({"s": {"unit": "x", "ids": ["1"]}}, r"units\['s'\] must hold exactly"),
    ({"s": {"unit": "", "ids": ["1"], "values": {"a": [1.0]}}}, "must say what one unit is"),
    ({"s": {"unit": "x", "ids": ["1", "1"], "values": {"a": [1.0, 2.0]}}}, "repeat an id"),
    ({"s": {"unit": "x", "ids": ["1", "2"], "values": {"a": [1.0]}}}, r"\['a'\] must be a list of 2 values"),
    ({"s": {"unit": "x", "ids": ["1"], "values": {"a": [None]}}}, r"\['a'\] must be finite"),
])
def test_unit_sets_that_break_the_contract_are_refused(unit_sets, message):
    with pytest.raises(ValueError, match=message):
        verdicts.check_unit_sets(unit_sets)


def test_unknown_transform_is_refused():
    for spec in ("at_most:0.5", "at_least:", "at_least:x"):
        with pytest.raises(ValueError, match="transform="):
            verdicts.parse_transform(spec)
