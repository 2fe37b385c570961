"""engine/stats.py: Student-t quantiles, intervals and paired differences against values worked out by hand."""
import math

import pytest

from ciard_fast.engine.stats import betainc, paired_difference, summarize, t_cdf, t_quantile


def t_quantile_df1(p):
    return math.tan(math.pi * (p - 0.5))  # Cauchy


def t_quantile_df2(p):
    return (2 * p - 1) / math.sqrt(2 * p * (1 - p))


def t_quantile_df4(p):
    # closed form for 4 degrees of freedom (Hill 1970): a = 4p(1-p), q = cos(arccos(√a)/3)/√a
    a = 4 * p * (1 - p)
    q = math.cos(math.acos(math.sqrt(a)) / 3) / math.sqrt(a)
    return math.copysign(2 * math.sqrt(q - 1), p - 0.5)


@pytest.mark.parametrize("p", [0.6, 0.9, 0.95, 0.975, 0.995, 0.3, 0.025])
def test_t_quantile_matches_the_closed_forms(p):
    assert t_quantile(p, 1) == pytest.approx(t_quantile_df1(p), rel=1e-10)
    assert t_quantile(p, 2) == pytest.approx(t_quantile_df2(p), rel=1e-10)
    assert t_quantile(p, 4) == pytest.approx(t_quantile_df4(p), rel=1e-10)


def test_t_quantile_matches_the_published_table_and_the_normal_limit():
    # two-sided 95 % critical values as printed in every t table (3 decimals)
    for df, value in [(1, 12.706), (2, 4.303), (3, 3.182), (5, 2.571), (10, 2.228), (20, 2.086), (30, 2.042),
                      (60, 2.000), (120, 1.980)]:
        assert round(t_quantile(0.975, df), 3) == value, df
    assert t_quantile(0.975, 1e8) == pytest.approx(1.959963984540054, abs=1e-6)  # the normal quantile
    assert t_quantile(0.5, 7) == 0.0
    assert t_quantile(0.1, 7) == pytest.approx(-t_quantile(0.9, 7), rel=1e-12)


def test_t_cdf_and_incomplete_beta_match_closed_forms():
    for t in (-3.0, -0.4, 0.0, 0.7, 2.5, 40.0):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-13)
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-13)
    for x in (0.0, 0.01, 0.3, 0.5, 0.77, 0.999, 1.0):
        assert betainc(1.0, 1.0, x) == pytest.approx(x, abs=1e-14)
        assert betainc(3.5, 1.0, x) == pytest.approx(x ** 3.5, abs=1e-13)
        assert betainc(1.0, 2.5, x) == pytest.approx(1 - (1 - x) ** 2.5, abs=1e-13)
    assert t_quantile(0.8, 3.7) == pytest.approx(t_quantile(0.8, 3.7))  # fractional df works
    assert t_cdf(t_quantile(0.8, 3.7), 3.7) == pytest.approx(0.8, abs=1e-12)


def test_summary_mean_std_and_interval_by_hand():
    s = summarize([90.0, 91.0, 95.0])
    # mean 92; deviations -2, -1, 3 -> squares 14 -> variance 14 / 2 = 7
    assert s["n"] == 3 and s["mean"] == pytest.approx(92.0) and s["std"] == pytest.approx(math.sqrt(7))
    half = t_quantile_df2(0.975) * math.sqrt(7) / math.sqrt(3)  # 4.3027 * 2.6458 / 1.7321 = 6.5724
    assert half == pytest.approx(6.5724, abs=1e-4)
    assert s["ci_low"] == pytest.approx(92.0 - half, rel=1e-12) and s["ci_high"] == pytest.approx(92.0 + half, rel=1e-12)
    assert s["values"] == [90.0, 91.0, 95.0] and s["confidence"] == 0.95

    # 90 %: t(0.95, 1) = tan(0.45 π) = 6.3138; two values 10, 12 -> mean 11, std √2, half = 6.3138 · √2/√2
    s = summarize([10, 12], confidence=0.90)
    assert s["std"] == pytest.approx(math.sqrt(2)) and s["ci_high"] - 11 == pytest.approx(6.313751514675, rel=1e-9)


def test_one_value_has_no_spread():
    s = summarize([77.5])
    assert s == {"n": 1, "mean": 77.5, "std": None, "ci_low": None, "ci_high": None, "confidence": 0.95,
                 "values": [77.5]}


def test_paired_difference_by_hand():
    method, baseline = [90.0, 91.0, 95.0], [88.0, 90.0, 92.0]
    d = paired_difference(method, baseline)
    # differences 2, 1, 3: mean 2, std 1, half width t(0.975, 2) / √3 = 2.4841
    assert d["values"] == [2.0, 1.0, 3.0] and d["mean"] == pytest.approx(2.0) and d["std"] == pytest.approx(1.0)
    assert d["ci_low"] == pytest.approx(2.0 - t_quantile_df2(0.975) / math.sqrt(3), rel=1e-12)
    assert d["ci_high"] == pytest.approx(4.4841377, abs=1e-6)
    # pairing: the unpaired spread of either side is larger than that of the differences
    assert summarize(method)["std"] > d["std"] and summarize(baseline)["std"] > d["std"]
    # a shared per-seed offset cancels exactly
    same = paired_difference([v + 5 for v in baseline], baseline)
    assert same["mean"] == pytest.approx(5.0) and same["std"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("call, match", [
    (lambda: summarize([]), "empty"),
    (lambda: summarize([1.0, float("nan")]), "finite"),
    (lambda: summarize([1.0, "2"]), "finite"),
    (lambda: summarize([1.0, 2.0], confidence=95), "confidence"),
    (lambda: paired_difference([1.0, 2.0], [1.0]), "one value per seed"),
    (lambda: t_quantile(1.0, 3), "strictly between 0 and 1"),
    (lambda: t_quantile(0.9, 0), "df must be"),
    (lambda: betainc(1.0, 1.0, 1.5), r"x must be in \[0, 1\]"),
])
def test_bad_input_is_rejected(call, match):
    with pytest.raises(ValueError, match=match):
        call()
