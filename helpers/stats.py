"""Statistics for the loop experiments: effects with intervals, permutation nulls, Holm, power.

Why a module of its own: a sweep gives a handful of seeds and a few dozen taverns, and the
texts of one tavern across iterations are not independent, nor are the taverns of one run
(they retrieve each other). A claim about the loop is therefore an *effect* (a slope over
iterations, a paired difference between arms at the same seed, or a level against a neutral
expectation) estimated from a matrix ``d[s, c]`` of per-unit effects, one value per seed ``s``
and cluster ``c`` (a tavern, a query, or the whole run when only run-level numbers exist), and
its uncertainty comes from resampling those units, never from counting seeds that agree in sign
(with no effect, 3 of 3 seeds agree by chance 1 time in 8).

The estimate is the mean of the finite unit effects,
``theta = sum_{s,c} m_sc d_sc / sum_{s,c} m_sc`` (``m`` marks finite cells).

Its standard error combines two one-way cluster bootstraps (resample seeds, resample clusters):
``SE^2 = v_seed + v_cluster`` with ``v_g = G / (G - 1) * Var_b(theta*_b)`` for the bootstrap over
the ``G`` units of dimension ``g`` (the factor undoes the bootstrap's ``(G-1)/G`` shrinkage of a
mean's variance). That is the two-way cluster-robust variance of Cameron, Gelbach and Miller
without subtracting the intersection term: slightly conservative. The interval and the p-value
use Student's t with Welch-Satterthwaite degrees of freedom
``df = SE^4 / (v_seed^2 / (S - 1) + v_cluster^2 / (C - 1))``:
``theta +- t_{df, 1-a/2} SE`` and ``p = 2 P(T_df >= |theta| / SE)``. Why not the bare percentile
interval of a joint bootstrap: with 3 seeds it has 10 support points and too narrow a spread,
so it calls noise an effect far more often than 5 % (:func:`percentile_interval` remains for
large cluster counts, where it agrees).

Everything is deterministic given a ``numpy.random.Generator`` seed, and vectorised over
bootstrap replicates (two matrix products per bootstrap).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd
from scipy import stats as _sp

ALPHA = 0.05
POWER = 0.8
N_BOOT = 2000

REPRODUCED = "reproduced"
OPPOSITE = "opposite"
NOT_DETECTED = "not detected"
NOT_MEASURABLE = "not measurable"


# ---------------------------------------------------------------------------------------------
# From a long table to the matrix of unit effects


def unit_slopes(
    frame: pd.DataFrame,
    value: str,
    *,
    units: Sequence[str] = ("seed", "cluster"),
    x: str = "iteration",
) -> pd.Series:
    """Least-squares slope of ``value`` over ``x`` within each unit (row of ``units``):
    ``b_u = sum_t (x_t - xbar_u)(y_t - ybar_u) / sum_t (x_t - xbar_u)^2`` over the unit's finite
    points. NaN for a unit with fewer than two distinct ``x``. Vectorised over units."""
    wide = frame.pivot_table(index=list(units), columns=x, values=value, aggfunc="mean",
                             dropna=False)  # fmt: skip
    y = wide.to_numpy(dtype=float)
    xs = np.asarray(wide.columns, dtype=float)[None, :].repeat(len(y), axis=0)
    m = np.isfinite(y)
    n = m.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        xbar = np.where(m, xs, 0.0).sum(axis=1) / n
        ybar = np.where(m, y, 0.0).sum(axis=1) / n
        dx = np.where(m, xs - xbar[:, None], 0.0)
        dy = np.where(m, y - ybar[:, None], 0.0)
        sxx = (dx * dx).sum(axis=1)
        b = np.where(sxx > 0, (dx * dy).sum(axis=1) / np.where(sxx > 0, sxx, 1.0), np.nan)
    return pd.Series(b, index=wide.index, name=value)


def unit_levels(
    frame: pd.DataFrame,
    value: str,
    level: float = 0.0,
    *,
    units: Sequence[str] = ("seed", "cluster"),
) -> pd.Series:
    """Mean of ``value - level`` over each unit's finite rows (a claim about a level against a
    neutral expectation ``level``, e.g. over-representation 1). NaN for a unit with none."""
    shifted = frame.assign(_v=frame[value].astype(float) - level)
    return shifted.groupby(list(units))["_v"].mean().rename(value)


def effect_matrix(effects: pd.Series) -> np.ndarray:
    """The unit effects as a ``(seeds, clusters)`` array (NaN where a cell is missing), from a
    Series indexed by (seed, cluster) such as :func:`unit_slopes` returns."""
    if effects.index.nlevels == 1:
        return effects.to_numpy(dtype=float)[:, None]
    return effects.unstack().to_numpy(dtype=float)


# ---------------------------------------------------------------------------------------------
# Bootstrap


def _weights(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """Bootstrap counts: how often each of ``n`` units is drawn, ``n_boot`` rows."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)


def cluster_bootstrap(
    d: np.ndarray,
    rng: np.random.Generator,
    *,
    n_boot: int = N_BOOT,
    over: Sequence[str] = ("seed", "cluster"),
) -> np.ndarray:
    """Replicates ``theta*_b = sum w_s w_c m_sc d_sc / sum w_s w_c m_sc`` of the mean of the unit
    effects ``d`` (seeds x clusters), with seeds and/or clusters (``over``) drawn with
    replacement (``w`` = how often a unit was drawn, 1 for a dimension not resampled).
    A replicate that drew only empty cells is NaN."""
    d = np.atleast_2d(np.asarray(d, dtype=float))
    m = np.isfinite(d)
    d0 = np.where(m, d, 0.0)
    n_s, n_c = d.shape
    ws = _weights(rng, n_s, n_boot) if "seed" in over else np.ones((n_boot, n_s))
    wc = _weights(rng, n_c, n_boot) if "cluster" in over else np.ones((n_boot, n_c))
    num = ((ws @ d0) * wc).sum(axis=1)
    den = ((ws @ m.astype(float)) * wc).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def percentile_interval(replicates: np.ndarray, alpha: float = ALPHA) -> tuple[float, float]:
    """The ``alpha/2`` and ``1 - alpha/2`` percentiles of the bootstrap replicates."""
    r = np.asarray(replicates, dtype=float)
    r = r[np.isfinite(r)]
    if not len(r):
        return math.nan, math.nan
    lo, hi = np.percentile(r, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


@dataclass(frozen=True)
class Effect:
    """An effect with its uncertainty (see the module docstring for the formulas)."""

    estimate: float
    se: float
    df: float
    ci_low: float
    ci_high: float
    p: float
    n_seeds: int
    n_clusters: int
    var_seed: float  # v_seed: the seed part of SE^2
    var_cluster: float  # v_cluster: the cluster part of SE^2

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


NAN_EFFECT = Effect(*(math.nan,) * 6, 0, 0, math.nan, math.nan)  # type: ignore[arg-type]


def estimate_effect(
    d: np.ndarray, rng: np.random.Generator, *, n_boot: int = N_BOOT, alpha: float = ALPHA
) -> Effect:
    """Mean of the unit effects ``d`` (seeds x clusters) with the bootstrap SE, Satterthwaite
    df, ``1 - alpha`` t-interval and two-sided p of the module docstring. A dimension with one
    unit contributes no variance (it cannot be estimated; with one seed the interval speaks
    for these seeds only). :data:`NAN_EFFECT` when fewer than two units hold a value."""
    d = np.atleast_2d(np.asarray(d, dtype=float))
    keep_s = np.isfinite(d).any(axis=1)
    keep_c = np.isfinite(d).any(axis=0)
    d = d[keep_s][:, keep_c]
    n_s, n_c = d.shape
    if n_s * n_c == 0 or np.isfinite(d).sum() < 2 or max(n_s, n_c) < 2:
        return replace(NAN_EFFECT, n_seeds=n_s, n_clusters=n_c)
    m = np.isfinite(d)
    theta = float(d[m].mean())
    parts = []
    for dim, n in (("seed", n_s), ("cluster", n_c)):
        if n < 2:
            parts.append((0.0, n))
            continue
        rep = cluster_bootstrap(d, rng, n_boot=n_boot, over=(dim,))
        parts.append((float(np.nanvar(rep)) * n / (n - 1), n))
    v = sum(p for p, _ in parts)
    denom = sum(p * p / (n - 1) for p, n in parts if n > 1)
    df = v * v / denom if denom > 0 else math.inf
    se = math.sqrt(v)
    if se == 0:
        p = 1.0 if theta == 0 else 0.0
        lo = hi = theta
    else:
        tq = float(_sp.t.ppf(1 - alpha / 2, df))
        lo, hi = theta - tq * se, theta + tq * se
        p = float(2 * _sp.t.sf(abs(theta) / se, df))
    return Effect(theta, se, df, lo, hi, p, n_s, n_c, parts[0][0], parts[1][0])


def interval_at(effect: Effect, alpha: float) -> tuple[float, float]:
    """The ``1 - alpha`` interval of an effect (e.g. at its Holm level)."""
    if not (math.isfinite(effect.se) and effect.se > 0):
        return effect.estimate, effect.estimate
    tq = float(_sp.t.ppf(1 - alpha / 2, effect.df))
    return effect.estimate - tq * effect.se, effect.estimate + tq * effect.se


# ---------------------------------------------------------------------------------------------
# Permutation nulls


def sign_flip_test(
    per_seed: Sequence[float], rng: np.random.Generator, *, n_perm: int = 10_000
) -> float:
    """Arm labels shuffled within a seed: under the null the two arms of one seed are
    exchangeable, so each seed's paired difference ``d_s`` keeps or flips its sign.
    ``p = #{sign patterns e : |mean(e * d)| >= |mean(d)|} / #patterns``, exact (all ``2^S``
    patterns) for up to 16 seeds, else ``n_perm`` random ones (plus the observed). With 3 seeds
    the smallest possible p is 2/8 = 0.25: three seeds cannot carry a claim alone."""
    d = np.asarray(per_seed, dtype=float)
    d = d[np.isfinite(d)]
    if not len(d):
        return math.nan
    if len(d) <= 16:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
    else:
        signs = np.vstack([np.ones(len(d)), rng.choice((1.0, -1.0), size=(n_perm, len(d)))])
    null = np.abs(signs @ d) / len(d)
    return float(np.mean(null >= abs(d.mean()) - 1e-12))


def rank_percentile_test(
    ranks: Sequence[int],
    sizes: Sequence[int],
    rng: np.random.Generator,
    *,
    n_perm: int = 10_000,
) -> tuple[float, float]:
    """Source labels shuffled within a tavern: a human text at rank ``r`` (1 = first) among the
    ``n`` stored texts of its tavern has percentile ``q = (r - 1) / (n - 1)`` (0 = above every
    generated version, 1 = below all of them). A neutral retriever puts it at a uniformly
    random rank, so ``E[q] = 0.5``. Returns ``(mean q - 0.5, p)`` with the two-sided p of the
    mean under that null, from ``n_perm`` draws of uniform ranks. Units with ``n < 2`` are
    skipped (no percentile)."""
    r = np.asarray(ranks, dtype=float)
    n = np.asarray(sizes, dtype=float)
    ok = np.isfinite(r) & np.isfinite(n) & (n >= 2)
    r, n = r[ok], n[ok]
    if not len(r):
        return math.nan, math.nan
    if np.any((r < 1) | (r > n)):
        raise ValueError("every rank must lie in 1..n (the size of its tavern's texts).")
    observed = float(((r - 1) / (n - 1)).mean() - 0.5)
    draws = np.floor(rng.random((n_perm, len(n))) * n)  # rank - 1, uniform on 0..n-1
    null = (draws / (n - 1)).mean(axis=1) - 0.5
    p = (1 + np.sum(np.abs(null) >= abs(observed) - 1e-12)) / (n_perm + 1)
    return observed, float(p)


# ---------------------------------------------------------------------------------------------
# Several claims, power and the verdict


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values: sort ``p_(1) <= ... <= p_(m)``,
    ``p~_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``. Rejecting where ``p~ <= alpha`` is
    Holm's step-down rule (reject in order while ``p_(i) <= alpha / (m - i + 1)``, stop at the
    first failure). NaN p-values are left out of ``m`` and stay NaN."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if not m:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def holm_levels(pvalues: Sequence[float], alpha: float = ALPHA) -> np.ndarray:
    """Each claim's Holm level ``alpha / (m - i + 1)`` at its rank ``i`` among the finite
    p-values (NaN where p is NaN): the level of its corrected interval."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    out[order] = alpha / (len(ok) - np.arange(len(ok)))
    return out


def mde(se: float, *, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable effect ``(z_{1-alpha/2} + z_power) * SE``: the true effect a two-sided
    test at ``alpha`` finds with probability ``power`` at this standard error."""
    return float((_sp.norm.ppf(1 - alpha / 2) + _sp.norm.ppf(power)) * se)


def verdict(
    estimate: float,
    p_holm: float,
    expect: int,
    min_effect: float,
    *,
    alpha: float = ALPHA,
) -> str:
    """``reproduced`` when the Holm-corrected interval excludes 0 (``p_holm <= alpha``) on the
    predicted side (``sign(estimate) == expect``) and ``|estimate| >= min_effect``;
    ``opposite`` likewise on the other side; ``not measurable`` without an estimate; else
    ``not detected`` (report it with the MDE)."""
    if expect not in (1, -1):
        raise ValueError(f"expect must be +1 or -1, got {expect!r}.")
    if not (math.isfinite(estimate) and math.isfinite(p_holm)):
        return NOT_MEASURABLE
    if p_holm <= alpha and abs(estimate) >= min_effect and estimate != 0:
        return REPRODUCED if np.sign(estimate) == expect else OPPOSITE
    return NOT_DETECTED


def variance_components(effect: Effect) -> tuple[float, float]:
    """Per-unit variances from a pilot effect: ``sigma_seed^2 = S v_seed`` and
    ``sigma_cluster^2 = C v_cluster``, so that at ``S'`` seeds and ``C'`` clusters
    ``SE^2 = sigma_seed^2 / S' + sigma_cluster^2 / C'``."""
    return effect.var_seed * effect.n_seeds, effect.var_cluster * effect.n_clusters


def size_needed(
    effect: Effect,
    min_effect: float,
    *,
    alpha: float = ALPHA,
    power: float = POWER,
    max_clusters: int = 47,
    max_seeds: int = 100,
) -> dict[str, float]:
    """The smallest design (``seeds`` x ``clusters``, fewest runs first, then fewest clusters)
    whose MDE ``(z_{1-alpha/2} + z_power) sqrt(sigma_seed^2 / S + sigma_cluster^2 / C)`` is at
    most ``min_effect``, from a pilot's variance components (:func:`variance_components`).
    ``clusters`` is capped at ``max_clusters`` (all 47 taverns) and ``seeds`` at ``max_seeds``;
    ``feasible`` is False (and the sizes NaN) when even the largest design is too coarse.
    For a claim measured on run-level numbers only (one cluster), ``clusters`` stays 1.
    Pass ``alpha / m`` for the first Holm step of ``m`` claims to be safe."""
    if not min_effect > 0:
        raise ValueError(f"min_effect must be > 0, got {min_effect!r}.")
    s2, c2 = variance_components(effect)
    if not (math.isfinite(s2) and math.isfinite(c2)):
        return {"seeds": math.nan, "clusters": math.nan, "runs": math.nan, "mde": math.nan,
                "feasible": False}  # fmt: skip
    z = float(_sp.norm.ppf(1 - alpha / 2) + _sp.norm.ppf(power))
    cap_c = max_clusters if effect.n_clusters > 1 else 1
    seeds = np.arange(1, max_seeds + 1)[:, None]
    clusters = np.arange(1, cap_c + 1)[None, :]
    mdes = z * np.sqrt(s2 / seeds + c2 / clusters)
    ok = np.argwhere(mdes <= min_effect)
    if not len(ok):
        return {"seeds": math.nan, "clusters": math.nan, "runs": math.nan,
                "mde": float(mdes[-1, -1]), "feasible": False}  # fmt: skip
    # fewest seeds (= runs) first, then fewest clusters
    s_i, c_i = min(ok.tolist(), key=lambda ij: (ij[0], ij[1]))
    return {"seeds": int(s_i + 1), "clusters": int(c_i + 1), "runs": int(s_i + 1),
            "mde": float(mdes[s_i, c_i]), "feasible": True}  # fmt: skip
