"""Statistics over seeds: mean, sample standard deviation, Student-t confidence intervals and paired
differences, in plain Python (scipy is not a dependency).

    summarize([90.3, 91.0, 89.7])           # {"n": 3, "mean": 90.33, "std": 0.65, "ci_low": ..., ...}
    paired_difference(ciard, rslad)          # the same summary of ciard[i] - rslad[i] over seeds i

The interval is the textbook one for the mean of n independent runs: mean ± t(1 - α/2, n - 1) ·
std / √n, with `std` the sample standard deviation (n - 1 in the denominator). It describes the
spread that comes from the seed (student init, data order, attack noise) on one data set with one
pair of teachers; it says nothing about other data, other teachers or the test-set sampling error.
With n = 1 there is no spread to estimate: `std` and the interval are None.

The t quantile is computed, not looked up: the Student-t CDF through the regularised incomplete
beta function (continued fraction, modified Lentz), inverted by bisection to double precision.
"""
import math
import numbers

__all__ = ["t_cdf", "t_quantile", "summarize", "paired_difference", "betainc"]

_EPS = 1e-15
_TINY = 1e-300


def _check_positive(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _beta_continued_fraction(a, b, x):
    """The continued fraction of I_x(a, b) (modified Lentz), converging for x < (a + 1)/(a + b + 2)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 10000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def betainc(a, b, x):
    """The regularised incomplete beta function I_x(a, b) for a, b > 0 and x in [0, 1]."""
    a, b = _check_positive(a, "a"), _check_positive(b, "b")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x!r}")
    if x == 0.0 or x == 1.0:
        return float(x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t, df):
    """P(T <= t) for Student's t with `df` > 0 degrees of freedom."""
    df = _check_positive(df, "df")
    if math.isnan(t):
        raise ValueError("t must be a number, got nan")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t > 0 else tail


def t_quantile(p, df):
    """The t with P(T <= t) = p, for p in (0, 1) and `df` > 0 (e.g. t_quantile(0.975, 2) = 4.3027)."""
    df = _check_positive(df, "df")
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 < p < 1.0:
        raise ValueError(f"p must be a probability strictly between 0 and 1, got {p!r}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
        if hi > 1e300:
            raise ArithmeticError(f"t quantile of p={p} with df={df} is out of range")
    for _ in range(200):  # bisection: each step halves the bracket; stops at double precision
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _values(values, name):
    values = list(values)
    if not values:
        raise ValueError(f"{name} is empty: need at least one value (one per seed)")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError(f"{name} must hold finite numbers, got {v!r} in {values!r}")
    return [float(v) for v in values]


def summarize(values, confidence=0.95):
    """Mean, sample std and the Student-t `confidence` interval of the mean of `values`.

    Args:
        values: one finite number per seed (at least one).
        confidence: in (0, 1); default 0.95.

    Returns:
        {"n", "mean", "std", "ci_low", "ci_high", "confidence", "values"}; std and the interval
        are None when n == 1 (no spread can be estimated from one run).
    """
    values = _values(values, "values")
    if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real) or not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence!r}")
    n = len(values)
    mean = math.fsum(values) / n
    out = {"n": n, "mean": mean, "std": None, "ci_low": None, "ci_high": None,
           "confidence": float(confidence), "values": values}
    if n > 1:
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
        half = t_quantile(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
        out.update(std=std, ci_low=mean - half, ci_high=mean + half)
    return out


def paired_difference(values, baseline, confidence=0.95):
    """summarize() of values[i] - baseline[i]: the per-seed difference of two methods run on the same
    seeds (pairing removes the part of the spread the two runs of a seed share)."""
    values, baseline = _values(values, "values"), _values(baseline, "baseline")
    if len(values) != len(baseline):
        raise ValueError(f"a paired difference needs one value per seed on both sides; got {len(values)} and "
                         f"{len(baseline)}")
    return summarize([v - b for v, b in zip(values, baseline)], confidence)
