"""Effects, intervals, permutation nulls, Holm and power (helpers/stats.py), checked on hand
computations and on simulated sweeps whose truth is known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from helpers import stats as st

# --- unit effects ----------------------------------------------------------------------------


def _long(values: dict[tuple[int, str], list[float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"seed": s, "cluster": c, "iteration": t, "v": v}
         for (s, c), series in values.items() for t, v in enumerate(series)]
    )  # fmt: skip


def test_unit_slopes_are_least_squares_slopes_per_unit() -> None:
    frame = _long({(1, "a"): [1.0, 3.0, 5.0], (1, "b"): [0.0, 1.0, 1.0],
                   (2, "a"): [2.0, np.nan, 2.0], (2, "b"): [1.0, np.nan, np.nan]})  # fmt: skip
    b = st.unit_slopes(frame, "v")
    assert b[(1, "a")] == pytest.approx(2.0)
    assert b[(1, "b")] == pytest.approx(0.5)  # (0,0),(1,1),(2,1): sxy = 1, sxx = 2
    assert b[(2, "a")] == pytest.approx(0.0)  # two finite points, flat
    assert math.isnan(b[(2, "b")])  # one point: no slope
    d = st.effect_matrix(b)
    assert d.shape == (2, 2) and d[0, 0] == pytest.approx(2.0)


def test_unit_levels_subtract_the_neutral_level() -> None:
    frame = _long({(1, "a"): [1.2, 1.4], (2, "a"): [0.8, np.nan]})
    lv = st.unit_levels(frame, "v", 1.0)
    assert lv[(1, "a")] == pytest.approx(0.3) and lv[(2, "a")] == pytest.approx(-0.2)


# --- the bootstrap and the effect ------------------------------------------------------------


def test_bootstrap_is_deterministic_given_the_generator_seed() -> None:
    d = np.arange(12, dtype=float).reshape(3, 4)
    a = st.cluster_bootstrap(d, np.random.default_rng(7), n_boot=200)
    b = st.cluster_bootstrap(d, np.random.default_rng(7), n_boot=200)
    c = st.cluster_bootstrap(d, np.random.default_rng(8), n_boot=200)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # one-way over clusters of a matrix whose rows are equal: every replicate is a mean of
    # values drawn from the columns' means
    assert np.all((a >= 0) & (a <= 11))


def test_bootstrap_of_a_single_cell_missing_skips_it() -> None:
    d = np.array([[1.0, np.nan], [3.0, 5.0]])
    reps = st.cluster_bootstrap(d, np.random.default_rng(0), n_boot=50, over=())
    assert np.allclose(reps, 3.0)  # no resampling: the mean of the finite cells


def test_the_effect_has_the_hand_computed_standard_error_for_seeds_only() -> None:
    # one cluster, 4 seeds: SE -> sd(d, ddof=1) / sqrt(4) as the bootstrap grows
    d = np.array([[1.0], [2.0], [4.0], [5.0]])
    e = st.estimate_effect(d, np.random.default_rng(1), n_boot=40_000)
    assert e.estimate == pytest.approx(3.0)
    assert e.se == pytest.approx(np.std(d, ddof=1) / 2, rel=0.03)
    assert e.df == pytest.approx(3.0)  # one dimension: S - 1
    assert e.ci_low < 3.0 < e.ci_high
    assert (e.n_seeds, e.n_clusters, e.var_cluster) == (4, 1, 0.0)


def test_too_few_units_give_no_effect() -> None:
    e = st.estimate_effect(np.array([[2.0]]), np.random.default_rng(0))
    assert math.isnan(e.estimate) and math.isnan(e.p)


def test_percentile_interval_covers_a_known_normal_mean_about_95_percent() -> None:
    rng = np.random.default_rng(3)
    hits_pct, hits_t, n = 0, 0, 300
    for _ in range(n):
        d = rng.normal(0.4, 1.0, size=(1, 40))  # 40 clusters, one seed, true mean 0.4
        lo, hi = st.percentile_interval(st.cluster_bootstrap(d, rng, n_boot=400))
        hits_pct += lo <= 0.4 <= hi
        e = st.estimate_effect(d, rng, n_boot=400)
        hits_t += e.ci_low <= 0.4 <= e.ci_high
    assert 0.90 <= hits_pct / n <= 0.99
    assert 0.92 <= hits_t / n <= 0.99


def test_the_t_interval_keeps_its_coverage_with_three_seeds() -> None:
    # the seed part dominates and there are only 3 seeds: the interval must widen (df ~ 2)
    rng = np.random.default_rng(4)
    hits, hits_pct, n = 0, 0, 300
    for _ in range(n):
        d = rng.normal(size=(3, 1)) + 0.2 * rng.normal(size=(3, 10))
        e = st.estimate_effect(d, rng, n_boot=300)
        hits += e.ci_low <= 0.0 <= e.ci_high
        lo, hi = st.percentile_interval(st.cluster_bootstrap(d, rng, n_boot=300))
        hits_pct += lo <= 0.0 <= hi
    assert hits / n >= 0.90
    assert hits_pct / n < 0.85  # why the bare percentile interval is not used with 3 seeds


# --- permutation nulls -----------------------------------------------------------------------


def test_sign_flip_test_is_exact_for_few_seeds() -> None:
    rng = np.random.default_rng(0)
    # three positive seeds: only the all-plus and all-minus patterns reach |mean|: p = 2/8
    assert st.sign_flip_test([0.3, 0.2, 0.4], rng) == pytest.approx(0.25)
    # 5 seeds all positive, distinct: p = 2/32
    assert st.sign_flip_test([1, 2, 3, 4, 5], rng) == pytest.approx(2 / 32)
    assert st.sign_flip_test([1, -1], rng) == pytest.approx(1.0)


def test_rank_percentile_test_finds_a_sunk_human_text_and_not_a_neutral_one() -> None:
    rng = np.random.default_rng(0)
    sizes = np.full(40, 5)
    sunk, p = st.rank_percentile_test(np.full(40, 5), sizes, rng)  # always last of 5
    assert sunk == pytest.approx(0.5) and p < 0.001
    neutral = rng.integers(1, 6, size=40)
    shift, p_neutral = st.rank_percentile_test(neutral, sizes, rng)
    assert p_neutral > 0.01
    assert shift == pytest.approx(((neutral - 1) / 4).mean() - 0.5)
    with pytest.raises(ValueError, match=r"1\.\.n"):
        st.rank_percentile_test([6], [5], rng)


# --- Holm, MDE, verdict, size -----------------------------------------------------------------


def test_holm_matches_a_hand_computation() -> None:
    # sorted: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> 0.06)
    adj = st.holm([0.03, 0.01, 0.04, 0.02])
    assert adj == pytest.approx([0.06, 0.04, 0.06, 0.06])
    # at alpha 0.05 only the smallest is rejected: the step-down stops at 0.02 > 0.05 / 3
    assert list(adj <= 0.05) == [False, True, False, False]
    assert st.holm_levels([0.03, 0.01, 0.04, 0.02]) == pytest.approx(
        [0.025, 0.0125, 0.05, 0.05 / 3]
    )
    with_nan = st.holm([0.01, np.nan, 0.5])
    assert with_nan[0] == pytest.approx(0.02) and math.isnan(with_nan[1]) and with_nan[2] == 0.5


def test_mde_is_z_sum_times_se() -> None:
    assert st.mde(1.0) == pytest.approx(1.959964 + 0.841621, rel=1e-5)
    assert st.mde(0.5, power=0.5) == pytest.approx(0.5 * 1.959964, rel=1e-5)


@pytest.mark.parametrize(
    ("estimate", "p_holm", "expect", "minimum", "expected"),
    [
        (-0.02, 0.01, -1, 0.005, "reproduced"),
        (-0.02, 0.01, +1, 0.005, "opposite"),
        (-0.002, 0.01, -1, 0.005, "not detected"),  # significant but below the minimum effect
        (-0.02, 0.20, -1, 0.005, "not detected"),
        (math.nan, 0.01, -1, 0.005, "not measurable"),
    ],
)
def test_verdict_vocabulary(estimate, p_holm, expect, minimum, expected) -> None:
    assert st.verdict(estimate, p_holm, expect, minimum) == expected


def test_size_needed_reaches_the_minimum_effect_with_the_fewest_runs() -> None:
    # sigma_seed^2 = 3 * 0.01 = 0.03, sigma_cluster^2 = 10 * 0.004 = 0.04
    pilot = st.Effect(0.1, 0.1183, 10, 0, 0.2, 0.3, 3, 10, 0.01, 0.004)
    z = 1.959964 + 0.841621
    need = st.size_needed(pilot, 0.2, max_clusters=47)
    s, c = need["seeds"], need["clusters"]
    assert need["feasible"] and need["mde"] <= 0.2
    assert z * math.sqrt(0.03 / s + 0.04 / c) == pytest.approx(need["mde"])
    # one seed fewer fails at any cluster count
    assert z * math.sqrt(0.03 / (s - 1) + 0.04 / 47) > 0.2
    assert not st.size_needed(pilot, 0.001, max_seeds=10)["feasible"]


# --- simulated sweeps: planted effect found, no false "reproduced" -----------------------------


def _simulate(rng, n_sweeps, slope, *, seeds=3, clusters=12, iterations=6):
    """Unit slopes of many sweeps at once: y = slope * t + tavern level + seed trend + noise."""
    t = np.arange(iterations)
    seed_trend = 0.005 * rng.normal(size=(n_sweeps, seeds, 1, 1)) * t
    tavern = rng.normal(size=(n_sweeps, 1, clusters, 1))
    y = (
        slope * t
        + tavern
        + seed_trend
        + 0.05 * rng.normal(size=(n_sweeps, seeds, clusters, iterations))
    )
    tc = t - t.mean()
    return (y * tc).sum(-1) / (tc * tc).sum()  # (sweeps, seeds, clusters) of OLS slopes


def _verdicts(d_all, rng, expect=-1, minimum=0.005, n_claims=4):
    """Holm across ``n_claims`` claims per sweep (the other claims are null draws)."""
    out = []
    for i in range(0, len(d_all), n_claims):
        effects = [st.estimate_effect(d, rng, n_boot=300) for d in d_all[i : i + n_claims]]
        adj = st.holm([e.p for e in effects])
        out.append(st.verdict(effects[0].estimate, adj[0], expect, minimum))
    return out


def test_a_planted_effect_is_found() -> None:
    rng = np.random.default_rng(11)
    planted = _simulate(rng, 40, -0.05)
    null = _simulate(rng, 120, 0.0)
    d_all = np.concatenate([np.stack([planted[i], *null[3 * i : 3 * i + 3]]) for i in range(40)])
    verdicts = _verdicts(d_all, rng)
    assert verdicts.count("reproduced") >= 36  # power at least 90 %
    assert "opposite" not in verdicts


def test_no_effect_gives_false_reproduced_in_at_most_5_percent_of_sweeps() -> None:
    rng = np.random.default_rng(12)
    n_sweeps = 300
    d_all = _simulate(rng, 4 * n_sweeps, 0.0)
    verdicts = _verdicts(d_all, rng, minimum=0.0)  # no minimum effect: the interval alone
    assert verdicts.count("reproduced") / n_sweeps <= 0.05
    assert verdicts.count("opposite") / n_sweeps <= 0.05
