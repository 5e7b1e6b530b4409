"""Verdicts on paper claims, judged with uncertainty over paired units.

A claim such as "the naive SDE loses more accuracy than the LSDE" is a statement about a difference between two
series measured on the same units (here: the same dataset and seed). One number per series hides how much that
difference moves from unit to unit, so a claim is judged on the per-unit differences a - b:

  the mean difference;
  its 95% percentile-bootstrap interval over the units (`paired_bootstrap_interval`: 10,000 resamples with a fixed
  seed, so the same results give the same interval every time);
  an exact test of "no difference between a and b", two-sided: McNemar's for paired right/wrong outcomes, else
  the sign test (evidence beside the interval; it does not decide the verdict);
  the verdict, from the interval alone (`verdict`):
    holds         the whole interval is strictly on the claimed side of the boundary
    not shown     the interval contains the boundary (or there are fewer than MIN_UNITS units, or every unit has
                  the same difference: then the bootstrap has no spread, and its zero-width interval would claim a
                  certainty the units cannot give, e.g. nine test images that two methods both fail)
    contradicted  the whole interval is strictly on the other side
    n.a.          not judged: the figure is from another setting, or the run lacks the units (set by callers)

Claims that are exact (closed forms, checked to a tolerance) keep a point rule on one number and say so:
"holds (exact rule)" / "fails (exact rule)"; an expected figure that is no paper's claim (a sanity check) reads
"met (expected figure)" / "missed (expected figure)" (`point_verdict`).

The per-unit export contract. A study that exports the units of its claims puts them in results.json under
metrics["units"]:

  metrics["units"][<unit-set name>] = {
      "unit": "<what one unit is, e.g. 'dataset/seed', 'held-out object', 'certified test image'>",
      "ids": ["<one id per unit>", ...],
      "values": {"<series>": [<float per unit, aligned with ids>], ...},
  }

Every series of a unit set has one finite value per id, in the order of the ids; two unit sets can be paired when
their ids are equal (the same test images certified at two noise levels). `check_unit_sets` checks the contract.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np
from scipy import stats

# The one vocabulary of verdicts: the report, the README and the notebooks use these words and no others.
VERDICTS = ("holds", "not shown", "contradicted", "n.a.")
HOLDS, NOT_SHOWN, CONTRADICTED, NOT_APPLICABLE = VERDICTS
# Point rules on one number, for exact claims (closed forms) and for expected figures that are no paper's claim.
EXACT_RULE_VERDICTS = ("holds (exact rule)", "fails (exact rule)")
EXPECTED_FIGURE_VERDICTS = ("met (expected figure)", "missed (expected figure)")
SIDES = ("greater", "less")
TEST_SIDES = ("two-sided", "greater", "less")

CONFIDENCE = 0.95
RESAMPLES = 10_000
# The bootstrap's generator seed: fixed, so a report built twice from the same results.json says the same.
BOOTSTRAP_SEED = 0
# Fewer units than this and no verdict but "not shown": a bootstrap over one unit is that unit's value (a
# zero-width interval), over two to four it has at most 35 distinct resample means, and no two-sided exact sign
# test at the 5% level can succeed below six units either. Five keeps the tiny presets honest without hiding the
# cpu presets' smallest unit set (9 dataset/seed pairs).
MIN_UNITS = 5
# The bootstrap draws resample indices in blocks of rows of this many indices at most, to bound memory.
_INDICES_PER_BLOCK = 2**22


def _check_side(name: str, side, allowed=SIDES) -> str:
    if side not in allowed:
        raise ValueError(f"{name}={side!r} is not allowed: must be one of {list(allowed)}")
    return side


def _finite_vector(name: str, values) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of numbers, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        first = int(np.flatnonzero(~np.isfinite(array))[0])
        raise ValueError(f"{name} must be finite; entry {first} is {float(array[first])!r}")
    return array


def paired_bootstrap_interval(differences, *, confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                              seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """The percentile-bootstrap interval of the mean of `differences` (one per unit).

    Resample r takes n = len(differences) units with replacement: its indices are row r of
    `np.random.default_rng(seed).integers(0, n, size=(resamples, n))` (drawn in blocks of at most 2**22 indices to
    bound memory; numpy's generator gives the same rows either way, which the tests check). The interval is the
    (1 - confidence) / 2 and (1 + confidence) / 2 quantiles of the resample means (numpy's default, linear
    interpolation)."""
    differences = _finite_vector("differences", differences)
    if not (isinstance(confidence, numbers.Real) and 0.0 < confidence < 1.0):
        raise ValueError(f"confidence={confidence!r} is not allowed: must be in the open interval (0, 1)")
    if isinstance(resamples, bool) or not isinstance(resamples, numbers.Integral) or resamples < 1:
        raise ValueError(f"resamples={resamples!r} is not allowed: must be an integer >= 1")
    n = differences.size
    rng = np.random.default_rng(seed)
    means = np.empty(int(resamples))
    rows = max(1, _INDICES_PER_BLOCK // n)
    for start in range(0, int(resamples), rows):
        stop = min(start + rows, int(resamples))
        means[start:stop] = differences[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    tail = 0.5 * (1.0 - confidence)
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def _binomial_p_value(successes: int, trials: int, side: str) -> float:
    if trials == 0:
        return 1.0  # no evidence either way
    return float(stats.binomtest(successes, trials, 0.5, alternative=side).pvalue)


def sign_test(differences, side: str = "two-sided") -> float:
    """The exact sign test's p-value for "the differences are centred on 0": the count of positive differences among
    the non-zero ones against Binomial(non-zero count, 1/2); zeros are dropped. side: "two-sided", "greater" (more
    positive than chance) or "less". 1.0 when every difference is zero."""
    differences = _finite_vector("differences", differences)
    _check_side("side", side, TEST_SIDES)
    positive, negative = int(np.sum(differences > 0)), int(np.sum(differences < 0))
    return _binomial_p_value(positive, positive + negative, side)


def _binary_vector(name: str, values) -> np.ndarray:
    array = _finite_vector(name, values)
    if not np.all((array == 0) | (array == 1)):
        raise ValueError(f"{name} must hold paired right/wrong outcomes (True/False or 1/0), got values "
                         f"{sorted(set(array[(array != 0) & (array != 1)].tolist()))[:5]}")
    return array.astype(bool)


def discordant_counts(a_bool, b_bool) -> tuple[int, int]:
    """(units where a is right and b wrong, units where b is right and a wrong)."""
    a, b = _binary_vector("a", a_bool), _binary_vector("b", b_bool)
    if a.size != b.size:
        raise ValueError(f"a and b must have one outcome per unit each, got {a.size} and {b.size}")
    return int(np.sum(a & ~b)), int(np.sum(~a & b))


def mcnemar_exact(a_bool, b_bool, side: str = "two-sided") -> float:
    """McNemar's exact test's p-value for paired right/wrong outcomes: of the discordant units, the count where a is
    right against Binomial(discordant count, 1/2). 1.0 with no discordant unit."""
    _check_side("side", side, TEST_SIDES)
    a_only, b_only = discordant_counts(a_bool, b_bool)
    return _binomial_p_value(a_only, a_only + b_only, side)


def verdict(low: float, high: float, *, side: str, boundary: float = 0.0) -> str:
    """"holds" when [low, high] lies strictly on the claimed side of the boundary ("greater": above it, "less":
    below it), "contradicted" when strictly on the other side, "not shown" when it contains the boundary."""
    _check_side("side", side)
    for name, value in (("low", low), ("high", high), ("boundary", boundary)):
        if not (isinstance(value, numbers.Real) and math.isfinite(value)):
            raise ValueError(f"{name}={value!r} is not allowed: must be a finite number")
    if low > high:
        raise ValueError(f"low={low!r} is above high={high!r}: not an interval")
    above, below = low > boundary, high < boundary
    if side == "less":
        above, below = below, above
    return HOLDS if above else CONTRADICTED if below else NOT_SHOWN


def point_verdict(ok: bool, *, expected_figure: bool = False) -> str:
    """The words of a point rule: "holds (exact rule)" / "fails (exact rule)", or for an expected figure that is no
    paper's claim "met (expected figure)" / "missed (expected figure)"."""
    words = EXPECTED_FIGURE_VERDICTS if expected_figure else EXACT_RULE_VERDICTS
    return words[0] if ok else words[1]


@dataclasses.dataclass(frozen=True)
class PairedJudgement:
    """One claim judged on paired units: a - b per unit against `boundary` on `side`."""

    n: int  # units
    mean_difference: float  # mean of a - b
    low: float  # the bootstrap interval of the mean difference
    high: float
    confidence: float
    side: str
    boundary: float  # the boundary the interval was judged against (the claim's, moved by its margin)
    test: str  # the exact test of "no difference", two-sided: "McNemar" (binary outcomes) or "sign test"
    p_value: float
    positive: int  # units with a - b > 0 (binary: a right, b wrong)
    negative: int  # units with a - b < 0 (binary: b right, a wrong)
    verdict: str
    withheld: str | None  # why the interval's verdict was withheld ("not shown" instead), or None
    reason: str  # why the verdict, in words

    def describe(self, unit: str = "unit") -> str:
        """E.g. "not shown (95% interval [-0.05, 0.12] contains 0; n = 9, one per dataset/seed)"."""
        return f"{self.verdict} ({self.reason}; {unit_count(self.n, unit)})"


def unit_count(n: int, unit: str) -> str:
    """"n = 9, one per dataset/seed": the number of units and what one unit is."""
    return f"n = {n}, one per {unit}"


def _number(value: float) -> str:
    return f"{value:.3g}" if value else "0"


def judge_paired(a, b, *, side: str, boundary: float = 0.0, margin: float = 0.0, binary: bool = False,
                 confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                 seed: int = BOOTSTRAP_SEED) -> PairedJudgement:
    """Judges the claim "a - b is above boundary" (side "greater") or "below boundary" (side "less") on paired units.

    margin >= 0 moves the boundary in the claim's favour (a non-inferiority tolerance): the interval is judged
    against boundary - margin for "greater", boundary + margin for "less". The verdict comes from the interval.
    The exact test asks whether a and b differ at all (two-sided): McNemar's when binary (a and b are right/wrong
    outcomes, 1/0), else the sign test of a - b."""
    _check_side("side", side)
    a, b = _finite_vector("a", a), _finite_vector("b", b)
    if binary:  # checked before any work: right/wrong outcomes are 1/0 and nothing else
        a, b = _binary_vector("a", a).astype(np.float64), _binary_vector("b", b).astype(np.float64)
    if a.size != b.size:
        raise ValueError(f"a and b must have one value per unit each, got {a.size} and {b.size}")
    for name, value in (("boundary", boundary), ("margin", margin)):
        if isinstance(value, bool) or not (isinstance(value, numbers.Real) and math.isfinite(value)):
            raise ValueError(f"{name}={value!r} is not allowed: must be a finite number")
    if margin < 0:
        raise ValueError(f"margin={margin!r} is not allowed: must be >= 0 (it moves the boundary in the claim's "
                         "favour)")
    judged_boundary = float(boundary - margin if side == "greater" else boundary + margin)
    differences = a - b
    low, high = paired_bootstrap_interval(differences, confidence=confidence, resamples=resamples, seed=seed)
    if binary:
        test, p_value = "McNemar", mcnemar_exact(a, b)
    else:
        test, p_value = "sign test", sign_test(differences)
    word = verdict(low, high, side=side, boundary=judged_boundary)
    where = "contains" if word == NOT_SHOWN else "is above" if low > judged_boundary else "is below"
    reason = f"{confidence:.0%} interval [{_number(low)}, {_number(high)}] {where} {_number(judged_boundary)}"
    withheld = (f"fewer than {MIN_UNITS} units" if a.size < MIN_UNITS else
                "no spread: every unit has the same difference" if np.all(differences == differences[0]) else None)
    if withheld:
        word = NOT_SHOWN
        reason += f", but no verdict with {withheld}"
    return PairedJudgement(n=int(a.size), mean_difference=float(differences.mean()), low=low, high=high,
                           confidence=float(confidence), side=side, boundary=judged_boundary, test=test,
                           p_value=p_value, positive=int(np.sum(differences > 0)),
                           negative=int(np.sum(differences < 0)), verdict=word, withheld=withheld, reason=reason)


# ------------------------------------------------------------------------------------ the per-unit export contract
def check_unit_sets(unit_sets) -> dict:
    """Checks metrics["units"] against the contract in the module docstring; returns it. A ValueError names the
    unit set and what is wrong."""
    if not isinstance(unit_sets, dict):
        raise ValueError(f"units must map unit-set names to unit sets, got {type(unit_sets).__name__}")
    for name, unit_set in unit_sets.items():
        where = f"units[{name!r}]"
        if not isinstance(unit_set, dict) or set(unit_set) != {"unit", "ids", "values"}:
            keys = sorted(unit_set) if isinstance(unit_set, dict) else type(unit_set).__name__
            raise ValueError(f"{where} must hold exactly 'unit', 'ids' and 'values', got {keys}")
        if not isinstance(unit_set["unit"], str) or not unit_set["unit"]:
            raise ValueError(f"{where}['unit'] must say what one unit is, got {unit_set['unit']!r}")
        ids = unit_set["ids"]
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise ValueError(f"{where}['ids'] must be a non-empty list of strings")
        if len(set(ids)) != len(ids):
            raise ValueError(f"{where}['ids'] repeat an id")
        if not isinstance(unit_set["values"], dict) or not unit_set["values"]:
            raise ValueError(f"{where}['values'] must map series names to lists of values")
        for series, values in unit_set["values"].items():
            if not isinstance(values, list) or len(values) != len(ids):
                raise ValueError(f"{where}['values'][{series!r}] must be a list of {len(ids)} values (one per id), "
                                 f"got {len(values) if isinstance(values, list) else type(values).__name__}")
            _finite_vector(f"{where}['values'][{series!r}]", values)
    return unit_sets


def parse_transform(spec: str | None):
    """The per-unit transform a claim applies before pairing: None (the values as they are) or "at_least:<x>",
    1.0 where the value is >= x, else 0.0 (e.g. a certified radius, -1 for a wrong or abstained prediction, turned
    into "certified at radius x"). A ValueError names a spec it does not know."""
    if spec is None:
        return lambda values: np.asarray(values, dtype=np.float64)
    kind, _, argument = str(spec).partition(":")
    if kind == "at_least":
        try:
            threshold = float(argument)
        except ValueError:
            threshold = math.nan
        if math.isfinite(threshold):
            return lambda values: (np.asarray(values, dtype=np.float64) >= threshold).astype(np.float64)
    raise ValueError(f"transform={spec!r} is not allowed: expected 'at_least:<number>'")


def paired_series(metrics: dict, units: str, a: str, b: str, *, units_b: str | None = None,
                  transform: str | None = None):
    """(a values, b values, what one unit is) from metrics["units"], transformed; None where the run lacks the unit
    set or a series. `units_b` takes b from another unit set over the same ids. A ValueError when the two sets' ids
    differ."""
    unit_sets = metrics.get("units") if isinstance(metrics, dict) else None
    if not isinstance(unit_sets, dict):
        return None
    first, second = unit_sets.get(units), unit_sets.get(units_b or units)
    if first is None or second is None:
        return None
    check_unit_sets({name: unit_sets[name] for name in {units, units_b or units}})
    if first["ids"] != second["ids"]:
        raise ValueError(f"units {units!r} and {units_b!r} cannot be paired: their ids differ")
    if a not in first["values"] or b not in second["values"]:
        return None
    apply = parse_transform(transform)
    return apply(first["values"][a]), apply(second["values"][b]), first["unit"]
